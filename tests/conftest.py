"""Shared fixtures: a small slice of the embedded digits data and tiny teachers saved in Hub layout."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

from hf_distill import DistillationConfig  # noqa: E402
from hf_distill.data import digits_dataset  # noqa: E402
from hf_distill.hub import PreprocessSpec, save_student  # noqa: E402

DIGIT_NAMES = [str(i) for i in range(10)]
SMALL = 32  # digits are 8x8; 32x32 keeps the tiny models fast


@pytest.fixture(scope="session")
def digits():
    """96 training and 48 evaluation digits: enough for a few steps, fast on a CPU."""
    ds = digits_dataset(seed=0, test_size=0.3)
    return {"train": ds["train"].select(range(96)), "test": ds["test"].select(range(48))}


def tiny_timm(name: str = "test_resnet", num_classes: int = 10, seed: int = 0, label_names=DIGIT_NAMES):
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=num_classes)
    if label_names is not None:
        model.pretrained_cfg = dict(model.pretrained_cfg, label_names=list(label_names))
    return model


def tiny_hf_resnet(num_labels: int = 10, label_names=DIGIT_NAMES, seed: int = 0):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    id2label = dict(enumerate(label_names)) if label_names else None
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=num_labels,
        **({"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}),
    )
    return ResNetForImageClassification(config)


def save_in_hub_layout(model, directory, label_names=DIGIT_NAMES, size: int = SMALL):
    save_student(model, directory, label_names=list(label_names), preprocess=PreprocessSpec(image_size=size))
    return str(directory)


@pytest.fixture
def timm_teacher_dir(tmp_path):
    return save_in_hub_layout(tiny_timm(seed=1), tmp_path / "timm-teacher")


@pytest.fixture
def hf_teacher_dir(tmp_path):
    return save_in_hub_layout(tiny_hf_resnet(seed=2), tmp_path / "hf-teacher")


def make_args(tmp_path, **overrides):
    base = dict(
        output_dir=str(tmp_path / "out"),
        image_size=SMALL,
        teacher_image_size=SMALL,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=48,
        learning_rate=1e-2,
        max_steps=3,
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        crop="rs",
        hflip=0.0,
        seed=0,
        disable_tqdm=True,
    )
    base.update(overrides)
    return DistillationConfig(**base)
