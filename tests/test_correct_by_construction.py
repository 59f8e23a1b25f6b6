"""The review's six cases, each computed as configured or refused, checked against the formulas.

1. fix/* with a feature term: refused with the cache (it holds no features); without it, the live teacher
   runs on the fixed view and its features come from that same forward.
2. fix/ic_ens at evaluation: the teacher reads its own resolution's central view.
3. TL-mix's x' uses the configured KD (logit standardisation included), and pick scores what the KD reads.
4. Standardisation on sources that keep only probabilities: refused.
5. Unlabelled data: x' gets the same KD weight as x (1, not alpha).
6. A held student (SLKD's SL-T phase) gets no gradient from x' either.
Plus: the one batch schema, the one mixed-label CE, no import cycle and no package import inside functions.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hf_distill import DistillationTrainer
from hf_distill.augment import teacher_labelled_loss
from hf_distill.batch import SCHEMA, check_batch, mixed_cross_entropy, schema_entry
from hf_distill.losses import kd_loss, kd_loss_standardized, standardize_logits
from hf_distill.mixing import select_by_criterion

from .conftest import make_args, tiny_timm

PACKAGE = Path(__file__).resolve().parents[1] / "hf_distill"


def rows(data, n):
    return [data[i] | {"sample_id": i} for i in range(n)]


def tl_trainer(tmp_path, data, teacher_dir, **overrides):
    args = make_args(
        tmp_path, augmentation_mode="tlcutmix", cutmix_alpha=1.0, alpha=0.3, temperature=2.0, **overrides
    )
    return DistillationTrainer(
        model=tiny_timm(seed=0), teacher_model=teacher_dir, args=args, train_dataset=data
    )


def test_case_1_fixed_view_features_refused_with_the_cache_and_live_without(
    tmp_path, digits, timm_teacher_dir
):
    features = dict(
        loss_types=["at"], loss_weights=[1.0], student_feature_layers=["-1"], teacher_feature_layers=["-1"]
    )
    args = make_args(tmp_path, teacher_input="fix/cc", use_teacher_cache=True, **features)
    with pytest.raises(ValueError, match=r"fix/cc.*holds no teacher features; set use_teacher_cache=false"):
        DistillationTrainer(
            model=tiny_timm(), teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
        )
    args = make_args(
        tmp_path, teacher_input="fix/cc", use_teacher_cache=False, teacher_image_size=40, **features
    )
    trainer = DistillationTrainer(
        model=tiny_timm(), teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    batch = trainer._prepare_inputs(trainer.data_collator(rows(digits["train"], 4)))
    trainer.model.train()
    teacher = trainer.teacher_outputs(batch)
    # the features are the teacher's on its fixed central-crop view, not on the student's random crop
    logits, expected = trainer.teacher.forward_with_features(
        batch["teacher_pixel_values"], trainer.feature_taps.teacher
    )
    torch.testing.assert_close(teacher.logits, logits)
    for key in expected:
        torch.testing.assert_close(teacher.features[key], expected[key])
    assert batch["teacher_pixel_values"].shape[-1] == 40


def test_case_2_ic_ens_evaluation_reads_the_teacher_resolution(tmp_path, digits, timm_teacher_dir):
    args = make_args(
        tmp_path,
        teacher_input="fix/ic_ens",
        ic_ens_crops=2,
        teacher_image_size=48,
        crop="ic",
        teacher_cache_dir=str(tmp_path / "cache"),
    )
    trainer = DistillationTrainer(
        model=tiny_timm(),
        teacher_model=timm_teacher_dir,
        args=args,
        train_dataset=digits["train"].select(range(16)),
        eval_dataset=digits["test"],
    )
    batch = trainer.eval_collator(rows(digits["test"], 4))
    assert batch["teacher_pixel_values"].shape[-1] == 48
    seen = []
    trainer.teacher.normalizer.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1]))
    trainer.evaluate()
    assert seen and set(seen) == {48}


def _x_prime_logits(trainer, batch):
    views = {
        k[3:]: v for k, v in batch.items() if k.startswith("tl_") and k[3:].startswith(("pixel", "teacher"))
    }
    with torch.no_grad():
        teacher = trainer.teacher(views.get("teacher_pixel_values", views["pixel_values"]))
    student = trainer.student_logits(trainer.model, batch["tl_pixel_values"])
    return student, teacher


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("labelled", [True, False])
def test_cases_3_and_5_x_prime_uses_the_configured_kd_and_weight(
    tmp_path, digits, timm_teacher_dir, standardize, labelled
):
    data = digits["train"] if labelled else digits["train"].remove_columns("label")
    trainer = DistillationTrainer(
        model=tiny_timm(seed=0),
        teacher_model=timm_teacher_dir,
        args=make_args(
            tmp_path,
            augmentation_mode="tlcutmix",
            cutmix_alpha=1.0,
            alpha=0.3,
            temperature=2.0,
            logit_standardization=standardize,
        ),
        train_dataset=data,
        eval_dataset=digits["test"],
    )
    batch = trainer._prepare_inputs(trainer.data_collator(rows(data, 8)))
    trainer.model.eval()  # deterministic forwards for the reference
    loss, terms = teacher_labelled_loss(trainer, trainer.model, batch)
    student, teacher = _x_prime_logits(trainer, batch)
    kd = kd_loss_standardized if standardize else kd_loss
    torch.testing.assert_close(terms["kd_aug"], kd(student, teacher, 2.0))
    weight = 0.3 if labelled else 1.0  # the KD weight of x: alpha, or 1 without labels
    torch.testing.assert_close(loss, weight * terms["kd_aug"])


def test_case_3_pick_scores_the_standardised_logits(tmp_path, digits, timm_teacher_dir):
    trainer = tl_trainer(tmp_path, digits["train"], timm_teacher_dir, logit_standardization=True, pick=True)
    batch = trainer._prepare_inputs(trainer.data_collator(rows(digits["train"], 8)))
    trainer.model.eval()
    student, teacher = _x_prime_logits(trainer, batch)
    keep = int(batch["tl_keep"])
    picked = select_by_criterion(
        standardize_logits(student), standardize_logits(teacher), keep, "kl", temperature=2.0
    )
    _, terms = teacher_labelled_loss(trainer, trainer.model, batch)
    reference = kd_loss_standardized(student[picked], teacher[picked], 2.0)
    torch.testing.assert_close(terms["kd_aug"], reference)


def test_case_4_standardisation_on_probabilities_only_is_refused(tmp_path, digits, timm_teacher_dir):
    args = make_args(tmp_path, teacher_input="fix/cc", teacher_cache_topk=3, logit_standardization=True)
    with pytest.raises(
        ValueError, match=r"standardises the teacher's logits, but the fixed-teacher cache .*top"
    ):
        DistillationTrainer(
            model=tiny_timm(), teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
        )


def test_case_6_held_student_gets_no_gradient_from_x_prime(tmp_path, digits, timm_teacher_dir):
    trainer = tl_trainer(
        tmp_path,
        digits["train"],
        timm_teacher_dir,
        slkd_num_teachers=1,
        slkd_mode="alternating",
        slkd_phase_steps=1,
    )
    trainer.model.train()
    batch = trainer._prepare_inputs(trainer.data_collator(rows(digits["train"], 8)))
    assert trainer.auxiliary_module("slkd").phase == "slt"  # step 0: the SL-Ts learn, the student is held
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in trainer.student.parameters())
    slt = trainer.auxiliary_module("slkd")
    assert any(p.grad is not None and p.grad.any() for p in slt.parameters())


def test_every_collator_output_follows_the_schema(tmp_path, digits, timm_teacher_dir):
    for overrides in (
        {"teacher_input": "funmatch", "mixup_alpha": 1.0, "teacher_image_size": 40},
        {"augmentation_mode": "tlcutmix", "cutmix_alpha": 1.0, "pick": True, "teacher_image_size": 40},
        {"augmentation_mode": "mixup", "mixup_alpha": 1.0},
    ):
        args = make_args(tmp_path, crop="ic", **overrides)
        trainer = DistillationTrainer(
            model=tiny_timm(), teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
        )
        for collator in (trainer.data_collator, trainer.eval_collator):
            check_batch(collator(rows(digits["train"], 4)))
    with pytest.raises(ValueError, match="not declared"):
        check_batch({"pixel_valuez": torch.zeros(1)})
    assert schema_entry("teacher_pixel_values_384").prefix and all(e.written_by for e in SCHEMA)


def test_one_mixed_label_cross_entropy():
    logits, labels = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    perm, lam = torch.tensor([1, 0, 3, 2]), torch.tensor([0.7, 0.7, 0.2, 0.2])
    reference = (
        lam * F.cross_entropy(logits, labels, reduction="none")
        + (1 - lam) * F.cross_entropy(logits, labels[perm], reduction="none")
    ).mean()
    torch.testing.assert_close(
        mixed_cross_entropy(logits, {"labels": labels, "mix_perm": perm, "mix_lam": lam}), reference
    )
    partners = labels[perm]
    batch = {"labels": labels, "mix_lam": lam, "mix_partner_labels": partners}
    torch.testing.assert_close(mixed_cross_entropy(logits, batch), reference)
    torch.testing.assert_close(
        mixed_cross_entropy(logits, {"labels": labels}), F.cross_entropy(logits, labels)
    )
    # every copy is gone: the methods import this one
    sources = {p.name: p.read_text() for p in PACKAGE.glob("*.py")}
    assert [name for name, text in sources.items() if "labels[perm]" in text] == ["batch.py"]


def _module_imports(path: Path):
    tree = ast.parse(path.read_text())
    top, inner = set(), []
    body = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module.split(".")[0]] if node.module else [alias.name for alias in node.names]
            for name in names:
                (top.add(name) if id(node) in body else inner.append((path.name, node.lineno, name)))
    return top, inner


def test_no_import_cycle_and_no_package_import_inside_functions():
    graph, inner = {}, []
    for path in PACKAGE.glob("*.py"):
        top, found = _module_imports(path)
        graph[path.stem] = top - {"__init__"}
        inner.extend(found)
    assert inner == [], f"package imports inside functions: {inner}"

    def reaches(start, target, seen):
        for dep in graph.get(start, ()):
            if dep == target or (dep not in seen and (seen.add(dep) or reaches(dep, target, seen))):
                return True
        return False

    cycles = [name for name in graph if reaches(name, name, set())]
    assert cycles == [], f"modules on an import cycle: {cycles}"
    assert graph["config"] == set(), "config.py imports no other module of the package"


def test_trainer_names_no_method():
    text = (PACKAGE / "trainer.py").read_text().lower()
    words = (
        "deit",
        "slkd",
        "label_bank",
        "label bank",
        "teacher_cache",
        "tlmix",
        "tl_",
        "pick",
        "dml",
        "peers?",
        "fitnet",
        "crd",
        "vid",
        "mixup",
        "cutmix",
        "sl-ts?",
        "self-learning",
    )
    for word in words:
        assert not re.search(rf"\b{word}\b", text), f"trainer.py names {word!r}"
