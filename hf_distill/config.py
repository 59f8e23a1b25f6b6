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
            "`teacher_model` argument of the trainer. A list (in YAML or Python) is an ensemble whose "
            "tempered probabilities are averaged; each member runs at its own resolution."
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
    logit_standardization: bool = field(
        default=False,
        metadata=_help(
            "Compute the alpha-weighted KD term on standardised logits (z - mean) / std (Sun et al., CVPR "
            "2024) instead of raw logits."
        ),
    )
    # -- feature, relational and online methods (hf_distill.features, hf_distill.online) ---------------
    student_feature_layers: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Student layers tapped for feature terms (fitnet, at, fsp, sp, pkt, rkd, cc, vid, crd): stage "
            "indices ('-1' is the last; timm feature_info / transformers hidden_states), timm stage names "
            "('layer3'), 'pre_logits' (the classifier's input) or any module name. Position i pairs with "
            "position i of teacher_feature_layers."
        ),
    )
    teacher_feature_layers: list[str] = field(
        default_factory=list, metadata=_help("Teacher layers, one per entry of student_feature_layers.")
    )
    feature_layout: str = field(
        default="map",
        metadata=_help(
            "'map': (B, C, H, W) features, ViT patch tokens laid out on their grid (prefix tokens dropped); "
            "'vector': every tapped map averaged over positions to (B, C)."
        ),
    )
    peer_model_names_or_paths: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Deep mutual learning (loss_types: [dml]): peer students trained together with the student "
            "(timm architecture names, Hub ids or local dirs); each is savable with trainer.save_peer."
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
    # -- KD + data augmentation: TLmixup / TLCutMix / pick / Cutout (see hf_distill.augment) -------------
    augmentation_mode: str = field(
        default="none",
        metadata=_help(
            "Batch augmentation on top of the teacher-input views: 'none'; 'mixup' / 'cutmix' (images "
            "replaced by mixes, CE on mixed hard labels, KD on the mixed image); 'cutout'; 'tlmixup' / "
            "'tlcutmix' (keep the images x and add mixed images x' that get the KD term only, never CE). "
            "Mixing parameters come from mixup_alpha / cutmix_alpha / cutmix_minmax / mix_prob / mix_mode."
        ),
    )
    cutout_fraction: float = field(
        default=0.5,
        metadata=_help(
            "augmentation_mode='cutout': box side as a fraction of the image side (16/32 on CIFAR)."
        ),
    )
    pick: bool = field(
        default=False,
        metadata=_help(
            "TL modes: build a larger pool of mixed images and train on the N/2 with the highest "
            "pick_criterion, scored without gradients inside the training step (TLCutMix+pick)."
        ),
    )
    pick_pool_factor: float = field(
        default=2.0,
        metadata=_help(
            "pick: pool size as a multiple of the N/2 kept images (2.0: a pool of N, as in the paper)."
        ),
    )
    pick_criterion: str = field(
        default="kl",
        metadata=_help(
            "pick: score of a pool image at `temperature`: 'kl' (teacher-student KL, the paper's best), "
            "'student_entropy', 'teacher_entropy' or 'cross_entropy'."
        ),
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
    # -- FunMatch: teacher cache, ensembles, distillation data, optimizers ---------------------------
    use_teacher_cache: bool = field(
        default=True,
        metadata=_help(
            "For fix/* teacher inputs: compute the teacher's outputs once per sample, store them on disk "
            "and never run the teacher while training (fix/ic_ens needs it)."
        ),
    )
    teacher_cache_dir: str | None = field(
        default=None,
        metadata=_help(
            "Where cached teacher outputs live, keyed by dataset fingerprint, teacher weights, mode and "
            "resolution, so a second run reuses them. Default: $HF_HOME/hf_distill/teacher_cache."
        ),
    )
    teacher_cache_topk: int | None = field(
        default=None,
        metadata=_help(
            "Store only the k largest teacher logits per sample (plus the tail mass at `temperature`); "
            "None stores full logits."
        ),
    )
    ic_ens_crops: int = field(
        default=1000,
        metadata=_help("fix/ic_ens: number of inception crops whose teacher probabilities are averaged."),
    )
    teacher_image_sizes: list[int] | None = field(
        default=None,
        metadata=_help(
            "Teacher ensembles: one input resolution per teacher (e.g. [224, 384]); default: each "
            "teacher's native size (or teacher_image_size)."
        ),
    )
    distill_dataset_name: str | None = field(
        default=None,
        metadata=_help(
            "Recipes: a separate (possibly unlabelled or out-of-domain) dataset whose images are "
            "distilled, KD only; `dataset_name` then only provides the evaluation split."
        ),
    )
    distill_dataset_config_name: str | None = field(
        default=None, metadata=_help("Configuration name of distill_dataset_name.")
    )
    distill_split: str = field(default="train", metadata=_help("Split of distill_dataset_name to distil on."))
    optimizer_name: str = field(
        default="adamw",
        metadata=_help(
            "'adamw' (the Trainer's own, see `optim`), or 'shampoo', 'scalable_shampoo', 'soap' from "
            "pytorch-optimizer. Warmup and decay come from lr_scheduler_type / warmup_steps."
        ),
    )
    optimizer_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata=_help("Extra keyword arguments of the optimizer class (a dict, or a JSON string)."),
    )
    # -- reliability: fault tolerance and integrity checks (see hf_distill.reliability) ----------------
    save_on_sigterm: bool = field(
        default=False,
        metadata=_help(
            "On SIGTERM (preemption), finish the current optimizer step, save a checkpoint (even with "
            "save_strategy='no'), then terminate; resume with resume_from_checkpoint. Checkpoints are always "
            "written atomically."
        ),
    )
    check_finite_loss: bool = field(
        default=True,
        metadata=_help(
            "Raise before the backward pass when a loss term is NaN/inf, naming the step, the term and the "
            "batch's sample ids (one device sync per step)."
        ),
    )
    verify_teacher_integrity: bool = field(
        default=True,
        metadata=_help(
            "Fingerprint the teacher's tensors when the trainer is built and raise at each save and at the end "
            "of training if they are not bit-identical."
        ),
    )
    # -- SLKD: self-learning teachers (see hf_distill.slkd) ---------------------------------------------
    slkd_num_teachers: int = field(
        default=0,
        metadata=_help(
            "Self-learning teachers (SL-Ts) trained beside the student: 0 (off), 1 or 2. Untrained copies of "
            "the teacher's architecture (or `slkd_architecture`) that learn from the teacher while the student "
            "learns from the teacher and from them."
        ),
    )
    slkd_architecture: str | None = field(
        default=None,
        metadata=_help(
            "timm architecture of the SL-Ts; None: the teacher's own architecture, re-initialised."
        ),
    )
    slkd_weight: float = field(
        default=1.0, metadata=_help("Weight beta of the student's KD term towards the (fused) SL-T output.")
    )
    slkd_fusion_weight: float = field(
        default=0.5,
        metadata=_help("With two SL-Ts, the fused logits are w * SL-T1 + (1 - w) * SL-T2; w in [0, 1]."),
    )
    slkd_alpha: float | None = field(
        default=None,
        metadata=_help("SL-T loss (1 - a) * CE + a * KD(teacher); None: use `alpha`, as for the student."),
    )
    slkd_temperature: float | None = field(
        default=None, metadata=_help("Temperature of both SL-T KD terms; None: use `temperature`.")
    )
    slkd_mode: str = field(
        default="parallel",
        metadata=_help(
            "'parallel': SL-Ts and student update in every optimizer step; 'sequential': alternating phases "
            "of `slkd_phase_steps` steps, SL-Ts first (student held), then the student (SL-Ts held)."
        ),
    )
    slkd_phase_steps: int = field(
        default=1, metadata=_help("Optimizer steps per phase in 'sequential' slkd_mode (>= 1).")
    )
    slkd_detach: bool = field(
        default=True,
        metadata=_help(
            "Detach the SL-T output in the student's KD(SL-T) term, so SL-Ts learn from the teacher only (the "
            "paper's Eq. 2/5/6). False lets that term also pull the SL-Ts towards the student."
        ),
    )
    # -- scale and speed (see hf_distill.distributed) -------------------------------------------------
    teacher_placement: str = field(
        default="auto",
        metadata=_help(
            "Where the frozen teacher lives: 'auto' (a full copy on each device; a ZeRO-3 inference engine "
            "under DeepSpeed ZeRO-3), 'replicate' (always a full copy on each device), 'shard' (FSDP units of "
            "its own under FSDP, a ZeRO-3 engine under DeepSpeed ZeRO-3). The student's FSDP/DeepSpeed "
            "wrapper never holds the teacher."
        ),
    )
    channels_last: bool = field(
        default=False,
        metadata=_help(
            "Channels-last memory format for student, teacher and their inputs (faster convs on GPU)."
        ),
    )
    teacher_compile: bool = field(
        default=False,
        metadata=_help(
            "torch.compile the teacher (with torch_compile_backend/torch_compile_mode). The student is "
            "compiled by the TrainingArguments field torch_compile."
        ),
    )
    # -- release: model card and Hub upload (see hf_distill.release) ----------------------------------
    write_model_card: bool = field(
        default=True,
        metadata=_help(
            "On save_model() (not on checkpoints), write the student's model card (README.md) and "
            "training_curve.png beside it. push_to_hub uploads them with the student."
        ),
    )
    card_throughput_batches: int = field(
        default=3,
        metadata=_help(
            "Batches timed to report student and teacher throughput (images/s) in the card; 0 leaves "
            "throughput and speed-up out."
        ),
    )
    card_license: str = field(default="apache-2.0", metadata=_help("License named in the card's metadata."))
    model_card_dir: str | None = field(
        default=None,
        metadata=_help(
            "Also copy the card and curve into this directory (the project's model_cards/<name>)."
        ),
    )
    # -- ViT students: DeiT distillation token, timm model arguments (see hf_distill.deit) --------------
    deit_distillation: str = field(
        default="none",
        metadata=_help(
            "Students with a distillation token (timm deit_*_distilled_*, transformers "
            "DeiTForImageClassificationWithTeacher): 'soft' trains the class head on labels and the "
            "distillation head with tau^2 * KL to the teacher; 'hard' uses CE on the teacher's argmax "
            "instead. loss = (1 - alpha) * CE(cls) + alpha * distill(dist). 'none': ordinary CE/KD on the "
            "model's (averaged) logits. Evaluation and the saved student use the average of both heads."
        ),
    )
    student_model_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata=_help(
            "Keyword arguments for timm.create_model when the student is a timm model (e.g. "
            "{img_size: 32, patch_size: 4, depth: 4}); they are saved in the student's config.json "
            "model_args. A dict, or a JSON string on the command line."
        ),
    )
    # -- teacher label bank: recorded views + stored teacher outputs (see hf_distill.label_bank) ---------
    teacher_label_bank: str | None = field(
        default=None,
        metadata=_help(
            "Path (or Hub dataset id) of a label bank made by recipes/label_bank.py. Training then replays its "
            "recorded views and stored teacher outputs: the teacher is never loaded or run."
        ),
    )
    teacher_label_bank_ignore_fingerprint: bool = field(
        default=False,
        metadata=_help(
            "Use a label bank even when its fingerprint (dataset, teacher, teacher_input, augmentation, "
            "mixing, classes) differs from this run's."
        ),
    )
    label_bank_in_memory: bool | None = field(
        default=None,
        metadata=_help(
            "Read the whole label bank into memory (true; about 128 bytes per record) or keep its Arrow files "
            "memory-mapped and read each batch's rows (false; for banks larger than memory). Default: in memory "
            "up to 2 GiB."
        ),
    )
    label_bank_records: int = field(
        default=16,
        metadata=_help(
            "recipes/label_bank.py: recorded views R per training image (each run through the teacher)."
        ),
    )
    label_bank_shard_size: int = field(
        default=256,
        metadata=_help(
            "recipes/label_bank.py: images per shard written during generation. Processes of `accelerate "
            "launch` take shards round-robin; a killed generation redoes at most its unfinished shards."
        ),
    )
    label_bank_topk: int | None = field(
        default=None,
        metadata=_help(
            "recipes/label_bank.py: store the k largest teacher logits per view plus a tail logit that spreads "
            "the remaining probability mass at `temperature` evenly; None stores full fp16 logits."
        ),
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
        if isinstance(self.optimizer_kwargs, str):
            try:
                self.optimizer_kwargs = json.loads(self.optimizer_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"optimizer_kwargs must be a JSON object string, got {self.optimizer_kwargs!r} ({error})"
                ) from error
        self.optimizer_kwargs = dict(self.optimizer_kwargs or {})
        if isinstance(self.student_model_kwargs, str):
            try:
                self.student_model_kwargs = json.loads(self.student_model_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(
                    "DistillationConfig.student_model_kwargs: must be a JSON object string, got "
                    f"{self.student_model_kwargs!r} ({error})"
                ) from error
        if not isinstance(self.student_model_kwargs or {}, dict):
            raise ValueError(
                "DistillationConfig.student_model_kwargs: must be a mapping of timm.create_model arguments, got "
                f"{self.student_model_kwargs!r}"
            )
        self.student_model_kwargs = dict(self.student_model_kwargs or {})
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
        if self.teacher_placement not in ("auto", "replicate", "shard"):
            fail(
                "teacher_placement",
                f"must be 'auto', 'replicate' or 'shard', got {self.teacher_placement!r}",
            )
        # feature, relational and online methods
        if self.feature_layout not in ("map", "vector"):
            fail("feature_layout", f"must be 'map' or 'vector', got {self.feature_layout!r}")
        self.student_feature_layers = [str(v) for v in self.student_feature_layers]
        self.teacher_feature_layers = [str(v) for v in self.teacher_feature_layers]
        feature_terms = [n for n in names if getattr(LOSSES.get(n), "needs_features", False)]
        if feature_terms and not self.student_feature_layers:
            fail(
                "student_feature_layers",
                f"is empty but {feature_terms} compare features; name the layers to tap",
            )
        if len(self.student_feature_layers) != len(self.teacher_feature_layers):
            fail(
                "teacher_feature_layers",
                f"has {len(self.teacher_feature_layers)} entries but student_feature_layers has "
                f"{len(self.student_feature_layers)}; give one teacher layer per student layer",
            )
        if ("dml" in names) != bool(self.peer_model_names_or_paths):
            fail(
                "peer_model_names_or_paths",
                "and loss_types 'dml' go together: DML needs at least one peer, and peers train only with 'dml'",
            )
        try:
            self.mix_config().validate()
        except ValueError as error:  # MixConfig speaks timm's names; report the config field
            mix_field = str(error).split(" ", 1)[0]
            renamed = {"prob": "mix_prob", "mode": "mix_mode", "label_smoothing": "label_smoothing_factor"}
            fail(renamed.get(mix_field, mix_field), str(error).split(" ", 1)[1])
        if self.max_train_samples is not None and self.max_train_samples < 1:
            fail("max_train_samples", f"must be >= 1 or None (no truncation), got {self.max_train_samples!r}")
        if self.save_on_sigterm and self.enable_jit_checkpoint:
            fail("save_on_sigterm", "and enable_jit_checkpoint both handle SIGTERM; set only one of them")
        from .augment import validate_augmentation

        validate_augmentation(self, fail)  # augmentation_mode, cutout_fraction, pick*
        from .deit import DEIT_MODES

        if self.deit_distillation not in DEIT_MODES:
            fail("deit_distillation", f"must be one of {list(DEIT_MODES)}, got {self.deit_distillation!r}")
        if self.deit_distillation != "none" and self.alpha == 0.0:
            fail(
                "alpha",
                f"is 0 with deit_distillation={self.deit_distillation!r}, so the distillation head would never "
                "train; set alpha > 0 (0.5 is DeiT's hard-distillation weight) or deit_distillation='none'",
            )
        from .optim import OPTIMIZERS

        if self.optimizer_name not in OPTIMIZERS:
            fail("optimizer_name", f"must be one of {list(OPTIMIZERS)}, got {self.optimizer_name!r}")
        if self.teacher_input == "fix/ic_ens" and not self.use_teacher_cache:
            fail(
                "use_teacher_cache",
                "must be True for teacher_input='fix/ic_ens': the averaged teacher predictions are precomputed",
            )
        if self.teacher_cache_topk is not None and (
            not isinstance(self.teacher_cache_topk, int) or self.teacher_cache_topk < 1
        ):
            fail("teacher_cache_topk", f"must be a positive integer or None, got {self.teacher_cache_topk!r}")
        if not isinstance(self.label_bank_records, int) or self.label_bank_records < 1:
            fail("label_bank_records", f"must be a positive integer, got {self.label_bank_records!r}")
        if self.label_bank_in_memory not in (None, True, False):
            fail(
                "label_bank_in_memory",
                f"must be true, false or null (auto), got {self.label_bank_in_memory!r}",
            )
        if not isinstance(self.label_bank_shard_size, int) or self.label_bank_shard_size < 1:
            fail("label_bank_shard_size", f"must be a positive integer, got {self.label_bank_shard_size!r}")
        if self.label_bank_topk is not None and (
            not isinstance(self.label_bank_topk, int) or self.label_bank_topk < 1
        ):
            fail(
                "label_bank_topk",
                f"must be a positive integer or None (full logits), got {self.label_bank_topk!r}",
            )
        if self.teacher_label_bank is not None:
            from .label_bank import refuse_unrepresentable

            refuse_unrepresentable(self)  # modes and terms that need the live teacher
        if not isinstance(self.ic_ens_crops, int) or self.ic_ens_crops < 1:
            fail("ic_ens_crops", f"must be a positive integer, got {self.ic_ens_crops!r}")
        if self.teacher_image_sizes is not None:
            teachers = self.teacher_model_name_or_path
            count = len(teachers) if isinstance(teachers, (list, tuple)) else None
            if any(not isinstance(v, int) or v < 1 for v in self.teacher_image_sizes):
                fail("teacher_image_sizes", f"must be positive integers, got {self.teacher_image_sizes!r}")
            if count is not None and count != len(self.teacher_image_sizes):
                fail(
                    "teacher_image_sizes",
                    f"has {len(self.teacher_image_sizes)} entries but teacher_model_name_or_path lists "
                    f"{count} teachers; give one size per teacher",
                )
        from .slkd import validate_slkd_config

        validate_slkd_config(self, fail)
        if not isinstance(self.card_throughput_batches, int) or self.card_throughput_batches < 0:
            fail(
                "card_throughput_batches",
                f"must be an integer >= 0 (0 skips timing), got {self.card_throughput_batches!r}",
            )
        from .release import check_push_settings

        # push_to_hub without a repo id / token / network: fail before training
        check_push_settings(self, fail)
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
