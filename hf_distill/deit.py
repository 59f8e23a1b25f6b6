"""DeiT-style token distillation (Touvron et al., ICML 2021, "Training data-efficient image transformers").

A DeiT student carries two heads: the class token's head, trained on the labels, and the
distillation token's head, trained on the teacher. With ``DistillationConfig.deit_distillation``:

* ``"soft"``: ``loss = (1 - alpha) * CE(cls, y) + alpha * tau^2 * KL(softmax(t/tau) || softmax(dist/tau))``
* ``"hard"``: ``loss = (1 - alpha) * CE(cls, y) + alpha * CE(dist, argmax t)`` (the paper's hard-label
  distillation is ``alpha = 0.5``)

Supported students: timm ``deit_*_distilled_*`` (``VisionTransformerDistilled``; its
``set_distilled_training(True)`` makes the training forward return ``(cls_logits, dist_logits)``) and
transformers ``DeiTForImageClassificationWithTeacher`` (returns ``cls_logits`` and
``distillation_logits`` in every mode). At evaluation and inference both models predict the average
of the two heads; :func:`deit_student_outputs` puts that average in ``ModelOutputs.logits``, so metrics,
extra ``loss_types`` terms and the saved student all see what the model predicts at inference.

Saving needs nothing special: timm writes ``model_args`` (patch size, depth …) into ``config.json``, so
``timm.create_model("local-dir:…")`` and transformers' ``TimmWrapper`` rebuild the architecture; a
``DeiTForImageClassificationWithTeacher`` is saved as such, and ``AutoModelForImageClassification`` and
``pipeline("image-classification")`` load it (its ``logits`` output is the two-head average).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DeiTForImageClassificationWithTeacher

from .contract import TEACHER_LOGITS, TEACHER_PROBABILITIES, Needs
from .losses import LOSSES, ModelOutputs, kd_loss
from .method import Build, Method

DEIT_MODES = ("none", "soft", "hard")
# Key of ModelOutputs.auxiliary under which the two heads travel from the forward to the loss.
DEIT_HEADS = "deit_heads"


@dataclass
class DeiTHeads:
    """The two logits of a DeiT student for one batch."""

    cls_logits: Tensor
    distillation_logits: Tensor

    @property
    def average(self) -> Tensor:
        """What the model predicts at inference: the mean of both heads."""
        return (self.cls_logits + self.distillation_logits) / 2


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def has_distillation_head(model: nn.Module, library: str) -> bool:
    """Whether ``model`` is a student with a distillation token (timm distilled DeiT, transformers
    ``DeiTForImageClassificationWithTeacher``)."""
    model = _unwrap(model)
    if library == "timm":
        return hasattr(model, "set_distilled_training") and hasattr(model, "head_dist")
    if library == "transformers":
        return isinstance(model, DeiTForImageClassificationWithTeacher)
    return False


def prepare_deit_student(model: nn.Module, library: str, mode: str) -> None:
    """Check that ``model`` can be trained with ``deit_distillation=mode`` and switch timm students to
    distilled training. Raises ``ValueError`` naming the config field otherwise."""
    if mode not in DEIT_MODES:
        raise ValueError(
            f"DistillationConfig.deit_distillation: must be one of {list(DEIT_MODES)}, got {mode!r}"
        )
    if mode == "none":
        return
    if not has_distillation_head(model, library):
        raise ValueError(
            f"DistillationConfig.deit_distillation={mode!r} needs a student with a distillation token, but the "
            f"student is a {type(_unwrap(model)).__name__} ({library}); use a timm 'deit_*_distilled_*' model or a "
            "transformers DeiTForImageClassificationWithTeacher, or set deit_distillation='none'"
        )
    if library == "timm":
        _unwrap(model).set_distilled_training(True)


def deit_heads(model: nn.Module, pixel_values: Tensor, library: str, **kwargs: Any) -> DeiTHeads:
    """Both heads' logits of a DeiT student on normalised pixels, in training and in evaluation mode.

    In training the (possibly DDP-wrapped) model's own forward runs, so distributed wrappers see it;
    a timm student in eval mode (it then returns the average only) gets its two heads from
    ``forward_features``, as its ``forward_head`` computes them.
    """
    if library == "transformers":
        output = model(pixel_values=pixel_values, **kwargs)
        return DeiTHeads(output.cls_logits, output.distillation_logits)
    inner = _unwrap(model)
    if inner.training and getattr(inner, "distilled_training", False):
        cls_logits, distillation_logits = model(pixel_values, **kwargs)
        return DeiTHeads(cls_logits, distillation_logits)
    tokens = inner.forward_features(pixel_values)
    return DeiTHeads(
        inner.head(inner.head_drop(tokens[:, 0])), inner.head_dist(inner.head_drop(tokens[:, 1]))
    )


def deit_student_outputs(model: nn.Module, pixel_values: Tensor, library: str, **kwargs: Any) -> ModelOutputs:
    """``ModelOutputs`` of a DeiT student: ``logits`` is the two-head average (the inference prediction),
    ``auxiliary[DEIT_HEADS]`` holds both heads for :func:`deit_loss`."""
    heads = deit_heads(model, pixel_values, library, **kwargs)
    return ModelOutputs(heads.average, auxiliary={DEIT_HEADS: heads})


def deit_hard_loss(distillation_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Hard-label distillation: ``CE(dist, argmax_c t)``, batch mean, in fp32."""
    targets = teacher_logits.flatten(0, -2).argmax(-1)
    return F.cross_entropy(distillation_logits.float().flatten(0, -2), targets)


def deit_soft_loss(distillation_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Soft distillation of the distillation head: :func:`~hf_distill.losses.kd_loss` (``tau^2``-scaled
    forward KL, batch mean, fp32)."""
    return kd_loss(distillation_logits, teacher_logits, temperature)


def deit_loss(
    student: ModelOutputs,
    teacher: ModelOutputs,
    labels: Tensor | None,
    *,
    mode: str,
    alpha: float,
    temperature: float,
    cross_entropy: Callable[[Tensor, Tensor], Tensor] | None = None,
    kd: Callable[[Tensor, Tensor, float], Tensor] = kd_loss,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(1 - alpha) * CE(cls head, labels) + alpha * distill(dist head, teacher)`` and its terms.

    ``distill`` is :func:`deit_soft_loss` (``mode="soft"``) or :func:`deit_hard_loss` (``"hard"``).
    Without labels (unlabelled distillation data) the distillation term gets weight 1, as the plain KD
    term does. ``cross_entropy(logits, labels)`` defaults to ``F.cross_entropy`` in fp32; the trainer
    passes its own (label smoothing, mixed labels). Terms are returned as ``ce`` and
    ``deit_soft``/``deit_hard``. ``kd`` is the soft term's KD (the trainer passes its own, so
    ``logit_standardization`` applies to the distillation head too).
    """
    heads: DeiTHeads | None = student.auxiliary.get(DEIT_HEADS)
    if heads is None:
        raise ValueError(
            "deit_loss needs both heads in student.auxiliary['deit_heads']; build the outputs with deit_student_outputs"
        )
    if teacher.logits is None:
        raise ValueError(
            "DeiT distillation needs teacher logits; give a teacher (DistillationConfig.teacher_model_name_or_path)"
        )
    ce = cross_entropy or (lambda logits, y: F.cross_entropy(logits.float(), y))
    terms: dict[str, Tensor] = {}
    total = heads.cls_logits.new_zeros((), dtype=heads.cls_logits.dtype).float()
    distill_weight = alpha if labels is not None else 1.0
    if labels is not None and alpha < 1.0:
        terms["ce"] = ce(heads.cls_logits, labels).float()
        total = total + (1.0 - alpha) * terms["ce"]
    if distill_weight > 0.0:
        if mode == "soft":
            terms["deit_soft"] = kd(heads.distillation_logits, teacher.logits, temperature)
        elif mode == "hard":
            terms["deit_hard"] = deit_hard_loss(heads.distillation_logits, teacher.logits)
        else:
            raise ValueError(f"deit_loss: mode must be 'soft' or 'hard', got {mode!r}")
        total = total + distill_weight * terms[f"deit_{mode}"]
    return total, terms


class DeiTMethod(Method):
    """DeiT token distillation as a method: the student's forward returns both heads, and the base loss is
    CE on the class head plus the teacher on the distillation head (:func:`deit_loss`)."""

    name = "deit"
    replaces_base_loss = True

    @classmethod
    def enabled(cls, args: Any) -> bool:
        return args.deit_distillation != "none"

    @staticmethod
    def validate_config(config: Any, fail: Callable[[str, str], None]) -> None:
        if config.deit_distillation not in DEIT_MODES:
            fail("deit_distillation", f"must be one of {list(DEIT_MODES)}, got {config.deit_distillation!r}")
        if config.deit_distillation != "none" and config.alpha == 0.0:
            fail(
                "alpha",
                f"is 0 with deit_distillation={config.deit_distillation!r}, so the distillation head would never "
                "train; set alpha > 0 (0.5 is DeiT's hard-distillation weight) or deit_distillation='none'",
            )

    @classmethod
    def needs(cls, args: Any) -> list[tuple[str, Needs]]:
        setting = f"deit_distillation={args.deit_distillation!r}"
        if args.deit_distillation == "hard":  # argmax of the teacher: any tempered probabilities will do
            return [(setting, Needs(teacher=TEACHER_PROBABILITIES, why="takes the teacher's argmax"))]
        if args.logit_standardization:
            return [(setting, Needs(teacher=TEACHER_LOGITS, why="standardises the teacher's logits"))]
        why = "reads the teacher's tempered probabilities"
        return [(setting, Needs(teacher=TEACHER_PROBABILITIES, temperature=float(args.temperature), why=why))]

    @classmethod
    def refuse(cls, args: Any) -> str | None:
        setting = f"deit_distillation={args.deit_distillation!r}"
        features = [t for t in args.loss_types if getattr(LOSSES.get(t, t), "needs_features", False)]
        if features or args.peer_model_names_or_paths or args.slkd_num_teachers:
            return (
                f"{setting} does not combine with feature terms, DML peers or SLKD (the DeiT heads bypass the "
                "wrapper those modules run in); drop those settings or set deit_distillation='none'"
            )
        if args.augmentation_mode in ("tlmixup", "tlcutmix"):
            return (
                f"{setting} with augmentation_mode={args.augmentation_mode!r}: the paper gives the teacher-labelled "
                "images x' no head to train; use augmentation_mode 'mixup'/'cutmix' or deit_distillation='none'"
            )
        return None

    def prepare_student(self, build: Build) -> None:
        prepare_deit_student(build.student.module, build.student.library, self.args.deit_distillation)

    def student_outputs(self, step: Any, model: nn.Module, pixels: Tensor) -> ModelOutputs:
        # both heads; logits = their average, as at inference
        return deit_student_outputs(model, pixels, step.student_library, **step.student_kwargs)

    def base_loss(self, step: Any, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Tensor]):
        if DEIT_HEADS not in student.auxiliary:
            return None
        if teacher.logits is None:  # evaluation without a teacher (a label bank's run): the class head's CE
            labels = batch.get("labels")
            if labels is None:
                return student.logits.new_zeros((), dtype=torch.float32), {}
            ce = step.cross_entropy(student.auxiliary[DEIT_HEADS].cls_logits, labels, batch)
            return ce, {"ce": ce}
        return deit_loss(
            student,
            teacher,
            batch.get("labels"),
            mode=self.args.deit_distillation,
            alpha=self.args.alpha,
            temperature=self.args.temperature,
            cross_entropy=lambda logits, labels: step.cross_entropy(logits, labels, batch),
            kd=step.kd,
        )
