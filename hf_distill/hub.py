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
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .collators import eval_box, render_eval_view

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
    # "image_processor": the processor found, if any; "preprocess_source": where ``preprocess`` came from, in
    # words, or None when nothing says how the model normalises (a plain nn.Module, a saved model without an
    # image processor): ``preprocess`` is then a placeholder that the trainer refuses to use silently.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocess_known(self) -> bool:
        return self.extra.get("preprocess_source") is not None


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


def _config_image_size(config: Any) -> int | None:
    image_size = getattr(config, "image_size", None)
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    return int(image_size) if isinstance(image_size, int) else None


def _processor_size(processor: Any) -> int | None:
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size_dict = crop or getattr(processor, "size", None) or {}
    if isinstance(size_dict, dict):
        size = size_dict.get("height") or size_dict.get("shortest_edge")
    elif isinstance(size_dict, int):
        size = size_dict
    else:  # a SizeDict object
        size = getattr(size_dict, "height", None) or getattr(size_dict, "shortest_edge", None)
    return int(size) if size else None


def _processor_preprocess(processor: Any, config: Any) -> PreprocessSpec:
    """The preprocessing an image processor describes (``config`` gives the size when the processor does not).

    A processor that does not normalise (``do_normalize=False``) feeds the model pixels in [0, 1]: mean 0,
    std 1. Without a processor the fields are placeholders (ImageNet statistics); callers that need to know
    check :attr:`LoadedModel.preprocess_known`."""
    size = _processor_size(processor) if processor is not None else None
    if size is None:
        size = _config_image_size(config) or 224
    if processor is not None and getattr(processor, "do_normalize", True) is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean = tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN)
        std = tuple(getattr(processor, "image_std", None) or IMAGENET_STD)
    if len(mean) == 1:
        mean = mean * 3
    if len(std) == 1:
        std = std * 3
    resample = getattr(processor, "resample", None)
    interpolation = (
        {0: "nearest", 3: "bicubic"}.get(int(resample), "bilinear") if resample is not None else "bilinear"
    )
    return PreprocessSpec(int(size), tuple(map(float, mean)), tuple(map(float, std)), interpolation)


def preprocess_of_processor(processor: Any, config: Any = None) -> PreprocessSpec:
    """The :class:`PreprocessSpec` of a user's ``processing_class``: an image processor (anything with
    ``image_mean``/``image_std``, e.g. ``AutoImageProcessor.from_pretrained(...)``) or a timm data config
    (a mapping with ``mean``/``std``, e.g. ``timm.data.resolve_data_config(model=...)``).

    Raises TypeError for anything else (a tokenizer, a torchvision transform)."""
    if isinstance(processor, dict):
        if "mean" not in processor or "std" not in processor:
            raise TypeError(f"a timm data config needs 'mean' and 'std' keys, got keys {sorted(processor)}")
        size = processor.get("input_size", (3, _config_image_size(config) or 224))[-1]
        return PreprocessSpec(
            image_size=int(size),
            mean=tuple(float(v) for v in processor["mean"]),
            std=tuple(float(v) for v in processor["std"]),
            interpolation=str(processor.get("interpolation", "bilinear")),
        )
    if (
        getattr(processor, "image_mean", None) is None
        and getattr(processor, "do_normalize", True) is not False
    ):
        raise TypeError(
            f"a {type(processor).__name__} is not an image processor (it has no image_mean/image_std)"
        )
    return _processor_preprocess(processor, config)


def _architecture_processor(config: Any) -> Any:
    """A default instance of the image processor class ``AutoImageProcessor`` maps ``config`` to, or None."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

    try:
        mapping = IMAGE_PROCESSOR_MAPPING[type(config)]
    except KeyError:
        return None
    own = (mapping.get("torchvision") or mapping.get("pil")) if isinstance(mapping, dict) else mapping
    if not isinstance(own, type) or getattr(own, "is_dummy", False):
        return None
    try:
        return own()
    except Exception:  # a processor class that needs arguments (or a missing optional backend)
        return None


def _saved_processor(name_or_path: str, **kwargs: Any) -> Any:
    """The image processor saved with a model (its directory or Hub repo), or None when there is none."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(name_or_path, **kwargs)
    except Exception:  # no preprocessor_config.json, offline and not cached, not an image model …
        return None


def transformers_preprocess(module: nn.Module) -> tuple[PreprocessSpec, str | None, Any]:
    """An in-memory transformers model's preprocessing: ``(spec, where it came from or None, processor)``.

    The image processor saved with the weights the model was loaded from (``config._name_or_path``: a local
    directory with ``preprocessor_config.json``, or a Hub repo); for a model built from a config alone (no
    ``_name_or_path``: fresh weights), the default mean/std of the image processor class its architecture
    maps to (as ``AutoImageProcessor`` would build it), at the config's ``image_size`` (224 without one)
    with bilinear resizing. A model loaded from weights that came without an image processor has no known
    normalisation: the source is None."""
    config = module.config
    name = getattr(config, "_name_or_path", "") or ""
    if name:
        processor = _saved_processor(name)
        if processor is None:
            return _processor_preprocess(None, config), None, None
        return _processor_preprocess(processor, config), f"the image processor saved with '{name}'", processor
    default = _architecture_processor(config)
    if default is None:
        return _processor_preprocess(None, config), None, None
    # The class defaults give the normalisation; size and resampling stay the config's and bilinear (a tiny
    # ViT runs at its config's 32 px, not at the class default 224).
    spec = _processor_preprocess(None, config)
    if getattr(default, "do_normalize", True) is False:
        spec.mean, spec.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        spec.mean = tuple(float(v) for v in default.image_mean)
        spec.std = tuple(float(v) for v in default.image_std)
    return (
        spec,
        f"the {type(default).__name__} defaults of {type(config).__name__} (built from a config)",
        None,
    )


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
        spec, found, processor = resolve_preprocess(model, library)
        return LoadedModel(
            model,
            library,
            spec,
            label_names_of(model),
            None,
            {"image_processor": processor, "preprocess_source": found},
        )
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
        return LoadedModel(
            module,
            "timm",
            _timm_preprocess(module),
            label_names_of(module),
            model,
            {"preprocess_source": "its timm pretrained_cfg"},
        )

    from transformers import AutoConfig, AutoModelForImageClassification

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
    processor = _saved_processor(model, **kwargs)
    found = f"the image processor saved with '{model}'" if processor is not None else None
    return LoadedModel(
        module,
        "transformers",
        _processor_preprocess(processor, module.config),
        label_names_of(module),
        model,
        {"image_processor": processor, "preprocess_source": found},
    )


def label_names_of_config(config: Any) -> list[str] | None:
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    return None if not names or _is_generic(names) else names


def resolve_preprocess(model: nn.Module, library: str) -> tuple[PreprocessSpec, str | None, Any]:
    """An in-memory model's preprocessing from the model itself: ``(spec, where it came from or None,
    image processor or None)``. timm: its ``pretrained_cfg``; transformers: :func:`transformers_preprocess`;
    a plain ``nn.Module`` carries none (source None, placeholder spec)."""
    if library == "timm":
        return _timm_preprocess(model), "its timm pretrained_cfg", None
    if library == "transformers":
        return transformers_preprocess(model)
    return PreprocessSpec(), None, None


def _preprocess_of(model: nn.Module, library: str) -> PreprocessSpec:
    return resolve_preprocess(model, library)[0]


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
    for_serving: bool | None = None,
) -> list[str]:
    """Write a student in a layout both ``transformers.pipeline`` and (timm students) ``timm.create_model``
    load. Files are written to a temporary directory first and moved into place, so a failure never
    leaves a half-written student. Returns the names of the files written.

    ``for_serving`` (transformers students): describe the resolution the student was trained at
    (``preprocess.image_size``) in the saved config, baking a ViT's position embeddings, interpolated to that
    resolution exactly as the training forward did, into the weights; ``False`` keeps the live model's own
    config and parameter shapes, so a checkpoint resumes into it. ``None`` (default): ``False`` for a
    Trainer checkpoint directory (``checkpoint-<step>``, or its staging directory), ``True`` otherwise."""
    output_dir = Path(output_dir)
    if for_serving is None:
        for_serving = not _is_checkpoint_dir(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    library = library_of(model)
    tmp = Path(tempfile.mkdtemp(prefix=".student-", dir=output_dir))
    try:
        if library == "timm":
            _save_timm(model, tmp, label_names, preprocess, state_dict)
        elif library == "transformers":
            _save_transformers(model, tmp, label_names, preprocess, state_dict, for_serving)
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


def _is_checkpoint_dir(path: Path) -> bool:
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return re.fullmatch(rf"(\.staging-)?{PREFIX_CHECKPOINT_DIR}-\d+", path.name) is not None


def _save_timm(model, directory: Path, label_names, preprocess, state_dict) -> None:
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    tensors = state_dict if state_dict is not None else model.state_dict()
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(directory / "model.safetensors")
    )
    # timm's eval transform with crop_pct=1.0 / crop_mode="center" (and transformers' TimmWrapper, which runs
    # it) resizes the shortest edge to image_size and crops the central square: the evaluation view.
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


def _save_transformers(
    model, directory: Path, label_names, preprocess, state_dict, for_serving: bool = True
) -> None:
    id2label = dict(enumerate(label_names))
    model.config.id2label = id2label
    model.config.label2id = {v: k for k, v in id2label.items()}
    tensors = dict(state_dict) if state_dict is not None else None
    served_config = None
    if for_serving:
        served = at_resolution(
            model, tensors if tensors is not None else model.state_dict(), preprocess.image_size
        )
        if served is not None:
            served_config, tensors = served
    model.save_pretrained(str(directory), state_dict=tensors)
    if served_config is not None:  # the live model's config stays as it is
        config_file = directory / "config.json"
        written = json.loads(config_file.read_text())
        written["image_size"] = served_config.image_size
        config_file.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    serving_image_processor(model.config, preprocess).save_pretrained(str(directory))


# ---------------------------------------------------------------------------- serving at the trained size


def _native_image_size(config: Any) -> int | None:
    size = getattr(config, "image_size", None)
    size = size[0] if isinstance(size, (tuple, list)) else size
    return int(size) if isinstance(size, int) else None


def at_resolution(
    model: nn.Module, state_dict: dict[str, Tensor], image_size: int
) -> tuple[Any, dict[str, Tensor]] | None:
    """A transformers model's config and weights re-described at ``image_size``, the resolution it was
    trained at, so that ``from_pretrained`` + ``pipeline`` run it there without ``interpolate_pos_encoding``.

    Position-embedding tables (``embeddings.position_embeddings`` of the ViT family) are replaced by the
    table the model's own ``interpolate_pos_encoding`` produces at ``image_size``: the same values the
    training forward used, so the saved model computes the same logits. Returns None when the config already
    says ``image_size`` (or has no ``image_size``); leaves the config alone (with a warning) when the
    architecture would build other parameter shapes at the new size that this cannot convert."""
    import copy

    native = _native_image_size(model.config)
    if native is None or native == image_size:
        return None
    config = copy.deepcopy(model.config)
    original = config.image_size
    config.image_size = [image_size, image_size] if isinstance(original, (tuple, list)) else image_size
    tensors = dict(state_dict)
    with torch.no_grad():
        for name, module in model.named_modules():
            table = tensors.get(f"{name}.position_embeddings" if name else "position_embeddings")
            patch = getattr(module, "patch_size", None)
            patch = patch[0] if isinstance(patch, (tuple, list)) else patch
            if table is None or not hasattr(module, "interpolate_pos_encoding") or not isinstance(patch, int):
                continue
            if table.dim() != 3:
                continue
            grid_before, grid_after = (native // patch) ** 2, (image_size // patch) ** 2
            special = table.shape[1] - grid_before
            if special < 0:
                continue
            # The method reads the table from the module: give it a shallow copy holding the full tensor
            # (the live one may be sharded or on another device).
            shadow = copy.copy(module)
            shadow._parameters = dict(module._parameters)
            shadow._parameters["position_embeddings"] = nn.Parameter(
                table.detach().to("cpu", torch.float32), requires_grad=False
            )
            dummy = torch.zeros(1, special + grid_after, table.shape[-1])
            new_table = shadow.interpolate_pos_encoding(dummy, image_size, image_size)
            tensors[f"{name}.position_embeddings" if name else "position_embeddings"] = new_table.to(
                table.dtype
            ).contiguous()
    mismatched = _shape_mismatches(type(model), config, tensors)
    if mismatched:
        logger.warning(
            "the student was trained at %dx%d px but its config says %s; %s builds other parameter shapes at %d px "
            "(%s), so the saved config keeps %s: run it with interpolate_pos_encoding=True at %d px",
            image_size,
            image_size,
            original,
            type(model).__name__,
            image_size,
            ", ".join(mismatched[:3]),
            original,
            image_size,
        )
        return None
    return config, tensors


def _shape_mismatches(model_class: type, config: Any, tensors: dict[str, Tensor]) -> list[str]:
    """Names of tensors whose shape differs from what ``model_class(config)`` builds (on the meta device
    where it can: no memory, no initialisation cost)."""
    try:
        with torch.device("meta"):
            fresh = model_class(config)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):  # an __init__ that needs real tensors
        fresh = model_class(config)
    expected = fresh.state_dict()
    return [
        name for name, tensor in tensors.items() if name in expected and expected[name].shape != tensor.shape
    ]


_RESAMPLE_CODES = {"nearest": 0, "bilinear": 2, "bicubic": 3}
# Architecture-specific processor options, set so that they leave the evaluation view alone: ConvNeXT
# resizes the shortest edge to size / crop_pct; EfficientNet's include_top normalises a second time and
# rescale_offset maps to [-1, 1]; MobileViT flips RGB to BGR (it is then still refused: it never normalises).
_CLASS_OPTIONS = {
    "crop_pct": 1.0,
    "include_top": False,
    "rescale_offset": False,
    "do_flip_channel_order": False,
}


def serving_image_processor(config: Any, preprocess: PreprocessSpec) -> Any:
    """The image processor that reproduces the evaluation view for ``pipeline("image-classification")``.

    Evaluation renders the largest central square of each image at ``preprocess.image_size`` (one resampling
    step, :func:`hf_distill.collators.eval_box`). The processor expresses it as a resize of the shortest edge
    to ``image_size`` followed by a centre crop of ``image_size`` x ``image_size`` (the same samples wherever
    the resized size is a whole number of pixels; otherwise they differ by a sub-pixel shift), then the
    student's mean/std.

    The class is the architecture's own, as ``AutoImageProcessor`` maps the config (torchvision backend),
    when it can express that view; this is checked by running it on two non-square probe images against the
    evaluation rendering. An architecture whose class cannot (ConvNeXT's at 384 px or more warps the whole
    image; LeViT's resizes by a fixed ratio of its own; MobileViT's never normalises) gets
    ``ViTImageProcessor``, the generic resize / centre-crop / normalise processor, which
    ``AutoImageProcessor`` loads by its recorded type."""
    from transformers import ViTImageProcessor
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

    size = int(preprocess.image_size)
    kwargs: dict[str, Any] = {
        "do_resize": True,
        "size": {"shortest_edge": size},
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "resample": _RESAMPLE_CODES.get(preprocess.interpolation, 2),
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(preprocess.mean),
        "image_std": list(preprocess.std),
    }
    try:
        mapping = IMAGE_PROCESSOR_MAPPING[type(config)]
    except KeyError:
        mapping = {}
    own = (mapping.get("torchvision") or mapping.get("pil")) if isinstance(mapping, dict) else mapping
    candidates: list[type] = [own] if isinstance(own, type) and not getattr(own, "is_dummy", False) else []
    if ViTImageProcessor not in candidates:
        candidates.append(ViTImageProcessor)
    reasons = []
    for processor_class in candidates:
        options = dict(kwargs)
        valid = getattr(getattr(processor_class, "valid_kwargs", None), "__annotations__", {})
        options.update({key: value for key, value in _CLASS_OPTIONS.items() if key in valid})
        try:
            processor = processor_class(**options)
            mismatch = evaluation_view_mismatch(processor, preprocess)
        except (TypeError, ValueError, KeyError) as error:
            mismatch = f"{type(error).__name__}: {error}"
        if mismatch is None:
            if reasons:
                logger.info(
                    "saving a %s: %s for %s cannot reproduce the evaluation view (%s)",
                    processor_class.__name__,
                    candidates[0].__name__,
                    type(config).__name__,
                    reasons[0],
                )
            return processor
        reasons.append(mismatch)
    raise RuntimeError(
        f"no image processor reproduces the evaluation view (central square at {size} px) for "
        f"{type(config).__name__}: {'; '.join(reasons)}"
    )


def _probe_images(size: int) -> list[Any]:
    """A landscape and a portrait image at twice ``size`` on the short side, whose shortest-edge resize has a
    whole number of pixels, with smooth structure everywhere (so a warp or an off-centre crop shows)."""
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    images = []
    for width, height in ((2 * size + 8, 2 * size), (2 * size, 2 * size + 12)):
        coarse = torch.randint(0, 256, (max(height // 8, 2), max(width // 8, 2), 3), generator=rng)
        array = coarse.to(torch.uint8).numpy()
        images.append(Image.fromarray(array).resize((width, height), Image.BICUBIC))
    return images


def evaluation_view_mismatch(
    processor: Any, preprocess: PreprocessSpec, tolerance: float = 1.0
) -> str | None:
    """None when ``processor`` turns the probe images into the evaluation view (within ``tolerance`` grey
    levels), else what differs."""
    mean = torch.tensor(preprocess.mean).view(3, 1, 1)
    std = torch.tensor(preprocess.std).view(3, 1, 1)
    for image in _probe_images(preprocess.image_size):
        expected = render_eval_view(
            image, eval_box(*image.size), preprocess.image_size, preprocess.interpolation
        ).float()
        pixels = processor(image, return_tensors="pt")["pixel_values"][0].float()
        if tuple(pixels.shape) != tuple(expected.shape):
            return f"output shape {tuple(pixels.shape)}, evaluation view {tuple(expected.shape)}"
        served = (pixels * std + mean) * 255.0
        difference = float((served - expected).abs().max())
        if difference > tolerance:
            return f"{image.size[0]}x{image.size[1]} probe differs by up to {difference:.1f} grey levels"
    return None
