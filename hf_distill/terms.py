"""The loss terms a config names: their functions, parameters and needs.

``DistillationConfig.loss_types`` names terms of :data:`hf_distill.losses.LOSSES` (or gives callables);
:func:`resolve_terms` turns them into :class:`~hf_distill.method.Term` s and :func:`term_needs` says what
each needs from the teacher source (:class:`~hf_distill.contract.Needs`), from the declarations below or a
callable's own ``needs`` attribute. The main KD term (``alpha``) is :func:`kd_function`: Hinton's KD, or
KD on standardised logits with ``logit_standardization``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from torch import Tensor

from .contract import TEACHER_LOGITS, TEACHER_NONE, TEACHER_PROBABILITIES, Needs, needs_of
from .losses import LOSSES, kd_loss, kd_loss_standardized
from .method import Term
from .teacher import ensemble_reduction_of, is_ensemble_config, sum_over_members


def _probabilities(why: str, labels: bool = False) -> Callable[..., Needs]:
    def needs(temperature: float | None = None, **_: Any) -> Needs:
        return Needs(teacher=TEACHER_PROBABILITIES, temperature=temperature, labels=labels, why=why)

    return needs


# What each built-in term reads of the teacher (attached to the functions as ``fn.needs``).
logger = logging.getLogger(__name__)

_DECLARED: dict[str, Needs | Callable[..., Needs]] = {
    "kd": _probabilities("reads the teacher's tempered probabilities"),
    "reverse_kl": _probabilities("reads the teacher's tempered probabilities"),
    "jsd": _probabilities("reads the teacher's tempered probabilities"),
    "dkd": _probabilities("reads the teacher's tempered probabilities and the labels", labels=True),
    "mse_logits": Needs(teacher=TEACHER_LOGITS, why="regresses the teacher's logits"),
    "kd_standardized": Needs(teacher=TEACHER_LOGITS, why="standardises the teacher's logits"),
    "ce": Needs(teacher=TEACHER_NONE, labels=True, why="needs labels"),
    "dml": Needs(
        teacher=TEACHER_NONE, labels=True, why="trains the peers on the labels as well as on each other"
    ),
}
_FEATURE_NEEDS = Needs(teacher=TEACHER_NONE, features=True, why="compares teacher features")


def _declare_builtin_needs() -> None:
    for name, fn in LOSSES.items():
        if name in _DECLARED:
            fn.needs = _DECLARED[name]
        elif getattr(fn, "needs_features", False):
            fn.needs = _FEATURE_NEEDS


_declare_builtin_needs()


def term_name(loss: str | Callable) -> str:
    return loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")


def resolve_terms(args: Any) -> list[Term]:
    """The extra terms of ``args.loss_types`` with their weights and parameters (``loss_kwargs``; the
    config's ``temperature`` for terms that take one and were given none)."""
    terms = []
    for loss, weight in zip(args.loss_types, args.loss_weights):
        fn = loss if callable(loss) else LOSSES[loss]
        name = term_name(loss)
        params = dict(args.loss_kwargs.get(name, {}))
        accepted = inspect.signature(fn).parameters
        if "temperature" in accepted and "temperature" not in params:
            params["temperature"] = args.temperature
        terms.append(Term(name, fn, float(weight), params))
    return terms


def term_needs(term: Term) -> Needs:
    return needs_of(term.fn, **term.params)


def kd_function(args: Any) -> Callable[[Tensor, Tensor, float], Tensor]:
    """The main KD term's loss: :func:`~hf_distill.losses.kd_loss`, or with ``logit_standardization``
    :func:`~hf_distill.losses.kd_loss_standardized` (Sun et al., CVPR 2024). Every KD on the teacher's
    outputs (the images x, TL-mix's x', DeiT's distillation head) uses this one function. For a teacher
    ensemble with ``teacher_ensemble_reduction='kl_sum'`` it sums the loss over the members' logits the
    ensemble's output carries (:func:`hf_distill.teacher.sum_over_members`)."""
    return sum_over_members(kd_loss_standardized if args.logit_standardization else kd_loss)


def main_kd_needs(args: Any) -> Needs:
    """What the ``alpha`` KD term reads of the teacher. With an ensemble reduced by ``kl_sum`` it reads every
    member's outputs on this step (``live``): a source that stores one output per sample cannot give them."""
    kl_sum = is_ensemble_config(args) and ensemble_reduction_of(args) == "kl_sum"
    if args.logit_standardization:
        return Needs(teacher=TEACHER_LOGITS, live=kl_sum, why="standardises the teacher's logits")
    return Needs(
        teacher=TEACHER_PROBABILITIES,
        temperature=float(args.temperature),
        live=kl_sum,
        why="sums the KL to each ensemble member's outputs (teacher_ensemble_reduction='kl_sum')"
        if kl_sum
        else "reads the teacher's tempered probabilities",
    )


# The KD term's defaults per method: (temperature, alpha). FunMatch (Beyer et al.) distils with the KL alone
# at T = 1 (big_vision's distill configs: distance 'kl', t=1.0, no label term); everything else gets the common
# Hinton-KD setting.
FUNMATCH_KD_DEFAULTS = (1.0, 1.0)
KD_DEFAULTS = (4.0, 0.9)


def resolve_kd_defaults(config: Any) -> None:
    """Fill ``temperature`` / ``alpha`` left at None with the configured method's default (logged):
    ``teacher_input='funmatch'`` gets T=1, alpha=1 (KL only, the paper's); any other config T=4, alpha=0.9."""
    funmatch = getattr(config, "teacher_input", None) == "funmatch"
    temperature, alpha = FUNMATCH_KD_DEFAULTS if funmatch else KD_DEFAULTS
    why = "teacher_input='funmatch': the paper distils with KL alone at T=1" if funmatch else "the KD default"
    if config.temperature is None:
        config.temperature = temperature
        logger.info("DistillationConfig.temperature not set: %s (%s)", temperature, why)
    if config.alpha is None:
        config.alpha = alpha
        logger.info("DistillationConfig.alpha not set: %s (%s)", alpha, why)


def validate_loss_config(config: Any, fail: Callable[[str, str], None]) -> None:
    """Config check: ``loss_types`` and ``loss_kwargs`` name known terms, once each."""
    names = []
    for loss in config.loss_types:
        if callable(loss):
            names.append(getattr(loss, "__name__", repr(loss)))
        elif loss not in LOSSES:
            fail("loss_types", f"unknown loss '{loss}'; known: {sorted(LOSSES)} (or pass a callable)")
        else:
            names.append(loss)
    if len(set(names)) != len(names):
        fail("loss_types", f"lists a loss twice: {names}")
    for name, params in config.loss_kwargs.items():
        if name not in names:
            fail("loss_kwargs", f"has parameters for '{name}', which is not in loss_types {names}")
        if not isinstance(params, dict):
            fail("loss_kwargs", f"entry '{name}' must be a dict of parameters, got {params!r}")
