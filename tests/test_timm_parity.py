"""Parity with timm's own distillation tasks (``timm.task``): on the same weights and inputs, the losses
``DistillationTrainer`` computes equal ``LogitDistillationTask``, ``FeatureDistillationTask`` and
``TokenDistillationTask``.

Conventions that differ, and how each test maps them:

* weighting: timm has independent weights ``task_w * CE + distill_w * KD`` (``distill_loss_weight``
  given), complementary ``task_w * CE + (1 - task_w) * KD`` (only ``task_loss_weight``) or, with
  neither, ``CE + KD``. Ours is complementary, ``(1 - alpha) * CE + alpha * KD``; independent weights are
  ``alpha=0`` plus the term in ``loss_types`` with its weight in ``loss_weights``;
* reduction: both take the KL summed over classes and averaged over the batch (timm's
  ``reduction='batchmean'``), times ``tau^2``; MSE on features is a mean over all elements in both;
* teacher input: timm receives student-normalised pixels and re-normalises them for the teacher
  (``x * std_s + mean_s - mean_t) / std_t``), always at the student's resolution; we normalise the
  uint8 pixels for each model on the device and may give the teacher its own view and resolution. The
  tests give both the same view, so they agree up to float rounding;
* timm's default criterion (``create_classification_loss()``) is built from its own flags; the tests pass
  ``nn.CrossEntropyLoss()`` to timm, which is our CE with ``label_smoothing_factor=0``.
"""

from __future__ import annotations

import pytest
import torch
from timm.task import FeatureDistillationTask, LogitDistillationTask, TokenDistillationTask
from torch import nn

from hf_distill import DistillationTrainer

from .conftest import make_args
from .test_deit import TINY_DEIT_KWARGS

ATOL = 2e-5


def same_view_batch(trainer, digits, n=16):
    """A collated batch whose teacher view is the student's view (timm's tasks have one input)."""
    batch = trainer.data_collator([digits["train"][i] | {"sample_id": i} for i in range(n)])
    batch["teacher_pixel_values"] = batch["pixel_values"]
    return batch


def ours_and_timm(trainer, task, batch, model=None):
    """Our training loss and timm's ``task(input, target)`` on the same batch, without gradients."""
    model = model if model is not None else trainer.model
    model.train()
    task.train()
    with torch.no_grad():
        ours = trainer.compute_loss(model, batch)
        timm_out = task(trainer.student_normalizer(batch["pixel_values"]), batch["labels"])
    return ours, timm_out


def test_student_and_teacher_normalisations_differ(tmp_path, digits, timm_teacher_dir):
    """The fixtures exercise timm's re-normalisation: student and teacher use different mean/std."""
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path),
        train_dataset=digits["train"],
    )
    assert trainer.student_preprocess.mean != trainer.teacher.preprocess.mean


@pytest.mark.parametrize("alpha,temperature", [(0.7, 4.0), (0.25, 1.0), (1.0, 2.0)])
def test_logit_distillation_complementary_weights(tmp_path, digits, timm_teacher_dir, alpha, temperature):
    args = make_args(tmp_path, alpha=alpha, temperature=temperature)
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    task = LogitDistillationTask(
        trainer.model,
        trainer.teacher.module,
        criterion=nn.CrossEntropyLoss(),
        task_loss_weight=1.0 - alpha,
        temperature=temperature,
        verbose=False,
    )
    batch = same_view_batch(trainer, digits)
    ours, theirs = ours_and_timm(trainer, task, batch)
    assert torch.allclose(ours, theirs["loss"], atol=ATOL)
    # The KD term alone, as each library logs it.
    with torch.no_grad():
        teacher = trainer.teacher_outputs(batch)
        student = trainer.student_outputs(trainer.model, batch, teacher)
        _, terms = trainer.distillation_loss(student, teacher, batch)
    assert torch.allclose(terms["kd"], theirs["kd_loss"], atol=ATOL)


@pytest.mark.parametrize("distill_weight", [0.5, 3.0])
def test_logit_distillation_independent_weights(tmp_path, digits, timm_teacher_dir, distill_weight):
    # timm: CE + w * KD. Ours: alpha=0 (CE alone) plus the 'kd' term with weight w.
    args = make_args(tmp_path, alpha=0.0, temperature=3.0, loss_types=["kd"], loss_weights=[distill_weight])
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    task = LogitDistillationTask(
        trainer.model,
        trainer.teacher.module,
        criterion=nn.CrossEntropyLoss(),
        distill_loss_weight=distill_weight,
        temperature=3.0,
        verbose=False,
    )
    ours, theirs = ours_and_timm(trainer, task, same_view_batch(trainer, digits))
    assert torch.allclose(ours, theirs["loss"], atol=ATOL)


@pytest.mark.parametrize(
    "student_name,teacher_name", [("test_vit", "test_resnet"), ("test_resnet", "test_vit")]
)
def test_feature_distillation_between_unlike_architectures(tmp_path, digits, student_name, teacher_name):
    """Pooled pre-logits features, CNN teacher -> ViT student and the reverse, widths differ (64 vs 96) so
    both sides learn a linear projection; ours gets timm's projection weights."""
    from .conftest import save_in_hub_layout, tiny_timm

    teacher_dir = save_in_hub_layout(tiny_timm(teacher_name, seed=3), tmp_path / "teacher")
    args = make_args(
        tmp_path,
        alpha=0.0,
        loss_types=["fitnet"],
        loss_weights=[2.0],
        student_feature_layers=["pre_logits"],
        teacher_feature_layers=["pre_logits"],
        feature_layout="vector",
    )
    trainer = DistillationTrainer(
        model=student_name, teacher_model=teacher_dir, args=args, train_dataset=digits["train"]
    )
    task = FeatureDistillationTask(
        trainer.student,
        trainer.teacher.module,
        criterion=nn.CrossEntropyLoss(),
        distill_loss_weight=2.0,
        task_loss_weight=1.0,
        verbose=False,
    )
    timm_projection = task.trainable_module.projection
    assert timm_projection is not None  # widths differ
    ours_projection = trainer.auxiliary_module("fitnet").projectors["0"].proj
    assert isinstance(ours_projection, nn.Linear)
    ours_projection.load_state_dict(timm_projection.state_dict())
    ours, theirs = ours_and_timm(trainer, task, same_view_batch(trainer, digits))
    assert torch.allclose(ours, theirs["loss"], atol=ATOL)


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("alpha", [0.5, 0.9])
def test_token_distillation(tmp_path, digits, timm_teacher_dir, mode, alpha):
    args = make_args(
        tmp_path,
        student_model_name_or_path="deit_tiny_distilled_patch16_224",
        student_model_kwargs=TINY_DEIT_KWARGS,
        deit_distillation=mode,
        alpha=alpha,
        temperature=3.0,
    )
    trainer = DistillationTrainer(teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"])
    task = TokenDistillationTask(
        trainer.model,
        trainer.teacher.module,
        criterion=nn.CrossEntropyLoss(),
        distill_type=mode,
        task_loss_weight=1.0 - alpha,
        temperature=3.0,
        verbose=False,
    )
    batch = same_view_batch(trainer, digits)
    ours, theirs = ours_and_timm(trainer, task, batch)
    assert torch.allclose(ours, theirs["loss"], atol=ATOL)
    with torch.no_grad():
        teacher = trainer.teacher_outputs(batch)
        _, terms = trainer.distillation_loss(
            trainer.student_outputs(trainer.model, batch, teacher), teacher, batch
        )
    assert torch.allclose(terms[f"deit_{mode}"], theirs["distill_loss"], atol=ATOL)
    assert torch.allclose(terms["ce"], theirs["task_loss"], atol=ATOL)
