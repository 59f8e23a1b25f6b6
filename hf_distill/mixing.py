"""Batch-level mixing (Mixup, CutMix, Cutout) that samples its parameters once and applies them anywhere.

Knowledge distillation often feeds the *same* augmented batch to a student and a teacher, possibly at
different resolutions (e.g. a 224 px student view and a 384 px teacher view). Mixing each view with its
own random draw would hand the two networks different images, so this module separates the two steps:

1. :func:`sample_mix_params` draws everything random once (partner index, mixing weight, mixup/cutmix
   choice, cut box) from an explicit :class:`torch.Generator`, producing a :class:`MixParams`;
2. :func:`apply_mix` applies those parameters to any number of image tensors, and :func:`mix_targets`
   turns them into soft targets.

Cut boxes are stored in **relative** coordinates ``(y0, x0, y1, x1)`` in ``[0, 1]`` so one box can be
used at every resolution. At a given ``H x W`` the box becomes the pixel rows ``[y0p, y1p)`` and
columns ``[x0p, x1p)`` with ``y0p = floor(y0 * H + 0.5)`` (round half up) and so on; see
:func:`boxes_to_pixels`. ``MixParams.lam`` is computed on the relative box, so at a concrete resolution
the fraction of pasted pixels can differ from ``1 - lam`` by at most about ``1/H + 1/W``;
:meth:`MixParams.lam_at_resolution` gives the exact per-pixel value for one resolution.

Parameter names follow timm's ``Mixup`` (``mixup_alpha``, ``cutmix_alpha``, ``cutmix_minmax``, ``prob``,
``switch_prob``, ``mode``, ``label_smoothing``, ``correct_lam``). The partner of sample ``i`` is always
sample ``B - 1 - i`` (the flipped batch). With an odd batch size the middle sample is its own partner;
it is never mixed and gets ``lam = 1``.

The module also provides Cutout (:func:`sample_cutout_boxes` / :func:`apply_cutout`), the TL-mix entry
point :func:`tl_mix`, and the per-sample scores used to *pick* informative mixed samples
(:func:`per_sample_scores` / :func:`select_by_criterion`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import MIX_LAM, MIX_PERM, view_keys

__all__ = [
    "MIX_MODES",
    "SELECTION_CRITERIA",
    "MixConfig",
    "MixParams",
    "apply_cutout",
    "apply_mix",
    "boxes_to_pixels",
    "cutout",
    "mix_targets",
    "per_sample_scores",
    "sample_cutout_boxes",
    "sample_mix_params",
    "select_by_criterion",
    "tl_mix",
]

MIX_MODES = ("batch", "pair", "elem")
SELECTION_CRITERIA = ("kl", "student_entropy", "teacher_entropy", "cross_entropy")

DeviceLike = torch.device | str | None


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------


@dataclass
class MixParams:
    """One sampled set of mixing parameters for a batch of ``B`` samples.

    Attributes:
        perm: ``LongTensor (B,)``, index of the partner of each sample (``B - 1 - i``).
        lam: ``Tensor (B,)`` float32, weight of the sample itself in the mixed image and target. For
            cutmix with ``correct_lam`` it is ``1 - area`` of the (clipped) relative box. Samples that
            are not mixed have ``lam == 1``.
        use_cutmix: ``BoolTensor (B,)``, ``True`` where the sample is mixed by pasting a box.
        boxes: ``Tensor (B, 4)`` float32, relative cut boxes ``(y0, x0, y1, x1)`` in ``[0, 1]``;
            all zeros (an empty box) where ``use_cutmix`` is ``False``.
        applied: ``BoolTensor (B,)``, ``True`` where the sample is actually mixed (mixup or cutmix).
            ``False`` where ``prob`` skipped it, mixing is disabled, or the sample is its own partner.
    """

    perm: Tensor
    lam: Tensor
    use_cutmix: Tensor
    boxes: Tensor
    applied: Tensor

    @property
    def batch_size(self) -> int:
        """Number of samples the parameters were drawn for."""
        return int(self.perm.shape[0])

    @property
    def use_mixup(self) -> Tensor:
        """``BoolTensor (B,)``, ``True`` where the sample is blended (mixup) with its partner."""
        return self.applied & ~self.use_cutmix

    def to(self, device: DeviceLike) -> MixParams:
        """Return a copy with every tensor on ``device``."""
        return MixParams(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @classmethod
    def identity(cls, batch_size: int, device: DeviceLike = None) -> MixParams:
        """Parameters that leave every sample unchanged (``lam = 1``, nothing applied)."""
        return cls(
            perm=torch.arange(batch_size - 1, -1, -1, dtype=torch.long, device=device),
            lam=torch.ones(batch_size, dtype=torch.float32, device=device),
            use_cutmix=torch.zeros(batch_size, dtype=torch.bool, device=device),
            boxes=torch.zeros(batch_size, 4, dtype=torch.float32, device=device),
            applied=torch.zeros(batch_size, dtype=torch.bool, device=device),
        )

    def lam_at_resolution(self, height: int, width: int) -> Tensor:
        """``lam`` recomputed on the pixel grid of an ``height x width`` image.

        For cutmix samples this is ``1 - (pasted pixels) / (height * width)`` with the box rounded as
        in :func:`boxes_to_pixels`; for the other samples it equals :attr:`lam`. Useful to build
        targets that match one particular view exactly.
        """
        pix = boxes_to_pixels(self.boxes, height, width)
        area = ((pix[:, 2] - pix[:, 0]) * (pix[:, 3] - pix[:, 1])).to(torch.float64)
        lam_pix = (1.0 - area / float(height * width)).to(self.lam.dtype)
        return torch.where(self.use_cutmix, lam_pix, self.lam)


@dataclass
class MixConfig:
    """Mixup / CutMix settings, named as in timm's ``Mixup``.

    Attributes:
        mixup_alpha: Beta(alpha, alpha) concentration for mixup; mixup is active when ``> 0``.
        cutmix_alpha: Beta(alpha, alpha) concentration for cutmix; cutmix is active when ``> 0``.
        cutmix_minmax: ``(min, max)`` box side as a fraction of the image side. When set, cutmix is
            active whatever ``cutmix_alpha`` is, each box side is drawn uniformly in ``[min, max)``
            and ``lam`` is always the box area complement (as in timm).
        prob: probability that a batch / pair / sample (depending on ``mode``) is mixed at all.
        switch_prob: probability of choosing cutmix over mixup when both are active.
        mode: ``'batch'`` (one draw for the whole batch), ``'pair'`` (one draw per pair ``i, B-1-i``)
            or ``'elem'`` (one draw per sample).
        label_smoothing: smoothing for :func:`mix_targets`, in ``[0, 1)``.
        correct_lam: recompute ``lam`` from the area of the box after clipping it to the image.

    When neither mixup nor cutmix is active, :func:`sample_mix_params` returns identity parameters.
    """

    mixup_alpha: float = 1.0
    cutmix_alpha: float = 0.0
    cutmix_minmax: tuple[float, float] | None = None
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"
    label_smoothing: float = 0.1
    correct_lam: bool = True

    @property
    def mixup_active(self) -> bool:
        return self.mixup_alpha > 0.0

    @property
    def cutmix_active(self) -> bool:
        return self.cutmix_alpha > 0.0 or self.cutmix_minmax is not None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field and how to fix it."""
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0 (0 disables it), got {value!r}")
        for name in ("prob", "switch_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability and must lie in [0, 1], got {value!r}")
        if self.cutmix_minmax is not None:
            minmax = tuple(self.cutmix_minmax)
            if len(minmax) != 2 or not 0.0 < minmax[0] < minmax[1] <= 1.0:
                raise ValueError(
                    "cutmix_minmax must be a pair (min, max) of box-side fractions with "
                    f"0 < min < max <= 1, e.g. (0.2, 0.8), or None; got {self.cutmix_minmax!r}"
                )
        if self.mode not in MIX_MODES:
            raise ValueError(f"mode must be one of {MIX_MODES}, got {self.mode!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"label_smoothing must lie in [0, 1) (0 disables it), got {self.label_smoothing!r}"
            )


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A NumPy generator seeded by one draw from ``generator`` (so ``generator`` alone fixes the result)."""
    device = generator.device if generator is not None else "cpu"
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=device, dtype=torch.int64)
    return np.random.default_rng(int(seed.item()))


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
    return int(batch_size)


def _group_index(batch_size: int, mode: str) -> np.ndarray:
    """Which random draw each sample uses: one per batch, per pair ``(i, B-1-i)`` or per sample."""
    idx = np.arange(batch_size)
    if mode == "batch":
        return np.zeros(batch_size, dtype=np.int64)
    if mode == "pair":
        return np.minimum(idx, batch_size - 1 - idx)
    return idx


def sample_mix_params(
    batch_size: int,
    config: MixConfig,
    generator: torch.Generator | None = None,
    device: DeviceLike = None,
) -> MixParams:
    """Draw mixup / cutmix parameters for a batch once, to be applied to any number of views.

    Args:
        batch_size: number of samples ``B``.
        config: the mixing settings; validated first.
        generator: source of all randomness (``None`` uses torch's default CPU generator). The same
            generator state gives the same parameters.
        device: where the returned tensors live; defaults to the generator's device. Sampling itself
            happens on the host.

    Returns:
        A :class:`MixParams`. Per mode:

        * ``'batch'``: one apply decision, one mixup/cutmix choice, one ``lam`` and one box shared by
          every sample;
        * ``'pair'``: one draw per pair ``(i, B-1-i)``, both members get the same ``lam`` and box;
        * ``'elem'``: one draw per sample.

        The partner is always ``B - 1 - i``. With odd ``B`` the middle sample is its own partner and
        is left unmixed (``lam = 1``, ``applied = False``).
    """
    config.validate()
    batch_size = _check_batch_size(batch_size)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    rng = _numpy_rng(generator)

    group = _group_index(batch_size, config.mode)
    n = int(group.max()) + 1 if batch_size else 0

    # Draw everything in a fixed order so one seed always maps to the same values for a given config.
    u_apply = rng.random(n)
    u_switch = rng.random(n)
    lam_mixup = rng.beta(config.mixup_alpha, config.mixup_alpha, n) if config.mixup_active else np.ones(n)
    lam_cutmix = (
        rng.beta(config.cutmix_alpha, config.cutmix_alpha, n) if config.cutmix_alpha > 0 else np.ones(n)
    )
    u_pos = rng.random((n, 2))
    u_size = rng.random((n, 2))

    applied = u_apply < config.prob
    if config.mixup_active and config.cutmix_active:
        use_cutmix = u_switch < config.switch_prob
    elif config.cutmix_active:
        use_cutmix = np.ones(n, dtype=bool)
    else:
        use_cutmix = np.zeros(n, dtype=bool)
    if not (config.mixup_active or config.cutmix_active):
        applied = np.zeros(n, dtype=bool)
    use_cutmix &= applied

    if config.cutmix_minmax is not None:
        lo, hi = config.cutmix_minmax
        cut_h = lo + (hi - lo) * u_size[:, 0]
        cut_w = lo + (hi - lo) * u_size[:, 1]
        y0 = (1.0 - cut_h) * u_pos[:, 0]
        x0 = (1.0 - cut_w) * u_pos[:, 1]
        y1, x1 = y0 + cut_h, x0 + cut_w
    else:
        side = np.sqrt(np.clip(1.0 - lam_cutmix, 0.0, 1.0))
        cy, cx = u_pos[:, 0], u_pos[:, 1]
        y0, y1 = np.clip(cy - side / 2, 0.0, 1.0), np.clip(cy + side / 2, 0.0, 1.0)
        x0, x1 = np.clip(cx - side / 2, 0.0, 1.0), np.clip(cx + side / 2, 0.0, 1.0)
    boxes = np.stack([y0, x0, y1, x1], axis=1).astype(np.float32)
    boxes = np.where(use_cutmix[:, None], boxes, np.float32(0.0))

    # ``lam`` from the box actually stored, so it matches what apply_mix uses.
    b = boxes.astype(np.float64)
    lam_box = 1.0 - (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    if config.correct_lam or config.cutmix_minmax is not None:
        lam_cut = lam_box
    else:
        lam_cut = lam_cutmix
    lam = np.where(use_cutmix, lam_cut, lam_mixup)
    lam = np.where(applied, lam, 1.0)

    # Expand groups to samples; a sample paired with itself is never mixed.
    perm = np.arange(batch_size)[::-1].copy()
    self_paired = perm == np.arange(batch_size)
    applied_s = applied[group] & ~self_paired
    cut_s = use_cutmix[group] & applied_s
    lam_s = np.where(applied_s, lam[group], 1.0)
    boxes_s = np.where(cut_s[:, None], boxes[group], np.float32(0.0))

    return MixParams(
        perm=torch.as_tensor(perm, dtype=torch.long).to(device),
        lam=torch.as_tensor(lam_s, dtype=torch.float32).to(device),
        use_cutmix=torch.as_tensor(cut_s, dtype=torch.bool).to(device),
        boxes=torch.as_tensor(boxes_s, dtype=torch.float32).reshape(batch_size, 4).to(device),
        applied=torch.as_tensor(applied_s, dtype=torch.bool).to(device),
    )


# --------------------------------------------------------------------------------------------------
# Applying
# --------------------------------------------------------------------------------------------------


def boxes_to_pixels(boxes: Tensor, height: int, width: int) -> Tensor:
    """Relative boxes ``(B, 4)`` ``(y0, x0, y1, x1)`` -> integer pixel bounds for an ``height x width`` image.

    Each coordinate is rounded half up (``floor(v * size + 0.5)``) and clamped to ``[0, size]``; the
    box covers rows ``[y0, y1)`` and columns ``[x0, x1)``. An empty relative box gives an empty pixel box.
    """
    # fp64 makes ``v * size`` exact for fp32 boxes, so the rounding is exact; MPS lacks fp64.
    dtype = torch.float32 if boxes.device.type == "mps" else torch.float64
    scale = torch.tensor([height, width, height, width], dtype=dtype, device=boxes.device)
    pix = torch.floor(boxes.to(dtype) * scale + 0.5).to(torch.long)
    upper = scale.to(torch.long)
    return torch.minimum(torch.clamp(pix, min=0), upper)


def _box_mask(boxes: Tensor, height: int, width: int, device: torch.device) -> Tensor:
    """``BoolTensor (B, H, W)``, ``True`` inside each sample's box."""
    pix = boxes_to_pixels(boxes.to(device), height, width)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    in_y = (rows[None, :] >= pix[:, 0:1]) & (rows[None, :] < pix[:, 2:3])
    in_x = (cols[None, :] >= pix[:, 1:2]) & (cols[None, :] < pix[:, 3:4])
    return in_y[:, :, None] & in_x[:, None, :]


def _check_images(images: Sequence[Tensor], batch_size: int, what: str) -> None:
    if not images:
        raise ValueError(f"{what} needs at least one image tensor")
    for k, img in enumerate(images):
        if not isinstance(img, Tensor) or img.ndim < 3:
            raise ValueError(f"{what}: image {k} must be a tensor shaped (B, ..., H, W), got {type(img)}")
        if img.shape[0] != batch_size:
            raise ValueError(
                f"{what}: image {k} has batch size {img.shape[0]} but the parameters are for {batch_size}"
            )
        if img.dtype == torch.bool or img.is_complex():
            raise ValueError(f"{what}: image {k} has unsupported dtype {img.dtype}")


def _expand(t: Tensor, ndim: int) -> Tensor:
    return t.reshape(t.shape[0], *([1] * (ndim - 1)))


def _blend(x: Tensor, partner: Tensor, weight: Tensor) -> Tensor:
    """``weight * x + (1 - weight) * partner`` in at least fp32, cast back (integers rounded, clamped)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = _expand(weight.to(device=x.device, dtype=compute), x.ndim)
    out = w * x.to(compute) + (1.0 - w) * partner.to(compute)
    if x.is_floating_point():
        return out.to(x.dtype)
    info = torch.iinfo(x.dtype)
    return torch.round(out).clamp_(info.min, info.max).to(x.dtype)


def _mix_uint8_per_sample(params: MixParams, x: Tensor) -> Tensor:
    """:func:`apply_mix` for one uint8 CPU batch, sample by sample: the same fp32 products and sum, rounded
    half to even, as the batched tensor path, but only on the samples that are mixed, in cache-sized
    pieces and with NumPy's fast float -> uint8 cast. Cut boxes are pasted as slices."""
    p = params.to("cpu")
    source = np.ascontiguousarray(x.numpy())
    mixed = np.empty_like(source)  # every sample written below: blended, or copied as it is
    perm = p.perm.tolist()
    use_mixup, use_cutmix = p.use_mixup.tolist(), p.use_cutmix.tolist()
    lam = p.lam.to(torch.float32).numpy()
    height, width = x.shape[-2], x.shape[-1]
    boxes = boxes_to_pixels(p.boxes, height, width).tolist() if any(use_cutmix) else None
    own = other = None
    for i, partner in enumerate(perm):
        if use_mixup[i]:
            if own is None:
                own = np.empty(source.shape[1:], dtype=np.float32)
                other = np.empty_like(own)
            weight = lam[i]
            np.multiply(source[i], weight, out=own)
            np.multiply(source[partner], np.float32(1.0) - weight, out=other)
            np.add(own, other, out=own)
            np.rint(own, out=own)
            np.clip(own, 0.0, 255.0, out=own)
            np.copyto(mixed[i], own, casting="unsafe")
        else:
            mixed[i] = source[i]
        if use_cutmix[i]:
            y0, x0, y1, x1 = boxes[i]
            mixed[i, ..., y0:y1, x0:x1] = source[partner, ..., y0:y1, x0:x1]
    return torch.from_numpy(mixed)


def apply_mix(params: MixParams, *images: Tensor) -> tuple[Tensor, ...]:
    """Apply the same mixing parameters to every image tensor.

    Args:
        params: from :func:`sample_mix_params`; moved to each image's device as needed.
        *images: tensors shaped ``(B, ..., H, W)`` (typically ``(B, C, H, W)``), floating point or
            integer. Views may have different resolutions and dtypes.

    Returns:
        One new tensor per input, same shape, dtype and device; inputs are not modified. Mixup samples
        become ``lam * x[i] + (1 - lam) * x[perm[i]]`` (computed in fp32, or fp64 for fp64 input;
        integer images are rounded half to even and clamped). Cutmix samples take the pixels inside
        their box from ``x[perm[i]]``; the relative box is rounded per view by :func:`boxes_to_pixels`.
        ``params.lam`` was computed on the relative box, see :meth:`MixParams.lam_at_resolution` for
        the exact value at one resolution.
    """
    _check_images(images, params.batch_size, "apply_mix")
    out = []
    for x in images:
        if x.device.type == "cpu" and x.dtype == torch.uint8 and x.ndim >= 3:  # the collators' case
            out.append(_mix_uint8_per_sample(params, x))
            continue
        p = params.to(x.device)
        partner = x.index_select(0, p.perm)
        mixed = x.clone()
        mixup = p.use_mixup
        if bool(mixup.any()):
            blended = _blend(x, partner, p.lam)
            mixed = torch.where(_expand(mixup, x.ndim), blended, mixed)
        if bool(p.use_cutmix.any()):
            mask = _box_mask(p.boxes, x.shape[-2], x.shape[-1], x.device) & p.use_cutmix[:, None, None]
            mask = mask.reshape(x.shape[0], *([1] * (x.ndim - 3)), x.shape[-2], x.shape[-1])
            mixed = torch.where(mask, partner, mixed)
        out.append(mixed)
    return tuple(out)


def tl_mix(params: MixParams, *images: Tensor) -> tuple[Tensor, ...]:
    """TLmixup / TLCutMix: mix the student and teacher inputs with the same parameters.

    Identical to :func:`apply_mix`; pass the student view and the teacher view (any resolutions) so
    both networks see the same mixed images.
    """
    return apply_mix(params, *images)


def mix_targets(params: MixParams, labels: Tensor, num_classes: int, label_smoothing: float = 0.0) -> Tensor:
    """Soft targets ``lam * y[i] + (1 - lam) * y[perm[i]]``, shaped ``(B, num_classes)``, float32.

    ``labels`` are class indices ``(B,)`` or dense probabilities ``(B, num_classes)``. Index labels are
    smoothed as in timm before mixing: ``off = s / C``, ``on = 1 - s + off``; dense labels become
    ``y * (1 - s) + s / C``. Each row sums to 1 when the inputs do.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    if labels.shape[0] != params.batch_size:
        raise ValueError(
            f"labels have batch size {labels.shape[0]} but the parameters are for {params.batch_size}"
        )
    device = labels.device
    if labels.ndim == 1:
        if labels.is_floating_point():
            raise ValueError("class-index labels must be an integer tensor")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]"
            )
        off = label_smoothing / num_classes
        y = F.one_hot(labels.long(), num_classes).to(torch.float32) * (1.0 - label_smoothing) + off
    elif labels.ndim == 2 and labels.shape[1] == num_classes:
        y = labels.to(torch.float32) * (1.0 - label_smoothing) + label_smoothing / num_classes
    else:
        raise ValueError(
            f"labels must be (B,) indices or (B, {num_classes}) probabilities, got {tuple(labels.shape)}"
        )
    lam = params.lam.to(device=device, dtype=torch.float32)[:, None]
    return lam * y + (1.0 - lam) * y.index_select(0, params.perm.to(device))


# --------------------------------------------------------------------------------------------------
# Cutout
# --------------------------------------------------------------------------------------------------


def sample_cutout_boxes(
    batch_size: int,
    size_fraction: float | tuple[float, float],
    generator: torch.Generator | None = None,
    device: DeviceLike = None,
) -> Tensor:
    """Cutout boxes (DeVries & Taylor, 2017) in relative ``(y0, x0, y1, x1)`` coordinates.

    Each box has side ``size_fraction`` of the image side (or ``(h_fraction, w_fraction)``), its centre
    uniform in the image, and is clipped to ``[0, 1]`` (so boxes near a border are smaller).

    Returns:
        ``Tensor (B, 4)`` float32 on ``device`` (default: the generator's device).
    """
    batch_size = _check_batch_size(batch_size)
    fh, fw = (size_fraction, size_fraction) if np.isscalar(size_fraction) else tuple(size_fraction)
    for f in (fh, fw):
        if not 0.0 <= f <= 1.0:
            raise ValueError(
                f"size_fraction must lie in [0, 1] (box side / image side), got {size_fraction!r}"
            )
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    rng = _numpy_rng(generator)
    centre = rng.random((batch_size, 2))
    half = np.array([fh, fw]) / 2.0
    lo = np.clip(centre - half, 0.0, 1.0)
    hi = np.clip(centre + half, 0.0, 1.0)
    boxes = np.concatenate([lo, hi], axis=1).astype(np.float32)
    return torch.as_tensor(boxes).reshape(batch_size, 4).to(device)


def apply_cutout(
    boxes: Tensor, *images: Tensor, fill: float | Sequence[float] | Tensor = 0
) -> tuple[Tensor, ...]:
    """Fill each sample's relative box with ``fill`` in every image (same boxes at every resolution).

    Args:
        boxes: ``(B, 4)`` relative boxes, e.g. from :func:`sample_cutout_boxes`; an all-zero row leaves
            that sample untouched. Rounded per view by :func:`boxes_to_pixels`.
        *images: tensors ``(B, C, H, W)`` (or ``(B, ..., H, W)``), any real dtype.
        fill: a scalar, or one value per channel for ``(B, C, H, W)`` input.

    Returns:
        New tensors; inputs are not modified.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be shaped (B, 4), got {tuple(boxes.shape)}")
    _check_images(images, boxes.shape[0], "apply_cutout")
    out = []
    for x in images:
        mask = _box_mask(boxes, x.shape[-2], x.shape[-1], x.device)
        mask = mask.reshape(x.shape[0], *([1] * (x.ndim - 3)), x.shape[-2], x.shape[-1])
        value = torch.as_tensor(fill, device=x.device)
        if value.ndim == 1:
            if x.ndim != 4 or value.shape[0] != x.shape[1]:
                raise ValueError(f"per-channel fill needs (B, C, H, W) input with C == {value.shape[0]}")
            value = value.reshape(1, -1, 1, 1)
        elif value.ndim != 0:
            raise ValueError("fill must be a scalar or a 1-D per-channel sequence")
        if not x.is_floating_point():
            info = torch.iinfo(x.dtype)
            value = torch.round(value.to(torch.float64)).clamp(info.min, info.max)
        out.append(torch.where(mask, value.to(x.dtype), x))
    return tuple(out)


def cutout(
    *images: Tensor,
    size_fraction: float | tuple[float, float],
    generator: torch.Generator | None = None,
    fill: float | Sequence[float] | Tensor = 0,
) -> tuple[Tensor, ...]:
    """Sample one set of Cutout boxes and apply it to every image (views of the same batch)."""
    if not images:
        raise ValueError("cutout needs at least one image tensor")
    boxes = sample_cutout_boxes(images[0].shape[0], size_fraction, generator, device=images[0].device)
    return apply_cutout(boxes, *images, fill=fill)


# --------------------------------------------------------------------------------------------------
# Pick: choose informative samples by a per-sample score
# --------------------------------------------------------------------------------------------------


def _log_probs(logits: Tensor | None, temperature: float, name: str) -> Tensor:
    if logits is None:
        raise ValueError(f"{name} is required for this criterion")
    if logits.ndim != 2:
        raise ValueError(f"{name} must be shaped (B, num_classes), got {tuple(logits.shape)}")
    return F.log_softmax(logits.detach().float() / temperature, dim=-1)


def _entropy(log_p: Tensor) -> Tensor:
    p = log_p.exp()
    return -(torch.where(p > 0, p * log_p, torch.zeros_like(p))).sum(-1)


def per_sample_scores(
    student_logits: Tensor | None,
    teacher_logits: Tensor | None,
    criterion: str = "kl",
    temperature: float = 1.0,
) -> Tensor:
    """Per-sample score ``(B,)`` in fp32, without gradients, at ``temperature`` (no ``T^2`` factor).

    Criteria, with ``p = softmax(logits / temperature)``:

    * ``'kl'``: ``KL(p_t || p_s) = sum p_t (log p_t - log p_s)``;
    * ``'student_entropy'``: ``-sum p_s log p_s`` (``teacher_logits`` may be ``None``);
    * ``'teacher_entropy'``: ``-sum p_t log p_t`` (``student_logits`` may be ``None``);
    * ``'cross_entropy'``: ``-sum p_t log p_s``.
    """
    if criterion not in SELECTION_CRITERIA:
        raise ValueError(f"criterion must be one of {SELECTION_CRITERIA}, got {criterion!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    with torch.no_grad():
        if criterion == "student_entropy":
            return _entropy(_log_probs(student_logits, temperature, "student_logits"))
        if criterion == "teacher_entropy":
            return _entropy(_log_probs(teacher_logits, temperature, "teacher_logits"))
        log_s = _log_probs(student_logits, temperature, "student_logits")
        log_t = _log_probs(teacher_logits, temperature, "teacher_logits")
        if log_s.shape != log_t.shape:
            raise ValueError(
                f"student_logits {tuple(log_s.shape)} and teacher_logits {tuple(log_t.shape)} must match"
            )
        p_t = log_t.exp()
        if criterion == "kl":
            return F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)
        return -(torch.where(p_t > 0, p_t * log_s, torch.zeros_like(p_t))).sum(-1)


def select_by_criterion(
    student_logits: Tensor | None,
    teacher_logits: Tensor | None,
    k: int,
    criterion: str = "kl",
    temperature: float = 1.0,
) -> Tensor:
    """Indices of the ``k`` samples with the highest :func:`per_sample_scores`.

    Returns a ``LongTensor (k,)`` on the logits' device, ordered by decreasing score; equal scores are
    ordered by increasing sample index (stable sort), so the result is deterministic.
    """
    scores = per_sample_scores(student_logits, teacher_logits, criterion, temperature)
    n = scores.shape[0]
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k <= n:
        raise ValueError(f"k must be an int in [0, {n}] (the batch size), got {k!r}")
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[: int(k)]


def mix_config_of(args: Any) -> MixConfig:
    """The batch-mixing parameters of a :class:`~hf_distill.DistillationConfig` as a :class:`MixConfig`."""
    return MixConfig(
        mixup_alpha=args.mixup_alpha,
        cutmix_alpha=args.cutmix_alpha,
        cutmix_minmax=tuple(args.cutmix_minmax) if args.cutmix_minmax else None,
        prob=args.mix_prob,
        switch_prob=args.switch_prob,
        mode=args.mix_mode,
        label_smoothing=args.label_smoothing_factor,
    )


def validate_mix_config(args: Any, fail: Any) -> None:
    """Config check: the mixing fields (reported under the config's names, not timm's)."""
    try:
        mix_config_of(args).validate()
    except ValueError as error:
        mix_field = str(error).split(" ", 1)[0]
        renamed = {"prob": "mix_prob", "mode": "mix_mode", "label_smoothing": "label_smoothing_factor"}
        fail(renamed.get(mix_field, mix_field), str(error).split(" ", 1)[1])


def mix_batch(batch: dict[str, Tensor], params: MixParams) -> dict[str, Tensor]:
    """Apply one draw of mixing parameters to every image view of a batch (the student's and each
    teacher's, whatever their resolutions) and record it for the mixed-label CE (``mix_perm``,
    ``mix_lam``). The one place where batches are mixed."""
    keys = view_keys(batch)
    for key, mixed in zip(keys, apply_mix(params, *(batch[k] for k in keys))):
        batch[key] = mixed
    batch[MIX_PERM] = params.perm
    batch[MIX_LAM] = params.lam.float()
    return batch
