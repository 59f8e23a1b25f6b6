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

With ``pick=True`` (TL modes), the collator builds a pool of ``pick_pool_size_factor * N`` augmented
images in runs of ``N`` (each run pairs the batch anew and, with ``mix_mode='batch'``, draws its own lam
and box); inside the training step the student scores the pool without gradients and only the
``pick_keep_factor * N`` images with the highest ``pick_criterion`` (teacher-student KL by default) get
the gradient step. The defaults are the authors' released setting (``mix_n_run=2``, ``n_pick`` = batch
size: a pool of 2N, N kept, the paper's "N_p = N/2" of the pool). The teacher's outputs on the pool are
computed once and reused for the picked images. The scoring pass runs in train mode by default, as the
authors' (``pick_scoring``; see :func:`teacher_labelled_loss`).

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
from torch import Tensor, nn

from .batch import (
    PIXEL_VALUES,
    SAMPLE_IDS,
    TL_KEEP,
    TL_LAM,
    TL_PARTNER,
    TL_PIXEL_VALUES,
    TL_PREFIX,
    TL_SOURCE,
    teacher_labelled_views,
    view_keys,
)
from .contract import Needs
from .losses import ModelOutputs, standardize_logits
from .method import Build, Method
from .mixing import (
    SELECTION_CRITERIA,
    MixConfig,
    MixParams,
    apply_cutout,
    apply_mix,
    mix_batch,
    mix_config_of,
    per_sample_scores,
    sample_cutout_boxes,
    sample_mix_params,
)
from .teacher import member_logits, select_teacher_rows
from .terms import main_kd_needs

__all__ = [
    "AUGMENTATION_MODES",
    "PICK_CRITERIA",
    "PICK_SCORING",
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
PICK_SCORING = ("train", "eval")

# Batch keys of the teacher-labelled images (only in training batches of the TL modes): hf_distill.batch.
TL_PIXELS = TL_PIXEL_VALUES
TL_TEACHER_PIXELS = TL_PREFIX + "teacher_pixel_values"


_AUGMENT_STREAM = 3  # the base collator's mixing uses stream 2


def mode_mix_config(mode: str, base: MixConfig) -> MixConfig:
    """The mixing settings of one augmentation mode: ``base`` with only mixup (``mixup``/``tlmixup``)
    or only CutMix (``cutmix``/``tlcutmix``) left active. Other modes return ``base`` unchanged."""
    if mode in ("mixup", "tlmixup"):
        return replace(base, cutmix_alpha=0.0, cutmix_minmax=None)
    if mode in ("cutmix", "tlcutmix"):
        return replace(base, mixup_alpha=0.0)
    return base


def pick_sizes(
    batch_size: int, pick: bool, pool_size_factor: float = 2.0, keep_factor: float = 1.0
) -> tuple[int, int]:
    """``(pool size, images kept)`` of the teacher-labelled images for a batch of ``batch_size``.

    Without pick every pool image is kept and the pool has one image per original (``N``). With pick the
    pool has ``ceil(pool_size_factor * N)`` images and ``ceil(keep_factor * N)`` of them are kept (each at
    least one, kept at most the pool). The defaults are the authors' released runs: two CutMix runs per
    batch (``mix_n_run=2``, a pool of 2N) of which ``n_pick`` = N are kept — half the pool, the paper's
    ``N_p = N/2`` with its N counting the pool.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if not pick:
        return batch_size, batch_size
    # The small epsilon keeps e.g. 1.5 * 4 from rounding up to 7 through float error.
    pool = max(1, math.ceil(pool_size_factor * batch_size - 1e-9))
    keep = max(1, math.ceil(keep_factor * batch_size - 1e-9))
    return max(pool, keep), keep


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
    """Draw the pairs and the mixing parameters of a pool of ``pool_size`` teacher-labelled images.

    The pool is made of runs of ``batch_size`` images (the last one possibly shorter), as the authors call
    their CutMix ``mix_n_run`` times: each run pairs the batch by its own permutation
    (:func:`sample_tl_pairs`) and draws its own mixing parameters, so with ``mix_mode='batch'`` every run
    has its own lam, box and mixup/CutMix choice (``'elem'``: one draw per image, as before).
    """
    source, partner = sample_tl_pairs(batch_size, pool_size, generator)
    lam, use_cutmix, boxes, applied = [], [], [], []
    for start in range(0, pool_size, batch_size):
        size = min(batch_size, pool_size - start)
        # Draw for an even count: MixParams pairs row i with row B-1-i and would leave an odd middle unmixed;
        # here the pairs come from sample_tl_pairs, only the per-row lam/box/choice are used.
        params = sample_mix_params(size + size % 2, config, generator)
        lam.append(params.lam[:size])
        use_cutmix.append(params.use_cutmix[:size])
        boxes.append(params.boxes[:size])
        applied.append(params.applied[:size])
    if not lam:
        empty = torch.zeros(0)
        return TLPool(source, partner, empty, empty.bool(), torch.zeros(0, 4), empty.bool())
    drawn_applied = torch.cat(applied) & (source != partner)
    return TLPool(
        source=source,
        partner=partner,
        lam=torch.where(drawn_applied, torch.cat(lam), torch.ones(pool_size)),
        use_cutmix=torch.cat(use_cutmix) & drawn_applied,
        boxes=torch.where(drawn_applied[:, None], torch.cat(boxes), torch.zeros(pool_size, 4)),
        applied=drawn_applied,
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
    pick_pool_size_factor: float = 2.0
    pick_keep_factor: float = 1.0

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
        keys = view_keys(batch)
        size = int(batch[PIXEL_VALUES].shape[0])
        generator = self.generator(batch[SAMPLE_IDS])
        if self.mode == "cutout":
            boxes = sample_cutout_boxes(size, self.cutout_fraction, generator)
            for key, view in zip(keys, apply_cutout(boxes, *(batch[k] for k in keys), fill=self.cutout_fill)):
                batch[key] = view
        elif self.mode in ("mixup", "cutmix"):
            mix_batch(batch, sample_mix_params(size, self.mix_config, generator))
        else:
            pool_size, keep = pick_sizes(size, self.pick, self.pick_pool_size_factor, self.pick_keep_factor)
            pool = build_tl_pool(size, pool_size, self.mix_config, generator)
            # x' is mixed in every view with the same parameters, so the teacher sees x' as its teacher-input
            # mode prescribes: the student's crops (same/*, funmatch), or its own fixed / independent crops.
            for key, view in zip(keys, pool.apply(*(batch[k] for k in keys))):
                batch[TL_PREFIX + key] = view
            batch[TL_SOURCE], batch[TL_PARTNER], batch[TL_LAM] = pool.source, pool.partner, pool.lam
            batch[TL_KEEP] = torch.tensor(keep, dtype=torch.long)
        return batch


# ------------------------------------------------------------------------------------------ training step


def pick_scores(student_logits: Tensor, teacher_logits: Tensor, criterion: str, temperature: float) -> Tensor:
    """Per-image ``pick_criterion`` scores of the pool. For an ensemble reduced by ``kl_sum`` (its output carries
    the members' logits) criteria that read the teacher are summed over the members, as that KD term is."""
    members = member_logits(teacher_logits)
    if members is None or criterion == "student_entropy":
        return per_sample_scores(student_logits, teacher_logits, criterion, temperature)
    return torch.stack(
        [per_sample_scores(student_logits, z, criterion, temperature) for z in members.unbind(0)]
    ).sum(0)


def select_pool(
    student_logits: Tensor, teacher_logits: Tensor, keep: int, criterion: str, temperature: float
) -> Tensor:
    """Indices of the ``keep`` pool images with the highest :func:`pick_scores` (ties: lower index first)."""
    scores = pick_scores(student_logits, teacher_logits, criterion, temperature)
    return torch.sort(scores, descending=True, stable=True).indices[:keep]


def teacher_labelled_loss(
    trainer: Any, model: nn.Module, inputs: dict[str, Tensor], student: ModelOutputs | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """``w * KD(teacher(x'), student(x'))`` on the batch's teacher-labelled images, with the trainer's KD
    (``logit_standardization`` included) and the KD weight of the original images (``alpha``, or 1 for
    unlabelled data). No hard label enters this term.

    The teacher labels exactly the pixels the student sees (:func:`hf_distill.teacher.label_new_images`).
    With pick (``tl_keep`` < pool size) the student first scores the whole pool under ``torch.no_grad()`` on
    the same logits the KD reads (standardised when ``logit_standardization`` is on), and only the kept
    images get a forward with gradients; the teacher's pool outputs are reused for them. The scoring pass
    runs in the mode ``pick_scoring`` names:

    * ``train`` (default, the authors' code: their student stays in ``train()`` for ``get_entropy_batch``):
      BatchNorm normalises with the pool's own batch statistics and, as in their code, the pass moves the
      running statistics (momentum update, not restored: the pool images are training images of the same
      distribution as the kept ones); dropout / drop-path are active;
    * ``eval``: running statistics, left untouched, no dropout: an image's score does not depend on the rest
      of the pool, and thrown-away images never reach the statistics.

    When a method holds the student for this step (``student.held``), no gradient may reach it: the term
    is left out. Returns the weighted term and ``{"kd_aug": KD term}`` for logging.
    """
    args = trainer.args
    if student is not None and student.held:
        return trainer.zero_loss(), {}
    pixels = inputs[TL_PIXELS]
    teacher_logits = trainer.teacher_source.label(teacher_labelled_views(inputs))
    network = trainer.student_network(model)
    keep = int(inputs[TL_KEEP]) if TL_KEEP in inputs else pixels.shape[0]
    if keep < pixels.shape[0]:
        was_training = network.training
        network.train(getattr(args, "pick_scoring", "train") == "train" and was_training)
        try:
            with torch.no_grad():
                pool_logits = trainer.student_network_logits(network, pixels)
        finally:
            network.train(was_training)
        scored_student, scored_teacher = pool_logits, teacher_logits
        if args.logit_standardization:
            scored_student, scored_teacher = (
                standardize_logits(pool_logits),
                standardize_logits(teacher_logits),
            )
        picked = select_pool(scored_student, scored_teacher, keep, args.pick_criterion, args.temperature)
        pixels, teacher_logits = pixels.index_select(0, picked), select_teacher_rows(teacher_logits, picked)
    student_logits = trainer.student_network_logits(network, pixels)
    kd = trainer.kd(student_logits, teacher_logits, args.temperature)
    return trainer.kd_weight(inputs) * kd, {"kd_aug": kd}


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
        mix_config=mix_config_of(args),
        cutout_fraction=args.cutout_fraction,
        cutout_fill=tuple(round(255.0 * m) for m in student_mean),
        pick=args.pick,
        pick_pool_size_factor=args.pick_pool_size_factor,
        pick_keep_factor=args.pick_keep_factor,
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
    if config.pick_pool_factor is not None:
        factor = config.pick_pool_factor
        fail(
            "pick_pool_factor",
            "was replaced by pick_pool_size_factor (pool / batch size N) and pick_keep_factor (kept / N); "
            f"pick_pool_factor={factor!r} (a pool of {factor!r} x N/2, N/2 kept) is pick_pool_size_factor="
            f"{factor / 2 if isinstance(factor, (int, float)) else factor!r}, pick_keep_factor=0.5. The defaults "
            "(2.0, 1.0: a pool of 2N, N kept) are the authors' setting",
        )
    for name in ("pick_pool_size_factor", "pick_keep_factor"):
        value = getattr(config, name)
        if not (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        ):
            fail(name, f"must be a finite number > 0 (a multiple of the batch size), got {value!r}")
    if config.pick_keep_factor > config.pick_pool_size_factor:
        fail(
            "pick_keep_factor",
            f"is {config.pick_keep_factor}, more than the pool (pick_pool_size_factor={config.pick_pool_size_factor}); "
            "keep at most the pool (the authors: pool 2.0, keep 1.0)",
        )
    if config.pick_scoring not in PICK_SCORING:
        fail(
            "pick_scoring",
            f"must be one of {list(PICK_SCORING)} ('train' is the authors'), got {config.pick_scoring!r}",
        )
    if config.pick_criterion not in PICK_CRITERIA:
        fail("pick_criterion", f"must be one of {list(PICK_CRITERIA)}, got {config.pick_criterion!r}")


class AugmentationMethod(Method):
    """The augmentation modes as a method: wraps the training collator; the TL modes add the KD-only loss
    on the teacher-labelled images x'."""

    name = "augmentation"

    @classmethod
    def enabled(cls, args: Any) -> bool:
        return args.augmentation_mode != "none"

    validate_config = staticmethod(validate_augmentation)

    @classmethod
    def needs(cls, args: Any) -> list[tuple[str, Needs]]:
        mode = args.augmentation_mode
        setting = f"augmentation_mode={mode!r}" + (" with pick" if args.pick else "")
        if mode in TL_MODES:
            kd = main_kd_needs(args)
            return [
                (
                    setting,
                    Needs(
                        teacher=kd.teacher,
                        temperature=kd.temperature,
                        labels_new=True,
                        teacher_view=True,  # x' is mixed in every view, the teacher's included
                        why="labels the mixed images x' with the teacher"
                        + (" and standardises its logits" if args.logit_standardization else ""),
                    ),
                )
            ]
        if mode != "none":  # the teacher must see the augmented image, so its outputs cannot be stored
            return [(setting, Needs(teacher="none", live=True, why="changes the images the teacher labels"))]
        return []

    def wrap_collator(self, collator: Any, build: Build) -> Any:
        return maybe_augment(
            collator, self.args, build.student_preprocess.mean, has_teacher=build.teacher is not None
        )

    def extra_loss(self, step: Any, model: nn.Module, batch: dict[str, Tensor], student: Any, teacher: Any):
        if not model.training or TL_PIXELS not in batch:
            return None
        return teacher_labelled_loss(step, model, batch, student)
