"""Resume equivalence: N steps straight == N/k steps + resume from the checkpoint, bit for bit on the CPU.

The comparison is generic: every tensor of every file in the final checkpoint (the trained module — the
student plus any auxiliary modules —, optimizer, scheduler, RNG states) and the trainer state's log history,
so whatever a method adds to the checkpoint is covered too.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import TrainerCallback

from hf_distill import DistillationTrainer
from hf_distill.trainer import AUXILIARY_WEIGHTS_NAME

from .conftest import make_args, save_in_hub_layout, tiny_timm


def _tensors(obj, prefix=""):
    """Flatten nested dicts/lists of a torch.load'ed object into {path: tensor-or-value}."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(_tensors(value, f"{prefix}/{key}"))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, value in enumerate(obj):
            out.update(_tensors(value, f"{prefix}/{i}"))
        return out
    return {prefix: obj}


def checkpoint_contents(directory: str) -> dict[str, object]:
    """Everything a checkpoint holds, as {file/path: tensor or plain value}; timing fields dropped."""
    out = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(".safetensors"):
            out.update(_tensors(load_file(path), name))
        elif name.endswith((".pt", ".pth", ".bin")):
            out.update(_tensors(torch.load(path, weights_only=False), name))
        elif name == "trainer_state.json":
            state = json.loads(open(path).read())
            out[name] = [
                {k: v for k, v in entry.items() if "runtime" not in k and "per_second" not in k}
                for entry in state["log_history"]
            ] + [state["global_step"], state["epoch"]]
        elif name.endswith(".json"):
            out[name] = json.loads(open(path).read())
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"{key} differs"
        elif isinstance(a[key], np.ndarray):  # NumPy's RNG state
            assert np.array_equal(a[key], b[key]), f"{key} differs"
        elif not (isinstance(a[key], float) and a[key] != a[key]):  # nan == nan for our purpose
            assert a[key] == b[key], f"{key}: {a[key]!r} != {b[key]!r}"


def _args(out, **overrides):  # noqa: D103
    # ic crops + random flips: augmentation randomness that a resume must reproduce; a cosine schedule with
    # warmup so the scheduler state matters; 96 samples / batch 16 = 6 steps per epoch.
    base = dict(
        crop="ic",
        hflip=0.5,
        teacher_input="same/ic",
        max_steps=8,
        save_strategy="steps",
        save_steps=2,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        weight_decay=0.01,
        dataloader_num_workers=0,
    )
    base.update(overrides)
    return make_args(out, **base)


class _Projector(nn.Module):
    """A trainable auxiliary module (its weights, optimizer state and checkpoint file must resume too)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(10, 10)

    def forward(self, student, teacher, batch):
        return self.linear(student.logits)


def _projector_term(student, teacher, batch):
    return (student.auxiliary["projector"].float() - teacher.logits.float()).pow(2).mean()


def _build(out, variant, teacher_dir, train):
    """'student': consistent inception crops + flips. 'auxiliary+cache': a fixed teacher view served from the
    teacher cache, random student crops + flips, and a trained auxiliary module."""
    if variant == "student":
        return DistillationTrainer(
            model="test_resnet", teacher_model=teacher_dir, args=_args(out), train_dataset=train
        )
    torch.manual_seed(0)
    args = _args(
        out,
        teacher_input="fix/cc",
        teacher_cache_dir=str(out / "teacher-cache"),
        loss_types=[_projector_term],
        loss_weights=[0.5],
    )
    return DistillationTrainer(
        model="test_resnet",
        teacher_model=teacher_dir,
        args=args,
        train_dataset=train,
        auxiliary_modules={"projector": _Projector()},
    )


@pytest.fixture(scope="module", params=["student", "auxiliary+cache"])
def straight_run(request, tmp_path_factory, digits):
    """8 steps without interruption, a checkpoint every 2 steps; shared by the resume tests."""
    root = tmp_path_factory.mktemp("straight")
    teacher_dir = save_in_hub_layout(tiny_timm(seed=1), root / "teacher")
    trainer = _build(root, request.param, teacher_dir, digits["train"])
    trainer.train()
    return trainer, teacher_dir, request.param


@pytest.mark.parametrize("resume_at", [4, 6], ids=["mid-epoch", "epoch-boundary"])
def test_resume_matches_straight_run(tmp_path, digits, straight_run, resume_at):
    straight, teacher_dir, variant = straight_run
    resumed = _build(tmp_path, variant, teacher_dir, digits["train"])
    before = {k: v.clone() for k, v in resumed.model.state_dict().items()}
    resumed.train(resume_from_checkpoint=os.path.join(straight.args.output_dir, f"checkpoint-{resume_at}"))
    assert any(not torch.equal(v, before[k]) for k, v in resumed.model.state_dict().items())

    # In memory: every tensor of the trained module (student + auxiliary modules), optimizer, scheduler.
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert_same(_tensors(straight.optimizer.state_dict()), _tensors(resumed.optimizer.state_dict()))
    assert straight.lr_scheduler.state_dict() == resumed.lr_scheduler.state_dict()
    assert resumed.data_collator.epoch == straight.data_collator.epoch == 1
    if variant == "auxiliary+cache":  # the variant really exercises the cache and an auxiliary module
        assert resumed.teacher_cache is not None
        assert AUXILIARY_WEIGHTS_NAME in os.listdir(os.path.join(resumed.args.output_dir, "checkpoint-8"))
    # On disk: every file of the final checkpoint (RNG states and trainer state included), whatever a method
    # stores there.
    assert_same(
        checkpoint_contents(os.path.join(straight.args.output_dir, "checkpoint-8")),
        checkpoint_contents(os.path.join(resumed.args.output_dir, "checkpoint-8")),
    )


def test_augmentation_depends_on_sample_and_epoch_not_batch_order(tmp_path, digits, timm_teacher_dir):
    """Trainer skips batches on a mid-epoch resume; a view must not depend on what came before it."""
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=_args(tmp_path),
        train_dataset=digits["train"],
    )
    rows = [trainer.train_dataset[i] for i in range(8)]
    collator = trainer.data_collator
    collator.set_epoch(1)
    forward = collator(rows)["pixel_values"]
    backward = collator(rows[::-1])["pixel_values"]
    alone = torch.stack([collator([row])["pixel_values"][0] for row in rows])
    assert torch.equal(forward, backward.flip(0)) and torch.equal(forward, alone)
    collator.set_epoch(2)
    assert not torch.equal(collator(rows)["pixel_values"], forward), "epochs must see new views"


class _StopAt(TrainerCallback):
    """Stop training once `step` optimizer steps are done (the checkpoint at that step is written first)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control
