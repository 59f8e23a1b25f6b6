"""Load teachers and students from the Hub or local directories, align label spaces, save in Hub layout.

A model can be given as

* an ``nn.Module`` (used as is),
* a local directory in Hub layout: timm (``config.json`` with an ``architecture`` key, loaded with
  ``timm.create_model("local-dir:DIR", pretrained=True)``) or transformers (loaded with
  ``AutoModelForImageClassification.from_pretrained``),
* a Hub id: ``timm/...`` or ``hf-hub:...`` go to timm; other ids are inspected (their
  ``config.json``) and go to the library that wrote them,
* a timm architecture name (``resnet18``, ``resnet18.a1_in1k``), built by ``timm.create_model``.

Every model gets a :class:`PreprocessSpec` (its own input size, mean, std and interpolation) so
that each model's normalisation happens on the device from the same uint8 pixels.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GENERIC_LABEL_PREFIX = "LABEL_"


@dataclass
class PreprocessSpec:
    """How one model expects its pixels: square input size, per-channel mean/std, resize interpolation."""

    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"


@dataclass
class LoadedModel:
    """A model plus what we learned about it while loading."""

    module: nn.Module
    library: str  # "timm" | "transformers" | "torch"
    preprocess: PreprocessSpec
    label_names: list[str] | None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Normalizer(nn.Module):
    """uint8 (or [0, 255] float) pixels -> float pixels normalised with one model's mean/std, on the device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0, persistent=False
        )
        self.register_buffer(
            "inv_std",
            1.0 / (torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0),
            persistent=False,
        )

    def forward(self, pixels: Tensor) -> Tensor:
        if self.mean.device != pixels.device:
            self.to(pixels.device)
        return (pixels.float() - self.mean) * self.inv_std


def is_transformers_model(model: nn.Module) -> bool:
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def is_timm_model(model: nn.Module) -> bool:
    return not is_transformers_model(model) and isinstance(getattr(model, "pretrained_cfg", None), dict)


def library_of(model: nn.Module) -> str:
    if is_transformers_model(model):
        return "transformers"
    if is_timm_model(model):
        return "timm"
    return "torch"


def logits_of(output: Any) -> Tensor:
    """Logits from whatever a classifier's forward returned (tensor, ModelOutput, tuple)."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is not None:
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}; the model must return a "
        "tensor of logits or an object with a `.logits` attribute"
    )


def forward_logits(model: nn.Module, pixel_values: Tensor, library: str, **kwargs: Any) -> Tensor:
    """Run a classifier on normalised pixels and return its logits, whichever library built it."""
    if library == "transformers":
        return logits_of(model(pixel_values=pixel_values, **kwargs))
    return logits_of(model(pixel_values, **kwargs))


def _is_generic(label_names: list[str]) -> bool:
    return all(name == f"{_GENERIC_LABEL_PREFIX}{i}" for i, name in enumerate(label_names))


def label_names_of(model: nn.Module) -> list[str] | None:
    """The class names a model carries (transformers ``id2label``, timm ``label_names``), or None."""
    if is_transformers_model(model):
        return label_names_of_config(model.config)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("label_names")
    return [str(n) for n in names] if names else None


def _timm_preprocess(model: nn.Module) -> PreprocessSpec:
    cfg = model.pretrained_cfg
    size = cfg.get("input_size", (3, 224, 224))[-1]
    return PreprocessSpec(
        image_size=int(size),
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
        interpolation=str(cfg.get("interpolation", "bilinear")),
    )


def _processor_preprocess(processor: Any, config: Any) -> PreprocessSpec:
    size = None
    if processor is not None:
        crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        size_dict = crop or getattr(processor, "size", None) or {}
        if isinstance(size_dict, dict):
            size = size_dict.get("height") or size_dict.get("shortest_edge")
        elif isinstance(size_dict, int):
            size = size_dict
        else:  # a SizeDict object
            size = getattr(size_dict, "height", None) or getattr(size_dict, "shortest_edge", None)
    if size is None:
        image_size = getattr(config, "image_size", 224)
        size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    mean = tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(processor, "image_std", None) or IMAGENET_STD)
    resample = getattr(processor, "resample", None)
    interpolation = "bicubic" if resample is not None and int(resample) == 3 else "bilinear"
    return PreprocessSpec(int(size), tuple(map(float, mean)), tuple(map(float, std)), interpolation)


def _local_library(path: str) -> str:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"'{path}' is a directory but has no config.json; expected a model saved in Hub layout "
            "(transformers `save_pretrained` or timm `save_for_hf`)"
        )
    config = json.loads(config_file.read_text())
    return "timm" if "architecture" in config and "model_type" not in config else "transformers"


def _hub_library(repo_id: str) -> str:
    from huggingface_hub import hf_hub_download

    config_path = hf_hub_download(repo_id, "config.json")
    return _local_library(str(Path(config_path).parent))


def resolve_source(name_or_path: str) -> tuple[str, str]:
    """Decide which library loads ``name_or_path`` and how: returns (library, kind) with kind in
    {"local", "hub", "arch"}. Raises ValueError naming the input when it is none of those."""
    if os.path.isdir(name_or_path):
        return _local_library(name_or_path), "local"
    if name_or_path.startswith("hf-hub:") or name_or_path.startswith("timm/"):
        return "timm", "hub"
    import timm

    if "/" not in name_or_path:
        if timm.is_model(name_or_path.split(".")[0]):
            return "timm", "arch"
        raise ValueError(
            f"'{name_or_path}' is neither an existing local directory, a timm architecture name "
            "(see timm.list_models()), nor a Hub id of the form 'org/name'"
        )
    if (
        name_or_path.startswith((".", "/", "~"))
        or os.path.sep in name_or_path
        and os.path.exists(os.path.dirname(name_or_path))
    ):
        raise ValueError(f"model path '{name_or_path}' does not exist")
    return _hub_library(name_or_path), "hub"


def load_model(
    model: str | nn.Module,
    *,
    label_names: list[str] | None = None,
    pretrained: bool = True,
    revision: str | None = None,
    role: str = "model",
    model_kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a classifier.

    With ``label_names`` (students), the classifier is sized for those classes: a fresh head when the
    checkpoint's classes differ. Without (teachers), the checkpoint is loaded exactly as saved — never
    with a resized or re-initialised head, so the label check that follows is meaningful.
    ``model_kwargs`` go to ``timm.create_model`` (timm models only; e.g. ``img_size``, ``patch_size``).
    """
    if model_kwargs and (isinstance(model, nn.Module) or resolve_source(model)[0] != "timm"):
        raise ValueError(
            f"model_kwargs {sorted(model_kwargs)} (DistillationConfig.student_model_kwargs) only apply to a {role} "
            "built by timm.create_model (a timm architecture name, timm Hub id or timm directory); remove them or "
            f"configure the {role} itself"
        )
    if isinstance(model, nn.Module):
        library = library_of(model)
        return LoadedModel(model, library, _preprocess_of(model, library), label_names_of(model), None)
    if not isinstance(model, str):
        raise TypeError(
            f"{role} must be an nn.Module, a Hub id, a local directory or a timm name, got {type(model)}"
        )
    library, kind = resolve_source(model)
    if library == "timm":
        import timm

        if kind == "local":
            source, load_pretrained = f"local-dir:{model}", True
        elif kind == "hub":
            source, load_pretrained = (model if model.startswith("hf-hub:") else f"hf-hub:{model}"), True
        else:
            source, load_pretrained = model, pretrained
        kwargs: dict[str, Any] = dict(model_kwargs or {})
        if label_names is not None:
            kwargs["num_classes"] = len(label_names)
        module = timm.create_model(source, pretrained=load_pretrained, **kwargs)
        loaded_names = label_names_of(module)
        if label_names is not None:
            if loaded_names is not None and loaded_names != list(label_names) and load_pretrained:
                # Same number of classes but other classes: the loaded head means something else.
                module.reset_classifier(len(label_names))
            module.pretrained_cfg = dict(
                module.pretrained_cfg, label_names=list(label_names), num_classes=len(label_names)
            )
        return LoadedModel(module, "timm", _timm_preprocess(module), label_names_of(module), model)

    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    kwargs = {"revision": revision} if revision else {}
    config = AutoConfig.from_pretrained(model, **kwargs)
    if label_names is not None:
        id2label = dict(enumerate(label_names))
        same = label_names_of_config(config) == list(label_names)
        module = AutoModelForImageClassification.from_pretrained(
            model,
            num_labels=len(label_names),
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
            ignore_mismatched_sizes=not same,
            **kwargs,
        )
    else:
        module = AutoModelForImageClassification.from_pretrained(model, **kwargs)
    try:
        processor = AutoImageProcessor.from_pretrained(model, **kwargs)
    except (OSError, ValueError):
        processor = None
    return LoadedModel(
        module,
        "transformers",
        _processor_preprocess(processor, module.config),
        label_names_of(module),
        model,
        {"image_processor": processor},
    )


def label_names_of_config(config: Any) -> list[str] | None:
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    return None if not names or _is_generic(names) else names


def _preprocess_of(model: nn.Module, library: str) -> PreprocessSpec:
    if library == "timm":
        return _timm_preprocess(model)
    if library == "transformers":
        return _processor_preprocess(None, model.config)
    return PreprocessSpec()


def align_labels(
    teacher_names: list[str] | None, student_names: list[str], teacher_num_outputs: int, role: str = "teacher"
) -> Tensor | None:
    """Index that reorders teacher logits into the student's class order (None when already aligned).

    Raises ValueError, before any training, when the label spaces cannot be matched: a teacher without
    names must have exactly one output per class; a named teacher must name exactly the student's classes.
    """
    n = len(student_names)
    if teacher_names is None:
        if teacher_num_outputs != n:
            raise ValueError(
                f"{role} has {teacher_num_outputs} outputs but the dataset has {n} classes ({student_names}). "
                f"The {role} was probably built or loaded with another num_classes (or "
                "ignore_mismatched_sizes=True, which gives it a random head). Give a teacher trained on these classes."
            )
        return None
    if len(teacher_names) != teacher_num_outputs:
        raise ValueError(
            f"{role} names {len(teacher_names)} classes in its config but outputs {teacher_num_outputs} logits; "
            "its head does not match its config"
        )
    if list(teacher_names) == list(student_names):
        return None
    if sorted(teacher_names) != sorted(student_names) or len(set(teacher_names)) != len(teacher_names):
        raise ValueError(
            f"{role} and student label spaces differ and cannot be matched.\n  {role} labels: {list(teacher_names)}\n"
            f"  student labels: {list(student_names)}\nUse a {role} trained on the same classes, or rename the "
            "dataset's ClassLabel names to the teacher's."
        )
    position = {name: i for i, name in enumerate(teacher_names)}
    return torch.tensor([position[name] for name in student_names], dtype=torch.long)


# ---------------------------------------------------------------------------------------------- saving


def save_student(
    model: nn.Module,
    output_dir: str | os.PathLike,
    *,
    label_names: list[str],
    preprocess: PreprocessSpec,
    state_dict: dict[str, Tensor] | None = None,
) -> list[str]:
    """Write a student in a layout both ``transformers.pipeline`` and (timm students) ``timm.create_model``
    load. Files are written to a temporary directory first and moved into place, so a failure never
    leaves a half-written student. Returns the names of the files written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    library = library_of(model)
    tmp = Path(tempfile.mkdtemp(prefix=".student-", dir=output_dir))
    try:
        if library == "timm":
            _save_timm(model, tmp, label_names, preprocess, state_dict)
        elif library == "transformers":
            _save_transformers(model, tmp, label_names, preprocess, state_dict)
        else:
            from safetensors.torch import save_file

            tensors = state_dict if state_dict is not None else model.state_dict()
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
            (tmp / "labels.json").write_text(json.dumps({"label_names": label_names}, indent=2))
            logger.warning(
                "the student is a plain nn.Module: saved its weights only; build it from timm or transformers "
                "to get a student that pipeline() and timm.create_model() load"
            )
        written = sorted(p.name for p in tmp.iterdir())
        for name in written:
            os.replace(tmp / name, output_dir / name)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_timm(model, directory: Path, label_names, preprocess, state_dict) -> None:
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    tensors = state_dict if state_dict is not None else model.state_dict()
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(directory / "model.safetensors")
    )
    data_config = {
        "input_size": (3, preprocess.image_size, preprocess.image_size),
        "mean": tuple(preprocess.mean),
        "std": tuple(preprocess.std),
        "interpolation": preprocess.interpolation,
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    save_config_for_hf(
        model,
        str(directory / "config.json"),
        model_config={"label_names": list(label_names)},
        data_config=data_config,
    )
    # transformers' TimmWrapper passes num_labels itself and fails when model_args repeats num_classes.
    config = json.loads((directory / "config.json").read_text())
    config.get("model_args", {}).pop("num_classes", None)
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def _save_transformers(model, directory: Path, label_names, preprocess, state_dict) -> None:
    from transformers import ViTImageProcessor

    id2label = dict(enumerate(label_names))
    model.config.id2label = id2label
    model.config.label2id = {v: k for k, v in id2label.items()}
    model.save_pretrained(str(directory), state_dict=state_dict)
    resample = 3 if preprocess.interpolation == "bicubic" else 2
    ViTImageProcessor(
        do_resize=True,
        size={"height": preprocess.image_size, "width": preprocess.image_size},
        resample=resample,
        do_rescale=True,
        do_normalize=True,
        image_mean=list(preprocess.mean),
        image_std=list(preprocess.std),
    ).save_pretrained(str(directory))
