"""Loading by Hub id goes through the real Hub code paths: tested on a Hub cache laid out on disk, offline."""

from __future__ import annotations

import shutil

import pytest
import torch

from hf_distill import DistillationTrainer
from hf_distill.hub import align_labels, load_model, resolve_source

from .conftest import DIGIT_NAMES, make_args, save_in_hub_layout, tiny_hf_resnet, tiny_timm

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache directory: `publish(dir, repo_id)` makes `repo_id` resolvable offline."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def publish(directory: str, repo_id: str) -> str:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(directory, repo / "snapshots" / COMMIT)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(COMMIT)
        return repo_id

    return publish


def test_timm_hub_id_loads_through_hf_hub(tmp_path, hub_cache):
    teacher = tiny_timm(seed=5)
    repo_id = hub_cache(save_in_hub_layout(teacher, tmp_path / "t"), "timm/test_resnet.digits")
    assert resolve_source(repo_id) == ("timm", "hub")
    loaded = load_model(repo_id, role="teacher")
    assert loaded.library == "timm" and loaded.label_names == DIGIT_NAMES
    x = torch.randn(2, 3, 32, 32)
    teacher.eval()
    torch.testing.assert_close(loaded.module.eval()(x), teacher(x))


def test_transformers_hub_id_loads_through_from_pretrained(tmp_path, hub_cache):
    model = tiny_hf_resnet(seed=6)
    repo_id = hub_cache(save_in_hub_layout(model, tmp_path / "m"), "someorg/tiny-resnet-digits")
    assert resolve_source(repo_id) == ("transformers", "hub")
    loaded = load_model(repo_id, role="teacher")
    assert loaded.library == "transformers" and loaded.label_names == DIGIT_NAMES
    assert loaded.preprocess.image_size == 32
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(loaded.module.eval()(pixel_values=x).logits, model(pixel_values=x).logits)


def test_trainer_with_hub_ids_for_student_and_teacher(tmp_path, digits, hub_cache):
    teacher_id = hub_cache(save_in_hub_layout(tiny_hf_resnet(seed=7), tmp_path / "t"), "org/teacher")
    student_id = hub_cache(
        save_in_hub_layout(tiny_timm(num_classes=5, label_names=list("abcde")), tmp_path / "s"),
        "timm/student.in5",
    )
    trainer = DistillationTrainer(
        model=student_id, teacher_model=teacher_id, args=make_args(tmp_path), train_dataset=digits["train"]
    )
    # The student's 5-class head was replaced by a fresh 10-class one named after the dataset.
    assert trainer.student.num_classes == 10
    assert trainer.student.pretrained_cfg["label_names"] == DIGIT_NAMES
    trainer.train()


def test_student_from_transformers_dir_gets_dataset_labels(tmp_path, digits, timm_teacher_dir):
    student_dir = save_in_hub_layout(
        tiny_hf_resnet(num_labels=3, label_names=["x", "y", "z"]), tmp_path / "s", ["x", "y", "z"]
    )
    trainer = DistillationTrainer(
        model=student_dir,
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path),
        train_dataset=digits["train"],
    )
    assert trainer.student.config.num_labels == 10
    assert trainer.student.config.id2label[9] == "9"


def test_unknown_sources_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="neither an existing local directory, a timm architecture name"):
        resolve_source("definitely_not_a_model")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_source(str(tmp_path / "missing" / "teacher"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        resolve_source(str(tmp_path / "empty"))


def test_align_labels_permutation_and_errors():
    index = align_labels(["b", "c", "a"], ["a", "b", "c"], 3)
    logits = torch.tensor([[1.0, 2.0, 3.0]])  # teacher order b, c, a
    assert logits.index_select(-1, index).tolist() == [[3.0, 1.0, 2.0]]
    assert align_labels(["a", "b"], ["a", "b"], 2) is None
    assert align_labels(None, ["a", "b"], 2) is None
    with pytest.raises(ValueError, match="names 2 classes in its config but outputs 3 logits"):
        align_labels(["a", "b"], ["a", "b"], 3)
    with pytest.raises(ValueError, match=r"teacher labels: \['a', 'x'\]"):
        align_labels(["a", "x"], ["a", "b"], 2)
