"""FitNets' two-stage training (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

The ``fitnet`` loss term alone trains the hint jointly with the rest of the loss (one stage, as the public
code of RepDistiller and mdistiller does). The paper trains in two stages, which :func:`run_fitnet_two_stage`
runs as two :class:`~hf_distill.DistillationTrainer` runs (as :func:`hf_distill.online.run_takd` chains its
stages):

1. **Hint training.** The loss is the hint loss alone (the ``fitnet`` term with its regressor: no CE, no
   KD, no other term). Only the student's layers up to the guided layer(s) and the regressor learn: every
   student parameter that the guided features do not depend on (found by differentiating the tapped
   features) gets ``requires_grad=False``, so the Trainer's optimizer leaves it out, and the running
   statistics of those layers' normalisation modules are put back after the stage, so the part above the
   guided layer leaves stage 1 exactly as it entered it.
2. **Knowledge distillation** of the whole student, every parameter trainable again, starting from the
   stage-1 weights: the config's ``(1 - alpha) * CE + alpha * KD`` plus its other ``loss_types`` (the
   ``fitnet`` term and its regressor are dropped).

The guided / hint layer pairs, the regressor (``loss_kwargs: {fitnet: {regressor: conv}}``, the paper's
convolutional regressor, or ``1x1``) and the ``pairs`` to use come from the config's ``fitnet`` entry.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import Tensor, nn

from .config import DistillationConfig
from .losses import ModelOutputs
from .trainer import DistillationTrainer

FITNET = "fitnet"
HINT_STAGE_DIR = "fitnet_hint"


def _hint_trainer_class():
    class HintTrainer(DistillationTrainer):
        """Stage 1 of FitNets: the loss is the hint term alone."""

        def distillation_loss(
            self, student: ModelOutputs, teacher: ModelOutputs, inputs: dict[str, Tensor]
        ) -> tuple[Tensor, dict[str, Tensor]]:
            ((_, fn, _, params),) = [term for term in self.extra_terms if term[0] == FITNET]
            value = fn(student, teacher, inputs, **params).float()
            return value, {FITNET: value}

    return HintTrainer


def fitnet_stage_configs(
    args: DistillationConfig,
    hint_num_train_epochs: float | None = None,
    hint_max_steps: int | None = None,
) -> tuple[DistillationConfig, DistillationConfig]:
    """The two stages' configs: stage 1 (hint training into ``<output_dir>/fitnet_hint``: the ``fitnet`` term
    only, ``hint_num_train_epochs`` / ``hint_max_steps`` when given, no teacher-labelled mixes) and stage 2
    (the config without its ``fitnet`` term, into ``output_dir``)."""
    names = [name if isinstance(name, str) else getattr(name, "__name__", "") for name in args.loss_types]
    if FITNET not in names:
        raise ValueError(
            "run_fitnet_two_stage: DistillationConfig.loss_types has no 'fitnet' term; add it (with "
            "student_feature_layers / teacher_feature_layers naming the guided and hint layers)"
        )
    fitnet_kwargs = dict(args.loss_kwargs.get(FITNET, {}))
    hint_fields: dict[str, Any] = dict(
        loss_types=[FITNET],
        loss_weights=[1.0],
        loss_kwargs={FITNET: fitnet_kwargs},
        output_dir=os.path.join(args.output_dir, HINT_STAGE_DIR),
    )
    if hint_num_train_epochs is not None:
        hint_fields["num_train_epochs"] = hint_num_train_epochs
    if hint_max_steps is not None:
        hint_fields["max_steps"] = hint_max_steps
    if str(args.augmentation_mode).startswith("tl"):  # teacher-labelled mixes would add KD terms to stage 1
        hint_fields.update(augmentation_mode="none", pick=False)
    hint = dataclasses.replace(args, **hint_fields)

    kept = [(t, w) for t, n, w in zip(args.loss_types, names, args.loss_weights) if n != FITNET]
    kd_kwargs = {k: v for k, v in args.loss_kwargs.items() if k != FITNET}
    kd = dataclasses.replace(
        args,
        loss_types=[t for t, _ in kept],
        loss_weights=[w for _, w in kept],
        loss_kwargs=kd_kwargs,
    )
    return hint, kd


def guided_parameter_names(trainer: Any) -> set[str]:
    """Names of the student parameters that the ``fitnet`` term's guided (student) features depend on: the
    layers up to the guided layer(s). Found by differentiating the tapped features of one random batch."""
    taps = trainer.feature_taps
    projectors = trainer.auxiliary_module(FITNET).projectors
    student = trainer.student
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    param = named[0][1] if named else None
    size = trainer.student_preprocess.image_size
    was_training = student.training
    student.eval()
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, size, size, generator=generator)
        if param is not None:
            x = x.to(device=param.device, dtype=param.dtype)
        with torch.enable_grad():
            _, features = taps.student(student, x, **trainer._student_kwargs)
            values = list(features.values())
            guided = torch.stack([values[int(i)].float().sum() for i in projectors]).sum()
            grads = torch.autograd.grad(guided, [p for _, p in named], allow_unused=True)
    finally:
        student.train(was_training)
    return {n for (n, _), g in zip(named, grads) if g is not None}


def _freeze_above(student: nn.Module, lower: set[str]) -> tuple[list[nn.Parameter], dict[str, Tensor]]:
    """Freeze every trainable parameter not in ``lower``; returns them and a copy of the buffers (running
    statistics) of the modules whose own parameters are all frozen, to restore after stage 1."""
    frozen = [p for n, p in student.named_parameters() if p.requires_grad and n not in lower]
    for p in frozen:
        p.requires_grad_(False)
    frozen_ids = {id(p) for p in frozen}
    buffers: dict[str, Tensor] = {}
    for module_name, module in student.named_modules():
        own = list(module.parameters(recurse=False))
        if own and all(id(p) in frozen_ids for p in own):
            for buffer_name, buffer in module.named_buffers(recurse=False):
                key = f"{module_name}.{buffer_name}" if module_name else buffer_name
                buffers[key] = buffer.detach().clone()
    return frozen, buffers


@torch.no_grad()
def _restore_buffers(student: nn.Module, saved: dict[str, Tensor]) -> None:
    current = dict(student.named_buffers())
    for key, value in saved.items():
        current[key].copy_(value)


def run_fitnet_two_stage(
    args: DistillationConfig,
    train_dataset: Any,
    eval_dataset: Any = None,
    model: nn.Module | str | None = None,
    hint_num_train_epochs: float | None = None,
    hint_max_steps: int | None = None,
    **trainer_kwargs: Any,
) -> dict[str, dict]:
    """FitNets' two stages (module docstring): hint training of the student's lower layers and the
    regressor, then KD of the whole student from the stage-1 weights. ``model`` is the student (default
    ``args.student_model_name_or_path``); ``trainer_kwargs`` go to both trainers (e.g. ``teacher_model``,
    ``callbacks``). The hint stage writes its student to ``<output_dir>/fitnet_hint``, the final student goes
    to ``output_dir``. Returns the evaluation metrics of each stage (``hint``, ``student``; empty without
    ``eval_dataset``), each with its ``output_dir``."""
    hint_args, kd_args = fitnet_stage_configs(args, hint_num_train_epochs, hint_max_steps)
    hint_trainer = _hint_trainer_class()(
        model=model, args=hint_args, train_dataset=train_dataset, eval_dataset=eval_dataset, **trainer_kwargs
    )
    student = hint_trainer.student
    frozen, saved_buffers = _freeze_above(student, guided_parameter_names(hint_trainer))
    if not any(p.requires_grad for p in student.parameters()):
        raise ValueError(
            "run_fitnet_two_stage: no student parameter feeds the guided layer; check student_feature_layers"
        )
    try:
        hint_trainer.train()
    finally:
        _restore_buffers(student, saved_buffers)
        for p in frozen:
            p.requires_grad_(True)
    results: dict[str, dict] = {"hint": hint_trainer.evaluate() if eval_dataset is not None else {}}
    hint_trainer.save_model()
    hint_trainer.accelerator.wait_for_everyone()
    results["hint"]["output_dir"] = hint_args.output_dir
    for tap in (hint_trainer.feature_taps.student, hint_trainer.feature_taps.teacher):
        tap.remove()
    student = hint_trainer.student
    del hint_trainer

    kd_trainer = DistillationTrainer(
        model=student, args=kd_args, train_dataset=train_dataset, eval_dataset=eval_dataset, **trainer_kwargs
    )
    kd_trainer.train()
    results["student"] = kd_trainer.evaluate() if eval_dataset is not None else {}
    kd_trainer.save_model()
    kd_trainer.accelerator.wait_for_everyone()
    results["student"]["output_dir"] = kd_args.output_dir
    return results
