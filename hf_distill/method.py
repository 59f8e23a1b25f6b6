"""The shape every distillation method takes, and what the trainer hands it.

A method is one file with one :class:`Method` subclass, listed once in :mod:`hf_distill.registry`. The
trainer builds the methods a config enables and asks each, through the hooks below, for what it
contributes; it never asks which method it has. Every hook has a neutral default, so a method overrides
only what it changes:

==========================  ===========================================================================
``validate_config``         checks of the method's own config fields, run by ``DistillationConfig``
``needs``                   what it needs from the teacher source (checked against it at construction)
``check``                   checks that need the loaded models (run at construction)
``refuse``                  combinations with other settings it cannot honour (from the config alone)
``prepare_student``         adjust the student before training (DeiT's distilled-training switch)
``wrap_collator``           wrap the training collator (augmentation)
``auxiliary_modules``       trainable modules beside the student, inside ``Trainer.model``
``terms``                   extra loss terms ``Term(name, fn, weight, params)``
``student_outputs``         replace the student's forward (DeiT's two heads)
``base_loss``               replace the ``(1 - alpha) CE + alpha KD`` part (DeiT)
``extra_loss``              a further loss on images made in the step (TL-mix's x')
``callbacks``               ``TrainerCallback`` s
``exports``                 attributes it publishes on the trainer (``trainer.feature_taps`` …)
==========================  ===========================================================================
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import Tensor, nn

from .contract import Needs
from .data import train_labels_by_sample_id


class Term(NamedTuple):
    """One weighted loss term: ``weight * fn(student, teacher, batch, **params)``."""

    name: str
    fn: Callable[..., Tensor]
    weight: float
    params: dict[str, Any]


@dataclass
class Build:
    """What methods see while the trainer is being built."""

    args: Any
    student: Any  # hf_distill.hub.LoadedModel
    student_preprocess: Any  # hf_distill.hub.PreprocessSpec
    student_kwargs: dict[str, Any]
    teacher: Any  # hf_distill.teacher.Teacher | TeacherEnsemble | None
    label_names: list[str]
    num_train_samples: int | None
    train_dataset: Any = None  # the training rows as given (before sample ids are added)
    label_column: str = "label"
    terms: list[Term] = field(default_factory=list)
    student_tap: Any = None  # hf_distill.features.FeatureTap when a term compares features
    teacher_tap: Any = None

    @functools.cached_property
    def train_labels(self) -> Tensor | None:
        """Every training sample's class by sample id (see :func:`hf_distill.data.train_labels_by_sample_id`),
        read from the dataset only when a method asks for it (it reads the whole label column)."""
        return train_labels_by_sample_id(self.train_dataset, self.label_column)


class Method:
    """Base class: a method that changes nothing. See the module docstring for the hooks."""

    name: str = "method"
    replaces_base_loss = False  # True: its base_loss replaces (1 - alpha) CE + alpha KD (DeiT)
    # Attributes this method publishes on every trainer, with their value when it is not enabled.
    default_exports: dict[str, Any] = {}

    @classmethod
    def enabled(cls, args: Any) -> bool:
        return False

    @staticmethod
    def validate_config(args: Any, fail: Callable[[str, str], None]) -> None:
        """Check this method's config fields; ``fail(field, message)`` raises."""

    @classmethod
    def needs(cls, args: Any) -> list[tuple[str, Needs]]:
        """``(setting, needs)`` pairs, from the config alone (the support table is built from these)."""
        return []

    @classmethod
    def refuse(cls, args: Any) -> str | None:
        """Why this method cannot run with the rest of ``args`` (another method's settings), or None."""
        return None

    def __init__(self, args: Any):
        self.args = args

    def check(self, build: Build) -> None:
        """Refuse, with a message naming the settings, what the loaded models cannot do."""

    def prepare_student(self, build: Build) -> None:
        pass

    def wrap_collator(self, collator: Any, build: Build) -> Any:
        return collator

    def auxiliary_modules(self, build: Build) -> dict[str, nn.Module]:
        return {}

    def terms(self, build: Build) -> list[Term]:
        return []

    def callbacks(self) -> list[Any]:
        return []

    def student_outputs(self, step: Any, model: nn.Module, pixels: Tensor) -> Any:
        """The student's :class:`~hf_distill.losses.ModelOutputs` on normalised ``pixels``, or None to
        leave the forward to the trainer."""
        return None

    def base_loss(self, step: Any, student: Any, teacher: Any, batch: dict[str, Tensor]) -> Any:
        """``(total, terms)`` replacing ``(1 - alpha) CE + alpha KD``, or None."""
        return None

    def extra_loss(
        self, step: Any, model: nn.Module, batch: dict[str, Tensor], student: Any, teacher: Any
    ) -> Any:
        """``(total, terms)`` added to the loss of a training step, or None."""
        return None

    def exports(self, trainer: Any) -> dict[str, Any]:
        return {}
