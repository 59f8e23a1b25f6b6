"""Data augmentation for distillation: mixup / CutMix / Cutout baselines, TLmixup / TLCutMix and "pick".

Implements the augmentation side of Wang et al., "Understanding the success of knowledge distillation
— a data augmentation perspective" on top of :mod:`hf_distill.mixing`. Selected by
``DistillationConfig.augmentation_mode``:

============  =====================================================================================
``none``      the teacher-input mode's views, unchanged
``mixup``     each image is replaced by a mixup of itself and a partner; CE on the mixed hard labels
              (``mix_perm``/``mix_lam``), KD on the mixed image
``cutmix``    the same with CutMix
``cutout``    a box of side ``cutout_fraction`` is filled with the student's mean colour (DeVries &
              Taylor, 2017); the same relative box in the teacher's view
``tlmixup``   the batch keeps its images ``x`` and gains augmented images ``x'``: mixups of random
              pairs of the batch. ``x`` gets the usual ``(1 - alpha) CE + alpha tau^2 KL`` (plus any
              ``loss_types``), ``x'`` gets ``alpha tau^2 KL`` only — never a (mixed) hard label
``tlcutmix``  the same with CutMix (the paper's default)
============  =====================================================================================

With ``pick=True`` (TL modes), the collator builds a pool of ``pick_pool_factor * N/2`` augmented
images; inside the training step the student scores the pool without gradients and only the ``N/2``
images with the highest ``pick_criterion`` (teacher-student KL by default) get the gradient step. The
teacher's outputs on the pool are computed once and reused for the picked images.

Every random draw is made once per batch in the collator (from ``seed``, epoch and the batch's sample
ids) and applied to the student's and the teacher's views alike, whatever their resolutions, so the
teacher always labels exactly the image the student sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mixing import (
    SELECTION_CRITERIA,
    MixConfig,
    MixParams,
    apply_cutout,
    apply_mix,
    sample_cutout_boxes,
    sample_mix_params,
    select_by_criterion,
)

__all__ = [
    "AUGMENTATION_MODES",
    "PICK_CRITERIA",
    "TL_MODES",
    "AugmentingCollator",
    "TLPool",
    "build_tl_pool",
    "mode_mix_config",
    "pick_sizes",
    "sample_tl_pairs",
    "teacher_labelled_loss",
]

AUGMENTATION_MODES = ("none", "mixup", "cutmix", "cutout", "tlmixup", "tlcutmix")
TL_MODES = ("tlmixup", "tlcutmix")
PICK_CRITERIA = SELECTION_CRITERIA

# Batch keys of the teacher-labelled images (only in training batches of the TL modes).
TL_PREFIX = "tl_"
TL_PIXELS = TL_PREFIX + "pixel_values"
TL_TEACHER_PIXELS = TL_PREFIX + "teacher_pixel_values"
TL_SOURCE = "tl_source"
TL_PARTNER = "tl_partner"
TL_LAM = "tl_lam"
TL_KEEP = "tl_keep"


def _view_keys(batch: dict[str, Tensor]) -> list[str]:
    """The batch's image views: the student's, the teacher's, and ensemble views at further resolutions."""
    return [key for key in batch if key == "pixel_values" or key.startswith("teacher_pixel_values")]


_AUGMENT_STREAM = 3  # the base collator's mixing uses stream 2


def mode_mix_config(mode: str, base: MixConfig) -> MixConfig:
    """The mixing settings of one augmentation mode: ``base`` with only mixup (``mixup``/``tlmixup``)
    or only CutMix (``cutmix``/``tlcutmix``) left active. Other modes return ``base`` unchanged."""
    if mode in ("mixup", "tlmixup"):
        return replace(base, cutmix_alpha=0.0, cutmix_minmax=None)
    if mode in ("cutmix", "tlcutmix"):
        return replace(base, mixup_alpha=0.0)
    return base


def pick_sizes(batch_size: int, pick: bool, pool_factor: float = 2.0) -> tuple[int, int]:
    """``(pool size, images kept)`` of the teacher-labelled images for a batch of ``batch_size``.

    Without pick every pool image is kept and the pool has one image per original (``N``). With pick
    ``N // 2`` images are kept (at least one) out of ``ceil(pool_factor * kept)``; ``pool_factor=2``
    is the paper's setting (a pool of ``N``, keep the better half).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if not pick:
        return batch_size, batch_size
    keep = max(1, batch_size // 2)
    # The small epsilon keeps e.g. 1.5 * 4 from rounding up to 7 through float error.
    return max(keep, math.ceil(pool_factor * keep - 1e-9)), keep


def sample_tl_pairs(batch_size: int, pool_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(source, partner)`` batch indices ``(pool_size,)`` of the images each pool image mixes.

    The pool is filled by blocks of ``batch_size``: each block is a random permutation ``s`` of the batch
    and pairs ``s[i]`` with ``s[(i + 1) % batch_size]``, so within a block every image is used once as
    source and once as partner and never with itself (for ``batch_size >= 2``), odd sizes included.
    """
    blocks = math.ceil(pool_size / batch_size) if pool_size else 0
    sources, partners = [], []
    for _ in range(blocks):
        order = torch.randperm(batch_size, generator=generator)
        sources.append(order)
        partners.append(order.roll(-1))
    if not blocks:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    return torch.cat(sources)[:pool_size], torch.cat(partners)[:pool_size]


@dataclass
class TLPool:
    """A pool of teacher-labelled images: ``source[j]`` mixed with ``partner[j]`` by ``params`` row ``j``."""

    source: Tensor
    partner: Tensor
    lam: Tensor
    use_cutmix: Tensor
    boxes: Tensor
    applied: Tensor

    def apply(self, *views: Tensor) -> tuple[Tensor, ...]:
        """The pool's mixed images for every view (uint8 or float, any resolution), same parameters."""
        size = int(self.source.shape[0])
        # apply_mix mixes rows of one tensor, so stack sources over partners and point row j at row
        # size + j: the public API then does the box rounding and blending exactly as everywhere else.
        stacked_params = MixParams(
            perm=torch.cat([torch.arange(size, 2 * size), torch.arange(size)]),
            lam=torch.cat([self.lam, torch.ones(size)]),
            use_cutmix=torch.cat([self.use_cutmix, torch.zeros(size, dtype=torch.bool)]),
            boxes=torch.cat([self.boxes, torch.zeros(size, 4)]),
            applied=torch.cat([self.applied, torch.zeros(size, dtype=torch.bool)]),
        )
        out = []
        for view in views:
            source, partner = self.source.to(view.device), self.partner.to(view.device)
            stacked = torch.cat([view.index_select(0, source), view.index_select(0, partner)])
            (mixed,) = apply_mix(stacked_params, stacked)
            out.append(mixed[:size])
        return tuple(out)


def build_tl_pool(batch_size: int, pool_size: int, config: MixConfig, generator: torch.Generator) -> TLPool:
    """Draw the pairs and the mixing parameters of a pool of ``pool_size`` teacher-labelled images."""
    source, partner = sample_tl_pairs(batch_size, pool_size, generator)
    # Draw for an even count: MixParams pairs row i with row B-1-i and would leave an odd middle unmixed;
    # here the pairs come from sample_tl_pairs, only the per-row lam/box/choice are used.
    params = sample_mix_params(pool_size + pool_size % 2, config, generator)
    applied = params.applied[:pool_size] & (source != partner)
    return TLPool(
        source=source,
        partner=partner,
        lam=torch.where(applied, params.lam[:pool_size], torch.ones(pool_size)),
        use_cutmix=params.use_cutmix[:pool_size] & applied,
        boxes=torch.where(applied[:, None], params.boxes[:pool_size], torch.zeros(pool_size, 4)),
        applied=applied,
    )


@dataclass
class AugmentingCollator:
    """Wraps a :class:`~hf_distill.collators.DistillationCollator` and applies ``mode`` to its batches.

    Output keys besides the base collator's: ``mix_perm``/``mix_lam`` (mixup, cutmix), and for the TL
    modes ``tl_pixel_values`` (P, 3, S, S) uint8 and ``tl_<key>`` for every teacher view ``<key>`` of the
    base batch (``tl_teacher_pixel_values`` …), ``tl_source``/``tl_partner``/``tl_lam`` (P,), and ``tl_keep`` (how many pool images get
    the gradient step). ``pixel_values`` and ``labels`` are left as the base collator made them.
    """

    base: Any
    mode: str = "none"
    mix_config: MixConfig | None = None
    cutout_fraction: float = 0.5
    cutout_fill: tuple[float, ...] = (0.0, 0.0, 0.0)
    pick: bool = False
    pick_pool_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in AUGMENTATION_MODES:
            raise ValueError(
                f"augmentation_mode must be one of {list(AUGMENTATION_MODES)}, got {self.mode!r}"
            )
        self.mix_config = mode_mix_config(self.mode, self.mix_config or MixConfig())

    def __getattr__(self, name: str) -> Any:
        # Everything else (mode flags, sizes, view_params …) is the base collator's; "base" itself must not
        # recurse while a worker unpickles the object.
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def generator(self, sample_ids: Tensor) -> torch.Generator:
        """This batch's augmentation stream: a function of (seed, epoch, the batch's sample ids)."""
        state = np.random.SeedSequence(
            [self.base.seed, self.base.epoch, _AUGMENT_STREAM, *sample_ids.tolist()]
        ).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Tensor]:
        batch = self.base(rows)
        if self.mode == "none" or not getattr(self.base, "train", True):
            return batch
        keys = _view_keys(batch)
        size = int(batch["pixel_values"].shape[0])
        generator = self.generator(batch["sample_ids"])
        if self.mode == "cutout":
            boxes = sample_cutout_boxes(size, self.cutout_fraction, generator)
            for key, view in zip(keys, apply_cutout(boxes, *(batch[k] for k in keys), fill=self.cutout_fill)):
                batch[key] = view
        elif self.mode in ("mixup", "cutmix"):
            params = sample_mix_params(size, self.mix_config, generator)
            for key, view in zip(keys, apply_mix(params, *(batch[k] for k in keys))):
                batch[key] = view
            batch["mix_perm"] = params.perm
            batch["mix_lam"] = params.lam.float()
        else:
            pool_size, keep = pick_sizes(size, self.pick, self.pick_pool_factor)
            pool = build_tl_pool(size, pool_size, self.mix_config, generator)
            for key, view in zip(keys, pool.apply(*(batch[k] for k in keys))):
                batch[TL_PREFIX + key] = view
            batch[TL_SOURCE], batch[TL_PARTNER], batch[TL_LAM] = pool.source, pool.partner, pool.lam
            batch[TL_KEEP] = torch.tensor(keep, dtype=torch.long)
        return batch


# ------------------------------------------------------------------------------------------ training step


def _student_network(trainer: Any, model: nn.Module) -> nn.Module:
    """The module to run on teacher-labelled images: the student alone (auxiliary modules such as
    projectors or CRD memories belong to the original images' loss and never see ``x'``)."""
    from .trainer import DistillationModule

    unwrapped = trainer.unwrap(model)
    return unwrapped.student if isinstance(unwrapped, DistillationModule) else model


def _logits(trainer: Any, network: nn.Module, pixels: Tensor) -> Tensor:
    from .hub import forward_logits

    return forward_logits(
        network, trainer.student_normalizer(pixels), trainer.student_library, **trainer._student_kwargs
    )


def _teacher_logits_on_pool(trainer: Any, inputs: dict[str, Tensor]) -> Tensor:
    """The teacher's logits on the pool, from the pool's own views (a live forward: outputs cached for the
    original views do not describe mixed images). The dict passed on holds image views only."""
    views = {key[len(TL_PREFIX) :]: value for key, value in inputs.items() if key.startswith(TL_PREFIX)}
    views = {key: value for key, value in views.items() if key in _view_keys(views)}
    preprocess = getattr(trainer.teacher, "preprocess", None)
    size = getattr(preprocess, "image_size", None)
    if "teacher_pixel_values" not in views and size and size != views["pixel_values"].shape[-1]:
        # No teacher view in the batch (e.g. a cached fixed teacher): resize the student's pixels.
        views["teacher_pixel_values"] = F.interpolate(
            views["pixel_values"].float(),
            size=(size, size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        ).clamp(0, 255)
    return trainer.teacher_logits(views)


def teacher_labelled_loss(
    trainer: Any, model: nn.Module, inputs: dict[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:
    """``alpha * tau^2 * KL(teacher(x') || student(x'))`` on the batch's teacher-labelled images.

    The teacher labels exactly the pixels the student sees (``tl_teacher_pixel_values`` when the teacher
    has its own view, else ``tl_pixel_values``). No hard label enters this term.

    With pick (``tl_keep`` < pool size) the student first scores the whole pool under ``torch.no_grad()``
    in **eval mode**: BatchNorm then uses its running statistics, so (1) the scoring pass does not move the
    running statistics with images that are then thrown away, (2) one image's score does not depend on
    which other images share the pool (with batch statistics it would), so "the top N/2 by KL" is well
    defined, and (3) dropout / drop-path noise does not reorder the ranking. The kept images then get an
    ordinary train-mode forward with gradients; the teacher's pool outputs are reused for them.

    Returns the weighted term and ``{"kd_aug": KL term}`` for logging.
    """
    from .losses import kd_loss

    args = trainer.args
    if trainer.teacher is None:
        raise ValueError(
            f"augmentation_mode='{args.augmentation_mode}' labels the augmented images with the teacher; "
            "give a teacher_model"
        )
    pixels = inputs[TL_PIXELS]
    teacher_logits = _teacher_logits_on_pool(trainer, inputs)
    network = _student_network(trainer, model)
    keep = int(inputs[TL_KEEP]) if TL_KEEP in inputs else pixels.shape[0]
    if keep < pixels.shape[0]:
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad():
                pool_logits = _logits(trainer, network, pixels)
        finally:
            network.train(was_training)
        picked = select_by_criterion(
            pool_logits, teacher_logits, keep, args.pick_criterion, temperature=args.temperature
        )
        pixels, teacher_logits = pixels.index_select(0, picked), teacher_logits.index_select(0, picked)
    student_logits = _logits(trainer, network, pixels)
    kd = kd_loss(student_logits, teacher_logits, args.temperature)
    return args.alpha * kd, {"kd_aug": kd}


def maybe_augment(collator: Any, args: Any, student_mean: tuple[float, ...], has_teacher: bool) -> Any:
    """Wrap the training collator for ``args.augmentation_mode`` (unchanged for ``none``)."""
    mode = args.augmentation_mode
    if mode == "none":
        return collator
    if mode in TL_MODES and not has_teacher:
        raise ValueError(
            f"DistillationConfig.augmentation_mode='{mode}': the augmented images are labelled by the teacher "
            "only; give a teacher_model (or use 'mixup'/'cutmix'/'cutout' for teacher-free training)"
        )
    return AugmentingCollator(
        base=collator,
        mode=mode,
        mix_config=args.mix_config(),
        cutout_fraction=args.cutout_fraction,
        cutout_fill=tuple(round(255.0 * m) for m in student_mean),
        pick=args.pick,
        pick_pool_factor=args.pick_pool_factor,
    )


def validate_augmentation(config: Any, fail: Any) -> None:
    """Check the augmentation fields of a ``DistillationConfig``; ``fail(field, message)`` raises."""
    mode = config.augmentation_mode
    if mode not in AUGMENTATION_MODES:
        fail("augmentation_mode", f"must be one of {list(AUGMENTATION_MODES)}, got {mode!r}")
    cutmix_on = config.cutmix_alpha > 0 or config.cutmix_minmax is not None
    if mode in ("cutmix", "tlcutmix") and not cutmix_on:
        fail(
            "cutmix_alpha",
            f"is 0, so augmentation_mode='{mode}' would never cut; set cutmix_alpha (1.0 as in CutMix) "
            "or cutmix_minmax",
        )
    if mode in ("mixup", "tlmixup") and not config.mixup_alpha > 0:
        fail(
            "mixup_alpha",
            f"is 0, so augmentation_mode='{mode}' would never mix; set mixup_alpha > 0 (e.g. 1.0)",
        )
    if mode in ("mixup", "cutmix") and config.teacher_input == "funmatch":
        fail(
            "augmentation_mode",
            f"'{mode}' would mix batches that teacher_input='funmatch' has already mixed; use 'none', "
            "'cutout', 'tlmixup' or 'tlcutmix' with funmatch",
        )
    if mode in TL_MODES and not config.alpha > 0:
        fail(
            "alpha",
            f"is 0, but augmentation_mode='{mode}' trains the augmented images with the KD term only "
            "(weight alpha); set alpha > 0 (0.9 in the paper)",
        )
    if not (isinstance(config.cutout_fraction, (int, float)) and 0 < config.cutout_fraction <= 1):
        fail("cutout_fraction", f"must be in (0, 1] (box side / image side), got {config.cutout_fraction!r}")
    if config.pick and mode not in TL_MODES:
        fail(
            "pick",
            f"selects among teacher-labelled images; set augmentation_mode to 'tlcutmix' or 'tlmixup' (got {mode!r})",
        )
    factor = config.pick_pool_factor
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 1):
        fail(
            "pick_pool_factor",
            f"must be a number >= 1 (pool size / kept images; 2.0 in the paper), got {factor!r}",
        )
    if config.pick_criterion not in PICK_CRITERIA:
        fail("pick_criterion", f"must be one of {list(PICK_CRITERIA)}, got {config.pick_criterion!r}")
