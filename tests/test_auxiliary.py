"""Trainable auxiliary modules live inside Trainer.model: trained, checkpointed, resumed, never saved with the student."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from hf_distill import DistillationTrainer
from hf_distill.trainer import AUXILIARY_WEIGHTS_NAME, DistillationModule

from .conftest import make_args


class LogitProjector(nn.Module):
    """A toy auxiliary module: maps student logits towards the teacher's."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(10, 10)

    def forward(self, student, teacher, batch):
        return self.linear(student.logits)


def projector_term(student, teacher, batch):
    return (student.auxiliary["projector"].float() - teacher.logits.float()).pow(2).mean()


def build(tmp_path, digits, teacher_dir, **overrides):
    torch.manual_seed(0)
    args = make_args(tmp_path, loss_types=[projector_term], loss_weights=[1.0], **overrides)
    return DistillationTrainer(
        model="test_resnet",
        teacher_model=teacher_dir,
        args=args,
        train_dataset=digits["train"],
        auxiliary_modules={"projector": LogitProjector()},
    )


def test_auxiliary_modules_train_and_stay_out_of_the_saved_student(tmp_path, digits, timm_teacher_dir):
    trainer = build(tmp_path, digits, timm_teacher_dir)
    assert isinstance(trainer.model, DistillationModule)
    before = trainer.auxiliary_module("projector").linear.weight.detach().clone()
    optimized = {id(p) for group in trainer.create_optimizer().param_groups for p in group["params"]}
    assert {id(p) for p in trainer.auxiliary_module("projector").parameters()} <= optimized
    trainer.train()
    assert not torch.equal(before, trainer.auxiliary_module("projector").linear.weight)
    trainer.save_model()
    saved = load_file(os.path.join(trainer.args.output_dir, "model.safetensors"))
    assert set(saved) == set(trainer.student.state_dict())
    assert not os.path.exists(os.path.join(trainer.args.output_dir, AUXILIARY_WEIGHTS_NAME))


def test_resume_restores_auxiliary_modules_exactly(tmp_path, digits, timm_teacher_dir):
    straight = build(tmp_path / "a", digits, timm_teacher_dir, max_steps=4)
    straight.train()

    first = build(tmp_path / "b", digits, timm_teacher_dir, max_steps=4, save_strategy="steps", save_steps=2)
    first.train()
    checkpoint = os.path.join(first.args.output_dir, "checkpoint-2")
    assert os.path.isfile(os.path.join(checkpoint, AUXILIARY_WEIGHTS_NAME))
    resumed = build(
        tmp_path / "b", digits, timm_teacher_dir, max_steps=4, save_strategy="steps", save_steps=2
    )
    resumed.train(resume_from_checkpoint=checkpoint)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_checkpoint_without_auxiliary_file_is_refused(tmp_path, digits, timm_teacher_dir):
    trainer = build(tmp_path, digits, timm_teacher_dir, max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    checkpoint = os.path.join(trainer.args.output_dir, "checkpoint-2")
    os.remove(os.path.join(checkpoint, AUXILIARY_WEIGHTS_NAME))
    with pytest.raises(ValueError, match="has no auxiliary.safetensors"):
        build(tmp_path, digits, timm_teacher_dir, max_steps=4).train(resume_from_checkpoint=checkpoint)
