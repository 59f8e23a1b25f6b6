"""Tests for the local evaluate modules and DistillationMetrics."""

from __future__ import annotations

import fnmatch
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import evaluate
import numpy as np
import pytest
from transformers import EvalPrediction

import hf_distill.metrics as metrics_mod
from hf_distill.metrics import METRIC_NAMES, DistillationMetrics, load_metric, metric_path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO_ROOT = Path(__file__).resolve().parents[1]
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module", autouse=True)
def _isolated_evaluate_cache(tmp_path_factory):
    """Keep evaluate's module copies and arrow scratch files out of the user's cache."""
    root = tmp_path_factory.mktemp("evaluate_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate.config, "HF_MODULES_CACHE", root / "modules")
        mp.setattr(evaluate.config, "HF_METRICS_CACHE", str(root / "metrics"))
        mp.setattr(metrics_mod, "_LOADED", {})
        yield


# ----------------------------------------------------------------------------- reference implementations


def ref_top_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    hits = 0
    num_classes = scores.shape[1]
    for row, label in zip(scores, labels):
        # Decreasing score, ties broken by the lower class index (numpy argmax's convention).
        order = sorted(range(num_classes), key=lambda j, row=row: (-float(row[j]), j))
        hits += int(label in order[: min(k, num_classes)])
    return hits / len(labels)


def ref_agreement(student: np.ndarray, teacher: np.ndarray) -> float:
    return sum(int(np.argmax(s) == np.argmax(t)) for s, t in zip(student, teacher)) / len(student)


def ref_kl(student: np.ndarray, teacher: np.ndarray, temperature: float = 1.0) -> float:
    total = 0.0
    for s_row, t_row in zip(student.astype(np.float64), teacher.astype(np.float64)):
        s_row, t_row = s_row / temperature, t_row / temperature
        q = np.exp(s_row - s_row.max())
        q /= q.sum()
        p = np.exp(t_row - t_row.max())
        p /= p.sum()
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)
    return total / len(student)


def random_logits(seed: int, n: int = 64, c: int = 10, ties: bool = False):
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: most rows have tied maxima
        student = rng.integers(0, 3, size=(n, c)).astype(np.float32)
        teacher = rng.integers(0, 3, size=(n, c)).astype(np.float32)
    else:
        student = rng.normal(size=(n, c)).astype(np.float32) * 3
        teacher = rng.normal(size=(n, c)).astype(np.float32) * 3
    labels = rng.integers(0, c, size=n)
    return student, teacher, labels


# ----------------------------------------------------------------------------- the evaluate modules


def test_modules_are_evaluate_metrics():
    for name in METRIC_NAMES:
        module = load_metric(name)
        assert isinstance(module, evaluate.Metric)
        assert module.name == name
        assert module.description.strip() and module.citation.strip() and module.inputs_description.strip()
        assert set(module.features) == {"predictions", "references"}
        assert load_metric(name) is module  # cached


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="available"):
        load_metric("accuracy")


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_top_k_accuracy_matches_reference(seed, ties):
    student, _, labels = random_logits(seed, ties=ties)
    result = load_metric("top_k_accuracy").compute(predictions=student, references=labels, k=[1, 3, 5])
    assert result == pytest.approx(
        {f"top{k}_accuracy": ref_top_k(student, labels, k) for k in (1, 3, 5)}, abs=1e-12
    )
    assert result["top1_accuracy"] == pytest.approx(np.mean(np.argmax(student, axis=1) == labels), abs=1e-12)


def test_top_k_default_k_and_clipping():
    student, _, labels = random_logits(3, c=4)
    metric = load_metric("top_k_accuracy")
    default = metric.compute(predictions=student, references=labels)
    assert set(default) == {"top1_accuracy", "top5_accuracy"}
    assert default["top5_accuracy"] == 1.0  # k=5 clipped to the 4 classes
    clipped = metric.compute(predictions=student, references=labels, k=[4, 10])
    assert clipped == {"top4_accuracy": 1.0, "top10_accuracy": 1.0}


def test_top_k_explicit_ties():
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [0.0, 2.0, 2.0], [5.0, 5.0, 5.0]], dtype=np.float32)
    labels = np.array([1, 1, 2, 2])
    result = load_metric("top_k_accuracy").compute(predictions=scores, references=labels, k=[1, 2])
    # argmax picks the first of the tied maxima: rows 0 and 2 miss at k=1, row 3 only enters at k=3.
    assert result == {"top1_accuracy": 0.25, "top2_accuracy": 0.75}


def test_top_k_invalid_inputs():
    metric = load_metric("top_k_accuracy")
    scores = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="k"):
        metric.compute(predictions=scores, references=np.array([0, 1]), k=[0])
    with pytest.raises(ValueError, match="class indices"):
        metric.compute(predictions=scores, references=np.array([0, 3]))


@pytest.mark.parametrize("seed", SEEDS)
def test_python_lists_and_batches_match_numpy(seed):
    student, teacher, labels = random_logits(seed, n=30, c=7)
    top_k = load_metric("top_k_accuracy")
    from_numpy = top_k.compute(predictions=student, references=labels, k=[1, 2])
    from_lists = top_k.compute(predictions=student.tolist(), references=labels.tolist(), k=[1, 2])
    assert from_lists == from_numpy
    # add_batch accumulation, numpy and plain lists mixed
    top_k.add_batch(predictions=student[:10], references=labels[:10])
    top_k.add_batch(predictions=student[10:].tolist(), references=labels[10:].tolist())
    assert top_k.compute(k=[1, 2]) == from_numpy

    kl = load_metric("kl_to_teacher")
    kl.add_batch(predictions=student[:17], references=teacher[:17])
    kl.add_batch(predictions=student[17:], references=teacher[17:])
    assert kl.compute()["kl_to_teacher"] == pytest.approx(ref_kl(student, teacher), rel=1e-9)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_teacher_agreement_matches_reference(seed, ties):
    student, teacher, _ = random_logits(seed, ties=ties)
    result = load_metric("teacher_agreement").compute(predictions=student, references=teacher)
    assert result == {"teacher_agreement": pytest.approx(ref_agreement(student, teacher), abs=1e-12)}


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_kl_to_teacher_matches_reference(seed, temperature):
    student, teacher, _ = random_logits(seed)
    metric = load_metric("kl_to_teacher")
    result = metric.compute(predictions=student, references=teacher, temperature=temperature)
    assert set(result) == {"kl_to_teacher"}
    assert result["kl_to_teacher"] == pytest.approx(ref_kl(student, teacher, temperature), rel=1e-9)
    assert metric.compute(predictions=teacher, references=teacher)["kl_to_teacher"] == pytest.approx(
        0.0, abs=1e-9
    )


def test_kl_default_temperature_and_infinite_logits():
    student, teacher, _ = random_logits(7, n=8, c=5)
    metric = load_metric("kl_to_teacher")
    assert metric.compute(predictions=student, references=teacher)["kl_to_teacher"] == pytest.approx(
        ref_kl(student, teacher, 1.0), rel=1e-9
    )
    teacher[:, 0] = -np.inf  # the teacher rules class 0 out: contributes 0 * log(0 / q) = 0
    assert metric.compute(predictions=student, references=teacher)["kl_to_teacher"] == pytest.approx(
        ref_kl(student, teacher), rel=1e-9
    )
    with pytest.raises(ValueError, match="temperature"):
        metric.compute(predictions=student, references=student, temperature=0.0)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError):
        load_metric("teacher_agreement").compute(
            predictions=np.zeros((3, 4), np.float32), references=np.zeros((3, 5), np.float32)
        )
    with pytest.raises(ValueError, match="same number of samples"):
        load_metric("kl_to_teacher").compute(
            predictions=np.zeros((3, 4), np.float32), references=np.zeros((2, 4), np.float32)
        )


# ----------------------------------------------------------------------------- DistillationMetrics


def test_distillation_metrics_with_teacher():
    student, teacher, labels = random_logits(11, n=50, c=12)
    out = DistillationMetrics()(EvalPrediction(predictions=(student, teacher), label_ids=labels))
    assert set(out) == {"accuracy", "top5_accuracy", "teacher_accuracy", "teacher_agreement", "kl_to_teacher"}
    assert all(type(v) is float for v in out.values())
    assert out["accuracy"] == pytest.approx(ref_top_k(student, labels, 1))
    assert out["top5_accuracy"] == pytest.approx(ref_top_k(student, labels, 5))
    assert out["teacher_accuracy"] == pytest.approx(ref_top_k(teacher, labels, 1))
    assert out["teacher_agreement"] == pytest.approx(ref_agreement(student, teacher))
    assert out["kl_to_teacher"] == pytest.approx(ref_kl(student, teacher, 1.0), rel=1e-9)


def test_distillation_metrics_student_only():
    student, _, labels = random_logits(12, n=40, c=8)
    out = DistillationMetrics()(EvalPrediction(predictions=student, label_ids=labels))
    assert out == pytest.approx(
        {"accuracy": ref_top_k(student, labels, 1), "top5_accuracy": ref_top_k(student, labels, 5)}
    )
    # a one-element tuple is the same thing
    assert DistillationMetrics()(EvalPrediction(predictions=(student,), label_ids=labels)) == out
    # with 5 classes or fewer top-5 is meaningless and left out
    few, _, few_labels = random_logits(12, n=40, c=5)
    assert set(DistillationMetrics()(EvalPrediction(predictions=few, label_ids=few_labels))) == {"accuracy"}


def test_distillation_metrics_without_labels():
    student, teacher, _ = random_logits(13, n=20, c=6)
    out = DistillationMetrics()(EvalPrediction(predictions=(student, teacher), label_ids=None))
    assert out == pytest.approx(
        {"teacher_agreement": ref_agreement(student, teacher), "kl_to_teacher": ref_kl(student, teacher)}
    )
    assert DistillationMetrics()(EvalPrediction(predictions=student, label_ids=None)) == {}


def test_distillation_metrics_ignores_negative_labels():
    student, teacher, labels = random_logits(14, n=30, c=9)
    masked = labels.copy()
    masked[::3] = -100
    keep = masked >= 0
    out = DistillationMetrics()(EvalPrediction(predictions=(student, teacher), label_ids=masked))
    assert out["accuracy"] == pytest.approx(ref_top_k(student[keep], labels[keep], 1))
    assert out["teacher_accuracy"] == pytest.approx(ref_top_k(teacher[keep], labels[keep], 1))
    assert out["teacher_agreement"] == pytest.approx(ref_agreement(student, teacher))  # all samples


def test_distillation_metrics_batched_mode():
    student, teacher, labels = random_logits(15, n=40, c=10)
    whole = DistillationMetrics()(EvalPrediction(predictions=(student, teacher), label_ids=labels))
    batched = DistillationMetrics()
    for start in range(0, 40, 16):
        stop = start + 16
        out = batched(
            EvalPrediction(
                predictions=(student[start:stop], teacher[start:stop]), label_ids=labels[start:stop]
            ),
            compute_result=stop >= 40,
        )
        if stop < 40:
            assert out == {}
    assert out == pytest.approx(whole)


def test_distillation_metrics_rejects_bad_shapes():
    student, teacher, labels = random_logits(16, n=10, c=4)
    with pytest.raises(ValueError, match="teacher logits"):
        DistillationMetrics()(EvalPrediction(predictions=(student, teacher[:, :3]), label_ids=labels))
    with pytest.raises(ValueError, match="label_ids"):
        DistillationMetrics()(EvalPrediction(predictions=student, label_ids=labels[:5]))


def test_with_trainer(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import Trainer, TrainingArguments
    from transformers.utils import ModelOutput

    class TinyDistilled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.student = torch.nn.Linear(6, 7)
            self.teacher = torch.nn.Linear(6, 7)

        def forward(self, pixel_values, labels=None):
            logits = self.student(pixel_values)
            loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return ModelOutput(loss=loss, logits=logits, teacher_logits=self.teacher(pixel_values))

    rng = np.random.default_rng(0)
    data = [
        {"pixel_values": rng.normal(size=6).astype(np.float32), "labels": int(rng.integers(0, 7))}
        for _ in range(24)
    ]
    model = TinyDistilled()
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=8, report_to=[], use_cpu=True
    )
    trainer = Trainer(model=model, args=args, eval_dataset=data, compute_metrics=DistillationMetrics())
    metrics = trainer.evaluate()

    x = torch.tensor(np.stack([d["pixel_values"] for d in data]))
    y = np.array([d["labels"] for d in data])
    with torch.no_grad():
        student, teacher = model.student(x).numpy(), model.teacher(x).numpy()
    assert metrics["eval_accuracy"] == pytest.approx(ref_top_k(student, y, 1))
    assert metrics["eval_top5_accuracy"] == pytest.approx(ref_top_k(student, y, 5))
    assert metrics["eval_teacher_accuracy"] == pytest.approx(ref_top_k(teacher, y, 1))
    assert metrics["eval_teacher_agreement"] == pytest.approx(ref_agreement(student, teacher))
    assert metrics["eval_kl_to_teacher"] == pytest.approx(ref_kl(student, teacher), rel=1e-5)


# ----------------------------------------------------------------------------- offline loading / packaging


def test_offline_load_in_fresh_cache(tmp_path, monkeypatch):
    modules_cache = tmp_path / "modules"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(modules_cache))
    # evaluate reads these at import time; mirror the environment into its config as well.
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", modules_cache)
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(evaluate.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(metrics_mod, "_LOADED", {})

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)

    student, teacher, labels = random_logits(21, n=12, c=6)
    for name in METRIC_NAMES:
        by_dir = evaluate.load(str(metric_path(name).parent), keep_in_memory=True)
        assert by_dir.name == name
        references = labels if name == "top_k_accuracy" else teacher
        assert by_dir.compute(predictions=student, references=references)  # in-memory store
        assert load_metric(name).name == name
        copies = list((modules_cache / "evaluate_modules" / "metrics" / name).glob(f"*/{name}.py"))
        assert copies, f"{name} was not materialised in the fresh modules cache"
    assert load_metric("top_k_accuracy").compute(predictions=student, references=labels, k=[1]) == {
        "top1_accuracy": pytest.approx(ref_top_k(student, labels, 1))
    }
    assert load_metric("teacher_agreement").compute(predictions=student, references=teacher) == {
        "teacher_agreement": pytest.approx(ref_agreement(student, teacher))
    }


def test_module_scripts_ship_as_package_data():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["hf_distill"]
    package_dir = REPO_ROOT / "hf_distill"
    for name in METRIC_NAMES:
        relative = metric_path(name).relative_to(package_dir).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative
        # data, not a subpackage: the directory must not turn into an importable package
        assert not (metric_path(name).parent / "__init__.py").exists()


def _copy_as_installed(destination: Path) -> None:
    """Lay the package out as a wheel would: package .py files plus the declared package data."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["hf_distill"]
    source = REPO_ROOT / "hf_distill"
    for path in source.rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(source)
        is_package_module = path.suffix == ".py" and (path.parent / "__init__.py").exists()
        if is_package_module or any(fnmatch.fnmatch(relative.as_posix(), p) for p in patterns):
            target = destination / "hf_distill" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())


@pytest.mark.slow
def test_fresh_interpreter_offline_from_installed_layout(tmp_path):
    site = tmp_path / "site"
    _copy_as_installed(site)
    script = textwrap.dedent(
        """
        import numpy as np
        import hf_distill
        from hf_distill.metrics import DistillationMetrics, METRIC_NAMES, load_metric
        from transformers import EvalPrediction
        assert hf_distill.__file__.startswith({site!r}), hf_distill.__file__
        for name in METRIC_NAMES:
            load_metric(name)
        s = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
        out = DistillationMetrics()(EvalPrediction(predictions=(s, s), label_ids=np.array([0, 0])))
        assert out == {{"accuracy": 0.5, "teacher_accuracy": 0.5, "teacher_agreement": 1.0, "kl_to_teacher": 0.0}}, out
        print("OK")
        """
    ).format(site=str(site))
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("OK")
