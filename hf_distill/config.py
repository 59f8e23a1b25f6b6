"""``DistillationConfig``: ``transformers.TrainingArguments`` plus everything distillation needs."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# Checks of fields that belong to one method or module, registered by hf_distill.registry: this module
# imports no other module of the package, so every method keeps its checks next to its code.
_VALIDATORS: list[Callable[[Any, Callable[[str, str], None]], None]] = []


# Fields whose default is "the method's own" (None), filled in by the module that owns the choice before any
# check runs (hf_distill.terms.resolve_kd_defaults: temperature and alpha).
_RESOLVERS: list[Callable[[Any], None]] = []


def register_resolver(resolve: Callable[[Any], None]) -> None:
    """Add ``resolve(config)`` to what every ``DistillationConfig`` runs first in validation: it replaces
    fields left at None by the value the configured method implies (and logs what it chose)."""
    if resolve not in _RESOLVERS:
        _RESOLVERS.append(resolve)


def register_validator(validate: Callable[[Any, Callable[[str, str], None]], None]) -> None:
    """Add ``validate(config, fail)`` to the checks every ``DistillationConfig`` runs in ``__post_init__``;
    ``fail(field, message)`` raises ``ValueError("DistillationConfig.<field>: <message>")``."""
    if validate not in _VALIDATORS:
        _VALIDATORS.append(validate)


def _check_output_dir(output_dir: Any, fail: Callable[[str, str], None]) -> None:
    """``output_dir`` must be a directory or creatable as one: an existing file there (or above it) would
    otherwise surface as a bare ``[Errno 17] File exists`` when the trainer creates the directory."""
    if not output_dir:
        return
    path = os.path.abspath(os.path.expanduser(os.fspath(output_dir)))
    if os.path.exists(path) and not os.path.isdir(path):
        fail(
            "output_dir",
            f"{output_dir!r} is an existing file, not a directory; give the path of a directory (created when "
            "missing), or move the file away",
        )
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if parent and os.path.exists(parent) and not os.path.isdir(parent):
        fail(
            "output_dir",
            f"{output_dir!r} lies under {parent!r}, which is a file, not a directory; give a directory path",
        )


def _check_normalisation(config: Any, role: str, fail: Callable[[str, str], None]) -> None:
    """``<role>_image_mean`` / ``<role>_image_std``: both or neither, 1 or 3 finite values, in units of 255."""
    mean_name, std_name = f"{role}_image_mean", f"{role}_image_std"
    mean, std = getattr(config, mean_name), getattr(config, std_name)
    if (mean is None) != (std is None):
        given, missing = (mean_name, std_name) if std is None else (std_name, mean_name)
        fail(
            missing,
            f"is needed with {given}: give both (ImageNet: [0.485, 0.456, 0.406] / [0.229, 0.224, 0.225])",
        )
    for name, values in ((mean_name, mean), (std_name, std)):
        if values is None:
            continue
        if isinstance(values, (int, float)):
            values = [values]
        if (
            not isinstance(values, (list, tuple))
            or len(values) not in (1, 3)
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
            )
        ):
            fail(name, f"must be a list of 1 or 3 finite numbers (one per RGB channel), got {values!r}")
        if any(v > 1.5 for v in values):
            fail(
                name,
                f"{list(values)} looks like 0-255 values; give fractions of 255 (e.g. 123.675 -> 0.485), as image "
                "processors and timm do",
            )
        if name == std_name and any(v <= 0 for v in values):
            fail(name, f"must be > 0 in every channel, got {list(values)}")
        values = [float(v) for v in values]
        setattr(config, name, values * 3 if len(values) == 1 else values)


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
    temperature: float | None = field(
        default=None,
        metadata=_help(
            "Softmax temperature tau of the KD term (> 0). None: the method's default, chosen when the config "
            "is validated and logged: 1.0 with teacher_input='funmatch' (Beyer et al. distil with KL alone at "
            "T=1), else 4.0."
        ),
    )
    alpha: float | None = field(
        default=None,
        metadata=_help(
            "Weight of the KD term: loss = (1 - alpha) * CE + alpha * KD. 1.0 is KD only, 0.0 is CE "
            "only. Without labels (unlabelled distillation data) the KD term gets weight 1. None: the method's "
            "default, chosen at validation and logged: 1.0 with teacher_input='funmatch' (KL only), else 0.9."
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
    student_image_mean: list[float] | None = field(
        default=None,
        metadata=_help(
            "Per-channel mean (fractions of 255, e.g. [0.485, 0.456, 0.406]) the student's pixels are "
            "normalised with, with student_image_std. Default: the student's own (its image processor, timm "
            "pretrained_cfg, or `processing_class=`); required for a student that carries none (a plain "
            "nn.Module)."
        ),
    )
    student_image_std: list[float] | None = field(
        default=None,
        metadata=_help("Per-channel std of the student's normalisation; see student_image_mean."),
    )
    teacher_image_mean: list[float] | None = field(
        default=None,
        metadata=_help(
            "Per-channel mean the teacher's pixels are normalised with (every member of an ensemble), with "
            "teacher_image_std. Default: the teacher's own (its image processor, timm pretrained_cfg, or "
            "`teacher_processing_class=`); required for a teacher that carries none (a plain nn.Module)."
        ),
    )
    teacher_image_std: list[float] | None = field(
        default=None,
        metadata=_help("Per-channel std of the teacher's normalisation; see teacher_image_mean."),
    )
    image_column_name: str = field(default="image", metadata=_help("Dataset column holding the images."))
    label_column_name: str = field(
        default="label", metadata=_help("Dataset column holding the ClassLabel ids.")
    )
    # -- teacher input & augmentation -----------------------------------------------------------------
    teacher_input: str = field(
        default="same",
        metadata=_help(
            "How the teacher's view relates to the student's: one of fix/rs, fix/cc, fix/ic_ens, ind/rc, ind/ic, "
            "same/rc, same/ic, funmatch, same, ind (see hf_distill.collators)."
        ),
    )
    crop: str = field(
        default="ic",
        metadata=_help(
            "Training crop of the student (and of the teacher in same/ind modes): one of rs, cc, rc, ic "
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
        default=None,
        metadata=_help(
            "CutMix box side range [min, max] as fractions of the image side (each side drawn uniformly in "
            "[min, max)); when set, CutMix is on whatever cutmix_alpha is, and lam is the box-area complement, "
            "as timm's cutmix_minmax."
        ),
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
    pick_pool_size_factor: float = field(
        default=2.0,
        metadata=_help(
            "pick: size of the pool of mixed images, as a multiple of the batch size N (2.0: a pool of 2N, the "
            "authors' two CutMix runs per batch, mix_n_run=2)."
        ),
    )
    pick_keep_factor: float = field(
        default=1.0,
        metadata=_help(
            "pick: mixed images kept for the gradient step, as a multiple of N (1.0: N of the 2N, the authors' "
            "n_pick=64 at batch 64, i.e. the paper's N_p = half the pool); at most pick_pool_size_factor."
        ),
    )
    pick_pool_factor: float | None = field(
        default=None,
        metadata=_help(
            "Replaced by pick_pool_size_factor and pick_keep_factor (it set the pool as a multiple of N/2 kept "
            "images); refused when set, with the equivalent values in the message."
        ),
    )
    pick_scoring: str = field(
        default="train",
        metadata=_help(
            "pick: mode of the student's no-grad scoring pass over the pool: 'train' (the authors': BatchNorm "
            "uses the pool's batch statistics and the pass updates its running statistics, dropout active) or "
            "'eval' (running statistics, untouched: each image's score independent of the rest of the pool)."
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
    train_samples_per_class: int | None = field(
        default=None,
        metadata=_help(
            "Few-shot training: keep this many images of every class of the training split, a stratified draw "
            "by data_seed (seed when unset). The FunMatch paper's small-data regime (Flowers102, Pets)."
        ),
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
    teacher_ensemble_reduction: str = field(
        default="logit_mean",
        metadata=_help(
            "Teacher ensembles: how the members' outputs enter the KD term. 'logit_mean' (the paper's 224 + 384 "
            "logit average): KD against the mean of the logits; 'probability_mean': KD against the mean of the "
            "tempered probabilities; 'kl_sum' (big_vision's trainer): one KD per member, summed (K times the "
            "gradient of probability_mean, which matters with max_grad_norm)."
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
    slkd_ce_weight: float = field(
        default=1.0,
        metadata=_help(
            "Weight of the student's own CE inside its SL-T branch: slkd_weight * (c * CE + KD(SL-T)). 1.0 is the "
            "authors' code (CE_WEIGHT_CS=1: with alpha=0.9 the student's CE weighs 0.1 + 1.0 = 1.1 in all); 0.0 "
            "makes the branch KD only."
        ),
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
            "'parallel' (the paper's SLKD): SL-Ts and student update in every optimizer step from one backward; "
            "'sequential' (SLKD*, the authors' sequential trainer): in each step the SL-Ts first take an update "
            "on the batch, then the student learns from them on the same batch; 'alternating': phases of "
            "`slkd_phase_steps` whole optimizer steps, SL-Ts first (student held), then the student (SL-Ts held)."
        ),
    )
    slkd_phase_steps: int = field(
        default=1, metadata=_help("Optimizer steps per phase in 'alternating' slkd_mode (>= 1).")
    )
    slkd_detach: bool = field(
        default=True,
        metadata=_help(
            "Detach the SL-T output in the student's KD(SL-T) term, so SL-Ts learn from the teacher only (the "
            "paper's Eq. 2/5/6, the default). False is the authors' released code (no detach): that term also "
            "pulls the SL-Ts towards the student (parallel mode)."
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
    label_bank_mix: str = field(
        default="recorded",
        metadata=_help(
            "FunMatch banks: 'recorded' (default) records each mixed view and the teacher's output on it, as "
            "live FunMatch; 'replay' records crops only and mixes at replay, with a partner, its record and the "
            "mixing weight drawn per epoch, and the target the same mix of the two recorded teacher "
            "distributions at `temperature` (FKD's mixed soft labels): R views give R^2 pairs and any weight, "
            "but the target approximates the teacher's output on the mixed image."
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
        def fail(name: str, message: str) -> None:
            raise ValueError(f"DistillationConfig.{name}: {message}")

        _check_output_dir(self.output_dir, fail)
        # Fields left at None ("the method's default") are filled in before any check reads them.
        for resolve in _RESOLVERS:
            resolve(self)
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
        for name in ("image_size", "teacher_image_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                fail(name, f"must be a positive integer (pixels), got {value!r}")
        if self.interpolation is not None and self.interpolation not in _INTERPOLATIONS:
            fail("interpolation", f"must be one of {list(_INTERPOLATIONS)}, got {self.interpolation!r}")
        for role in ("student", "teacher"):
            _check_normalisation(self, role, fail)
        if self.teacher_dtype is not None and self.teacher_dtype not in ("bfloat16", "float16", "float32"):
            fail("teacher_dtype", f"must be 'bfloat16', 'float16' or 'float32', got {self.teacher_dtype!r}")
        if self.teacher_placement not in ("auto", "replicate", "shard"):
            fail(
                "teacher_placement",
                f"must be 'auto', 'replicate' or 'shard', got {self.teacher_placement!r}",
            )
        self.student_feature_layers = [str(v) for v in self.student_feature_layers]
        self.teacher_feature_layers = [str(v) for v in self.teacher_feature_layers]
        if self.max_train_samples is not None and self.max_train_samples < 1:
            fail("max_train_samples", f"must be >= 1 or None (no truncation), got {self.max_train_samples!r}")
        if self.train_samples_per_class is not None and (
            not isinstance(self.train_samples_per_class, int) or self.train_samples_per_class < 1
        ):
            fail(
                "train_samples_per_class",
                f"must be a positive integer or None (all images), got {self.train_samples_per_class!r}",
            )
        if self.save_on_sigterm and self.enable_jit_checkpoint:
            fail("save_on_sigterm", "and enable_jit_checkpoint both handle SIGTERM; set only one of them")
        for validate in _VALIDATORS:  # each method's and module's own fields (hf_distill.registry)
            validate(self, fail)
        if self.teacher_cache_topk is not None and (
            not isinstance(self.teacher_cache_topk, int) or self.teacher_cache_topk < 1
        ):
            fail("teacher_cache_topk", f"must be a positive integer or None, got {self.teacher_cache_topk!r}")
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
        if not isinstance(self.card_throughput_batches, int) or self.card_throughput_batches < 0:
            fail(
                "card_throughput_batches",
                f"must be an integer >= 0 (0 skips timing), got {self.card_throughput_batches!r}",
            )
        if self.dataloader_persistent_workers:
            fail(
                "dataloader_persistent_workers",
                "is not supported: augmentation randomness follows the epoch, which persistent workers would not "
                "see; set it to False (workers then restart each epoch)",
            )
