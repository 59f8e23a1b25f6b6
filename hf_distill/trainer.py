"""``DistillationTrainer``: a ``transformers.Trainer`` whose loss distils a frozen teacher into the student.

The trainer is the loop's glue. It loads the models, builds the teacher source (:mod:`hf_distill.teacher`
and the sources listed in :mod:`hf_distill.registry`) and the methods the config enables, checks once
that every term's and method's needs are met by the source (:mod:`hf_distill.composition`), and in each
step calls the teacher source once, runs the student, and sums ``(1 - alpha) CE + alpha KD`` with every
other term the methods contribute. It names no method: each lives in its own module.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import HubStrategy, get_last_checkpoint
from transformers.utils.hub import PushInProgress

from .batch import LABELS, PIXEL_VALUES, mixed_cross_entropy
from .collators import PREPROCESSED_MODES_FIX, AugmentationConfig, DistillationCollator, parse_teacher_input
from .composition import check_composition, requirements
from .config import DistillationConfig
from .contract import TEACHER_NONE
from .data import class_names, with_stream_sample_ids
from .distributed import autocast, autocast_dtype, integrity_module, place_teachers, to_channels_last
from .hub import (
    LoadedModel,
    Normalizer,
    PreprocessSpec,
    align_labels,
    forward_logits,
    load_model,
    preprocess_of_processor,
    save_student,
)
from .losses import ModelOutputs
from .method import Build, Term
from .metrics import DistillationMetrics, WithTeacherMetrics, split_predictions
from .mixing import mix_config_of
from .model import DistillationModule
from .optim import build_optimizer
from .registry import METHODS, TEACHER_SOURCES, teacher_source_class
from .release import check_push_settings, upload_student, write_release_files
from .reliability import (
    AtomicCheckpointMixin,
    SigtermCheckpointCallback,
    TeacherIntegrityCallback,
    check_finite_terms,
    check_first_images,
    check_first_pixels,
    check_labels,
    defer_image_decoding,
    first_rows,
    format_transform,
    is_preprocessed,
    is_stream,
    load_model_or_explain,
    teacher_modules,
)
from .teacher import (
    LiveTeacher,
    Teacher,
    TeacherEnsemble,
    TeacherSource,
    forward_kwargs,
    probe_num_outputs,
    teacher_sizes_of,
)
from .terms import kd_function, resolve_terms, term_needs

logger = logging.getLogger(__name__)

AUXILIARY_WEIGHTS_NAME = "auxiliary.safetensors"
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class _EpochCallback(TrainerCallback):
    """Tells the collator which epoch starts, so augmentation follows (seed, epoch, sample id).

    A stream has no length, so ``state.epoch`` counts ``max_steps`` as one epoch; its epochs are the passes
    over the stream, which the Trainer's loop counts from 0 (as it passes them to the dataset's
    ``set_epoch``), and so does this callback."""

    def __init__(self, collator: Any, stream: bool = False):
        self.collator = collator
        self.stream = stream
        self.passes = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.passes = 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = self.passes if self.stream else math.floor(state.epoch + 1e-6)
        self.passes += 1
        if hasattr(self.collator, "set_epoch"):
            self.collator.set_epoch(epoch)


# Written into each checkpoint of a streamed run: which pass over the stream the checkpoint was saved in.
STREAM_POSITION_NAME = "stream_position.json"


def check_stream_resume(checkpoint: str, ignore_data_skip: bool) -> None:
    """Refuse to resume a streamed run from a checkpoint saved after its first pass over the stream.

    A stream has no length, so the Trainer counts the whole run as one epoch and fast-forwards a resumed run
    by skipping ``global_step`` batches of the stream's *first* pass. Within that pass the skip lands on the
    batch the interrupted run would have read next; past it the skip runs off the end of the first pass and
    the resumed run starts the next pass from its first batch, training on other batches than the
    interrupted run would have (silently, with no error)."""
    if ignore_data_skip:
        return
    path = os.path.join(checkpoint, STREAM_POSITION_NAME)
    passes = None
    if os.path.isfile(path):
        with open(path) as handle:
            passes = int(json.load(handle)["pass"])
    if passes == 0:
        return
    where = (
        f"was saved in pass {passes} (counted from 0) over the streamed train_dataset"
        if passes is not None
        else f"does not record where in the streamed train_dataset it was saved (it has no {STREAM_POSITION_NAME})"
    )
    raise ValueError(
        f"resume_from_checkpoint={checkpoint!r} {where}: the Trainer fast-forwards a stream by skipping "
        "batches of its first pass only, so the resumed run would train on other batches than the "
        "interrupted run. To resume exactly, train on a map-style datasets.Dataset (load without "
        "streaming=True, or materialise the stream with Dataset.from_generator); to continue from the "
        "start of the stream without fast-forwarding, set DistillationConfig.ignore_data_skip=True."
    )


def _check_dataset(
    dataset: Dataset | None, name: str, config: DistillationConfig, own_collator: bool = True
) -> bool:
    """Refuse an empty dataset, a missing image column (only the built-in collator reads it; a user's
    ``data_collator`` decides what it reads), unusable labels and undecodable first images; a stream
    (``IterableDataset``) for training without ``max_steps``. Returns whether the built-in collator will read
    the rows' own ``pixel_values`` (a dataset preprocessed by ``map`` or a transform)."""
    if dataset is None:
        return False
    stream = is_stream(dataset)
    if stream and name == "train_dataset" and config.max_steps <= 0:
        raise ValueError(
            f"{name} is a streamed IterableDataset, which has no length, so num_train_epochs cannot say how "
            "long to train; set DistillationConfig.max_steps to the number of optimizer steps (when the stream "
            "ends first it starts again, as the next epoch)"
        )
    if (len(first_rows(dataset, name, 1)) if stream else len(dataset)) == 0:
        raise ValueError(f"{name} is empty; give a dataset with at least one image")
    preprocessed = own_collator and is_preprocessed(dataset, name)
    columns = getattr(dataset, "column_names", None)
    if own_collator and not preprocessed and columns and config.image_column_name not in columns:
        raise ValueError(
            f"{name} has no column '{config.image_column_name}' (columns: {columns}); set "
            "DistillationConfig.image_column_name to the column that holds the images"
        )
    check_labels(dataset, config.label_column_name, name)  # -1 / out-of-range ids, before any step
    if not preprocessed:
        check_first_images(dataset, config.image_column_name, name)
    return preprocessed


def _refuse_train_data(
    args: DistillationConfig,
    source_class: type | None,
    ensemble: bool,
    needs: list,
    stream: bool,
    preprocessed: bool,
) -> None:
    """What a streamed or preprocessed training set cannot give, refused at construction: a teacher source
    that stores one output per row of a map-style dataset (a stream), or anything that renders the teacher's
    own view from the raw images (preprocessed pixel_values)."""
    if not (stream or preprocessed):
        return
    if (
        preprocessed
        and source_class is not None
        and parse_teacher_input(args.teacher_input, args.crop).relation != "same"
    ):
        raise ValueError(
            f"DistillationConfig.teacher_input={args.teacher_input!r} gives the teacher a view of its own, "
            f"rendered from the raw image, but train_dataset brings preprocessed pixel_values; {PREPROCESSED_MODES_FIX}"
        )
    if source_class is not None and source_class is not LiveTeacher:
        provided = source_class.provisions(args, ensemble)
        if stream:
            raise ValueError(
                f"DistillationConfig.{provided.setting}: {provided.name} stores one teacher output per row of a "
                "map-style datasets.Dataset, but train_dataset is a streamed IterableDataset; load it without "
                "streaming=True (or materialise the stream with Dataset.from_generator), or "
                f"{provided.alternative}"
            )
        raise ValueError(
            f"DistillationConfig.{provided.setting}: {provided.name} renders its views from the raw images, but "
            "train_dataset brings preprocessed pixel_values (its transform / map made them); give the raw images "
            f"(drop the transform / the pixel_values column), or {provided.alternative}"
        )
    if not preprocessed:
        return
    own_view = sorted({name for name, need in needs if need.teacher_view})
    if own_view:
        raise ValueError(
            f"DistillationConfig: {', '.join(own_view)} need(s) the teacher's own view, rendered from the raw "
            "image, but train_dataset brings preprocessed pixel_values; give the raw images (drop the transform / "
            "the pixel_values column) to use it"
        )
    logger.warning(
        "train_dataset brings its own pixel_values: its transform decides the student's view (crop, crop_scale, "
        "crop_ratio, crop_fraction and hflip are not applied) and the teacher reads those pixels, resized on the "
        "device to its resolution"
    )


# The Hugging Face knowledge-distillation guide's trainer keywords, and where they live here.
_GUIDE_LOSS_KEYWORDS = {"temperature": "temperature", "lambda_param": "alpha", "alpha": "alpha"}


def _config_from_training_arguments(args: TrainingArguments) -> DistillationConfig:
    """A ``DistillationConfig`` with the values a plain ``TrainingArguments`` was given (those that differ from
    ``TrainingArguments``' defaults; the rest, and every distillation field, at ``DistillationConfig``'s)."""
    values = {}
    for spec in dataclasses.fields(TrainingArguments):
        if not spec.init or spec.name == "remove_unused_columns":  # the collator needs the image column
            continue
        value = getattr(args, spec.name)
        if spec.default is not dataclasses.MISSING:
            default = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:
            default = dataclasses.MISSING
        try:
            same = bool(value == default)
        except Exception:  # values without a plain equality
            same = False
        if not same:
            values[spec.name] = value
    return DistillationConfig(**values)


def _user_arguments(
    model: Any, teacher_model: Any, args: Any, kwargs: dict[str, Any]
) -> tuple[Any, Any, DistillationConfig | None]:
    """The student, teacher and config from the ways users write them (``Trainer``'s positional
    ``(model, args)``, the guide's ``student_model=``, a plain ``TrainingArguments``), or a one-line
    TypeError naming the fix. ``kwargs`` loses the keywords handled here."""
    if "student_model" in kwargs:
        student_model = kwargs.pop("student_model")
        if model is not None:
            raise TypeError("give the student once: `model=` or `student_model=`, not both")
        model = student_model
    misplaced = {key: kwargs.pop(key) for key in list(kwargs) if key in _GUIDE_LOSS_KEYWORDS}
    if misplaced:
        settings = ", ".join(f"{_GUIDE_LOSS_KEYWORDS[key]}={value!r}" for key, value in misplaced.items())
        note = " (lambda_param, the KD weight, is `alpha`)" if "lambda_param" in misplaced else ""
        verb = "belongs" if len(misplaced) == 1 else "belong"
        raise TypeError(
            f"{', '.join(misplaced)} {verb} in the config: args=DistillationConfig(..., {settings}){note}"
        )
    if isinstance(model, TrainingArguments):
        raise TypeError(
            "the first argument is the student: DistillationTrainer(model, teacher_model, args, ...)"
        )
    if isinstance(teacher_model, TrainingArguments):  # Trainer's positional order: (model, args, ...)
        if args is not None:
            raise TypeError(
                "the second argument is the teacher: DistillationTrainer(model, teacher_model, args, ...)"
            )
        args, teacher_model = teacher_model, None
    if args is not None and not isinstance(args, TrainingArguments):
        raise TypeError(
            f"args must be a DistillationConfig, got {type(args).__name__}: args=DistillationConfig(output_dir=..., ...)"
        )
    if args is not None and not isinstance(args, DistillationConfig):
        logger.warning(
            "args is a plain %s: using DistillationConfig with its values and the distillation defaults "
            "(temperature=%s, alpha=%s); pass DistillationConfig(...) to set those",
            type(args).__name__,
            DistillationConfig.temperature,
            DistillationConfig.alpha,
        )
        args = _config_from_training_arguments(args)
    return model, teacher_model, args


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _single_sample_last_batch(num_samples: int, args: DistillationConfig) -> bool:
    """Whether some process's last training batch holds one sample. Under several processes Accelerate
    (``even_batches``, the default) completes the last batches from the start of the epoch, so only an
    uneven split leaves the one-sample remainder with one process."""
    if args.dataloader_drop_last or args.train_batch_size < 2:
        return False
    if args.world_size > 1 and getattr(args.accelerator_config, "even_batches", True):
        return False
    return num_samples % args.train_batch_size == 1


_UINT8_FIX = (
    "return uint8 pixel_values in [0, 255], shape (B, 3, H, W), not normalised (e.g. "
    "torch.from_numpy(np.array(image.convert('RGB'))).permute(2, 0, 1)): the trainer normalises each model "
    "itself, with its own mean/std; or leave data_collator unset to use the built-in one"
)


def check_user_batch(batch: Any, where: str = "data_collator") -> None:
    """A user's collator must hand over the batch schema's uint8 views (:mod:`hf_distill.batch`); a float
    batch is almost always already normalised (an image processor's output) and would be normalised twice."""
    if not isinstance(batch, Mapping) or PIXEL_VALUES not in batch:
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"{where} returned no '{PIXEL_VALUES}' (got {keys}); {_UINT8_FIX}")
    for key, value in batch.items():
        if not key.endswith(PIXEL_VALUES):
            continue
        if not isinstance(value, Tensor) or value.ndim != 4:
            shape = tuple(value.shape) if hasattr(value, "shape") else type(value).__name__
            raise ValueError(f"{where} returned '{key}' of shape {shape}; {_UINT8_FIX}")
        if value.dtype != torch.uint8:
            detail = str(value.dtype)
            if value.is_floating_point() and value.numel():
                detail += f" in [{float(value.min()):.2f}, {float(value.max()):.2f}], normalised already?"
            raise ValueError(f"{where} returned {detail} '{key}'; {_UINT8_FIX}")


def _holds_image(value: Any) -> bool:
    """A decoded image, or an undecoded ``{"bytes", "path"}`` one, as datasets' ``Image`` feature gives it."""
    from PIL import Image as PILImage

    return isinstance(value, PILImage.Image) or (
        isinstance(value, Mapping) and {"bytes", "path"} <= set(value)
    )


class _StudentLogitsOnly:
    """A user's ``preprocess_logits_for_metrics`` applied to the student's logits; the teacher's pass as they
    are, for the teacher metrics."""

    def __init__(self, preprocess: Callable):
        self.preprocess = preprocess

    def __call__(self, logits: Any, labels: Any) -> Any:
        student, teacher = split_predictions(logits)
        reduced = self.preprocess(student, labels)
        return reduced if teacher is None else (reduced, teacher)


class _TransformWithSampleIds:
    """A user's ``set_transform`` function, given exactly the rows it was given before (without the
    ``sample_id`` column the trainer adds), whose output gets each row's ``sample_id`` back."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        batch = dict(batch)
        ids = batch.pop("sample_id")
        out = dict(self.transform(batch))
        out["sample_id"] = ids
        return out


def _with_sample_ids(dataset: Any, args: DistillationConfig) -> Any:
    """``dataset`` with a ``sample_id`` per row: its index (under a transform, added beside the transform's
    output), or for a stream the running index of :class:`hf_distill.data.StreamSampleIds`."""
    if is_stream(dataset):
        return with_stream_sample_ids(dataset, args.process_index, args.world_size)
    if "sample_id" in dataset.column_names:
        return dataset
    transform = format_transform(dataset)
    if transform is None:
        return dataset.add_column("sample_id", list(range(len(dataset))))
    fmt = dataset.format
    columns = fmt.get("columns")
    with_ids = dataset.with_format(None).add_column("sample_id", list(range(len(dataset))))
    return with_ids.with_transform(
        _TransformWithSampleIds(transform),
        columns=None if columns is None else [*columns, "sample_id"],
        output_all_columns=fmt.get("output_all_columns", False),
    )


class DistillationTrainer(AtomicCheckpointMixin, Trainer):
    """Distil a frozen ``teacher_model`` into ``model`` (the student).

    ``model`` / ``teacher_model`` accept an ``nn.Module``, a Hub id, a local directory (transformers or timm
    layout) or, for the student, a timm architecture name; a fresh student's classifier and id2label come
    from the training dataset's ``ClassLabel``. Everything is checked here, before training starts: a
    combination of settings that cannot be computed as configured is refused with a message naming both.

    Each model is normalised with its own mean/std: the config's ``student_image_mean/std`` /
    ``teacher_image_mean/std``, else ``processing_class=`` (the student's image processor) /
    ``teacher_processing_class=``, else what the model carries (a timm ``pretrained_cfg``, a transformers
    model's saved image processor); a model with none of these is refused. ``Trainer``'s habits work too:
    ``DistillationTrainer(model, args)``, ``student_model=``, a plain ``TrainingArguments`` (converted), a
    ``compute_metrics`` that expects the student's logits (the teacher metrics are added beside its keys). A
    user's ``data_collator`` serves training and evaluation and must return uint8 ``pixel_values``.

    ``Trainer.model`` is the student itself (or the student plus the methods' trainable modules), so the
    optimizer, DDP/FSDP/DeepSpeed and checkpoints see exactly the trained parameters; the teacher is kept
    outside it, frozen, on the accelerator's device.
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
        teacher_processing_class: Any = None,
        **kwargs: Any,
    ):
        model, teacher_model, args = _user_arguments(model, teacher_model, args, kwargs)
        if args is None:
            args = DistillationConfig(output_dir="hf_distill_output")
        # `processing_class=` (Trainer's own argument) is the student's image processor; a timm data config
        # (a dict) stays here, Trainer would take it for a tokenizer.
        processing_class = kwargs.get("processing_class")
        if isinstance(processing_class, Mapping):
            kwargs.pop("processing_class")
        self._teacher_processing_class = teacher_processing_class
        user_collator = data_collator is not None
        check_push_settings(args)  # again here: set_push_to_hub() may have turned pushing on after validation
        model = model if model is not None else args.student_model_name_or_path
        teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        source_class = teacher_source_class(args, has_teacher=teacher_model is not None)
        if model is None:
            raise ValueError("no student: pass `model=` or set DistillationConfig.student_model_name_or_path")
        labelled_train = train_dataset is None or args.label_column_name in (
            getattr(train_dataset, "column_names", None) or []
        )
        needs = requirements(args, labelled=labelled_train)
        teacher_needs = [n for _, n in needs if n.teacher != TEACHER_NONE or n.features]
        if source_class is None and teacher_needs:
            if teacher_needs[0].without_teacher:
                raise ValueError(f"DistillationConfig.{teacher_needs[0].without_teacher}")
            raise ValueError(
                "no teacher: pass `teacher_model=` or set DistillationConfig.teacher_model_name_or_path "
                "(training without a teacher needs alpha=0 and no loss_types: plain supervised training)"
            )

        train_preprocessed = _check_dataset(
            train_dataset, "train_dataset", args, own_collator=not user_collator
        )
        eval_sets = eval_dataset if isinstance(eval_dataset, dict) else {"eval_dataset": eval_dataset}
        for name, dataset in eval_sets.items():
            _check_dataset(dataset, name, args, own_collator=not user_collator)
        _refuse_train_data(
            args,
            source_class,
            isinstance(teacher_model, (list, tuple)) and len(teacher_model) > 1,
            needs,
            stream=is_stream(train_dataset),
            preprocessed=train_preprocessed,
        )

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
        self.student_preprocess = self._preprocess(
            student,
            args.image_size,
            args.interpolation,
            role="student",
            processor=processing_class,
            mean=args.student_image_mean,
            std=args.student_image_std,
        )

        for name, dataset in {"train_dataset": train_dataset, **eval_sets}.items():
            if dataset is not None and not user_collator and is_preprocessed(dataset, name):
                check_first_pixels(dataset, name, self.student_preprocess.image_size)

        num_student_outputs = probe_num_outputs(
            student.module, student.library, self.student_preprocess, "image_size"
        )
        if num_student_outputs != len(self.label_names_):
            raise ValueError(
                f"the student outputs {num_student_outputs} logits but the dataset has {len(self.label_names_)} "
                f"classes {self.label_names_}; give a student with a matching head or a timm/transformers source "
                "whose head we can size"
            )
        # The methods this config enables (hf_distill.registry), each refusing what it cannot combine with.
        self.methods = [method(args) for method in METHODS if method.enabled(args)]
        for method in self.methods:
            reason = method.refuse(args)
            if reason is not None:
                raise ValueError(f"DistillationConfig: {reason}")
        self.teacher: Teacher | Any | None = None  # the frozen model(s) behind the source
        self.teacher_source: TeacherSource | None = None
        if source_class is not None:
            self.teacher_source = self._build_teacher_source(source_class, teacher_model, args)
            self.teacher = self.teacher_source.teacher
        self.student_source = student.source if isinstance(model, str) else None
        self._student_kwargs = forward_kwargs(
            student.module, student.library, self.student_preprocess.image_size
        )
        self.num_train_samples = (
            len(train_dataset) if train_dataset is not None and not is_stream(train_dataset) else None
        )
        build = Build(
            args=args,
            student=student,
            student_preprocess=self.student_preprocess,
            student_kwargs=self._student_kwargs,
            teacher=self.teacher,
            label_names=self.label_names_,
            num_train_samples=self.num_train_samples,
            train_dataset=train_dataset,
            label_column=args.label_column_name,
            terms=resolve_terms(args),
        )
        self._renders_teacher_view = any(n.teacher_view for _, n in needs)
        for method in self.methods:
            method.prepare_student(build)

        if data_collator is None:
            data_collator = self.build_collator(args, train=True)
            for method in self.methods:
                data_collator = method.wrap_collator(data_collator, build)
            self.eval_collator = self.build_collator(args, train=False)
        else:
            # Training and evaluation go through the same preprocessing: the user's collator for both, its
            # first batch checked now against the batch schema (uint8 views, normalised on the device).
            self._probe_user_collator(data_collator, train_dataset, eval_sets)
            self.eval_collator = data_collator
        self._user_collator = user_collator
        if train_dataset is not None and (isinstance(train_dataset, Dataset) or is_stream(train_dataset)):
            source_dataset = train_dataset
            train_dataset = _with_sample_ids(train_dataset, args)
            if (
                not user_collator
            ):  # decoding in our collator lets a corrupt image be reported with its sample id
                train_dataset = defer_image_decoding(train_dataset, args.image_column_name)
            if self.teacher_source is not None and not is_stream(train_dataset):
                data_collator = self.teacher_source.attach(
                    data_collator, source_dataset, train_dataset, self.label_names_
                )
        check_composition(
            args, self.teacher_source.provides(True) if self.teacher_source else None, labelled=labelled_train
        )

        for method in self.methods:  # checks that need the loaded models
            method.check(build)
        if build.teacher_tap is not None:  # tapped teacher outputs come from the same forward as its logits
            self.teacher_source.set_feature_tap(build.teacher_tap)
        auxiliary: dict[str, nn.Module] = {}
        for method in self.methods:
            auxiliary.update(method.auxiliary_modules(build))
            build.terms.extend(method.terms(build))
        auxiliary.update(auxiliary_modules or {})
        self.extra_terms: list[Term] = build.terms
        self._epoch_terms = {
            term.name for term in self.extra_terms if "epoch" in inspect.signature(term.fn).parameters
        }
        self._teacher_free_terms = {
            term.name
            for term in self.extra_terms
            if term_needs(term).teacher == TEACHER_NONE and not term_needs(term).features
        }
        self.kd = kd_function(args)
        trained: nn.Module = student.module
        if auxiliary or build.student_tap is not None:
            trained = DistillationModule(
                student.module,
                auxiliary,
                student.library,
                self._student_kwargs,
                feature_tap=build.student_tap,
            )

        # A BatchNorm network in training cannot take a batch of one sample ("Expected more than 1 value per
        # channel"): such a last batch of the epoch is dropped instead of failing after the epoch's work.
        self._drop_single_sample_batch = bool(
            self.num_train_samples
            and _single_sample_last_batch(self.num_train_samples, args)
            and _has_batch_norm(trained)
        )
        if self._drop_single_sample_batch:
            logger.warning(
                "the last training batch of each epoch would hold 1 sample (%d samples, batch size %d), which "
                "the BatchNorm layers of the trained model cannot take in training: it is dropped "
                "(dataloader_drop_last=True for training); change the batch size to keep it",
                self.num_train_samples,
                args.train_batch_size,
            )
        epoch_callback = _EpochCallback(data_collator, stream=is_stream(train_dataset))
        self._epoch_callback = epoch_callback
        super().__init__(
            model=trained,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            compute_metrics=self._metrics_function(compute_metrics, args),
            # Auxiliary modules that are also TrainerCallbacks follow the loop (a method's phases).
            callbacks=[
                epoch_callback,
                *(m for m in auxiliary.values() if isinstance(m, TrainerCallback)),
                *(c for method in self.methods for c in method.callbacks()),
                *(callbacks or []),
            ],
            optimizers=optimizers,
            **kwargs,
        )
        if (
            self.preprocess_logits_for_metrics is not None
        ):  # written for Trainer: it reduces the student's logits
            self.preprocess_logits_for_metrics = _StudentLogitsOnly(self.preprocess_logits_for_metrics)
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
        if self.teacher_source is not None:
            self.teacher_source.prepare(self)  # e.g. stored teacher outputs are read or computed here
        # What the methods and the source publish as trainer attributes.
        for published in (*METHODS, *TEACHER_SOURCES):
            for name, value in published.default_exports.items():
                setattr(self, name, value)
        for method in self.methods:
            for name, value in method.exports(self).items():
                setattr(self, name, value)
        if self.teacher_source is not None:
            for name, value in self.teacher_source.exports().items():
                setattr(self, name, value)
        self._term_sums: dict[str, Tensor] = {}
        self._term_count = 0
        if args.verify_teacher_integrity:
            self.add_callback(
                TeacherIntegrityCallback(lambda: integrity_module(teacher_modules(self.teacher)))
            )
        if args.save_on_sigterm:
            self.add_callback(SigtermCheckpointCallback())

    # ------------------------------------------------------------------------------------------- set-up
    def _build_teacher_source(self, source_class: type, teacher_model: Any, args: DistillationConfig):
        """The teacher source the config selects; the teacher model is loaded unless the source replaces it."""
        if not source_class.loads_teacher:
            return source_class(args, teacher_model)
        ensemble = isinstance(teacher_model, (list, tuple)) and len(teacher_model) > 1
        processor = None if ensemble else self._teacher_processor(0, 1)  # an ensemble's: per member
        teacher = self._build_teacher(teacher_model, args, processor=processor)
        live = LiveTeacher(teacher, args)
        return live if source_class is LiveTeacher else source_class(live, args)

    def _build_teacher(
        self,
        teacher_model: nn.Module | str | list,
        args: DistillationConfig,
        image_size: int | None = None,
        processor: Any = None,
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
        preprocess = self._preprocess(
            teacher,
            image_size or args.teacher_image_size,
            None,
            role="teacher",
            processor=processor,
            mean=args.teacher_image_mean,
            std=args.teacher_image_std,
        )
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
        members = [
            self._build_teacher(model, args, size, self._teacher_processor(index, len(teacher_models)))
            for index, (model, size) in enumerate(zip(teacher_models, sizes))
        ]
        return TeacherEnsemble(members, temperature=args.temperature)

    def create_optimizer(self, model: nn.Module | None = None):
        """AdamW and the other `optim` choices: the Trainer's own; Shampoo/ScalableShampoo/SOAP: from
        pytorch-optimizer by ``optimizer_name`` (the scheduler still comes from TrainingArguments)."""
        args: DistillationConfig = self.args
        if args.optimizer_name == "adamw" or self.optimizer is not None:
            return super().create_optimizer(model)
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

    @property
    def student(self) -> nn.Module:
        """The student alone, unwrapped from DDP/DeepSpeed and from the auxiliary-module wrapper."""
        return self.student_network(self.model)

    @property
    def student_kwargs(self) -> dict[str, Any]:
        """Extra forward arguments of the student at its training resolution."""
        return self._student_kwargs

    def unwrap(self, model: nn.Module) -> nn.Module:
        """``accelerator.unwrap_model(model)``, remembered per model object: Accelerate's unwrapping checks
        installed packages on every call (a package-metadata read), too slow for once per training step."""
        memo = self.__dict__.setdefault("_unwrapped", {})
        entry = memo.get(id(model))
        if entry is None or entry[0] is not model:  # keep the object, so a reused id cannot match
            entry = memo[id(model)] = (model, self.accelerator.unwrap_model(model, keep_torch_compile=False))
        return entry[1]

    def student_network(self, model: nn.Module) -> nn.Module:
        """The module that runs the student alone: auxiliary modules belong to
        the original images' loss and never see images made inside a step."""
        unwrapped = self.unwrap(model)
        return unwrapped.student if isinstance(unwrapped, DistillationModule) else model

    def student_network_logits(self, network: nn.Module, pixels: Tensor) -> Tensor:
        """The student network's logits on uint8 ``pixels`` (normalised here)."""
        pixels = self.student_normalizer(pixels)
        return forward_logits(network, pixels, self.student_library, **self._student_kwargs)

    def auxiliary_module(self, name: str) -> nn.Module:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(model, DistillationModule) or name not in model.auxiliary:
            raise KeyError(f"no auxiliary module named '{name}'")
        return model.auxiliary[name]

    @staticmethod
    def _resolve_label_names(train_dataset, eval_sets, args: DistillationConfig) -> list[str]:
        for dataset in (train_dataset, *eval_sets.values()):
            if dataset is not None and args.label_column_name in (
                getattr(dataset, "column_names", None) or []
            ):
                names = class_names(dataset, args.label_column_name)
                for name, other in eval_sets.items():
                    if other is not None and args.label_column_name in (other.column_names or []):
                        other_names = class_names(other, args.label_column_name)
                        if other_names != names:
                            raise ValueError(
                                f"{name} has classes {other_names} but the training data has {names}; "
                                "evaluate on data with the same ClassLabel"
                            )
                return names
        unknown = any(
            d is not None and is_stream(d) and d.features is None
            for d in (train_dataset, *eval_sets.values())
        )
        raise ValueError(
            f"no dataset has the label column '{args.label_column_name}', so the class names are unknown; give a "
            "labelled train or eval dataset (a ClassLabel column) or set DistillationConfig.label_column_name"
            + (
                " (a stream's columns are unknown after IterableDataset.map without features=: pass "
                "features=Features({..., 'label': ClassLabel(names=[...])}) to map)"
                if unknown
                else ""
            )
        )

    def _teacher_processor(self, index: int, count: int) -> Any:
        """The ``teacher_processing_class=`` entry of teacher ``index`` of ``count`` (one processor for one
        teacher, a list with one per member for an ensemble)."""
        given = getattr(self, "_teacher_processing_class", None)
        if given is None or not isinstance(given, (list, tuple)):
            if given is not None and count > 1:
                raise TypeError(
                    f"teacher_processing_class= is one processor for {count} teachers; give a list with one "
                    "per teacher (None where the teacher has its own)"
                )
            return given
        if len(given) != count:
            raise TypeError(f"teacher_processing_class= lists {len(given)} processors for {count} teachers")
        return given[index]

    @staticmethod
    def _preprocess(
        loaded: LoadedModel,
        image_size: int | None,
        interpolation: str | None,
        *,
        role: str | None = None,
        processor: Any = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> PreprocessSpec:
        """How ``loaded`` is fed: ``image_size`` / ``interpolation`` when set, normalisation from, in order,
        the config's ``<role>_image_mean/std``, the ``processor`` the user passed (``processing_class=`` for
        the student, ``teacher_processing_class=`` for the teacher), and what the model carries itself
        (:func:`hf_distill.hub.load_model`). A model that carries none (a plain ``nn.Module``) with neither
        setting is refused: its statistics would be invented."""
        spec = loaded.preprocess
        if processor is not None:
            argument = "processing_class" if role == "student" else "teacher_processing_class"
            try:
                spec = preprocess_of_processor(processor, getattr(loaded.module, "config", None))
            except TypeError as error:
                raise TypeError(
                    f"`{argument}=`: {error}; give the {role}'s image processor (e.g. "
                    f"AutoImageProcessor.from_pretrained(...)) or set DistillationConfig.{role}_image_mean/std"
                ) from None
            if image_size is None and loaded.preprocess_known:
                # The model's own resolution stays unless the processor is the only source.
                spec = dataclasses.replace(spec, image_size=loaded.preprocess.image_size)
        elif role is not None and mean is None and not loaded.preprocess_known:
            argument = "processing_class" if role == "student" else "teacher_processing_class"
            what = "a plain nn.Module" if loaded.library == "torch" else f"'{loaded.source or 'the model'}'"
            raise ValueError(
                f"DistillationConfig.{role}_image_mean/{role}_image_std: the {role} ({what}) has no image "
                f"processor, so the mean/std its inputs are normalised with is unknown; set both (ImageNet: "
                f"[0.485, 0.456, 0.406] / [0.229, 0.224, 0.225]) or pass `{argument}=` its image processor"
            )
        if mean is not None:
            spec = dataclasses.replace(spec, mean=tuple(mean), std=tuple(std))
        return PreprocessSpec(
            image_size=image_size or spec.image_size,
            mean=tuple(spec.mean),
            std=tuple(spec.std),
            interpolation=interpolation or spec.interpolation,
        )

    def _metrics_function(self, compute_metrics: Callable | None, args: DistillationConfig) -> Callable:
        """``compute_metrics`` for the Trainer: ours by default; a user's, written for ``Trainer`` (student
        logits as predictions), wrapped so the teacher metrics are still reported beside its own."""
        if compute_metrics is None:
            return DistillationMetrics()
        if isinstance(compute_metrics, (DistillationMetrics, WithTeacherMetrics)):
            return compute_metrics
        if args.batch_eval_metrics and "compute_result" not in inspect.signature(compute_metrics).parameters:
            raise ValueError(
                "compute_metrics: with DistillationConfig.batch_eval_metrics=True it must take a `compute_result` "
                "argument (True on the last batch), as for Trainer"
            )
        return WithTeacherMetrics(compute_metrics)

    def _probe_user_collator(self, collator: Callable, train_dataset: Any, eval_sets: dict) -> None:
        """Collate the first two rows of the first dataset now, so a batch the trainer cannot use (float,
        already normalised pixels; no ``pixel_values``) is refused before training, with the reason."""
        named = {"train_dataset": train_dataset, **eval_sets}
        name, dataset = next(((n, d) for n, d in named.items() if d is not None), (None, None))
        if not (isinstance(dataset, Dataset) or is_stream(dataset)):
            return
        rows = first_rows(dataset, name, 2)
        try:
            batch = collator(rows)
        except Exception as error:
            images = sorted(key for key, value in rows[0].items() if _holds_image(value)) if rows else []
            cause = (
                f": column(s) {images} hold images, which a generic collator such as DefaultDataCollator cannot "
                "batch; remove them (dataset.map(..., remove_columns=...) or dataset.remove_columns(...)) or "
                "leave data_collator unset (the built-in collator reads images and uint8 pixel_values)"
                if images
                else ""
            )
            raise ValueError(
                f"data_collator fails on the first rows of {name} ({type(error).__name__}: {error}); the rows hold "
                f"{sorted(rows[0]) if rows else []}{cause}"
            ) from error
        check_user_batch(batch)

    def teacher_view_sizes(self, train: bool) -> tuple[int, ...]:
        """The teacher resolutions the collator renders views at: what the teacher source reads, and in
        training also the teacher's own resolutions when a method runs a network on the teacher's view."""
        sizes = self.teacher_source.teacher_view_sizes(train) if self.teacher_source is not None else ()
        if train and not sizes and getattr(self, "_renders_teacher_view", False):
            sizes = teacher_sizes_of(self.teacher)
        return sizes

    def build_collator(self, args: DistillationConfig, train: bool) -> DistillationCollator:
        """The collator for training (augmented views) or evaluation (the central view)."""
        teacher = self.teacher.preprocess if self.teacher is not None else None
        teacher_interpolation = teacher.interpolation if teacher is not None else "bilinear"
        if teacher_interpolation not in ("bilinear", "bicubic", "nearest"):
            teacher_interpolation = "bilinear"
        sizes = self.teacher_view_sizes(train)
        return DistillationCollator(
            student_size=self.student_preprocess.image_size,
            teacher_size=sizes[0] if sizes else None,
            extra_teacher_sizes=tuple(sizes[1:]),
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
            mix_config=mix_config_of(args),
        )

    # ---------------------------------------------------------------------------------------- forward
    def student_logits(self, model: nn.Module, pixel_values: Tensor) -> Tensor:
        return self.student_outputs(model, {PIXEL_VALUES: pixel_values}, None).logits

    def student_outputs(
        self, model: nn.Module, inputs: dict[str, Tensor], teacher: ModelOutputs | None
    ) -> ModelOutputs:
        """The student's forward (and, through the wrapper, every auxiliary module's) on normalised pixels."""
        pixels = self.student_normalizer(inputs[PIXEL_VALUES])
        if isinstance(self.unwrap(model), DistillationModule):
            return model(pixel_values=pixels, teacher=teacher, batch=inputs)
        for method in self.methods:
            outputs = method.student_outputs(self, model, pixels)
            if outputs is not None:
                return outputs
        return ModelOutputs(forward_logits(model, pixels, self.student_library, **self._student_kwargs))

    def teacher_outputs(self, inputs: dict[str, Tensor]) -> ModelOutputs:
        """The teacher source's outputs for this batch: one call, whatever the source."""
        if self.teacher_source is None:
            return ModelOutputs(None)
        return self.teacher_source(inputs, train=self.model.training)

    def teacher_logits(self, inputs: dict[str, Tensor]) -> Tensor | None:
        return self.teacher_outputs(inputs).logits

    def kd_weight(self, inputs: dict[str, Tensor]) -> float:
        """The weight of KD on the teacher's outputs: ``alpha``, or 1 when the batch has no labels (KD is
        then the whole loss, for the original images and any images made from them alike)."""
        return self.args.alpha if inputs.get(LABELS) is not None else 1.0

    def zero_loss(self) -> Tensor:
        return torch.zeros((), dtype=torch.float32, device=self.accelerator.device)

    def distillation_loss(
        self, student: ModelOutputs, teacher: ModelOutputs, inputs: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted sum of every configured term (each in fp32) and the terms themselves."""
        args: DistillationConfig = self.args
        labels = inputs.get(LABELS)
        base = next(
            (out for m in self.methods if (out := m.base_loss(self, student, teacher, inputs)) is not None),
            None,
        )
        if base is not None:
            total, terms = base
        else:
            terms: dict[str, Tensor] = {}
            total = student.logits.new_zeros((), dtype=torch.float32)
            if labels is not None and args.alpha < 1.0:
                terms["ce"] = self.cross_entropy(student.logits, labels, inputs)
                total = total + (1.0 - args.alpha) * terms["ce"]
            kd_weight = self.kd_weight(inputs)
            if kd_weight > 0.0 and teacher.logits is not None:
                terms["kd"] = self.kd(student.logits, teacher.logits, args.temperature)
                total = total + kd_weight * terms["kd"]
        training = self.model.training
        for name, fn, weight, params in self.extra_terms:
            if teacher.logits is None and not teacher.features and name not in self._teacher_free_terms:
                continue  # evaluation without a teacher (stored outputs only): nothing to compare with
            if name in self._epoch_terms:
                params = {**params, "epoch": self.state.epoch if training else None}
            terms[name] = fn(student, teacher, inputs, **params).float()
            total = total + weight * terms[name]
        return total, terms

    def cross_entropy(self, logits: Tensor, labels: Tensor | None, inputs: dict[str, Tensor]) -> Tensor:
        """Hard-label CE in fp32; with batch mixing the mixed-label CE (:func:`hf_distill.batch.mixed_cross_entropy`)."""
        if labels is not None and labels is not inputs.get(LABELS):
            inputs = {**inputs, LABELS: labels}
        return mixed_cross_entropy(logits, inputs, self.args.label_smoothing_factor)

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
        if model.training:
            for method in self.methods:  # losses on images made inside the step
                extra = method.extra_loss(self, model, inputs, student, teacher)
                if extra is not None:
                    loss, terms = loss + extra[0], {**terms, **extra[1]}
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
        if getattr(self, "_user_collator", False):  # dtype and shape only: no device sync
            check_user_batch(inputs)
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

    def get_train_dataloader(self):
        if not getattr(self, "_drop_single_sample_batch", False):
            return super().get_train_dataloader()
        drop_last = self.args.dataloader_drop_last
        self.args.dataloader_drop_last = True
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = drop_last

    def get_eval_dataloader(self, eval_dataset=None):
        return self._with_collator(
            self.eval_collator, lambda: super(DistillationTrainer, self).get_eval_dataloader(eval_dataset)
        )

    def get_test_dataloader(self, test_dataset):
        return self._with_collator(
            self.eval_collator, lambda: super(DistillationTrainer, self).get_test_dataloader(test_dataset)
        )

    # ------------------------------------------------------------------------------------------- training
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint and self._epoch_callback.stream:
            checkpoint = resume_from_checkpoint
            if checkpoint is True:
                checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint is not None:  # a missing one is the Trainer's own error
                check_stream_resume(checkpoint, self.args.ignore_data_skip)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    _writing_checkpoint = False  # inside _save_checkpoint: save_model also writes the stream position

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        self._writing_checkpoint = True  # save_model below writes the stream position beside the weights
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._writing_checkpoint = False

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
            if self._writing_checkpoint and self._epoch_callback.stream and self.args.should_save:
                # Inside the checkpoint's staging directory, so it is published with the rest (atomically).
                position = {
                    "pass": max(0, self._epoch_callback.passes - 1),
                    "global_step": self.state.global_step,
                }
                with open(os.path.join(output_dir, STREAM_POSITION_NAME), "w") as handle:
                    json.dump(position, handle)
            return
        if self.args.write_model_card:
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
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if (
            not self.args.hub_always_push
            and self.push_in_progress is not None
            and not self.push_in_progress.is_done()
        ):
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
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
            for_serving=not getattr(self, "_saving_checkpoint", False),
        )
        if auxiliary_state and getattr(self, "_saving_checkpoint", False):
            tmp = os.path.join(output_dir, f".{AUXILIARY_WEIGHTS_NAME}.tmp")
            save_file({k: v.detach().contiguous().cpu() for k, v in auxiliary_state.items()}, tmp)
            os.replace(tmp, os.path.join(output_dir, AUXILIARY_WEIGHTS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        wrapper = self.accelerator.unwrap_model(
            model if model is not None else self.model, keep_torch_compile=False
        )
        if not isinstance(wrapper, DistillationModule) or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        student_file = os.path.join(resume_from_checkpoint, "model.safetensors")
        auxiliary_file = os.path.join(resume_from_checkpoint, AUXILIARY_WEIGHTS_NAME)
        for path in (student_file, auxiliary_file) if len(wrapper.auxiliary) else (student_file,):
            if not os.path.isfile(path):
                raise ValueError(
                    f"checkpoint {resume_from_checkpoint} has no {os.path.basename(path)}; cannot resume"
                )
        wrapper.student.load_state_dict(load_file(student_file, device="cpu"))
        if not len(wrapper.auxiliary):  # a wrapper with nothing trainable beside the student
            return
        auxiliary = {k[len("auxiliary.") :]: v for k, v in load_file(auxiliary_file, device="cpu").items()}
        wrapper.auxiliary.load_state_dict(auxiliary)
