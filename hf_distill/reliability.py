"""Never lose work, fail fast on bad input.

* :class:`AtomicCheckpointMixin` — ``Trainer`` writes ``checkpoint-N`` file by file in place, so a run killed
  mid-save leaves a half-written ``checkpoint-N`` that ``resume_from_checkpoint=True`` would pick. The mixin
  writes every checkpoint into a hidden staging directory and renames it to ``checkpoint-N`` only when it is
  complete: the newest visible checkpoint is always a whole one.
* :func:`check_finite_terms` — a NaN/inf loss raises :class:`NonFiniteLossError` before the backward pass,
  naming the step, the loss term and the batch's sample ids (the student is never updated with it).
* :class:`SigtermCheckpointCallback` — with ``save_on_sigterm``, SIGTERM (preemption) finishes the current
  optimizer step, writes a checkpoint, then lets the signal terminate the process.
* :class:`TeacherIntegrityCallback` — a per-tensor fingerprint of the teacher taken at construction and checked
  at every save and at the end of training: a teacher that changed raises :class:`TeacherIntegrityError`.
* Input checks run at construction: :func:`load_model_or_explain`, :func:`check_labels`,
  :func:`check_first_images`; :func:`load_image` decodes in the collator and names the sample that failed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .collators import preprocessed_view
from .images import _decode_message, finish_image, load_image, open_image  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"


# ------------------------------------------------------------------------------------- atomic checkpoints
def _fsync_tree(directory: str) -> None:
    """Flush every file and directory under ``directory`` to disk, so the rename publishes durable data."""
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(root)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not let directories be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_directory(staged: str, final: str) -> None:
    """Move a complete directory ``staged`` to ``final`` (replacing what is there) with renames only.

    ``final`` either keeps its old content or gets the new one in full; it never holds a mix. An existing
    ``final`` is renamed aside first (one directory cannot atomically replace another non-empty one).
    """
    if not os.path.isdir(staged):
        raise FileNotFoundError(f"nothing to publish: {staged} is not a directory")
    _fsync_tree(staged)
    parent = os.path.dirname(os.path.abspath(final))
    trash = None
    if os.path.exists(final):
        trash = os.path.join(parent, f"{STAGING_PREFIX}old-{os.path.basename(final)}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
    try:
        os.replace(staged, final)
    except BaseException:
        if trash is not None:  # put the old content back rather than leave nothing
            os.replace(trash, final)
        raise
    _fsync_dir(parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def remove_stale_staging(run_dir: str) -> list[str]:
    """Delete staging directories a killed run left in ``run_dir``; returns their names."""
    if not os.path.isdir(run_dir):
        return []
    stale = [
        name
        for name in os.listdir(run_dir)
        if name.startswith(STAGING_PREFIX) and os.path.isdir(os.path.join(run_dir, name))
    ]
    for name in stale:
        shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    return stale


class AtomicCheckpointMixin:
    """Makes ``Trainer._save_checkpoint`` all-or-nothing (put it before ``Trainer`` in the bases).

    Everything the Trainer (and any override further down the MRO) writes for step N — model, optimizer,
    scheduler, scaler, RNG states, trainer state — goes to ``<run_dir>/.staging-checkpoint-N/checkpoint-N``;
    once all processes are done it is fsynced and renamed to ``<run_dir>/checkpoint-N``, then old checkpoints
    are rotated. ``get_last_checkpoint`` and the rotation only match ``checkpoint-<digits>``, so they never
    see a staging directory; a crash leaves the previous checkpoints untouched and the newest visible one
    complete.
    """

    _checkpoint_staging_dir: str | None = None

    def _get_output_dir(self, trial: Any) -> str:
        if self._checkpoint_staging_dir is not None:
            return self._checkpoint_staging_dir
        return super()._get_output_dir(trial)  # type: ignore[misc]

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final = os.path.join(run_dir, name)
        staging_root = os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
        if self.args.should_save:
            removed = remove_stale_staging(run_dir)
            if removed:
                logger.warning("removed incomplete checkpoint(s) of an interrupted save: %s", removed)
            os.makedirs(staging_root, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self._checkpoint_staging_dir = staging_root
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            self._checkpoint_staging_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self._point_state_at(run_dir, staging_root, final)
            publish_directory(os.path.join(staging_root, name), final)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _point_state_at(self, run_dir: str, staging_root: str, final: str) -> None:
        """The Trainer resolved ``best_model_checkpoint`` inside the staging directory: point it at the
        published location and rewrite ``trainer_state.json`` with that path."""
        from transformers.trainer import TRAINER_STATE_NAME

        best_step = self.state.best_global_step
        if best_step:
            candidate = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{best_step}")
            if best_step == self.state.global_step or os.path.isdir(candidate):
                self.state.best_model_checkpoint = candidate
        elif self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(staging_root):
            self.state.best_model_checkpoint = final
        state_file = os.path.join(staging_root, os.path.basename(final), TRAINER_STATE_NAME)
        if os.path.exists(state_file):
            self.state.save_to_json(state_file)


# ---------------------------------------------------------------------------------------- NaN / inf loss
class NonFiniteLossError(FloatingPointError):
    """A loss term was NaN or infinite; raised before the backward pass, so no optimizer step uses it."""


def check_finite_terms(
    terms: dict[str, Tensor],
    total: Tensor,
    *,
    step: int,
    epoch: float | None = None,
    sample_ids: Tensor | None = None,
) -> None:
    """Raise :class:`NonFiniteLossError` naming ``step``, every non-finite term and the batch's sample ids.

    One device synchronisation: all terms are stacked and tested together.
    """
    names = list(terms)
    values = [terms[name].detach().float().reshape(-1) for name in names] + [
        total.detach().float().reshape(-1)
    ]
    stacked = torch.cat(values)
    if bool(torch.isfinite(stacked).all()):
        return
    bad = []
    for name, value in zip(names, values):
        if not bool(torch.isfinite(value).all()):
            bad.append(
                f"'{name}' = {value.cpu().tolist()[0] if value.numel() == 1 else value.cpu().tolist()}"
            )
    if not bad:
        bad.append(f"the weighted total = {float(total)} (every term is finite: check loss_weights)")
    where = f"step {step}" + (f" (epoch {epoch:.3f})" if epoch is not None else "")
    ids = f" Batch sample ids: {sample_ids.tolist()}." if sample_ids is not None else ""
    raise NonFiniteLossError(
        f"non-finite loss at {where}: loss term {', '.join(bad)}. No optimizer step was taken with it.{ids} "
        "Fix: lower learning_rate, set max_grad_norm, use bf16 rather than fp16, or check that term's inputs; "
        "then resume from the last checkpoint (resume_from_checkpoint). check_finite_loss=False disables this check."
    )


# ------------------------------------------------------------------------------------------------ SIGTERM
class SigtermCheckpointCallback(TrainerCallback):
    """On SIGTERM: finish the optimizer step in flight, save a checkpoint, then terminate as asked.

    The handler only sets a flag (signal handlers must not do I/O); at the next ``on_step_end`` every process
    agrees on it (one all-reduce when distributed, so all ranks save the same step), the Trainer saves through
    its usual (atomic) path, and ``on_save`` re-delivers the signal to the handler that was there before
    (the default one terminates the process). Data-loader workers forked during training inherit the
    flag-setting handler, so a signal sent to the whole process group does not kill them first.
    """

    def __init__(self) -> None:
        self.requested = False
        self.saving = False
        self.checkpoint: str | None = None
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if not self.requested:
            logger.warning("SIGTERM received: saving a checkpoint at the end of this step, then exiting")
        self.requested = True

    def install(self) -> None:
        """Register the handler (only possible in the main thread; elsewhere we warn and do nothing)."""
        if self._installed:
            return
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
            self._installed = True
        except ValueError:
            logger.warning("save_on_sigterm: not in the main thread, cannot install a SIGTERM handler")

    def restore(self) -> None:
        """Put the previous SIGTERM handler back."""
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _agreed(self, args: Any) -> bool:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.install()

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed(args):
            self.requested = self.saving = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if not self.saving:
            return
        self.checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        logger.warning("SIGTERM: checkpoint saved at %s; terminating", self.checkpoint)
        previous = self._previous
        self.restore()
        self.saving = False
        if previous in (None, signal.SIG_DFL):
            signal.raise_signal(signal.SIGTERM)
        elif callable(previous):
            previous(signal.SIGTERM, None)
        # SIG_IGN: training stops (should_training_stop) and train() returns.

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()


# ------------------------------------------------------------------------------------- teacher integrity
class TeacherIntegrityError(RuntimeError):
    """The teacher's weights or buffers changed during training."""


def teacher_modules(teacher: Any) -> nn.Module | None:
    """The module(s) behind a teacher object, as one module whose state_dict covers them all: an
    ``nn.Module`` itself, ``.module`` of a :class:`~hf_distill.Teacher`, or the members of an ensemble."""
    if teacher is None or isinstance(teacher, nn.Module):
        return teacher
    module = getattr(teacher, "module", None)
    if isinstance(module, nn.Module):
        return module
    for name in ("members", "teachers"):
        members = getattr(teacher, name, None)
        if members:
            found = [teacher_modules(m) for m in members]
            return nn.ModuleList([m for m in found if m is not None])
    return None


def tensor_fingerprints(module: nn.Module) -> dict[str, str]:
    """A digest of every tensor of ``module.state_dict()`` (dtype, shape and raw bytes): equal digests mean
    bit-identical tensors."""
    digests = {}
    for name, tensor in module.state_dict().items():
        data = tensor.detach()
        digest = hashlib.blake2b(f"{data.dtype}|{tuple(data.shape)}".encode(), digest_size=16)
        if data.numel() and data.device.type != "meta":
            raw = data.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            digest.update(memoryview(raw))
        digests[name] = digest.hexdigest()
    return digests


class TeacherIntegrityCallback(TrainerCallback):
    """Checks at each save and at the end of training that the teacher is bit-identical to the one loaded.

    ``get_teacher`` returns the teacher module (or None); the reference fingerprint is taken when the callback
    is built, i.e. after loading, dtype conversion and placement.
    """

    def __init__(self, get_teacher: Callable[[], nn.Module | None]):
        self.get_teacher = get_teacher
        teacher = get_teacher()
        self.reference = tensor_fingerprints(teacher) if teacher is not None else None

    def verify(self) -> None:
        """Raise :class:`TeacherIntegrityError` listing the tensors that differ from the reference."""
        teacher = self.get_teacher()
        if self.reference is None or teacher is None:
            return
        current = tensor_fingerprints(teacher)
        changed = fingerprints_differ(self.reference, current)
        if changed:
            shown = changed[:10] + (["..."] if len(changed) > 10 else [])
            raise TeacherIntegrityError(
                f"the teacher changed during training: {len(changed)} tensor(s) differ from those loaded "
                f"({shown}). Something updated it — a callback, a loss term writing into teacher outputs, "
                "or the teacher in train mode updating batch-norm statistics. Keep the teacher out of the "
                "optimizer and in eval mode; verify_teacher_integrity=False disables this check."
            )

    def on_save(self, args, state, control, **kwargs):
        self.verify()

    def on_train_end(self, args, state, control, **kwargs):
        self.verify()


# ------------------------------------------------------------------------------------------- input checks
def load_model_or_explain(load: Callable[[], Any], value: Any, field_name: str, argument: str) -> Any:
    """Run ``load()``; turn any failure into a ValueError that names the config field and the fix."""
    try:
        return load()
    except Exception as error:
        if isinstance(error, ValueError) and f"DistillationConfig.{field_name}" in str(error):
            raise
        hint = (
            "It is not an image classifier: give a model with an image-classification head "
            "(AutoModelForImageClassification or a timm model)"
            if "AutoModelForImageClassification" in str(error) or "Unrecognized configuration" in str(error)
            else "Give an existing local directory in Hub layout, a Hub id of an image classifier (with network "
            "access or in the local cache), or an nn.Module"
        )
        raise ValueError(
            f"DistillationConfig.{field_name} / `{argument}=` {value!r} cannot be loaded "
            f"({type(error).__name__}: {error}). {hint}."
        ) from error


def format_transform(dataset: Any) -> Callable | None:
    """The transform ``dataset.set_transform`` / ``with_transform`` installed (``dataset.format``), or None."""
    fmt = getattr(dataset, "format", None)
    if not isinstance(fmt, dict):
        return None
    return (fmt.get("format_kwargs") or {}).get("transform") if fmt.get("type") == "custom" else None


def is_stream(dataset: Any) -> bool:
    """Whether ``dataset`` is a ``datasets.IterableDataset`` (``load_dataset(..., streaming=True)``)."""
    from datasets import IterableDataset

    return isinstance(dataset, IterableDataset)


def first_rows(dataset: Any, name: str, count: int) -> list[dict[str, Any]]:
    """The first ``count`` rows as the data loader will see them (through the dataset's transform, if any;
    a stream reads only those rows). A transform that fails is named as the cause."""
    from datasets import Dataset

    transform = format_transform(dataset)
    try:
        if is_stream(dataset):
            return list(dataset.take(count))
        if isinstance(dataset, Dataset):
            return [dataset[index] for index in range(min(count, len(dataset)))]
    except Exception as error:
        if transform is None:
            raise
        raise ValueError(
            f"{name}: its transform ({getattr(transform, '__name__', type(transform).__name__)}, set with "
            f"set_transform/with_transform) fails on the first rows: {type(error).__name__}: {error}. The "
            "trainer gives the transform the rows unchanged (decoded images, as datasets gives them); fix the "
            "transform, or remove it (dataset.reset_format()) and leave the views to the built-in collator"
        ) from error
    return []


def is_preprocessed(dataset: Any, name: str = "dataset") -> bool:
    """Whether the rows bring their own ``pixel_values`` (``dataset.map(process)`` or a transform that makes
    them, as the Hugging Face tutorials do) instead of images for the collator to render."""
    columns = getattr(dataset, "column_names", None) or []
    if "pixel_values" in columns:
        return True
    if format_transform(dataset) is None and not (is_stream(dataset) and not columns):
        return False
    rows = first_rows(dataset, name, 1)
    return bool(rows) and "pixel_values" in rows[0]


def check_labels(dataset: Any, label_column: str, name: str) -> None:
    """Reject a ``ClassLabel`` column holding -1 ("no label") or ids outside the class list, naming rows
    (of a stream: its first rows)."""
    from datasets import ClassLabel, Dataset

    stream = is_stream(dataset)
    columns = getattr(dataset, "column_names", None) or []
    if not (isinstance(dataset, Dataset) or stream) or label_column not in columns:
        return
    feature = (dataset.features or {}).get(label_column)
    if not isinstance(feature, ClassLabel):
        return
    if stream:
        labels = np.asarray([row[label_column] for row in dataset.select_columns([label_column]).take(64)])
    else:
        # Through the formatter, not dataset.data: a selected/shuffled dataset has an indices mapping.
        labels = np.asarray(dataset.select_columns([label_column]).with_format("numpy")[label_column])
    bad = np.flatnonzero((labels < 0) | (labels >= feature.num_classes))
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} row(s) whose '{label_column}' is not a class id in [0, {feature.num_classes}) "
            f"(rows {bad[:10].tolist()}, values {sorted(set(labels[bad[:10]].tolist()))}; -1 means 'no label'). "
            f"Drop them with dataset.filter(lambda y: 0 <= y < {feature.num_classes}, "
            f"input_columns='{label_column}'), or remove the column (DistillationConfig.label_column_name) "
            "to distil without labels."
        )


def check_first_images(dataset: Any, image_column: str, name: str, num_samples: int = 4) -> None:
    """Decode the first ``num_samples`` images at construction: a column of something else, or unreadable
    data, fails here rather than at the first step. (Later rows are checked when the collator decodes them.)
    Rows that bring their own ``pixel_values`` are checked as such (:func:`check_first_pixels`)."""
    from datasets import Dataset

    if not (isinstance(dataset, Dataset) or is_stream(dataset)):
        return
    columns = getattr(dataset, "column_names", None) or []
    transform = format_transform(dataset)
    if transform is None and image_column not in columns and not (is_stream(dataset) and not columns):
        return
    if transform is None and not is_stream(dataset):
        for index in range(min(num_samples, len(dataset))):
            try:
                value = dataset[index][image_column]
            except Exception as error:
                raise ValueError(_decode_message(index, image_column, error)) from error
            load_image(value, sample_id=index, column=image_column)
        return
    rows = first_rows(dataset, name, num_samples)
    if rows and "pixel_values" in rows[0]:
        return
    for index, row in enumerate(rows):
        if image_column not in row:
            raise ValueError(
                f"{name}: its rows{' (the output of its transform)' if transform is not None else ''} have no "
                f"'{image_column}' and no 'pixel_values' (keys: {sorted(row)}); return the image under "
                f"'{image_column}' (DistillationConfig.image_column_name) or uint8 'pixel_values'"
            )
        load_image(row[image_column], sample_id=index, column=image_column)


def check_first_pixels(dataset: Any, name: str, image_size: int, num_samples: int = 4) -> None:
    """The first rows' own ``pixel_values`` must be the uint8 views the batch schema holds."""
    for index, row in enumerate(first_rows(dataset, name, num_samples)):
        try:
            preprocessed_view(row["pixel_values"], row.get("sample_id", index), image_size)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None


def defer_image_decoding(dataset: Any, image_column: str) -> Any:
    """Cast a ``datasets.Image`` column to ``decode=False`` so images are decoded in the collator, which
    knows the sample id to report when one cannot be decoded (a schema change, no data is rewritten).

    Never under a dataset with a transform (``set_transform``/``with_transform``): what the user's transform
    receives stays what ``datasets`` gives it (decoded images)."""
    from datasets import Dataset, Image

    if not (isinstance(dataset, Dataset) or is_stream(dataset)):
        return dataset
    if format_transform(dataset) is not None:
        return dataset
    if image_column not in (dataset.column_names or []) or dataset.features is None:
        return dataset
    feature = dataset.features[image_column]
    if isinstance(feature, Image) and feature.decode:
        return dataset.cast_column(image_column, Image(decode=False, mode=feature.mode))
    return dataset


def fingerprints_differ(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Names of the tensors whose fingerprints differ between ``a`` and ``b`` (either side missing counts)."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
