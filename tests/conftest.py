"""Shared fixtures: a small slice of the embedded digits data and tiny teachers saved in Hub layout."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from concurrent.futures import Future  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import HfApi, RepoUrl  # noqa: E402

from hf_distill import DistillationConfig  # noqa: E402
from hf_distill.data import digits_dataset  # noqa: E402
from hf_distill.hub import PreprocessSpec, save_student  # noqa: E402

DIGIT_NAMES = [str(i) for i in range(10)]
SMALL = 32  # digits are 8x8; 32x32 keeps the tiny models fast
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"  # the commit the intercepted Hub reports


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


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """Intercepts huggingface_hub's repo creation and uploads: records each upload's repo and exact files
    (name -> bytes, read when the upload is made). ``hub.fail`` makes uploads raise; ``hub.publish(repo_id)``
    lays the last upload out as an offline Hub cache (``repo_type`` "model" or "dataset") so it loads by repo id."""
    import huggingface_hub.constants as constants

    class FakeHub:
        uploads: list[dict] = []
        created: list[str] = []
        created_types: list[str] = []
        fail: Exception | None = None

        def publish(self, repo_id: str, repo_type: str = "model") -> str:
            cache = tmp_path / "hub-cache"
            snapshot = cache / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT
            snapshot.mkdir(parents=True)
            for name, data in self.uploads[-1]["files"].items():
                (snapshot / name).write_bytes(data)
            (snapshot.parent.parent / "refs").mkdir()
            (snapshot.parent.parent / "refs" / "main").write_text(COMMIT)
            monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
            monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
            return repo_id

    fake = FakeHub()
    fake.uploads, fake.created, fake.created_types = [], [], []

    def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, repo_type=None, **kwargs):
        fake.created.append(repo_id)
        fake.created_types.append(repo_type or "model")
        full_id = repo_id if "/" in repo_id else f"someorg/{repo_id}"  # the Hub adds the token's namespace
        return RepoUrl(f"https://huggingface.co/{full_id}")

    def upload_folder(self, *, repo_id, folder_path, run_as_future=False, **kwargs):
        entries = list(Path(folder_path).iterdir())
        assert all(p.is_file() for p in entries), "uploads are flat: no checkpoint folders"
        fake.uploads.append(
            {"repo_id": repo_id, "files": {p.name: p.read_bytes() for p in entries}, **kwargs}
        )
        if fake.fail is not None:
            raise fake.fail
        result = f"https://huggingface.co/{repo_id}/commit/{COMMIT}"
        if run_as_future:
            future: Future = Future()
            future.set_result(result)
            return future
        return result

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # pushing needs the network; the check knows
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    return fake
