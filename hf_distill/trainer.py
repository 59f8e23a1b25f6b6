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
from transformers import Trainer, TrainerCallback

from .collators import AugmentationConfig, DistillationCollator
from .config import DistillationConfig
from .data import class_names
from .hub import (
    LoadedModel,
    Normalizer,
    PreprocessSpec,
    align_labels,
    forward_logits,
    load_model,
    save_student,
)
from .losses import LOSSES, ModelOutputs, kd_loss
from .teacher import Teacher, forward_kwargs, probe_num_outputs

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

    def __init__(self, student: nn.Module, auxiliary: dict[str, nn.Module], library: str, student_kwargs: dict):
        super().__init__()
        self.student = student
        self.auxiliary = nn.ModuleDict(auxiliary)
        self.library = library
        self.student_kwargs = dict(student_kwargs)

    def forward(
        self,
        pixel_values: Tensor,
        teacher: ModelOutputs | None = None,
        batch: dict[str, Tensor] | None = None,
    ) -> ModelOutputs:
        outputs = ModelOutputs(forward_logits(self.student, pixel_values, self.library, **self.student_kwargs))
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


def _with_sample_ids(dataset: Dataset) -> Dataset:
    if "sample_id" in dataset.column_names:
        return dataset
    return dataset.add_column("sample_id", list(range(len(dataset))))


class DistillationTrainer(Trainer):
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
        model = model if model is not None else args.student_model_name_or_path
        teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        if model is None:
            raise ValueError("no student: pass `model=` or set DistillationConfig.student_model_name_or_path")
        if teacher_model is None and (args.alpha > 0 or args.loss_types):
            raise ValueError(
                "no teacher: pass `teacher_model=` or set DistillationConfig.teacher_model_name_or_path "
                "(training without a teacher needs alpha=0 and no loss_types: plain supervised training)"
            )

        _check_dataset(train_dataset, "train_dataset", args)
        eval_sets = eval_dataset if isinstance(eval_dataset, dict) else {"eval_dataset": eval_dataset}
        for name, dataset in eval_sets.items():
            _check_dataset(dataset, name, args)

        self.label_names_ = self._resolve_label_names(train_dataset, eval_sets, args)
        student = load_model(
            model, label_names=self.label_names_, pretrained=args.student_pretrained, role="student"
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

        if data_collator is None:
            data_collator = self.build_collator(args, train=True)
        self.eval_collator = self.build_collator(args, train=False)
        self.extra_terms = self._resolve_terms(args)
        if train_dataset is not None and isinstance(train_dataset, Dataset):
            train_dataset = _with_sample_ids(train_dataset)

        self._student_kwargs = forward_kwargs(student.module, student.library, self.student_preprocess.image_size)
        auxiliary = {**self.build_auxiliary_modules(args, student), **(auxiliary_modules or {})}
        trained: nn.Module = student.module
        if auxiliary:
            trained = DistillationModule(student.module, auxiliary, student.library, self._student_kwargs)

        super().__init__(
            model=trained,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            compute_metrics=compute_metrics if compute_metrics is not None else self._default_metrics(),
            callbacks=[_EpochCallback(data_collator), *(callbacks or [])],
            optimizers=optimizers,
            **kwargs,
        )
        # Our loss is a batch mean, so the Trainer must divide it by the accumulation steps: GA=k at B/k then
        # equals GA=1 at B.
        self.model_accepts_loss_kwargs = False
        self.student_normalizer = Normalizer(self.student_preprocess.mean, self.student_preprocess.std)
        if self.teacher is not None:
            self.teacher.to(self.accelerator.device)
        self.student_normalizer.to(self.accelerator.device)
        self._term_sums: dict[str, Tensor] = {}
        self._term_count = 0

    # ------------------------------------------------------------------------------------------- set-up
    def _build_teacher(self, teacher_model: nn.Module | str, args: DistillationConfig) -> Teacher:
        teacher = load_model(teacher_model, revision=args.teacher_revision, role="teacher")
        preprocess = self._preprocess(teacher, args.teacher_image_size, None)
        num_outputs = probe_num_outputs(teacher.module, teacher.library, preprocess, "teacher_image_size")
        label_index = align_labels(teacher.label_names, self.label_names_, num_outputs)
        dtype = _DTYPES[args.teacher_dtype] if args.teacher_dtype else None
        return Teacher(teacher, preprocess, label_index, dtype)

    def build_auxiliary_modules(self, args: DistillationConfig, student: LoadedModel) -> dict[str, nn.Module]:
        """Trainable modules the configured methods need beside the student (none for plain KD). Methods that
        need some add them here; a user can also pass ``auxiliary_modules=`` to the trainer."""
        return {}

    @property
    def student(self) -> nn.Module:
        """The student alone, unwrapped from DDP/DeepSpeed and from the auxiliary-module wrapper."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return model.student if isinstance(model, DistillationModule) else model

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
            teacher_size=teacher.image_size if teacher is not None else None,
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
        if isinstance(self.accelerator.unwrap_model(model, keep_torch_compile=False), DistillationModule):
            return model(pixel_values=pixels, teacher=teacher, batch=inputs)
        return ModelOutputs(forward_logits(model, pixels, self.student_library, **self._student_kwargs))

    def teacher_logits(self, inputs: dict[str, Tensor]) -> Tensor | None:
        if self.teacher is None:
            return None
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
        if labels is not None and args.alpha < 1.0:
            terms["ce"] = self.cross_entropy(student.logits, labels, inputs)
            total = total + (1.0 - args.alpha) * terms["ce"]
        if kd_weight > 0.0 and teacher.logits is not None:
            terms["kd"] = kd_loss(student.logits, teacher.logits, args.temperature)
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
        if perm is None:
            return F.cross_entropy(logits, labels, label_smoothing=smoothing)
        own = F.cross_entropy(logits, labels, reduction="none", label_smoothing=smoothing)
        partner = F.cross_entropy(logits, labels[perm], reduction="none", label_smoothing=smoothing)
        return (lam * own + (1.0 - lam) * partner).mean()

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ):
        teacher = ModelOutputs(self.teacher_logits(inputs))
        student = self.student_outputs(model, inputs, teacher)
        loss, terms = self.distillation_loss(student, teacher, inputs)
        if model.training:
            self._record_terms(terms)
        return (
            (loss, {"logits": student.logits, "teacher_logits": teacher.logits}) if return_outputs else loss
        )

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            teacher = ModelOutputs(self.teacher_logits(inputs))
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
            super().save_model(output_dir, _internal_call)
        finally:
            self._saving_checkpoint = False

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
        wrapper = self.accelerator.unwrap_model(model if model is not None else self.model, keep_torch_compile=False)
        if not isinstance(wrapper, DistillationModule) or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from safetensors.torch import load_file

        student_file = os.path.join(resume_from_checkpoint, "model.safetensors")
        auxiliary_file = os.path.join(resume_from_checkpoint, AUXILIARY_WEIGHTS_NAME)
        for path in (student_file, auxiliary_file):
            if not os.path.isfile(path):
                raise ValueError(f"checkpoint {resume_from_checkpoint} has no {os.path.basename(path)}; cannot resume")
        wrapper.student.load_state_dict(load_file(student_file, device="cpu"))
        auxiliary = {k[len("auxiliary.") :]: v for k, v in load_file(auxiliary_file, device="cpu").items()}
        wrapper.auxiliary.load_state_dict(auxiliary)
