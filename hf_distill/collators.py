"""Collators that build the student's view and, where the teacher-input mode needs it, the teacher's view.

Per sample, a crop box (in the original image's pixel coordinates) and a flip are sampled, then *applied*
to every view that shares them, each at its own model's resolution: the box's whole pixels are cropped and
resized (torchvision's ``resized_crop``, see :func:`render_view`), so views that share a box cover exactly
the same pixels at every resolution. Randomness derives from ``(seed, epoch, sample_id)``, so a run, a
resumed run and a replay see the same views, whatever the batch or the worker. Views are uint8 tensors:
normalisation to each model's mean/std happens on the device. The evaluation view is PIL's resize of the
central square (:func:`render_eval_view`), which image processors reproduce.

Teacher-input modes (Beyer et al., "Knowledge distillation: a good teacher is patient and consistent"):

=============  ==============================================================================
``fix/rs``     teacher and student see the whole image resized (the teacher's view is fixed)
``fix/cc``     teacher sees the central crop (fixed); the student a mild random crop (``rc``)
``fix/ic_ens`` teacher prediction averaged over K inception crops, precomputed by
               :mod:`hf_distill.teacher_cache`; the student gets inception crops
``ind/rc``     independent random crops for teacher and student
``ind/ic``     independent inception crops
``same/rc``    the identical random crop for both ("consistent teaching")
``same/ic``    the identical inception crop for both
``funmatch``   function matching: the identical inception crop + mixup with the same parameters
=============  ==============================================================================

``same`` / ``ind`` alone and ``funmatch`` use the crop named by ``crop``; the ``fix/*`` modes pair the
student crop with the teacher's view as the paper does. Teacher ensembles whose members run at several
resolutions get one extra view per further resolution (``teacher_pixel_values_<size>``), rendered from
the teacher's crop box, so every member sees the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage

from .batch import PIXEL_VALUES, SAMPLE_IDS, TEACHER_PIXEL_VALUES, teacher_view_key
from .batch import teacher_views as teacher_views  # re-exported: the views of a batch by resolution
from .images import _decode_undecoded as _decode_undecoded  # re-exported
from .images import finish_image, finish_pixels, open_image, open_source, rgb_pixels
from .images import to_rgb as to_rgb  # re-exported: the teacher cache and user code decode through it
from .mixing import MixConfig, mix_batch, sample_mix_params

CROPS = ("rs", "cc", "rc", "ic")
TEACHER_INPUTS = (
    "fix/rs",
    "fix/cc",
    "fix/ic_ens",
    "ind/rc",
    "ind/ic",
    "same/rc",
    "same/ic",
    "funmatch",
    "same",
    "ind",
)
_RESAMPLE = {"bilinear": PILImage.BILINEAR, "bicubic": PILImage.BICUBIC, "nearest": PILImage.NEAREST}
_STUDENT_STREAM, _TEACHER_STREAM = 0, 1
_FIXED_STUDENT_CROP = {"rs": "rs", "cc": "rc", "ic_ens": "ic"}


@dataclass(frozen=True)
class TeacherInputMode:
    """A parsed teacher-input mode: how the teacher's view relates to the student's."""

    relation: str  # "fixed" | "independent" | "same"
    student_crop: str
    teacher_crop: str  # for "same" equal to student_crop
    mixing: bool = False

    @property
    def needs_teacher_view(self) -> bool:
        return self.teacher_crop != "ic_ens"


def parse_teacher_input(teacher_input: str, crop: str) -> TeacherInputMode:
    """``"same/ic"`` -> same relation with inception crops; ``"fix/rs"`` -> fixed resized teacher view, the
    student's crop from ``crop`` … (see the module docstring)."""
    if teacher_input not in TEACHER_INPUTS:
        raise ValueError(f"teacher_input='{teacher_input}' is not one of {list(TEACHER_INPUTS)}")
    if crop not in CROPS:
        raise ValueError(f"crop='{crop}' is not one of {list(CROPS)}")
    if teacher_input == "funmatch":
        return TeacherInputMode("same", crop, crop, mixing=True)
    if teacher_input in ("same", "ind"):
        relation = "same" if teacher_input == "same" else "independent"
        return TeacherInputMode(relation, crop, crop)
    kind, teacher_crop = teacher_input.split("/")
    if kind == "fix":
        # The paper's fixed-teacher baselines fix the student's crop too (Beyer et al., Sec. 3.2).
        return TeacherInputMode("fixed", _FIXED_STUDENT_CROP[teacher_crop], teacher_crop)
    relation = "same" if kind == "same" else "independent"
    return TeacherInputMode(relation, teacher_crop, teacher_crop)


@dataclass(frozen=True)
class ViewParams:
    """One sampled view: crop box (left, top, right, bottom) in original pixels, and a horizontal flip."""

    box: tuple[float, float, float, float]
    flip: bool = False


def sample_generator(seed: int, epoch: int, sample_id: int, stream: int) -> np.random.Generator:
    """The random stream of one sample in one epoch: independent of batch composition and worker layout."""
    words = (seed, epoch, sample_id, stream)
    if all(0 <= w < 2**32 for w in words):  # the same entropy as the list, 3x faster to take in
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(np.array(words, dtype=np.uint32))))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(words))))


def sample_box(
    crop: str,
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    crop_fraction: float = 0.875,
) -> tuple[float, float, float, float]:
    """A crop box in pixel coordinates for one of ``CROPS`` (``rs``: the whole image; ``cc``: the central
    ``crop_fraction``; ``rc``: a random ``crop_fraction`` box; ``ic``: an inception crop with timm's
    ``scale``/``ratio`` ranges, falling back to a central crop like torchvision)."""
    if crop == "rs":
        return (0.0, 0.0, float(width), float(height))
    if crop == "cc":
        w, h = width * crop_fraction, height * crop_fraction
        return ((width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2)
    if crop == "rc":
        w, h = width * crop_fraction, height * crop_fraction
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        return (x0, y0, x0 + w, y0 + h)
    if crop != "ic":
        raise ValueError(f"unknown crop '{crop}'")
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = math.sqrt(target_area * aspect), math.sqrt(target_area / aspect)
        if 0 < w <= width and 0 < h <= height:
            x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return (x0, y0, x0 + w, y0 + h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        w, h = height * ratio[1], float(height)
    else:
        w, h = float(width), float(height)
    return ((width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2)


def eval_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The evaluation view: the largest central square, as timm's eval transform with crop_pct=1.0."""
    side = min(width, height)
    return ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)


def pixel_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """The whole pixels a training view covers: ``box``'s edges rounded to the nearest pixel edge (halves
    up), at least one pixel wide and tall, inside the ``width`` x ``height`` image."""
    x0 = min(max(math.floor(box[0] + 0.5), 0), width - 1)
    y0 = min(max(math.floor(box[1] + 0.5), 0), height - 1)
    x1 = min(max(math.floor(box[2] + 0.5), x0 + 1), width)
    y1 = min(max(math.floor(box[3] + 0.5), y0 + 1), height)
    return x0, y0, x1, y1


def render_view(
    image: PILImage.Image | torch.Tensor,
    params: ViewParams,
    size: int,
    interpolation: str = "bilinear",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """A training view: crop the whole pixels of ``params.box`` (:func:`pixel_box`) out of ``image`` (an RGB
    PIL image, or its (H, W, 3) uint8 pixels from :func:`hf_distill.images.finish_pixels`), resize the crop to
    ``size`` x ``size`` in one anti-aliased step (``bilinear``/``bicubic``; ``nearest``: the nearest pixel
    centre), flip it when ``params.flip``; returns a contiguous uint8 (3, size, size) tensor (``out`` when
    given: written in place).

    This is torchvision's ``resized_crop`` on uint8 (its AVX2 kernel): the crop is resampled on its own, so
    every view that shares a box, at any resolution, covers exactly the same pixels. Boxes are kept in whole
    pixels, as torchvision and the paper's inception crop keep them, because torch's kernel places output
    pixel centres at ``(i + 0.5) * scale`` from a whole-pixel origin; a sub-pixel resampler (PIL's, which
    :func:`render_eval_view` uses) is about 3x slower per view."""
    pixels = rgb_pixels(image) if isinstance(image, PILImage.Image) else image
    x0, y0, x1, y1 = pixel_box(params.box, pixels.shape[1], pixels.shape[0])
    crop = pixels[y0:y1, x0:x1].permute(2, 0, 1).unsqueeze(0)  # channels-last: torch's uint8 fast path
    if interpolation == "nearest":
        resized = torch.nn.functional.interpolate(crop, size=(size, size), mode="nearest-exact")[0]
    else:
        resized = torch.nn.functional.interpolate(
            crop, size=(size, size), mode=interpolation, antialias=True, align_corners=False
        )[0]
    if params.flip:
        resized = resized.flip(-1)
    if out is None:
        return resized.contiguous()
    return out.copy_(resized)


def render_eval_view(
    image: PILImage.Image, box: tuple[float, float, float, float], size: int, interpolation: str = "bilinear"
) -> torch.Tensor:
    """The evaluation view: ``box`` (sub-pixel, :func:`eval_box`) resized to ``size`` x ``size`` by PIL in
    one step, reading the image around the box as a resize of the whole image does, so an image processor's
    resize + centre crop reproduces it (:func:`hf_distill.hub.serving_image_processor`); contiguous uint8
    (3, size, size)."""
    resized = image.resize((size, size), resample=_RESAMPLE[interpolation], box=box)
    out = torch.empty((3, size, size), dtype=torch.uint8)
    if resized.mode == "RGB":
        # Straight from PIL's planes into the tensor: one copy, no HWC->CHW transpose.
        planes = out.numpy().reshape(3, size * size)
        for channel, band in enumerate("RGB"):
            planes[channel] = np.frombuffer(resized.tobytes("raw", band), dtype=np.uint8)
    else:
        out.copy_(torch.from_numpy(np.array(resized.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1))
    return out


# A JPEG is decoded at 1/r of its size (r = 2, 4, 8) only when every view of the sample then still shrinks
# its box by at least this factor: the final resampling keeps doing the anti-aliasing (PIL's
# ``reducing_gap``), so the view stays within tests/test_render_speedups.py's tolerance of full decoding.
JPEG_REDUCING_GAP = 2.0
_REDUCIBLE = ("bilinear", "bicubic")  # nearest-neighbour views sample single pixels: never reduced


def jpeg_reduction(views: list[tuple[tuple[float, float, float, float], int, str]]) -> int:
    """The DCT-domain reduction (1, 2, 4 or 8) that every ``(box, size, interpolation)`` view allows: the
    largest ``r`` with each box's shorter side at least ``JPEG_REDUCING_GAP * r * size`` pixels."""
    reduction = 8
    for box, size, interpolation in views:
        if interpolation not in _REDUCIBLE:
            return 1
        side = min(box[2] - box[0], box[3] - box[1]) / size
        while reduction > 1 and side < JPEG_REDUCING_GAP * reduction:
            reduction //= 2
    return reduction


def scale_view(params: ViewParams, reduction: int) -> ViewParams:
    """``params`` in the coordinates of an image decoded at 1/``reduction`` (see
    :func:`hf_distill.images.finish_image`)."""
    if reduction == 1:
        return params
    return ViewParams(tuple(c / reduction for c in params.box), params.flip)


PREPROCESSED_FIX = (
    "the trainer normalises each model itself, with its own mean/std, so preprocessed pixel_values must be "
    "uint8 in [0, 255], shape (3, H, W) at image_size: return e.g. torchvision's transforms.PILToTensor() (not "
    "ToTensor()/Normalize()) or torch.from_numpy(np.array(image.convert('RGB'))).permute(2, 0, 1) from the "
    "transform; or drop the transform / the pixel_values column and leave the views to the built-in collator "
    "(it renders every view the teacher-input mode needs from the raw images)"
)


PREPROCESSED_MODES_FIX = (
    "with preprocessed pixels use a mode whose teacher reads the student's pixels (teacher_input='same', "
    "'same/rc', 'same/ic' or 'funmatch'), or give the raw images (drop the transform / the pixel_values column) "
    "so the collator can render the teacher's view"
)


def preprocessed_view(value: Any, sample_id: int, size: int | None = None) -> torch.Tensor:
    """A row's own ``pixel_values`` (a dataset preprocessed by ``map`` or ``set_transform``) as the uint8
    (3, H, W) view the batch schema holds. Integer pixels in [0, 255] are taken as they are; float pixels
    are refused: an image processor's or ``Normalize``'s output is normalised already, and its mean/std
    cannot be told from the values, so they cannot be re-normalised for each model honestly."""
    try:
        pixels = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"sample {sample_id}: pixel_values is {type(value).__name__}, not an array ({error}); {PREPROCESSED_FIX}"
        ) from error
    shape = tuple(pixels.shape)
    if pixels.is_floating_point():
        low, high = (float(pixels.min()), float(pixels.max())) if pixels.numel() else (0.0, 0.0)
        raise ValueError(
            f"sample {sample_id}: pixel_values are {str(pixels.dtype).replace('torch.', '')} in "
            f"[{low:.2f}, {high:.2f}] (already normalised or rescaled?); {PREPROCESSED_FIX}"
        )
    if pixels.ndim != 3 or shape[0] != 3:
        raise ValueError(
            f"sample {sample_id}: pixel_values of shape {shape}, not (3, H, W); {PREPROCESSED_FIX}"
        )
    if size is not None and shape[1:] != (size, size):
        raise ValueError(
            f"sample {sample_id}: pixel_values are {shape[1]}x{shape[2]} but the student trains at image_size="
            f"{size}; resize to {size}x{size} in the transform, or set DistillationConfig.image_size={shape[1]}"
        )
    if pixels.dtype != torch.uint8:
        if pixels.dtype == torch.bool or (
            pixels.numel() and (int(pixels.min()) < 0 or int(pixels.max()) > 255)
        ):
            raise ValueError(f"sample {sample_id}: pixel_values outside [0, 255]; {PREPROCESSED_FIX}")
        pixels = pixels.to(torch.uint8)
    return pixels.contiguous()


@dataclass
class AugmentationConfig:
    """What the training views may do; names follow timm where timm has one."""

    crop: str = "ic"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_fraction: float = 0.875
    hflip: float = 0.5


@dataclass
class DistillationCollator:
    """Collate dataset rows into uint8 student/teacher views, labels and sample ids.

    Output keys: ``pixel_values`` (B, 3, S, S) uint8; ``teacher_pixel_values`` (B, 3, T, T) uint8 when the
    teacher needs a view that differs from the student's (other box or other resolution); ``labels``
    when the dataset has labels; ``sample_ids``; ``mix_perm``/``mix_lam`` when batch mixing is on.
    """

    student_size: int
    teacher_size: int | None = None
    teacher_input: str = "same"
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    train: bool = True
    seed: int = 0
    epoch: int = 0
    image_column: str = "image"
    label_column: str | None = "label"
    student_interpolation: str = "bilinear"
    teacher_interpolation: str = "bilinear"
    mix_config: Any = None  # hf_distill.mixing.MixConfig; used by modes with mixing
    extra_teacher_sizes: tuple[int, ...] = ()  # further ensemble resolutions, one view each

    def __post_init__(self) -> None:
        self.mode = parse_teacher_input(self.teacher_input, self.augmentation.crop)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- per sample ---------------------------------------------------------------------------------
    def view_params(self, sample_id: int, width: int, height: int) -> tuple[ViewParams, ViewParams | None]:
        """The (student, teacher) view parameters of one sample in the current epoch."""
        if not self.train:
            box = eval_box(width, height)
            return ViewParams(box), ViewParams(box)
        aug, mode = self.augmentation, self.mode
        rng = sample_generator(self.seed, self.epoch, sample_id, _STUDENT_STREAM)
        box = sample_box(
            mode.student_crop, width, height, rng, aug.crop_scale, aug.crop_ratio, aug.crop_fraction
        )
        student = ViewParams(box, bool(rng.random() < aug.hflip))
        if mode.relation == "same":
            return student, student
        if mode.relation == "fixed":
            if not mode.needs_teacher_view:
                return student, None
            # A fixed teacher view does not depend on the epoch: the rng is not used for rs/cc.
            return student, ViewParams(
                sample_box(mode.teacher_crop, width, height, rng, crop_fraction=aug.crop_fraction)
            )
        teacher_rng = sample_generator(self.seed, self.epoch, sample_id, _TEACHER_STREAM)
        teacher_box = sample_box(
            mode.teacher_crop, width, height, teacher_rng, aug.crop_scale, aug.crop_ratio, aug.crop_fraction
        )
        return student, ViewParams(teacher_box, bool(teacher_rng.random() < aug.hflip))

    # -- per batch ----------------------------------------------------------------------------------
    @property
    def emits_teacher_view(self) -> bool:
        """Whether batches carry ``teacher_pixel_values`` (else the teacher reads ``pixel_values``). At
        evaluation every mode's teacher sees the central view at its own resolution (fix/ic_ens included)."""
        if self.teacher_size is None or (self.train and not self.mode.needs_teacher_view):
            return False
        same_pixels = (
            self.teacher_size == self.student_size
            and self.teacher_interpolation == self.student_interpolation
        )
        return not (same_pixels and (self.mode.relation == "same" or not self.train))

    @property
    def active_extra_sizes(self) -> tuple[int, ...]:
        """Ensemble resolutions that get a view of their own (none without a teacher view to render)."""
        if self.teacher_size is None or (self.train and not self.mode.needs_teacher_view):
            return ()
        return tuple(sorted({s for s in self.extra_teacher_sizes if s != self.teacher_size}))

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if rows and PIXEL_VALUES in rows[0]:
            return self._collate_preprocessed(rows)
        emit_teacher = self.emits_teacher_view
        extra_sizes = self.active_extra_sizes
        count = len(rows)
        # Every view is rendered straight into its slot of the batch (no per-view tensors to stack).
        targets = [(PIXEL_VALUES, self.student_size, self.student_interpolation)]
        if emit_teacher:
            targets.append((TEACHER_PIXEL_VALUES, self.teacher_size, self.teacher_interpolation))
        targets += [(teacher_view_key(size), size, self.teacher_interpolation) for size in extra_sizes]
        batch: dict[str, torch.Tensor] = {
            key: torch.empty((count, 3, size, size), dtype=torch.uint8) for key, size, _ in targets
        }
        sample_ids, labels = [], []
        for position, row in enumerate(rows):
            sample_id = int(row.get("sample_id", position))
            # The header gives the size, the views follow; only then are pixels decoded, at the largest JPEG
            # reduction every view allows. Errors name the sample.
            opener = open_source if self.train else open_image
            image = opener(row[self.image_column], sample_id, self.image_column)
            student, teacher = self.view_params(sample_id, *image.size)
            views = [(student if key == PIXEL_VALUES else teacher, size, i) for key, size, i in targets]
            reduction = jpeg_reduction([(p.box, s, i) for p, s, i in views])
            if self.train:
                pixels, reduction = finish_pixels(image, sample_id, self.image_column, reduction)
                for (key, _, _), (p, s, i) in zip(targets, views):
                    render_view(pixels, scale_view(p, reduction), s, i, out=batch[key][position])
            else:
                image, reduction = finish_image(image, sample_id, self.image_column, reduction)
                for (key, _, _), (p, s, i) in zip(targets, views):
                    batch[key][position] = render_eval_view(image, scale_view(p, reduction).box, s, i)
            sample_ids.append(sample_id)
            label = row.get(self.label_column) if self.label_column is not None else None
            if label is not None:
                labels.append(int(label))
        batch[SAMPLE_IDS] = torch.tensor(sample_ids, dtype=torch.long)
        if labels and len(labels) == len(rows):
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        if self.train and self.mode.mixing:
            self._mix(batch)
        return batch

    def _collate_preprocessed(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Rows that bring their own ``pixel_values`` (the dataset's transform or ``map`` made the view): the
        student's view as given, no teacher view (the teacher reads the student's pixels, resized on the
        device to its resolution); batch mixing, when on, from (seed, epoch, sample ids) as usual."""
        if self.train and self.mode.relation != "same":
            raise ValueError(
                f"teacher_input={self.teacher_input!r} renders the teacher's own view from the raw image, but "
                f"these rows bring preprocessed pixel_values; {PREPROCESSED_MODES_FIX}"
            )
        ids = [int(row.get("sample_id", position)) for position, row in enumerate(rows)]
        size = self.student_size
        batch: dict[str, torch.Tensor] = {
            PIXEL_VALUES: torch.stack(
                [preprocessed_view(r[PIXEL_VALUES], i, size) for r, i in zip(rows, ids)]
            ),
            SAMPLE_IDS: torch.tensor(ids, dtype=torch.long),
        }
        labels = [row.get(self.label_column) if self.label_column is not None else None for row in rows]
        if labels and all(label is not None for label in labels):
            batch["labels"] = torch.tensor([int(label) for label in labels], dtype=torch.long)
        if self.train and self.mode.mixing:
            self._mix(batch)
        return batch

    def batch_generator(self, sample_ids: torch.Tensor) -> torch.Generator:
        """The batch-level random stream (mixing): a function of (seed, epoch, the batch's sample ids)."""
        state = np.random.SeedSequence([self.seed, self.epoch, 2, *sample_ids.tolist()]).generate_state(
            2, np.uint32
        )
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def _mix(self, batch: dict[str, torch.Tensor]) -> None:
        config = self.mix_config if self.mix_config is not None else MixConfig()
        mix_batch(
            batch, sample_mix_params(len(batch[SAMPLE_IDS]), config, self.batch_generator(batch[SAMPLE_IDS]))
        )


def validate_view_config(config: Any, fail: Any) -> None:
    """Config check: the fields that decide the views (teacher_input, crop and its ranges, flip)."""
    if config.teacher_input not in TEACHER_INPUTS:
        fail("teacher_input", f"must be one of {list(TEACHER_INPUTS)}, got {config.teacher_input!r}")
    if config.crop not in CROPS:
        fail("crop", f"must be one of {list(CROPS)}, got {config.crop!r}")
    if len(config.crop_scale) != 2 or not 0 < config.crop_scale[0] <= config.crop_scale[1] <= 1:
        fail("crop_scale", f"must be [min, max] with 0 < min <= max <= 1, got {config.crop_scale!r}")
    if len(config.crop_ratio) != 2 or not 0 < config.crop_ratio[0] <= config.crop_ratio[1]:
        fail("crop_ratio", f"must be [min, max] with 0 < min <= max, got {config.crop_ratio!r}")
    if not 0 < config.crop_fraction <= 1:
        fail("crop_fraction", f"must be in (0, 1], got {config.crop_fraction!r}")
    if not 0 <= config.hflip <= 1:
        fail("hflip", f"is a probability and must be in [0, 1], got {config.hflip!r}")
    if config.teacher_input == "fix/ic_ens" and not config.use_teacher_cache:
        fail(
            "use_teacher_cache",
            "must be True for teacher_input='fix/ic_ens': the averaged teacher predictions are precomputed",
        )
