"""``DistillationConfig``: ``transformers.TrainingArguments`` plus everything distillation needs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from .collators import CROPS, TEACHER_INPUTS

_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class DistillationConfig(TrainingArguments):
    """Training arguments for :class:`~hf_distill.DistillationTrainer`.

    The loss is ``(1 - alpha) * CE(student, labels) + alpha * kd_loss(student, teacher, temperature)``
    plus ``sum(w * term)`` over ``loss_types``/``loss_weights``. Every field is validated in
    ``__post_init__`` with a message naming the field and the fix.
    """

    # -- models ---------------------------------------------------------------------------------------
    student_model_name_or_path: str | None = field(
        default=None,
        metadata=_help(
            "Student: timm architecture name (e.g. 'resnet10t'), Hub id or local directory. "
            "Overridden by the `model` argument of the trainer."
        ),
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata=_help(
            "Teacher: Hub id or local directory (transformers or timm layout). Overridden by the "
            "`teacher_model` argument of the trainer."
        ),
    )
    teacher_revision: str | None = field(
        default=None, metadata=_help("Hub revision (branch, tag or commit) of the teacher.")
    )
    student_pretrained: bool = field(
        default=False,
        metadata=_help(
            "For a student given as a timm architecture name: start from timm's pretrained weights "
            "(True) or from scratch (False). Hub ids and directories always load their weights."
        ),
    )
    teacher_dtype: str | None = field(
        default=None,
        metadata=_help(
            "Run the teacher in this dtype ('bfloat16', 'float16', 'float32'); default: as loaded, "
            "under the trainer's autocast when bf16/fp16 is on."
        ),
    )
    # -- loss -----------------------------------------------------------------------------------------
    temperature: float = field(default=4.0, metadata=_help("Softmax temperature tau of the KD term (> 0)."))
    alpha: float = field(
        default=0.9,
        metadata=_help(
            "Weight of the KD term: loss = (1 - alpha) * CE + alpha * KD. 1.0 is KD only, 0.0 is CE "
            "only. Without labels (unlabelled distillation data) the KD term gets weight 1."
        ),
    )
    loss_types: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Extra loss terms added to the CE/KD pair, by name from hf_distill.losses.LOSSES "
            "(e.g. 'dkd', 'jsd') or as callables fn(student, teacher, batch, **params)."
        ),
    )
    loss_weights: list[float] = field(
        default_factory=list, metadata=_help("One non-negative weight per entry of loss_types.")
    )
    loss_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata=_help(
            "Per-term parameters, {term name: {param: value}} (a dict, or a JSON string on the "
            "command line). Terms also receive `temperature` when their function takes it."
        ),
    )
    # -- images ---------------------------------------------------------------------------------------
    image_size: int | None = field(
        default=None, metadata=_help("Student input resolution (square). Default: the student's native size.")
    )
    teacher_image_size: int | None = field(
        default=None,
        metadata=_help(
            "Teacher input resolution; may differ from the student's (both views come from the same "
            "crop). Default: the teacher's native size."
        ),
    )
    interpolation: str | None = field(
        default=None,
        metadata=_help(
            "Resize interpolation for the student ('bilinear', 'bicubic'); default: the student's own."
        ),
    )
    image_column_name: str = field(default="image", metadata=_help("Dataset column holding the images."))
    label_column_name: str = field(
        default="label", metadata=_help("Dataset column holding the ClassLabel ids.")
    )
    # -- teacher input & augmentation -----------------------------------------------------------------
    teacher_input: str = field(
        default="same",
        metadata=_help(
            f"How the teacher's view relates to the student's: one of {list(TEACHER_INPUTS)} "
            "(see hf_distill.collators)."
        ),
    )
    crop: str = field(
        default="ic",
        metadata=_help(
            f"Training crop of the student (and of the teacher in same/ind modes): one of {list(CROPS)} "
            "(rs resize, cc centre crop, rc random crop, ic inception crop)."
        ),
    )
    crop_scale: list[float] = field(
        default_factory=lambda: [0.08, 1.0], metadata=_help("Inception-crop area range (timm's `scale`).")
    )
    crop_ratio: list[float] = field(
        default_factory=lambda: [3 / 4, 4 / 3],
        metadata=_help("Inception-crop aspect-ratio range (timm's `ratio`)."),
    )
    crop_fraction: float = field(
        default=0.875,
        metadata=_help("Side fraction of the image kept by the cc and rc crops (224/256 by default)."),
    )
    hflip: float = field(
        default=0.5, metadata=_help("Horizontal flip probability (0 for data where flips change the class).")
    )
    mixup_alpha: float = field(
        default=1.0, metadata=_help("Mixup Beta(alpha, alpha) for modes that mix (funmatch).")
    )
    cutmix_alpha: float = field(default=0.0, metadata=_help("CutMix Beta(alpha, alpha); 0 disables CutMix."))
    cutmix_minmax: list[float] | None = field(
        default=None, metadata=_help("CutMix box area range [min, max], as in timm.")
    )
    mix_prob: float = field(
        default=1.0, metadata=_help("Probability of mixing a batch/element (timm's `prob`).")
    )
    switch_prob: float = field(
        default=0.5, metadata=_help("Probability of CutMix instead of mixup when both are on.")
    )
    mix_mode: str = field(
        default="batch", metadata=_help("Mixing granularity: 'batch', 'pair' or 'elem' (timm's `mode`).")
    )
    # -- data (recipes) -------------------------------------------------------------------------------
    dataset_name: str | None = field(
        default=None,
        metadata=_help("Hub dataset id or local imagefolder; None uses the embedded digits data."),
    )
    dataset_config_name: str | None = field(default=None, metadata=_help("Dataset configuration name."))
    train_split: str = field(default="train", metadata=_help("Split used for training."))
    eval_split: str = field(default="test", metadata=_help("Split used for evaluation."))
    max_train_samples: int | None = field(
        default=None, metadata=_help("Truncate the training split (debugging).")
    )
    # -- defaults that differ from TrainingArguments --------------------------------------------------
    remove_unused_columns: bool = field(
        default=False,
        metadata=_help("Kept False: the collator needs the image column, which no model forward names."),
    )

    def __post_init__(self) -> None:
        if isinstance(self.loss_kwargs, str):
            try:
                self.loss_kwargs = json.loads(self.loss_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"loss_kwargs must be a JSON object string, got {self.loss_kwargs!r} ({error})"
                ) from error
        self.loss_kwargs = dict(self.loss_kwargs or {})
        self._validate()
        super().__post_init__()

    def _validate(self) -> None:
        from .losses import LOSSES

        def fail(name: str, message: str) -> None:
            raise ValueError(f"DistillationConfig.{name}: {message}")

        if not (
            isinstance(self.temperature, (int, float))
            and math.isfinite(self.temperature)
            and self.temperature > 0
        ):
            fail(
                "temperature",
                f"must be a finite number > 0, got {self.temperature!r} (4.0 is a common choice)",
            )
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            fail("alpha", f"must be in [0, 1] (loss = (1 - alpha) * CE + alpha * KD), got {self.alpha!r}")
        if len(self.loss_types) != len(self.loss_weights):
            fail(
                "loss_weights",
                f"has {len(self.loss_weights)} entries but loss_types has {len(self.loss_types)}; give one weight per loss type",
            )
        for weight in self.loss_weights:
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
                fail("loss_weights", f"weights must be finite and >= 0, got {weight!r}")
        names = []
        for loss in self.loss_types:
            if callable(loss):
                names.append(getattr(loss, "__name__", repr(loss)))
            elif loss not in LOSSES:
                fail("loss_types", f"unknown loss '{loss}'; known: {sorted(LOSSES)} (or pass a callable)")
            else:
                names.append(loss)
        if len(set(names)) != len(names):
            fail("loss_types", f"lists a loss twice: {names}")
        for name, params in self.loss_kwargs.items():
            if name not in names:
                fail("loss_kwargs", f"has parameters for '{name}', which is not in loss_types {names}")
            if not isinstance(params, dict):
                fail("loss_kwargs", f"entry '{name}' must be a dict of parameters, got {params!r}")
        for name in ("image_size", "teacher_image_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                fail(name, f"must be a positive integer (pixels), got {value!r}")
        if self.interpolation is not None and self.interpolation not in _INTERPOLATIONS:
            fail("interpolation", f"must be one of {list(_INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.teacher_input not in TEACHER_INPUTS:
            fail("teacher_input", f"must be one of {list(TEACHER_INPUTS)}, got {self.teacher_input!r}")
        if self.crop not in CROPS:
            fail("crop", f"must be one of {list(CROPS)}, got {self.crop!r}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            fail("crop_scale", f"must be [min, max] with 0 < min <= max <= 1, got {self.crop_scale!r}")
        if len(self.crop_ratio) != 2 or not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            fail("crop_ratio", f"must be [min, max] with 0 < min <= max, got {self.crop_ratio!r}")
        if not 0 < self.crop_fraction <= 1:
            fail("crop_fraction", f"must be in (0, 1], got {self.crop_fraction!r}")
        if not 0 <= self.hflip <= 1:
            fail("hflip", f"is a probability and must be in [0, 1], got {self.hflip!r}")
        if self.teacher_dtype is not None and self.teacher_dtype not in ("bfloat16", "float16", "float32"):
            fail("teacher_dtype", f"must be 'bfloat16', 'float16' or 'float32', got {self.teacher_dtype!r}")
        self.mix_config().validate()
        if self.dataloader_persistent_workers:
            fail(
                "dataloader_persistent_workers",
                "is not supported: augmentation randomness follows the epoch, which persistent workers would not "
                "see; set it to False (workers then restart each epoch)",
            )

    def mix_config(self):
        """The batch-mixing parameters as a :class:`hf_distill.mixing.MixConfig`."""
        from .mixing import MixConfig

        return MixConfig(
            mixup_alpha=self.mixup_alpha,
            cutmix_alpha=self.cutmix_alpha,
            cutmix_minmax=tuple(self.cutmix_minmax) if self.cutmix_minmax else None,
            prob=self.mix_prob,
            switch_prob=self.switch_prob,
            mode=self.mix_mode,
            label_smoothing=self.label_smoothing_factor,
        )
