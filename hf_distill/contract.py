"""What teacher sources provide and what loss terms and methods need, and the one check between them.

A **teacher source** (the live teacher or ensemble in :mod:`hf_distill.teacher`, the fixed-view cache in
:mod:`hf_distill.teacher_cache`, the label bank in :mod:`hf_distill.label_bank`) declares a
:class:`Provides`; every loss term and method declares :class:`Needs`. :func:`refusal` compares the two
once, at construction: a supported combination is computed as configured, any other is refused before
step 1 with a message that names both settings and the alternative. The same function fills the README's
support table (:mod:`hf_distill.composition`), so the table and the trainer cannot disagree.

This module imports nothing else of the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TEACHER_NONE = "none"
TEACHER_PROBABILITIES = "probabilities"
TEACHER_LOGITS = "logits"


@dataclass(frozen=True)
class Provides:
    """What one teacher source gives a training step.

    ``logits``: the teacher's own logits (else only tempered log-probabilities, ``T * log p`` at
    ``temperature``: their softmax at that temperature is exact, nothing else about them is).
    ``features``: tapped features from the forward that made the logits (on the view the teacher-input
    mode prescribes). ``live``: its outputs are computed on this step's batch views (not stored before
    training), so augmenting the batch changes them. ``labels_new``: it can label images made inside the
    step (TL-mix's x'). ``single_view``: each output belongs to one renderable view of its sample.
    """

    name: str  # how messages name it: "the fixed-teacher cache (teacher_cache_topk=5)"
    setting: str  # the setting that selected it, for messages
    logits: bool = True
    temperature: float | None = None
    features: bool = False
    live: bool = True
    labels_new: bool = True
    single_view: bool = True  # its outputs belong to one rendered view per sample (not an average over crops)
    alternative: str = ""  # what to change to get the live teacher back


@dataclass(frozen=True)
class Needs:
    """What a loss term or method needs from the teacher source and the batch."""

    teacher: str = TEACHER_LOGITS  # "none" | "probabilities" | "logits"
    temperature: float | None = None  # for "probabilities": the temperature it reads them at
    features: bool = False
    live: bool = False  # the teacher's outputs must be computed on this step's (augmented) batch views
    labels_new: bool = False  # the teacher labels images made inside the step
    labels: bool = False
    teacher_view: bool = False  # the collator must render the teacher's view in training batches
    why: str = ""  # how it reads the teacher, for messages ("standardises the teacher's logits")
    without_teacher: str = ""  # the message when there is no teacher at all ("field: why, and the fix")


def needs_of(fn: Callable, **params: Any) -> Needs:
    """A term function's declared needs (``fn.needs``, a :class:`Needs` or a callable of the term's
    parameters returning one); undeclared callables need teacher logits, as any user function might."""
    declared = getattr(fn, "needs", None)
    if callable(declared) and not isinstance(declared, Needs):
        return declared(**params)
    if isinstance(declared, Needs):
        return declared
    if getattr(fn, "needs_features", False):
        return Needs(teacher=TEACHER_LOGITS, features=True, why="compares features")
    if getattr(fn, "needs_teacher", True) is False:
        return Needs(teacher=TEACHER_NONE)
    return Needs(teacher=TEACHER_LOGITS, why="reads the teacher's logits (a user term)")


def declare(needs: Needs | Callable[..., Needs]) -> Callable[[Callable], Callable]:
    """Decorator: attach ``needs`` to a term function."""

    def attach(fn: Callable) -> Callable:
        fn.needs = needs
        return fn

    return attach


def refusal(what: str, needs: Needs, provides: Provides | None, labelled: bool = True) -> str | None:
    """Why ``what`` (a setting, e.g. "loss_types 'at'") cannot run on ``provides``, or None when it can."""
    if needs.labels and not labelled:
        return f"{what} {needs.why or 'needs labels'}, but the training data has no labels; use labelled data or drop it"
    if needs.teacher == TEACHER_NONE and not needs.features and not needs.labels_new:
        if not needs.live or provides is None:
            return (
                None  # nothing it reads of a teacher (an augmentation without one changes no teacher input)
            )
    if provides is None:
        return f"{what} {needs.why or 'needs a teacher'}; give a teacher (teacher_model_name_or_path)"
    if needs.features and not provides.features:
        return (
            f"{what} {needs.why or 'compares teacher features'}, but {provides.name} holds no teacher features; "
            f"{provides.alternative or 'use the live teacher'}"
        )
    if needs.live and not provides.live:
        return (
            f"{what} {needs.why or 'changes the images the teacher labels'}, but {provides.name} holds outputs "
            f"computed before training; {provides.alternative or 'use the live teacher'}"
        )
    if needs.labels_new and not provides.labels_new:
        return (
            f"{what} {needs.why or 'labels images made in the step'}, which {provides.name} cannot do; "
            f"{provides.alternative or 'use the live teacher'}"
        )
    if needs.teacher_view and not provides.single_view:
        return (
            f"{what} {needs.why or 'runs on the teacher view'}, but {provides.name} labels each sample with an "
            f"average over many views, none of which it can be given; {provides.alternative or 'use a single-view mode'}"
        )
    if needs.teacher == TEACHER_LOGITS and not provides.logits:
        return (
            f"{what} {needs.why or 'needs the teacher logits'}, but {provides.name} gives only tempered "
            f"probabilities; {provides.alternative or 'use a source that keeps logits'}"
        )
    if (
        needs.teacher == TEACHER_PROBABILITIES
        and not provides.logits
        and needs.temperature is not None
        and provides.temperature is not None
        and abs(needs.temperature - provides.temperature) > 1e-12
    ):
        return (
            f"{what} reads the teacher's probabilities at temperature {needs.temperature}, but {provides.name} "
            f"keeps them only at temperature {provides.temperature}; use one temperature, or "
            f"{provides.alternative or 'a source that keeps logits'}"
        )
    return None
