"""Releasing a distilled student: its model card, its training curve and an upload of the student alone.

* :func:`card_info` gathers what the card says from a :class:`~hf_distill.DistillationTrainer`: teacher ids,
  the latest evaluation metrics, parameter counts, student and teacher throughput, the methods the config
  turns on and the training configuration.
* :func:`write_release_files` writes ``README.md`` (the card) and ``training_curve.png`` beside the saved
  student, each atomically (temporary file, then rename).
* :func:`upload_student` uploads exactly the student's files (weights, config, image processor, card, curve) —
  never the teacher, cached teacher outputs, optimizer state, checkpoints or auxiliary modules — by staging
  them in a temporary folder that ``HfApi.upload_folder`` sends as one commit.
* :func:`check_push_settings` fails before training when ``push_to_hub`` cannot succeed.

A failed upload leaves the local output directory as it was (complete) and says how to retry; the retry
command is this module's command line::

    python -m hf_distill.release OUTPUT_DIR ORG/NAME
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import DIGITS_DATASET_ID
from .hub import forward_logits
from .model_card import LIBRARIES, METHOD_CITATIONS, StudentCardInfo, plot_training_curve, render_model_card
from .version import __version__

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
CURVE_NAME = "training_curve.png"
#: The files of a released student, as written by ``hub.save_student`` plus the card and its curve. Anything
#: else in an output directory (checkpoints, ``auxiliary.safetensors``, ``training_args.bin``, optimizer state,
#: teacher caches, label banks, logs) is never uploaded.
STUDENT_FILE_PATTERNS = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "preprocessor_config.json",
    CARD_NAME,
    CURVE_NAME,
)
RETRY_COMMAND = "python -m hf_distill.release {output_dir} {repo_id}"


class PushToHubError(RuntimeError):
    """The upload failed; the local output directory is complete and the message says how to retry."""


# ---------------------------------------------------------------------------------------------- checks


def check_push_settings(
    args: Any,
    fail: Callable[[str, str], None] | None = None,
    *,
    token: str | None = None,
    hub_model_id: str | None = None,
    force: bool = False,
) -> None:
    """Raise ``ValueError`` (naming the config field) when ``args.push_to_hub`` is set but cannot succeed: no
    usable repo id (``hub_model_id``, or the output directory's name), no token (``hub_token`` or the one
    ``huggingface_hub.get_token()`` finds), offline mode, or a ``hub_strategy`` that uploads whole checkpoints
    (optimizer state included). Makes no network call. ``force=True`` (with the call's ``token`` and the
    trainer's ``hub_model_id``) checks an explicit ``trainer.push_to_hub()``, whatever ``args.push_to_hub`` says."""
    if not (force or getattr(args, "push_to_hub", False)):
        return
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    def _fail(name: str, message: str) -> None:
        raise ValueError(f"DistillationConfig.{name}: {message}")

    fail = fail or _fail
    repo_id = hub_model_id or args.hub_model_id or Path(args.output_dir or "trainer_output").absolute().name
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        source = "is" if args.hub_model_id else f"is unset and the output directory name '{repo_id}' is"
        fail(
            "hub_model_id",
            f"{source} not a valid Hub repo id ({error}); set hub_model_id='your-org/model-name'",
        )
    strategy = str(getattr(args.hub_strategy, "value", args.hub_strategy))
    if args.push_to_hub and strategy in ("checkpoint", "all_checkpoints"):
        fail(
            "hub_strategy",
            f"'{strategy}' uploads whole checkpoints (optimizer state, auxiliary modules); a released student is the "
            "student alone: use 'every_save' or 'end'",
        )
    if not (token or args.hub_token or huggingface_hub.get_token()):
        fail(
            "hub_token",
            "push_to_hub=True needs a Hub token with write access and none was found: run `hf auth login`, set "
            "HF_TOKEN, or pass hub_token=...; or set push_to_hub=False and upload later with "
            f"`{RETRY_COMMAND.format(output_dir=args.output_dir, repo_id=repo_id)}`",
        )
    if constants.HF_HUB_OFFLINE:
        fail(
            "push_to_hub",
            "HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or set push_to_hub=False and upload later "
            f"with `{RETRY_COMMAND.format(output_dir=args.output_dir, repo_id=repo_id)}`",
        )


# ------------------------------------------------------------------------------------------ card info


def latest_eval_metrics(log_history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The metrics of the last evaluation in ``trainer.state.log_history`` (what ``trainer.evaluate()``
    returned), with ``eval_<name>_`` prefixes of a named eval set reduced to ``eval_``."""
    for entry in reversed(log_history):
        keys = [k for k in entry if k.startswith("eval_") and k.endswith("accuracy")]
        if not keys:
            continue
        metrics = {k: v for k, v in entry.items() if k.startswith("eval_") and isinstance(v, (int, float))}
        named = [re.fullmatch(r"(eval_.+?_)(?:teacher_|top5_)?accuracy", k) for k in keys]
        # eval_dataset given as a dict: its metrics are eval_<name>_accuracy, eval_<name>_teacher_accuracy, ...
        if "eval_accuracy" not in metrics and any(named):
            prefix = next(m for m in named if m).group(1)
            metrics = {"eval_" + k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
        return metrics
    return {}


def methods_of(args: Any, has_teacher: bool = True) -> list[str]:
    """The distillation methods (keys of :data:`~hf_distill.model_card.METHOD_CITATIONS`) a config uses."""
    methods = []
    if getattr(args, "teacher_input", None) == "funmatch":
        methods.append("funmatch")
    if has_teacher and args.alpha > 0:
        methods.append("deit" if getattr(args, "deit_distillation", "none") != "none" else "kd")
    mode = getattr(args, "augmentation_mode", "none")
    if mode in ("tlmixup", "tlcutmix"):
        methods.append(mode)
        if getattr(args, "pick", False):
            methods.append("pick")
    if getattr(args, "logit_standardization", False):
        methods.append("kd_standardized")
    if getattr(args, "slkd_num_teachers", 0):
        methods.append("slkd")
    for loss in args.loss_types:
        name = loss if isinstance(loss, str) else getattr(loss, "__name__", "")
        if name in METHOD_CITATIONS:
            methods.append(name)
    return list(dict.fromkeys(methods)) or ["kd"]


def training_config(
    args: Any,
    *,
    image_size: int | None = None,
    teacher_image_size: int | Sequence[int] | None = None,
    training_steps: int | None = None,
    world_size: int = 1,
) -> dict[str, Any]:
    """The settings that define a run (``args``: a DistillationConfig or any object with its fields), for
    the card's hyper-parameter table; unset ones are left out."""

    def plain(value: Any) -> Any:
        return getattr(value, "value", value)  # enums (optim, lr_scheduler_type) as their names

    mixes = args.teacher_input == "funmatch" or args.augmentation_mode in ("mixup", "tlmixup")
    config: dict[str, Any] = {
        "teacher_input": args.teacher_input,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "loss_types": [
            x if isinstance(x, str) else getattr(x, "__name__", "custom") for x in args.loss_types
        ],
        "loss_weights": list(args.loss_weights),
        "augmentation_mode": None if args.augmentation_mode == "none" else args.augmentation_mode,
        "pick": args.pick or None,
        "slkd_num_teachers": getattr(args, "slkd_num_teachers", 0) or None,
        "crop": args.crop,
        "hflip": args.hflip,
        "mixup_alpha": args.mixup_alpha if mixes else None,
        "cutmix_alpha": args.cutmix_alpha or None,
        "image_size": image_size if image_size is not None else args.image_size,
        "teacher_image_size": teacher_image_size
        if teacher_image_size is not None
        else args.teacher_image_size,
        "optimizer": plain(args.optim) if args.optimizer_name == "adamw" else args.optimizer_name,
        "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay,
        "lr_scheduler_type": plain(args.lr_scheduler_type),
        "warmup_steps": args.warmup_steps or None,
        "batch_size": args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * max(world_size, 1),
        "num_train_epochs": args.num_train_epochs if args.max_steps <= 0 else None,
        "max_steps": args.max_steps if args.max_steps > 0 else None,
        "training_steps": training_steps or None,
        "seed": args.seed,
        # the training data when it is a subset of the named split
        "train_samples_per_class": getattr(args, "train_samples_per_class", None),
        "max_train_samples": getattr(args, "max_train_samples", None),
    }
    return {k: v for k, v in config.items() if v is not None and v != []}


def _teacher_sizes(teacher: Any) -> int | list[int]:
    sizes = list(getattr(teacher, "image_sizes", None) or (teacher.preprocess.image_size,))
    return sizes if len(sizes) > 1 else sizes[0]


def _teacher_ids(trainer: Any) -> list[str]:
    source = getattr(trainer.teacher, "source", None)
    configured = trainer.args.teacher_model_name_or_path
    sources = source if isinstance(source, list) else [source]
    if isinstance(configured, str):
        configured = [configured]
    ids = []
    for position, item in enumerate(sources):
        if (
            item is None
            and configured
            and position < len(configured)
            and isinstance(configured[position], str)
        ):
            item = configured[position]
        if item is None:
            member = (
                trainer.teacher.members[position] if hasattr(trainer.teacher, "members") else trainer.teacher
            )
            item = f"{type(member.module).__name__} (in-memory module)"
        elif os.path.isdir(item):  # a local directory: a path, never mistaken for a Hub id in the card
            relative = os.path.relpath(item)
            item = relative if relative.startswith("..") else "./" + relative
        ids.append(item)
    return ids


def _student_name(trainer: Any, student: nn.Module) -> str:
    if trainer.student_library == "timm":
        architecture = (getattr(student, "pretrained_cfg", None) or {}).get("architecture")
        return str(architecture or trainer.student_source or type(student).__name__)
    if isinstance(trainer.student_source, str) and not os.path.isdir(trainer.student_source):
        return trainer.student_source
    config = getattr(student, "config", None)
    return str(
        getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or type(student).__name__
    )


def _base_model(trainer: Any, student: nn.Module) -> str | None:
    source = trainer.student_source
    if isinstance(source, str) and "/" in source and not os.path.exists(source):
        return source.removeprefix("hf-hub:")  # started from a Hub checkpoint
    if trainer.student_library == "timm" and trainer.args.student_pretrained:
        return (getattr(student, "pretrained_cfg", None) or {}).get("hf_hub_id") or None
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_throughput(forward: Callable[[torch.Tensor], Any], pixels: torch.Tensor, batches: int) -> float:
    """Images per second of ``forward`` on ``pixels`` over ``batches`` timed calls, after one warm-up call."""
    with torch.no_grad():
        forward(pixels)
        _sync(pixels.device)
        start = time.perf_counter()
        for _ in range(batches):
            forward(pixels)
        _sync(pixels.device)
    return batches * len(pixels) / max(time.perf_counter() - start, 1e-9)


def _throughputs(trainer: Any, student: nn.Module, batches: int) -> tuple[float | None, float | None]:
    """Student and teacher images/s on the trainer's device, at their own resolutions, from uint8 pixels
    (normalisation included). Teachers of an ensemble run one after another, so their times add up."""
    if batches <= 0 or trainer.teacher is None:
        return None, None
    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
        return None, None  # sharded weights: a forward on the main process alone would wait for the others
    if trainer.args.torch_compile or getattr(trainer.args, "teacher_compile", False):
        return None, None  # a new batch shape in eval mode would recompile: seconds to minutes, not a timing

    device = trainer.accelerator.device
    batch_size = max(1, min(trainer.args.per_device_eval_batch_size, 32))
    generator = torch.Generator().manual_seed(0)

    def pixels(size: int) -> torch.Tensor:
        return torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator).to(
            device
        )

    was_training = student.training
    student.eval()
    try:
        student_rate = measure_throughput(
            lambda x: forward_logits(
                student, trainer.student_normalizer(x), trainer.student_library, **trainer._student_kwargs
            ),
            pixels(trainer.student_preprocess.image_size),
            batches,
        )
    finally:
        student.train(was_training)
    members = getattr(trainer.teacher, "members", None) or [trainer.teacher]
    seconds_per_image = 0.0
    for member in members:
        calls = member.calls  # the counter reports training forwards; timing runs are not training
        seconds_per_image += 1.0 / measure_throughput(member, pixels(member.preprocess.image_size), batches)
        member.calls = calls
    return student_rate, 1.0 / seconds_per_image


def card_info(
    trainer: Any,
    *,
    metrics: Mapping[str, float] | None = None,
    training_curve_path: str | None = None,
    dataset: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
) -> StudentCardInfo:
    """What the card of ``trainer``'s student says. ``metrics`` defaults to the last evaluation logged
    (``trainer.evaluate()`` logs its result); throughput is timed when ``card_throughput_batches`` > 0."""

    args = trainer.args
    if trainer.teacher is None:
        raise ValueError(
            "no teacher: a model trained without one is not a distilled student and gets no card"
        )
    if trainer.student_library not in LIBRARIES:
        raise ValueError(
            f"the student is a plain nn.Module (library '{trainer.student_library}'); build it with timm or "
            "transformers to release it with a card"
        )
    student = trainer.student
    metrics = dict(metrics) if metrics is not None else latest_eval_metrics(trainer.state.log_history)
    try:
        with trainer.autocast_smart_context_manager():  # the precision the models were trained in
            student_rate, teacher_rate = _throughputs(
                trainer, student, getattr(args, "card_throughput_batches", 0)
            )
    except Exception as error:  # timing is optional; the saved student must not depend on it
        logger.warning("no throughput in the model card: timing the models failed (%s)", error)
        student_rate = teacher_rate = None
    eval_split = args.eval_split if trainer.eval_dataset is not None else None
    return StudentCardInfo(
        repo_id=trainer.hub_model_id or args.hub_model_id,
        student_name=_student_name(trainer, student),
        student_library=trainer.student_library,
        teacher_ids=_teacher_ids(trainer),
        dataset_id=dataset or args.dataset_name or DIGITS_DATASET_ID,
        dataset_config=args.dataset_config_name,
        dataset_split=eval_split,
        label_names=list(trainer.label_names_),
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
        # ds_numel: the full size of a ZeRO-3 partitioned parameter (numel() is that of the local shard)
        student_params=sum(getattr(p, "ds_numel", p.numel()) for p in student.parameters()),
        teacher_params=int(trainer.teacher.num_parameters),
        student_throughput=student_rate,
        teacher_throughput=teacher_rate,
        methods=methods_of(args),
        training_config=training_config(
            args,
            image_size=trainer.student_preprocess.image_size,
            teacher_image_size=_teacher_sizes(trainer.teacher),
            training_steps=trainer.state.global_step,
            world_size=int(getattr(args, "world_size", 1) or 1),
        ),
        training_curve_path=training_curve_path,
        image_size=trainer.student_preprocess.image_size,
        teacher_image_size=trainer.teacher.preprocess.image_size,
        base_model=base_model if base_model is not None else _base_model(trainer, student),
        license=license or getattr(args, "card_license", None) or "apache-2.0",
    )


def _replace_atomically(directory: Path, name: str, write: Callable[[Path], Any]) -> Path:
    """``write`` a temporary file beside ``directory/name``, then rename it over the final name, so readers
    never see a half-written file."""
    directory.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(handle)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the card is for everyone who gets the model
        os.replace(tmp, directory / name)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return directory / name


def write_release_files(
    trainer: Any,
    output_dir: str | os.PathLike | None = None,
    *,
    metrics: Mapping[str, float] | None = None,
    tags: str | Sequence[str] | None = None,
    **card_kwargs: Any,
) -> list[Path]:
    """Write the card (``README.md``) and the training curve (``training_curve.png``) into ``output_dir`` (and
    copy them to ``args.model_card_dir`` when set). Returns the paths written; nothing for a model trained
    without a teacher or a plain ``nn.Module`` student (with an info message), or off the main process."""
    if not trainer.is_world_process_zero():
        return []
    args = trainer.args
    directory = Path(output_dir if output_dir is not None else args.output_dir)
    if trainer.teacher is None or trainer.student_library not in LIBRARIES:
        logger.info(
            "no model card: the model was trained without a teacher or is not a timm/transformers model"
        )
        return []
    written: list[Path] = []
    curve = None
    if trainer.state.log_history:
        try:
            written.append(
                _replace_atomically(
                    directory, CURVE_NAME, lambda p: plot_training_curve(trainer.state.log_history, p)
                )
            )
            curve = CURVE_NAME
        except ValueError:  # nothing plottable logged (no loss, no eval accuracy)
            pass
        except ImportError as error:
            logger.warning("no training curve in the card: %s", error)
    card = render_model_card(card_info(trainer, metrics=metrics, training_curve_path=curve, **card_kwargs))
    if tags:
        card.data.tags = list(
            dict.fromkeys([*(card.data.tags or []), *([tags] if isinstance(tags, str) else tags)])
        )
    written.append(_replace_atomically(directory, CARD_NAME, lambda p: card.save(p)))
    catalogue = getattr(args, "model_card_dir", None)
    if catalogue:
        for path in written:
            _replace_atomically(Path(catalogue), path.name, lambda p, src=path: shutil.copyfile(src, p))
    return written


# --------------------------------------------------------------------------------------------- upload


def student_files(output_dir: str | os.PathLike) -> list[str]:
    """The names of the files in ``output_dir`` that a release uploads (see :data:`STUDENT_FILE_PATTERNS`)."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.is_file() and any(fnmatch.fnmatchcase(p.name, pattern) for pattern in STUDENT_FILE_PATTERNS)
    )


def _stage(directory: Path, names: Sequence[str]) -> Path:
    """A temporary folder holding exactly ``names``: hard links where possible (no copy of the weights; a
    checkpoint rotated away meanwhile does not break the upload), copies otherwise."""
    staging = Path(tempfile.mkdtemp(prefix="hf-distill-upload-"))
    for name in names:
        try:
            os.link(directory / name, staging / name)
        except OSError:
            shutil.copy2(directory / name, staging / name)
    return staging


def upload_student(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload distilled student",
    create_repo: bool = True,
    blocking: bool = True,
) -> Any:
    """Upload the student saved in ``output_dir`` (and its card and curve) to the Hub repo ``repo_id``, as one
    commit, creating the repo unless ``create_repo=False``. Only the files of :func:`student_files` go up.

    Returns the ``CommitInfo`` (or a ``Future`` of it when ``blocking=False``). Raises :class:`PushToHubError`,
    naming the retry command, when the upload fails; ``output_dir`` is only read, never changed.
    """
    from huggingface_hub import HfApi

    directory = Path(output_dir)
    names = student_files(directory)
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise FileNotFoundError(
            f"{directory} holds no saved student (config.json + *.safetensors; found {names}); save it first with "
            "trainer.save_model()"
        )
    api = HfApi(library_name="hf_distill", library_version=__version__)
    retry = RETRY_COMMAND.format(output_dir=directory, repo_id=repo_id)
    staging = _stage(directory, names)
    try:
        if create_repo:
            repo_id = api.create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
        result = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(staging),
            commit_message=commit_message,
            token=token,
            revision=revision,
            run_as_future=not blocking,
        )
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise PushToHubError(
            f"uploading the student to https://huggingface.co/{repo_id} failed ({type(error).__name__}: {error}). "
            f"The local copy in {directory} is complete and unchanged ({', '.join(names)}); retry the upload with "
            f"`{retry}` or trainer.push_to_hub()"
        ) from error
    if blocking:
        shutil.rmtree(staging, ignore_errors=True)
    else:
        result.add_done_callback(lambda _: shutil.rmtree(staging, ignore_errors=True))
    logger.info("uploaded %s to https://huggingface.co/%s", ", ".join(names), repo_id)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m hf_distill.release OUTPUT_DIR REPO_ID``: upload a saved student (the retry after a failed
    push)."""
    parser = argparse.ArgumentParser(
        description="Upload a distilled student (only its release files) to the Hub."
    )
    parser.add_argument("output_dir", help="directory written by trainer.save_model()")
    parser.add_argument("repo_id", help="Hub repo id, e.g. your-org/resnet18-distilled")
    parser.add_argument("--token", default=None, help="Hub token (default: the one `hf auth login` stored)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", default=None, help="branch to commit to")
    options = parser.parse_args(argv)
    info = upload_student(
        options.output_dir,
        options.repo_id,
        token=options.token,
        private=options.private or None,
        revision=options.revision,
    )
    print(f"uploaded: {getattr(info, 'commit_url', info)}")


if __name__ == "__main__":
    main()
