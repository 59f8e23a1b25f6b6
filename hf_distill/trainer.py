"""``DistillationTrainer``: a ``transformers.Trainer`` whose loss distils a frozen teacher into the student."""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback, set_seed

from .augment import TL_PIXELS, maybe_augment, teacher_labelled_loss
from .collators import AugmentationConfig, DistillationCollator, teacher_views
from .config import DistillationConfig
from .data import class_names
from .deit import DEIT_HEADS, deit_loss, deit_student_outputs, prepare_deit_student
from .distributed import autocast, autocast_dtype, integrity_module, place_teachers, to_channels_last
from .features import build_feature_modules, build_feature_taps
from .hub import (
    LoadedModel,
    Normalizer,
    PreprocessSpec,
    align_labels,
    forward_logits,
    load_model,
    save_student,
)
from .losses import LOSSES, ModelOutputs, kd_loss, kd_loss_standardized
from .online import build_peers, save_peer
from .reliability import (
    AtomicCheckpointMixin,
    SigtermCheckpointCallback,
    TeacherIntegrityCallback,
    check_finite_terms,
    check_first_images,
    check_labels,
    defer_image_decoding,
    load_model_or_explain,
    teacher_modules,
)
from .teacher import Teacher, TeacherEnsemble, forward_kwargs, probe_num_outputs

logger = logging.getLogger(__name__)

AUXILIARY_WEIGHTS_NAME = "auxiliary.safetensors"
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class _EpochCallback(TrainerCallback):
    """Tells the collator which epoch starts, so augmentation follows (seed, epoch, sample id)."""

    def __init__(self, collator: Any):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.collator, "set_epoch"):
            self.collator.set_epoch(math.floor(state.epoch + 1e-6))


class DistillationModule(nn.Module):
    """``Trainer.model`` when there are trainable auxiliary modules: the student plus every one of them
    (projectors, self-learning teachers, peer students …), so the optimizer, DDP/FSDP/DeepSpeed and
    checkpoints cover all trained parameters with no special case.

    Its forward runs the student and then each auxiliary module as ``module(student, teacher, batch)``,
    inside the one forward the distributed wrapper sees; what they return lands in
    ``ModelOutputs.auxiliary[name]``. ``save_model`` still writes the student alone.
    """

    def __init__(
        self,
        student: nn.Module,
        auxiliary: dict[str, nn.Module],
        library: str,
        student_kwargs: dict,
        feature_tap: Any = None,
    ):
        super().__init__()
        self.student = student
        self.auxiliary = nn.ModuleDict(auxiliary)
        self.library = library
        self.student_kwargs = dict(student_kwargs)
        # hf_distill.features.FeatureTap: when set, the student's forward also returns tapped features.
        self.feature_tap = feature_tap

    def forward(
        self,
        pixel_values: Tensor,
        teacher: ModelOutputs | None = None,
        batch: dict[str, Tensor] | None = None,
    ) -> ModelOutputs:
        if self.feature_tap is not None:
            outputs = ModelOutputs(*self.feature_tap(self.student, pixel_values, **self.student_kwargs))
        else:
            outputs = ModelOutputs(
                forward_logits(self.student, pixel_values, self.library, **self.student_kwargs)
            )
        for name, module in self.auxiliary.items():
            outputs.auxiliary[name] = module(outputs, teacher, batch if batch is not None else {})
        return outputs


def _check_dataset(dataset: Dataset | None, name: str, config: DistillationConfig) -> None:
    if dataset is None:
        return
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty; give a dataset with at least one image")
    columns = getattr(dataset, "column_names", None)
    if columns is not None and config.image_column_name not in columns:
        raise ValueError(
            f"{name} has no column '{config.image_column_name}' (columns: {columns}); set "
            "DistillationConfig.image_column_name to the column that holds the images"
        )
    check_labels(dataset, config.label_column_name, name)  # -1 / out-of-range ids, before any step
    check_first_images(dataset, config.image_column_name, name)


def _with_sample_ids(dataset: Dataset) -> Dataset:
    if "sample_id" in dataset.column_names:
        return dataset
    return dataset.add_column("sample_id", list(range(len(dataset))))


class DistillationTrainer(AtomicCheckpointMixin, Trainer):
    """Distil a frozen ``teacher_model`` into ``model`` (the student).

    ``model`` / ``teacher_model`` accept an ``nn.Module``, a Hub id, a local directory (transformers or timm
    layout) or, for the student, a timm architecture name; a fresh student's classifier and id2label come
    from the training dataset's ``ClassLabel``. Everything is checked here, before training starts.

    ``Trainer.model`` is the student itself, so the optimizer, DDP/FSDP/DeepSpeed and checkpoints see exactly
    the trained parameters; the teacher is kept outside it, frozen, on the accelerator's device.
    """

    def __init__(
        self,
        model: nn.Module | str | None = None,
        teacher_model: nn.Module | str | None = None,
        args: DistillationConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        data_collator: Callable | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        auxiliary_modules: dict[str, nn.Module] | None = None,
        **kwargs: Any,
    ):
        if args is None:
            args = DistillationConfig(output_dir="hf_distill_output")
        if not isinstance(args, DistillationConfig):
            raise TypeError(f"args must be a DistillationConfig, got {type(args).__name__}")
        from .release import check_push_settings

        check_push_settings(args)  # again here: set_push_to_hub() may have turned pushing on after validation
        model = model if model is not None else args.student_model_name_or_path
        teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        self.label_bank = None
        bank_teacher_sources = None
        if args.teacher_label_bank is not None:  # a label bank replaces the teacher: never loaded or run
            from .label_bank import teacher_sources

            bank_teacher_sources, teacher_model = teacher_sources(teacher_model), None
        if model is None:
            raise ValueError("no student: pass `model=` or set DistillationConfig.student_model_name_or_path")
        if (
            teacher_model is None
            and args.teacher_label_bank is None
            and (
                args.alpha > 0
                or any(getattr(LOSSES.get(t, t), "needs_teacher", True) for t in args.loss_types)
            )
        ):
            raise ValueError(
                "no teacher: pass `teacher_model=` or set DistillationConfig.teacher_model_name_or_path "
                "(training without a teacher needs alpha=0 and no loss_types: plain supervised training)"
            )

        _check_dataset(train_dataset, "train_dataset", args)
        eval_sets = eval_dataset if isinstance(eval_dataset, dict) else {"eval_dataset": eval_dataset}
        for name, dataset in eval_sets.items():
            _check_dataset(dataset, name, args)

        self.label_names_ = self._resolve_label_names(train_dataset, eval_sets, args)
        # A student built from a name gets its initial weights from args.seed, as Trainer's model_init would:
        # two trainers with one config start from the same student (and a resume can be checked against it).
        set_seed(args.seed)
        student = load_model_or_explain(
            lambda: load_model(
                model,
                label_names=self.label_names_,
                pretrained=args.student_pretrained,
                role="student",
                model_kwargs=args.student_model_kwargs,
            ),
            model,
            "student_model_name_or_path",
            "model",
        )
        self.student_library = student.library
        self.student_preprocess = self._preprocess(student, args.image_size, args.interpolation)

        num_student_outputs = probe_num_outputs(
            student.module, student.library, self.student_preprocess, "image_size"
        )
        if num_student_outputs != len(self.label_names_):
            raise ValueError(
                f"the student outputs {num_student_outputs} logits but the dataset has {len(self.label_names_)} "
                f"classes {self.label_names_}; give a student with a matching head or a timm/transformers source "
                "whose head we can size"
            )
        self.teacher: Teacher | None = None
        if teacher_model is not None:
            self.teacher = self._build_teacher(teacher_model, args)
        self.student_source = student.source if isinstance(model, str) else None
        prepare_deit_student(student.module, student.library, args.deit_distillation)  # DeiT heads (deit.py)

        if data_collator is None:
            data_collator = self.build_collator(args, train=True)
            data_collator = maybe_augment(
                data_collator, args, self.student_preprocess.mean, has_teacher=self.teacher is not None
            )
        self.eval_collator = self.build_collator(args, train=False)
        self.extra_terms = self._resolve_terms(args)
        if train_dataset is not None and isinstance(train_dataset, Dataset):
            # Decoding in the collator lets a corrupt image be reported with its sample id.
            bank_source = train_dataset
            train_dataset = defer_image_decoding(_with_sample_ids(train_dataset), args.image_column_name)
            if args.teacher_label_bank is not None:
                from .label_bank import attach_label_bank

                self.label_bank, data_collator = attach_label_bank(
                    args, data_collator, bank_source, train_dataset, self.label_names_, bank_teacher_sources
                )

        self._student_kwargs = forward_kwargs(
            student.module, student.library, self.student_preprocess.image_size
        )
        self.num_train_samples = len(train_dataset) if train_dataset is not None else None
        self.feature_taps = build_feature_taps(
            args,
            student.module,
            student.library,
            self.student_preprocess.image_size,
            self._student_kwargs,
            self.teacher,
            self.extra_terms,
        )  # None unless a configured term compares features
        auxiliary = {**self.build_auxiliary_modules(args, student), **(auxiliary_modules or {})}
        trained: nn.Module = student.module
        if args.deit_distillation != "none" and (auxiliary or self.feature_taps is not None):
            raise ValueError(
                f"DistillationConfig.deit_distillation={args.deit_distillation!r} does not combine with feature terms "
                "or auxiliary modules (the DeiT heads bypass their wrapper); drop those loss_types or set "
                "deit_distillation='none'"
            )
        if auxiliary or self.feature_taps is not None:
            trained = DistillationModule(
                student.module,
                auxiliary,
                student.library,
                self._student_kwargs,
                feature_tap=self.feature_taps.student if self.feature_taps is not None else None,
            )

        super().__init__(
            model=trained,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            compute_metrics=compute_metrics if compute_metrics is not None else self._default_metrics(),
            # Auxiliary modules that are also TrainerCallbacks follow the loop (e.g. SLKD's sequential phases).
            callbacks=[
                _EpochCallback(data_collator),
                *(m for m in auxiliary.values() if isinstance(m, TrainerCallback)),
                *(callbacks or []),
            ],
            optimizers=optimizers,
            **kwargs,
        )
        # Our loss is a batch mean, so the Trainer must divide it by the accumulation steps: GA=k at B/k then
        # equals GA=1 at B.
        self.model_accepts_loss_kwargs = False
        self.student_normalizer = Normalizer(self.student_preprocess.mean, self.student_preprocess.std)
        self.teacher_placement = None
        if self.teacher is not None:
            # Never through accelerator.prepare: each backend gets its own placement (see distributed.py).
            self.teacher_placement = place_teachers(
                self.teacher,
                self.accelerator,
                args.teacher_placement,
                micro_batch_size=args.per_device_train_batch_size,
                channels_last=args.channels_last,
                compile_kwargs=(
                    {"backend": args.torch_compile_backend, "mode": args.torch_compile_mode}
                    if args.teacher_compile
                    else None
                ),
            )
        if args.channels_last:
            to_channels_last(self.model)
        self.student_normalizer.to(self.accelerator.device)
        self.teacher_cache = self._load_teacher_cache(args) if self.uses_teacher_cache(args) else None
        self._term_sums: dict[str, Tensor] = {}
        self._term_count = 0
        if args.verify_teacher_integrity:
            self.add_callback(
                TeacherIntegrityCallback(lambda: integrity_module(teacher_modules(self.teacher)))
            )
        if args.save_on_sigterm:
            self.add_callback(SigtermCheckpointCallback())

    # ------------------------------------------------------------------------------------------- set-up
    def _build_teacher(
        self, teacher_model: nn.Module | str | list, args: DistillationConfig, image_size: int | None = None
    ) -> Teacher | TeacherEnsemble:
        if isinstance(teacher_model, (list, tuple)):
            if len(teacher_model) > 1:
                return self._build_ensemble(list(teacher_model), args)
            teacher_model = teacher_model[0]
            image_size = image_size or (args.teacher_image_sizes or [None])[0]
        teacher = load_model_or_explain(
            lambda: load_model(teacher_model, revision=args.teacher_revision, role="teacher"),
            teacher_model,
            "teacher_model_name_or_path",
            "teacher_model",
        )
        preprocess = self._preprocess(teacher, image_size or args.teacher_image_size, None)
        num_outputs = probe_num_outputs(teacher.module, teacher.library, preprocess, "teacher_image_size")
        try:
            label_index = align_labels(teacher.label_names, self.label_names_, num_outputs)
        except ValueError as error:  # name the setting to change, not just the mismatch
            raise ValueError(
                f"DistillationConfig.teacher_model_name_or_path / `teacher_model=`: {error}"
            ) from error
        dtype = _DTYPES[args.teacher_dtype] if args.teacher_dtype else None
        return Teacher(teacher, preprocess, label_index, dtype)

    def _build_ensemble(self, teacher_models: list, args: DistillationConfig) -> TeacherEnsemble:
        sizes = args.teacher_image_sizes or [args.teacher_image_size] * len(teacher_models)
        if len(sizes) != len(teacher_models):
            raise ValueError(
                f"DistillationConfig.teacher_image_sizes has {len(sizes)} entries for {len(teacher_models)} "
                "teachers; give one size per teacher"
            )
        members = [self._build_teacher(model, args, size) for model, size in zip(teacher_models, sizes)]
        return TeacherEnsemble(members, temperature=args.temperature)

    @staticmethod
    def uses_teacher_cache_for(args: DistillationConfig, has_teacher: bool) -> bool:
        return has_teacher and args.use_teacher_cache and args.teacher_input.startswith("fix/")

    def uses_teacher_cache(self, args: DistillationConfig) -> bool:
        """fix/* teacher inputs read precomputed teacher outputs (see hf_distill.teacher_cache)."""
        return self.uses_teacher_cache_for(args, getattr(self, "teacher", None) is not None)

    def _load_teacher_cache(self, args: DistillationConfig):
        from .teacher_cache import load_or_build_cache

        if not isinstance(self.train_dataset, Dataset):
            return None
        collator = self.build_collator(args, train=True)
        # The main process computes and writes the cache; the others then read it.
        with self.accelerator.main_process_first():
            return load_or_build_cache(
                self.teacher,
                self.train_dataset,
                args.teacher_input,
                augmentation=collator.augmentation,
                cache_dir=args.teacher_cache_dir,
                topk=args.teacher_cache_topk,
                interpolation=collator.teacher_interpolation,
                image_column=args.image_column_name,
                temperature=args.temperature,
                ic_ens_crops=args.ic_ens_crops,
                seed=args.seed,
                batch_size=args.per_device_eval_batch_size,
                device=self.accelerator.device,
                label_names=self.label_names_,
                write=self.accelerator.is_main_process,
            )

    def create_optimizer(self, model: nn.Module | None = None):
        """AdamW and the other `optim` choices: the Trainer's own; Shampoo/ScalableShampoo/SOAP: from
        pytorch-optimizer by ``optimizer_name`` (the scheduler still comes from TrainingArguments)."""
        args: DistillationConfig = self.args
        if args.optimizer_name == "adamw" or self.optimizer is not None:
            return super().create_optimizer(model)
        from .optim import build_optimizer

        target = model if model is not None else self.model
        self.optimizer = build_optimizer(
            args.optimizer_name,
            target,
            lr=args.learning_rate,
            weight_decay=args.weight_decay,
            decay_parameter_names=self.get_decay_parameter_names(target),
            **args.optimizer_kwargs,
        )
        return self.optimizer

    def build_auxiliary_modules(self, args: DistillationConfig, student: LoadedModel) -> dict[str, nn.Module]:
        """Trainable modules the configured methods need beside the student (none for plain KD). Methods that
        need some add them here; a user can also pass ``auxiliary_modules=`` to the trainer."""
        modules: dict[str, nn.Module] = {}
        if self.feature_taps is not None:  # fitnet projectors, vid regressors, crd memory bank
            modules.update(
                build_feature_modules(self.feature_taps, self.extra_terms, self.num_train_samples, args.seed)
            )
        if args.peer_model_names_or_paths:  # DML peers
            modules.update(build_peers(args, self.label_names_, self.student_preprocess.image_size))
        if args.slkd_num_teachers:  # SLKD: self-learning teachers plus their two loss terms
            from .slkd import SLKD_NAME, build_self_learning_teachers, slkd_terms

            self.extra_terms.extend(slkd_terms(args))
            return {
                **modules,
                SLKD_NAME: build_self_learning_teachers(args, self.teacher, len(self.label_names_)),
            }
        return modules

    @property
    def student(self) -> nn.Module:
        """The student alone, unwrapped from DDP/DeepSpeed and from the auxiliary-module wrapper."""
        model = self.unwrap(self.model)
        return model.student if isinstance(model, DistillationModule) else model

    def unwrap(self, model: nn.Module) -> nn.Module:
        """``accelerator.unwrap_model(model)``, remembered per model object: Accelerate's unwrapping checks
        installed packages on every call (a package-metadata read), too slow for once per training step."""
        memo = self.__dict__.setdefault("_unwrapped", {})
        entry = memo.get(id(model))
        if entry is None or entry[0] is not model:  # keep the object, so a reused id cannot match
            entry = memo[id(model)] = (model, self.accelerator.unwrap_model(model, keep_torch_compile=False))
        return entry[1]

    def auxiliary_module(self, name: str) -> nn.Module:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(model, DistillationModule) or name not in model.auxiliary:
            raise KeyError(f"no auxiliary module named '{name}'")
        return model.auxiliary[name]

    @staticmethod
    def _resolve_label_names(train_dataset, eval_sets, args: DistillationConfig) -> list[str]:
        for dataset in (train_dataset, *eval_sets.values()):
            if dataset is not None and args.label_column_name in getattr(dataset, "column_names", []):
                names = class_names(dataset, args.label_column_name)
                for name, other in eval_sets.items():
                    if other is not None and args.label_column_name in other.column_names:
                        other_names = class_names(other, args.label_column_name)
                        if other_names != names:
                            raise ValueError(
                                f"{name} has classes {other_names} but the training data has {names}; "
                                "evaluate on data with the same ClassLabel"
                            )
                return names
        raise ValueError(
            f"no dataset has the label column '{args.label_column_name}', so the class names are unknown; give a "
            "labelled train or eval dataset (a ClassLabel column) or set DistillationConfig.label_column_name"
        )

    @staticmethod
    def _preprocess(loaded: LoadedModel, image_size: int | None, interpolation: str | None) -> PreprocessSpec:
        spec = loaded.preprocess
        return PreprocessSpec(
            image_size=image_size or spec.image_size,
            mean=spec.mean,
            std=spec.std,
            interpolation=interpolation or spec.interpolation,
        )

    def build_collator(self, args: DistillationConfig, train: bool) -> DistillationCollator:
        """The collator for training (augmented views) or evaluation (the central view)."""
        teacher = self.teacher.preprocess if self.teacher is not None else None
        teacher_interpolation = teacher.interpolation if teacher is not None else "bilinear"
        if teacher_interpolation not in ("bilinear", "bicubic", "nearest"):
            teacher_interpolation = "bilinear"
        return DistillationCollator(
            student_size=self.student_preprocess.image_size,
            # With the fixed-teacher cache the training batches need no teacher view at all.
            teacher_size=None
            if teacher is None or (train and self.uses_teacher_cache(args))
            else teacher.image_size,
            extra_teacher_sizes=tuple(getattr(self.teacher, "image_sizes", ())),
            teacher_input=args.teacher_input,
            augmentation=AugmentationConfig(
                crop=args.crop,
                crop_scale=tuple(args.crop_scale),
                crop_ratio=tuple(args.crop_ratio),
                crop_fraction=args.crop_fraction,
                hflip=args.hflip,
            ),
            train=train,
            seed=args.seed,
            image_column=args.image_column_name,
            label_column=args.label_column_name,
            student_interpolation=self.student_preprocess.interpolation,
            teacher_interpolation=teacher_interpolation,
            mix_config=args.mix_config(),
        )

    @staticmethod
    def _resolve_terms(args: DistillationConfig) -> list[tuple[str, Callable, float, dict[str, Any]]]:
        terms = []
        for loss, weight in zip(args.loss_types, args.loss_weights):
            fn = loss if callable(loss) else LOSSES[loss]
            name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
            params = dict(args.loss_kwargs.get(name, {}))
            accepted = inspect.signature(fn).parameters
            if "temperature" in accepted and "temperature" not in params:
                params["temperature"] = args.temperature
            terms.append((name, fn, float(weight), params))
        return terms

    def _default_metrics(self) -> Callable | None:
        from .metrics import DistillationMetrics

        return DistillationMetrics()

    # ---------------------------------------------------------------------------------------- forward
    def student_logits(self, model: nn.Module, pixel_values: Tensor) -> Tensor:
        return self.student_outputs(model, {"pixel_values": pixel_values}, None).logits

    def student_outputs(
        self, model: nn.Module, inputs: dict[str, Tensor], teacher: ModelOutputs | None
    ) -> ModelOutputs:
        """The student's forward (and, through the wrapper, every auxiliary module's) on normalised pixels."""
        pixels = self.student_normalizer(inputs["pixel_values"])
        if isinstance(self.unwrap(model), DistillationModule):
            return model(pixel_values=pixels, teacher=teacher, batch=inputs)
        if self.args.deit_distillation != "none":  # both heads; logits = their average, as at inference
            return deit_student_outputs(model, pixels, self.student_library, **self._student_kwargs)
        return ModelOutputs(forward_logits(model, pixels, self.student_library, **self._student_kwargs))

    def teacher_outputs(self, inputs: dict[str, Tensor]) -> ModelOutputs:
        """The teacher's logits and, when a configured term compares features, its tapped features."""
        if self.feature_taps is None or self.teacher is None:
            return ModelOutputs(self.teacher_logits(inputs))
        pixels = inputs.get("teacher_pixel_values")
        pixels = pixels if pixels is not None else inputs["pixel_values"]
        return ModelOutputs(*self.teacher.forward_with_features(pixels, self.feature_taps.teacher))

    def save_peer(self, name: str, output_dir: str) -> list[str]:
        """Write DML peer ``name`` (``peer1`` …) alone in Hub layout, like ``save_model`` writes the student."""
        return save_peer(self, name, output_dir)

    def teacher_logits(self, inputs: dict[str, Tensor]) -> Tensor | None:
        if getattr(self, "label_bank", None) is not None and "bank_rows" in inputs:
            stored = inputs.get("bank_logits")  # replay: the stored teacher output, read by the collator
            return stored if stored is not None else self.label_bank.teacher_logits(inputs["bank_rows"])
        if self.teacher is None:
            return None
        cache = getattr(self, "teacher_cache", None)
        if cache is not None and self.model.training and "sample_ids" in inputs:
            return cache.lookup(inputs["sample_ids"])  # fix/* modes: the teacher never runs while training
        if isinstance(self.teacher, TeacherEnsemble):
            return self.teacher(teacher_views(inputs))
        pixels = inputs.get("teacher_pixel_values")
        return self.teacher(pixels if pixels is not None else inputs["pixel_values"])

    def distillation_loss(
        self, student: ModelOutputs, teacher: ModelOutputs, inputs: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted sum of every configured term (each in fp32) and the terms themselves."""
        args: DistillationConfig = self.args
        labels = inputs.get("labels")
        terms: dict[str, Tensor] = {}
        total = student.logits.new_zeros((), dtype=torch.float32)
        kd_weight = args.alpha if labels is not None else 1.0
        deit = args.deit_distillation != "none" and DEIT_HEADS in student.auxiliary
        if deit:  # CE on the class head, the teacher on the distillation head (hf_distill.deit)
            total, terms = deit_loss(
                student,
                teacher,
                labels,
                mode=args.deit_distillation,
                alpha=args.alpha,
                temperature=args.temperature,
                cross_entropy=lambda z, y: self.cross_entropy(z, y, inputs),
            )
        if not deit and labels is not None and args.alpha < 1.0:
            terms["ce"] = self.cross_entropy(student.logits, labels, inputs)
            total = total + (1.0 - args.alpha) * terms["ce"]
        if not deit and kd_weight > 0.0 and teacher.logits is not None:
            kd = kd_loss_standardized if args.logit_standardization else kd_loss
            terms["kd"] = kd(student.logits, teacher.logits, args.temperature)
            total = total + kd_weight * terms["kd"]
        for name, fn, weight, params in self.extra_terms:
            terms[name] = fn(student, teacher, inputs, **params).float()
            total = total + weight * terms[name]
        return total, terms

    def cross_entropy(self, logits: Tensor, labels: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """Hard-label CE in fp32; with batch mixing, the mixed-label CE lam*CE(y) + (1-lam)*CE(y[perm])."""
        smoothing = self.args.label_smoothing_factor
        logits = logits.float()
        perm, lam = inputs.get("mix_perm"), inputs.get("mix_lam")
        # label-bank replay: each sample's recorded partner need not be in the batch, so its label comes along
        partner_labels = inputs.get("mix_partner_labels")
        if perm is None and partner_labels is None:
            return F.cross_entropy(logits, labels, label_smoothing=smoothing)
        partner_labels = partner_labels if partner_labels is not None else labels[perm]
        own = F.cross_entropy(logits, labels, reduction="none", label_smoothing=smoothing)
        partner = F.cross_entropy(logits, partner_labels, reduction="none", label_smoothing=smoothing)
        return (lam * own + (1.0 - lam) * partner).mean()

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ):
        teacher = self.teacher_outputs(inputs)
        student = self.student_outputs(model, inputs, teacher)
        loss, terms = self.distillation_loss(student, teacher, inputs)
        if model.training and TL_PIXELS in inputs:  # TLmixup/TLCutMix images x': KD only, see augment.py
            tl_loss, tl_terms = teacher_labelled_loss(self, model, inputs)
            loss, terms = loss + tl_loss, {**terms, **tl_terms}
        if model.training:
            if self.args.check_finite_loss:
                check_finite_terms(
                    terms,
                    loss,
                    step=self.state.global_step + 1,
                    epoch=self.state.epoch,
                    sample_ids=inputs.get("sample_ids"),
                )
            self._record_terms(terms)
        return (
            (loss, {"logits": student.logits, "teacher_logits": teacher.logits}) if return_outputs else loss
        )

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
        """bf16/fp16 autocast around both forwards (Accelerate's covers only the wrapped student); loss terms
        cast to fp32 themselves."""
        return autocast(self.accelerator.device, autocast_dtype(self.args.bf16, self.args.fp16))

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        if self.args.channels_last:  # elementwise normalisation keeps the layout, so convert once here
            for key, value in inputs.items():
                if isinstance(value, Tensor) and value.ndim == 4 and key.endswith("pixel_values"):
                    inputs[key] = value.contiguous(memory_format=torch.channels_last)
        return inputs

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            teacher = self.teacher_outputs(inputs)
            student = self.student_outputs(model, inputs, teacher)
            loss, _ = self.distillation_loss(student, teacher, inputs)
        if prediction_loss_only:
            return loss.detach(), None, None
        logits = student.logits.float()
        predictions = logits if teacher.logits is None else (logits, teacher.logits.float())
        return loss.detach(), predictions, inputs.get("labels")

    # ------------------------------------------------------------------------------------------ logging
    def _record_terms(self, terms: dict[str, Tensor]) -> None:
        for name, value in terms.items():
            value = value.detach().float()
            self._term_sums[name] = self._term_sums[name] + value if name in self._term_sums else value
        self._term_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_count:
            for name, total in self._term_sums.items():
                mean = self.accelerator.reduce(total / self._term_count, reduction="mean")
                logs[f"loss_{name}"] = round(float(mean), 6)
            self._term_sums, self._term_count = {}, 0
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------- dataloaders
    def _with_collator(self, collator, make):
        original = self.data_collator
        self.data_collator = collator
        try:
            return make()
        finally:
            self.data_collator = original

    def get_eval_dataloader(self, eval_dataset=None):
        return self._with_collator(
            self.eval_collator, lambda: super(DistillationTrainer, self).get_eval_dataloader(eval_dataset)
        )

    def get_test_dataloader(self, test_dataset):
        return self._with_collator(
            self.eval_collator, lambda: super(DistillationTrainer, self).get_test_dataloader(test_dataset)
        )

    # ------------------------------------------------------------------------------------------- saving
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # Checkpoints (internal calls) also need the auxiliary modules to resume; a user's save does not.
        self._saving_checkpoint = _internal_call
        try:
            # Always "internal" for the Trainer: it would push before the card exists; we push below instead.
            super().save_model(output_dir, _internal_call=True)
        finally:
            self._saving_checkpoint = False
        if _internal_call:
            return
        if self.args.write_model_card:
            from .release import write_release_files

            write_release_files(self, output_dir)
        if self.args.push_to_hub:
            self._upload_student(output_dir, "Model save", self.args.hub_revision)

    # -------------------------------------------------------------------------------------- Hub release
    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Write the distilled student's card (``README.md``, see :mod:`hf_distill.model_card`) and its training
        curve (``training_curve.png``) into ``output_dir``; ``license``, ``tags``, ``finetuned_from`` and
        ``dataset`` override what the card would say."""
        from .release import write_release_files

        write_release_files(
            self,
            self.args.output_dir,
            license=license,
            tags=tags,
            base_model=finetuned_from,
            dataset=dataset if isinstance(dataset, str) else None,
        )

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ):
        """Upload the student alone to ``hub_model_id``: its weights (safetensors), config (with id2label),
        image processor / timm pretrained_cfg, card and training curve — never the teacher, cached teacher
        outputs, optimizer state, checkpoints or auxiliary modules. The student and card are written to
        ``output_dir`` first; a failed upload leaves that directory complete and names the retry command.
        ``kwargs`` go to :meth:`create_model_card`."""
        from .release import check_push_settings

        token = token if token is not None else self.args.hub_token
        # Also when args.push_to_hub is off: say what is missing before saving anything.
        check_push_settings(self.args, token=token, hub_model_id=self.hub_model_id, force=True)
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self._saving_checkpoint = False
        super().save_model(self.args.output_dir, _internal_call=True)  # all processes: FSDP/DeepSpeed gather
        if not self.is_world_process_zero():
            return None
        self.create_model_card(**kwargs)
        return self._upload_student(
            self.args.output_dir,
            commit_message or "End of training",
            revision,
            token=token,
            blocking=blocking,
        )

    def _upload_student(self, output_dir, commit_message, revision, token=None, blocking=True):
        if not self.is_world_process_zero():
            return None
        from .release import upload_student

        if self.hub_model_id is None:
            self.init_hf_repo(token=token)
        self._finish_current_push()
        return upload_student(
            output_dir if output_dir is not None else self.args.output_dir,
            self.hub_model_id,
            token=token if token is not None else self.args.hub_token,
            revision=revision if revision is not None else self.args.hub_revision,
            commit_message=commit_message,
            create_repo=False,  # init_hf_repo created it
            blocking=blocking,
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """hub_strategy='every_save': upload the student of each checkpoint in the background (its files only;
        the checkpoint's optimizer state and auxiliary modules stay local)."""
        from transformers.trainer_utils import HubStrategy
        from transformers.utils.hub import PushInProgress

        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if (
            not self.args.hub_always_push
            and self.push_in_progress is not None
            and not self.push_in_progress.is_done()
        ):
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        from .release import upload_student

        job = upload_student(
            checkpoint_folder,
            self.hub_model_id,
            token=self.args.hub_token,
            revision=self.args.hub_revision,
            commit_message=f"Training in progress, step {self.state.global_step}",
            create_repo=False,
            blocking=False,
        )
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress([job])
        else:
            self.push_in_progress.jobs.append(job)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the student alone, in a layout both transformers and timm load (never the teacher); into
        checkpoints also the auxiliary modules (``auxiliary.safetensors``)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        student_state, auxiliary_state = state_dict, None
        if isinstance(model, DistillationModule):
            full = state_dict if state_dict is not None else model.state_dict()
            student_state = {k[len("student.") :]: v for k, v in full.items() if k.startswith("student.")}
            auxiliary_state = {k: v for k, v in full.items() if k.startswith("auxiliary.")}
        save_student(
            model.student if isinstance(model, DistillationModule) else model,
            output_dir,
            label_names=self.label_names_,
            preprocess=self.student_preprocess,
            state_dict=student_state,
        )
        if auxiliary_state and getattr(self, "_saving_checkpoint", False):
            from safetensors.torch import save_file

            tmp = os.path.join(output_dir, f".{AUXILIARY_WEIGHTS_NAME}.tmp")
            save_file({k: v.detach().contiguous().cpu() for k, v in auxiliary_state.items()}, tmp)
            os.replace(tmp, os.path.join(output_dir, AUXILIARY_WEIGHTS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        wrapper = self.accelerator.unwrap_model(
            model if model is not None else self.model, keep_torch_compile=False
        )
        if not isinstance(wrapper, DistillationModule) or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from safetensors.torch import load_file

        student_file = os.path.join(resume_from_checkpoint, "model.safetensors")
        auxiliary_file = os.path.join(resume_from_checkpoint, AUXILIARY_WEIGHTS_NAME)
        for path in (student_file, auxiliary_file) if len(wrapper.auxiliary) else (student_file,):
            if not os.path.isfile(path):
                raise ValueError(
                    f"checkpoint {resume_from_checkpoint} has no {os.path.basename(path)}; cannot resume"
                )
        wrapper.student.load_state_dict(load_file(student_file, device="cpu"))
        if not len(wrapper.auxiliary):  # a feature-tap wrapper with nothing trainable beside the student
            return
        auxiliary = {k[len("auxiliary.") :]: v for k, v in load_file(auxiliary_file, device="cpu").items()}
        wrapper.auxiliary.load_state_dict(auxiliary)
