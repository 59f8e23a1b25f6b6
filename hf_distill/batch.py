"""The batch schema: every key a collator may emit and a step may read, declared once.

Collators (:mod:`hf_distill.collators`, :mod:`hf_distill.augment`, :mod:`hf_distill.label_bank`) write
these keys; teacher sources, methods and loss terms read them. A key that is not declared here is not
part of the contract. :func:`check_batch` verifies a batch against the declarations (the tests run it
on the output of every collator).

Also here, because every method needs it the same way: :func:`mixed_cross_entropy`, the one hard-label
cross entropy that honours batch mixing (mixup / CutMix partners in the batch, or a label bank's recorded
partners outside it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

PIXEL_VALUES = "pixel_values"
TEACHER_PIXEL_VALUES = "teacher_pixel_values"
LABELS = "labels"
SAMPLE_IDS = "sample_ids"
MIX_PERM = "mix_perm"
MIX_LAM = "mix_lam"
MIX_PARTNER_LABELS = "mix_partner_labels"
BANK_ROWS = "bank_rows"
BANK_LOGITS = "bank_logits"
TL_PREFIX = "tl_"
TL_PIXEL_VALUES = TL_PREFIX + PIXEL_VALUES
TL_SOURCE = "tl_source"
TL_PARTNER = "tl_partner"
TL_LAM = "tl_lam"
TL_KEEP = "tl_keep"


@dataclass(frozen=True)
class BatchKey:
    """One key of the schema: its dtype, its shape (B = batch, P = teacher-labelled pool, S/T = the
    student's / a teacher's resolution, C = classes) and who writes it."""

    name: str
    dtype: torch.dtype
    shape: str
    written_by: str
    meaning: str
    prefix: bool = False  # a family of keys: name + suffix

    def matches(self, key: str) -> bool:
        return key.startswith(self.name) if self.prefix else key == self.name


SCHEMA: tuple[BatchKey, ...] = (
    BatchKey(PIXEL_VALUES, torch.uint8, "(B, 3, S, S)", "collator", "the student's view"),
    BatchKey(
        TEACHER_PIXEL_VALUES + "_",
        torch.uint8,
        "(B, 3, T, T)",
        "collator",
        "a further teacher view at resolution T (ensemble members at other resolutions)",
        prefix=True,
    ),
    BatchKey(
        TEACHER_PIXEL_VALUES,
        torch.uint8,
        "(B, 3, T, T)",
        "collator",
        "the teacher's view when it differs from the student's (box, flip or resolution)",
    ),
    BatchKey(LABELS, torch.long, "(B,)", "collator", "class ids (absent for unlabelled data)"),
    BatchKey(SAMPLE_IDS, torch.long, "(B,)", "collator", "the dataset row each sample came from"),
    BatchKey(MIX_PERM, torch.long, "(B,)", "collator", "the partner of each sample in the batch (mixing)"),
    BatchKey(MIX_LAM, torch.float32, "(B,)", "collator", "each sample's own share of the mix"),
    BatchKey(
        MIX_PARTNER_LABELS,
        torch.long,
        "(B,)",
        "label-bank collator",
        "recorded partners' labels (outside the batch)",
    ),
    BatchKey(BANK_ROWS, torch.long, "(B,)", "label-bank collator", "the bank row replayed for each sample"),
    BatchKey(
        BANK_LOGITS, torch.float32, "(B, C)", "label-bank collator", "the stored teacher output of that row"
    ),
    BatchKey(
        TL_PREFIX + PIXEL_VALUES,
        torch.uint8,
        "(P, 3, S, S)",
        "augmenting collator",
        "teacher-labelled mixes x' (TLmixup / TLCutMix), the student's view",
    ),
    BatchKey(
        TL_PREFIX + TEACHER_PIXEL_VALUES,
        torch.uint8,
        "(P, 3, T, T)",
        "augmenting collator",
        "x' in each teacher view (suffix as for teacher views)",
        prefix=True,
    ),
    BatchKey(TL_SOURCE, torch.long, "(P,)", "augmenting collator", "the batch row each x' starts from"),
    BatchKey(TL_PARTNER, torch.long, "(P,)", "augmenting collator", "the batch row mixed into it"),
    BatchKey(TL_LAM, torch.float32, "(P,)", "augmenting collator", "the source's share of each x'"),
    BatchKey(TL_KEEP, torch.long, "()", "augmenting collator", "how many x' get the gradient step (pick)"),
)


def schema_entry(key: str) -> BatchKey | None:
    """The declaration of ``key`` (exact names before prefix families), or None."""
    exact = [entry for entry in SCHEMA if not entry.prefix and entry.matches(key)]
    if exact:
        return exact[0]
    prefixed = [entry for entry in SCHEMA if entry.prefix and entry.matches(key)]
    return prefixed[0] if prefixed else None


def check_batch(batch: dict[str, Any]) -> None:
    """Raise ``ValueError`` for a key the schema does not declare or a tensor of another dtype."""
    for key, value in batch.items():
        entry = schema_entry(key)
        if entry is None:
            raise ValueError(f"batch key {key!r} is not declared in hf_distill.batch.SCHEMA")
        if isinstance(value, Tensor) and value.dtype != entry.dtype:
            raise ValueError(f"batch key {key!r} has dtype {value.dtype}, the schema says {entry.dtype}")


def teacher_view_key(size: int) -> str:
    """Batch key of the extra teacher view at ``size`` pixels (teacher ensembles at several resolutions)."""
    return f"{TEACHER_PIXEL_VALUES}_{size}"


def is_view_key(key: str) -> bool:
    """Whether ``key`` holds an image view of the original samples (student or teacher)."""
    return key == PIXEL_VALUES or key.startswith(TEACHER_PIXEL_VALUES)


def view_keys(batch: dict[str, Any]) -> list[str]:
    """The batch's image views in order: the student's, the teacher's, further ensemble views."""
    return [key for key in batch if is_view_key(key)]


def teacher_views(batch: dict[str, Any]) -> dict[int, Tensor]:
    """Every teacher view in a batch keyed by resolution: ``teacher_pixel_values`` (or, when the teacher
    shares the student's pixels, ``pixel_values``) plus the extra ensemble views."""
    main = batch.get(TEACHER_PIXEL_VALUES)
    main = main if main is not None else batch[PIXEL_VALUES]
    views = {int(main.shape[-1]): main}
    prefix = TEACHER_PIXEL_VALUES + "_"
    for key, value in batch.items():
        if key.startswith(prefix) and key[len(prefix) :].isdigit():
            views[int(key[len(prefix) :])] = value
    return views


def teacher_labelled_views(batch: dict[str, Any]) -> dict[str, Tensor]:
    """The x' views of a TL batch under their plain names (``pixel_values``, ``teacher_pixel_values`` …)."""
    views = {key[len(TL_PREFIX) :]: value for key, value in batch.items() if key.startswith(TL_PREFIX)}
    return {key: value for key, value in views.items() if is_view_key(key)}


def mixed_cross_entropy(logits: Tensor, batch: dict[str, Any], label_smoothing: float = 0.0) -> Tensor:
    """Hard-label CE in fp32, batch mean; under batch mixing the mixed-label CE
    ``lam * CE(y) + (1 - lam) * CE(y_partner)``, the partner's label from ``mix_perm`` (in the batch) or
    ``mix_partner_labels`` (a label bank's recorded partners)."""
    try:
        labels = batch[LABELS]
    except KeyError:
        raise KeyError("this loss term needs batch['labels']") from None
    logits = logits.float()
    perm, lam = batch.get(MIX_PERM), batch.get(MIX_LAM)
    partner_labels = batch.get(MIX_PARTNER_LABELS)
    if partner_labels is None and perm is None:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    partner_labels = partner_labels if partner_labels is not None else labels[perm]
    own = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    partner = F.cross_entropy(logits, partner_labels, reduction="none", label_smoothing=label_smoothing)
    return (lam * own + (1.0 - lam) * partner).mean()
