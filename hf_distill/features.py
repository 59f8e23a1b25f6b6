"""Feature taps (intermediate activations of timm, transformers and plain torch models) and the trainable
modules that feature losses need beside the student (FitNet projectors, VID regressors, CRD embeddings).

A layer is chosen in the config (``student_feature_layers`` / ``teacher_feature_layers``) by

* a stage index (``int`` or a string like ``"-1"``; negative counts from the end): timm models through
  ``forward_intermediates`` (the indices of ``feature_info``), transformers models through
  ``output_hidden_states=True`` (index into ``hidden_states``; 0 is the embedding output);
* a timm ``feature_info`` module name (``"layer3"``, ``"blocks.5"``), mapped to its stage index;
* ``"pre_logits"``: the input of the classifier head (the pooled embedding), for any library;
* any other submodule name of ``model.named_modules()``: its output, captured by a forward hook.

Token features of ViT-like models become ``(B, D, h, w)`` maps (prefix class/register tokens dropped,
patch tokens laid out on the patch grid), so CNN and ViT students and teachers pair freely.
``feature_layout="vector"`` instead averages every tapped map over its positions to ``(B, D)``.

Features are tapped only when a configured loss term needs them (a term function with the attribute
``needs_features = True``); plain KD runs the models' ordinary forward.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import train_labels_by_sample_id  # noqa: F401  (re-exported: CRD's exact sampling needs it)
from .hub import forward_logits, logits_of
from .losses import LOSSES, CRDLoss, ModelOutputs, VIDLoss
from .method import Build, Method
from .teacher import patch_size_of

PRE_LOGITS = "pre_logits"
FEATURE_LAYOUTS = ("map", "vector")
_INDEX = re.compile(r"^-?\d+$")


def needs_features(fn: Callable) -> bool:
    """Whether a loss term reads tapped features (``fn.needs_features``)."""
    return bool(getattr(fn, "needs_features", False))


def _classifier_of(module: nn.Module, library: str) -> nn.Module | None:
    if library == "timm" and hasattr(module, "get_classifier"):
        head = module.get_classifier()
        return head if isinstance(head, nn.Module) and not isinstance(head, nn.Identity) else None
    head = getattr(module, "classifier", None)
    return head if isinstance(head, nn.Module) else None


def _first_tensor(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, Tensor):
        return hidden
    raise TypeError(f"cannot tap a layer whose output is a {type(output).__name__}")


class FeatureTap:
    """Runs one model and returns its logits plus the configured intermediate features.

    ``layers`` are resolved once, here, against the model (unknown names raise ``ValueError`` naming
    ``field_name``). Forward hooks (module names, ``pre_logits``) are registered on the model now and
    record only while the tap runs, so the model's ordinary forward is unaffected. Calling the tap on the
    same model from inside a wrapper's ``forward`` keeps DDP/FSDP in charge of the whole computation.
    """

    def __init__(
        self,
        module: nn.Module,
        library: str,
        layers: Sequence[int | str],
        layout: str = "map",
        field_name: str = "feature_layers",
    ):
        if layout not in FEATURE_LAYOUTS:
            raise ValueError(f"feature_layout must be one of {list(FEATURE_LAYOUTS)}, got {layout!r}")
        self.library = library
        self.layout = layout
        self.keys = [str(layer) for layer in layers]
        self.patch_size = patch_size_of(module, library)
        self._specs: list[tuple[str, Any]] = []  # ("index", i) | ("hook", key)
        self._captured: dict[str, Tensor] = {}
        self._recording = False
        self._handles = []
        stage_names = self._timm_stage_names(module, library)
        named = dict(module.named_modules())
        for layer, key in zip(layers, self.keys):
            if library not in ("timm", "transformers") and key in named and key:
                # plain modules: digit strings are submodule names (nn.Sequential children), not stages
                self._handles.append(named[key].register_forward_hook(self._hook(key)))
                self._specs.append(("hook", key))
            elif isinstance(layer, int) or _INDEX.match(key):
                if library not in ("timm", "transformers") or (
                    library == "timm" and not hasattr(module, "forward_intermediates")
                ):
                    raise ValueError(
                        f"{field_name}: stage index {key} needs a timm model with forward_intermediates or a "
                        f"transformers model; this {library} model takes layer names (one of its "
                        f"named_modules(), or '{PRE_LOGITS}')"
                    )
                index = int(key)
                if library == "timm":
                    # forward_intermediates returns stages in ascending order: resolve negatives here.
                    if not -len(stage_names) <= index < len(stage_names):
                        raise ValueError(
                            f"{field_name}: stage index {index} is out of range; this model has "
                            f"{len(stage_names)} stages {stage_names}"
                        )
                    index %= len(stage_names)
                self._specs.append(("index", index))
            elif library == "timm" and key in stage_names:
                self._specs.append(("index", stage_names.index(key)))
            elif key == PRE_LOGITS:
                head = _classifier_of(module, library)
                if head is None:
                    raise ValueError(f"{field_name}: '{PRE_LOGITS}' needs a model with a classifier head")
                self._handles.append(head.register_forward_pre_hook(self._pre_hook(key)))
                self._specs.append(("hook", key))
            elif key in named and key:
                self._handles.append(named[key].register_forward_hook(self._hook(key)))
                self._specs.append(("hook", key))
            else:
                known = stage_names or [name for name in named if name][:12]
                raise ValueError(
                    f"{field_name}: unknown layer '{key}'; give a stage index, '{PRE_LOGITS}' or a module "
                    f"name such as {known}"
                )
        self.indices = sorted({value for kind, value in self._specs if kind == "index"})

    @staticmethod
    def _timm_stage_names(module: nn.Module, library: str) -> list[str]:
        info = getattr(module, "feature_info", None) if library == "timm" else None
        if not info:
            return []
        return [entry["module"] for entry in info]

    def _hook(self, key: str):
        def hook(module, args, output):
            if self._recording:
                self._captured[key] = _first_tensor(output)

        return hook

    def _pre_hook(self, key: str):
        def hook(module, args):
            if self._recording:
                self._captured[key] = args[0].flatten(1)

        return hook

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _tokens_to_map(self, feature: Tensor, height: int, width: int) -> Tensor:
        """``(B, L, D)`` tokens -> ``(B, D, h, w)``: prefix tokens dropped, patches laid on their grid."""
        if self.patch_size:
            h, w = height // self.patch_size, width // self.patch_size
        else:
            h = w = math.isqrt(feature.shape[1])
        if h * w > feature.shape[1] or h * w == 0:
            raise ValueError(f"cannot lay {feature.shape[1]} tokens on a {h}x{w} grid")
        patches = feature[:, feature.shape[1] - h * w :]
        return patches.transpose(1, 2).reshape(feature.shape[0], feature.shape[2], h, w)

    def _finish(self, feature: Tensor, height: int, width: int) -> Tensor:
        if feature.dim() == 3:
            feature = self._tokens_to_map(feature, height, width)
        if self.layout == "vector" and feature.dim() == 4:
            feature = feature.mean(dim=(2, 3))
        return feature

    def __call__(
        self, module: nn.Module, pixel_values: Tensor, **kwargs: Any
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(logits, {layer: feature})`` for normalised ``pixel_values``, in the configured layer order."""
        self._captured = {}
        self._recording = True
        try:
            by_index: dict[int, Tensor] = {}
            if self.indices and self.library == "timm":
                final, intermediates = module.forward_intermediates(
                    pixel_values, indices=self.indices, output_fmt="NCHW"
                )
                logits = logits_of(module.forward_head(final))
                by_index = dict(zip(self.indices, intermediates))
            elif self.indices:  # transformers
                output = module(pixel_values=pixel_values, output_hidden_states=True, **kwargs)
                logits = logits_of(output)
                hidden = getattr(output, "reshaped_hidden_states", None) or output.hidden_states
                by_index = {i: hidden[i] for i in self.indices}
            else:
                logits = forward_logits(module, pixel_values, self.library, **kwargs)
        finally:
            self._recording = False
        height, width = pixel_values.shape[-2:]
        features = {}
        for key, (kind, value) in zip(self.keys, self._specs):
            feature = by_index[value] if kind == "index" else self._captured[key]
            features[key] = self._finish(feature, height, width)
        self._captured = {}
        return logits, features


@torch.no_grad()
def probe_feature_shapes(
    tap: FeatureTap, module: nn.Module, image_size: int, kwargs: dict[str, Any] | None = None
) -> list[torch.Size]:
    """Shapes of the tapped features (batch of 2 blank images at ``image_size``), in eval mode."""
    was_training = module.training
    module.eval()
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        blank = torch.zeros(2, 3, image_size, image_size, device=device, dtype=dtype)
        _, features = tap(module, blank, **(kwargs or {}))
    finally:
        module.train(was_training)
    return [f.shape for f in features.values()]


# ---------------------------------------------------------------------------------------------------------
# Trainable modules beside the student
# ---------------------------------------------------------------------------------------------------------


FITNET_REGRESSORS = ("conv", "1x1")


def conv_regressor(
    student_shape: Sequence[int], teacher_shape: Sequence[int], relu: bool = True
) -> nn.Sequential:
    """FitNets' convolutional regressor (Romero et al., ICLR 2015), as the public code builds it (RepDistiller /
    mdistiller ``ConvReg``): a convolution whose output has the teacher hint's channels *and* spatial size,
    then BatchNorm and (``relu``) a ReLU, the non-linearity of the hint it regresses onto.

    For a student (guided) map of ``h_s x w_s`` and a teacher (hint) map of ``h_t x w_t``:

    * ``h_s = 2 h_t``: 3x3 convolution, stride 2, padding 1;
    * ``2 h_s = h_t``: 4x4 transposed convolution, stride 2, padding 1;
    * ``h_s >= h_t`` (and ``w_s >= w_t``): the paper's "valid" convolution with a
      ``(h_s - h_t + 1) x (w_s - w_t + 1)`` kernel (1x1 for equal sizes);
    * otherwise: the transposed counterpart, a ``(h_t - h_s + 1) x (w_t - w_s + 1)`` transposed
      convolution (the public code refuses this case).
    """
    (_, c_s, h_s, w_s), (_, c_t, h_t, w_t) = tuple(student_shape), tuple(teacher_shape)
    if h_s == 2 * h_t and w_s == 2 * w_t:
        conv: nn.Module = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
    elif 2 * h_s == h_t and 2 * w_s == w_t:
        conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
    elif h_s >= h_t and w_s >= w_t:
        conv = nn.Conv2d(c_s, c_t, kernel_size=(h_s - h_t + 1, w_s - w_t + 1))
    elif h_s <= h_t and w_s <= w_t:
        conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=(h_t - h_s + 1, w_t - w_s + 1))
    else:
        raise ValueError(
            f"the conv regressor cannot map a {h_s}x{w_s} student map onto a {h_t}x{w_t} teacher map (one side "
            "larger, the other smaller); tap other layers or use loss_kwargs: {fitnet: {regressor: '1x1'}}"
        )
    layers = [conv, nn.BatchNorm2d(c_t)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class Projector(nn.Module):
    """FitNet regressor: maps one student feature to the shape of the paired teacher feature.

    Maps -> maps, ``regressor="conv"`` (default): the paper's convolutional regressor,
    :func:`conv_regressor` (conv + BatchNorm + ReLU, output already at the teacher's size; ``relu=False``
    drops the ReLU, e.g. for ViT tokens, which are not non-negative). ``regressor="1x1"``: a 1x1
    convolution + BatchNorm, then resized to the teacher's spatial size (adaptive average pooling when the
    student map is larger, bilinear upsampling when smaller). Maps -> vectors: spatial mean then a linear
    layer. Vectors -> vectors: a linear layer.
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        regressor: str = "conv",
        relu: bool = True,
    ):
        super().__init__()
        if regressor not in FITNET_REGRESSORS:
            raise ValueError(
                f"loss_kwargs['fitnet']['regressor'] must be one of {list(FITNET_REGRESSORS)}, got {regressor!r}"
            )
        self.student_shape = tuple(student_shape[1:])
        self.teacher_shape = tuple(teacher_shape[1:])
        self.regressor = regressor
        if len(student_shape) == 4 and len(teacher_shape) == 4 and regressor == "conv":
            self.proj = conv_regressor(student_shape, teacher_shape, relu=relu)
        elif len(student_shape) == 4 and len(teacher_shape) == 4:
            self.proj = nn.Sequential(
                nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1, bias=False),
                nn.BatchNorm2d(teacher_shape[1]),
            )
        elif len(teacher_shape) == 2 and len(student_shape) in (2, 4):
            self.proj = nn.Linear(student_shape[1], teacher_shape[1])
        else:
            raise ValueError(
                f"cannot project a student feature of shape {tuple(student_shape[1:])} onto a teacher feature "
                f"of shape {tuple(teacher_shape[1:])}; tap a teacher map for a student map, or set "
                "feature_layout='vector'"
            )

    def forward(self, feature: Tensor) -> Tensor:
        if isinstance(self.proj, nn.Linear):
            if feature.dim() == 4:
                feature = feature.mean(dim=(2, 3))
            return self.proj(feature)
        out = self.proj(feature)
        size = self.teacher_shape[1:]
        if tuple(out.shape[-2:]) == size:
            return out
        if out.shape[-2] >= size[0] and out.shape[-1] >= size[1]:
            return F.adaptive_avg_pool2d(out, size)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def _pair_indices(pairs: int | Sequence[int] | None, count: int, default: str) -> list[int]:
    """Positions of the (student layer, teacher layer) pairs a term uses: ``pairs`` from ``loss_kwargs``,
    else all of them (``default="all"``) or the last one (``default="last"``)."""
    if pairs is None:
        chosen = list(range(count)) if default == "all" else [count - 1]
    else:
        chosen = [pairs] if isinstance(pairs, int) else list(pairs)
    out = []
    for p in chosen:
        if not -count <= int(p) < count:
            raise ValueError(f"pair index {p} is out of range for {count} tapped layer pairs")
        out.append(int(p) % count)
    return out


class FeatureProjectors(nn.Module):
    """One :class:`Projector` per used layer pair; ``forward`` returns the projected student features as
    ``{pair index: tensor}`` (what the ``fitnet`` term compares with the teacher's)."""

    def __init__(
        self, student_shapes, teacher_shapes, pairs: Sequence[int], regressor: str = "conv", relu: bool = True
    ):
        super().__init__()
        self.projectors = nn.ModuleDict(
            {str(i): Projector(student_shapes[i], teacher_shapes[i], regressor, relu) for i in pairs}
        )

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict) -> dict[int, Tensor]:
        features = list(student.features.values())
        return {int(i): proj(features[int(i)]) for i, proj in self.projectors.items()}


class VIDModules(nn.Module):
    """One :class:`~hf_distill.losses.VIDLoss` per used layer pair; ``forward`` returns the summed VID
    negative log-likelihood (its regressors and variances are trained with the student)."""

    def __init__(self, student_shapes, teacher_shapes, pairs: Sequence[int], **vid_kwargs: Any):
        super().__init__()
        self.vids = nn.ModuleDict(
            {str(i): VIDLoss(student_shapes[i][1], teacher_shapes[i][1], **vid_kwargs) for i in pairs}
        )

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict) -> Tensor:
        s, t = list(student.features.values()), list(teacher.features.values())
        return torch.stack([vid(s[int(i)], t[int(i)]) for i, vid in self.vids.items()]).sum()


def _gather_across_processes(tensor: Tensor) -> Tensor:
    """All-gather ``tensor`` along dim 0 from every process (sizes may differ); itself when not distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    largest = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((largest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)])


class CRDModule(CRDLoss):
    """:class:`~hf_distill.losses.CRDLoss` as an auxiliary module: reads the paired features and
    ``batch["sample_ids"]``; returns the contrastive loss in training and ``None`` in evaluation (the
    memory bank indexes training samples only, so evaluation batches are not scored).

    Under DDP every process writes the embeddings of *all* processes' samples into its memory bank
    (all-gathered), so the banks stay identical across processes and DDP's buffer broadcast from rank 0
    loses nothing.
    """

    def __init__(self, pair: int, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pair = pair

    @torch.no_grad()
    def _update_memory(self, memory: Tensor, embedding: Tensor, sample_ids: Tensor) -> None:
        embedding = _gather_across_processes(embedding.detach())
        sample_ids = _gather_across_processes(sample_ids)
        super()._update_memory(memory, embedding, sample_ids)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict) -> Tensor | None:
        if not self.training:
            return None
        if "sample_ids" not in batch:
            raise KeyError("the crd term needs batch['sample_ids'] (the collator adds them)")
        ids = batch["sample_ids"]
        if int(ids.max()) >= self.num_samples:
            raise ValueError(
                f"sample id {int(ids.max())} is outside the CRD memory bank of {self.num_samples} training samples"
            )
        s = list(student.features.values())[self.pair]
        t = list(teacher.features.values())[self.pair]
        return super().forward(s, t, ids)


# ---------------------------------------------------------------------------------------------------------
# Set-up used by DistillationTrainer
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FeatureTaps:
    """The student's and the teacher's taps plus the feature shapes probed at construction."""

    student: FeatureTap
    teacher: FeatureTap
    student_shapes: list[torch.Size]
    teacher_shapes: list[torch.Size]


def build_feature_taps(
    args: Any,
    student_module: nn.Module,
    student_library: str,
    student_size: int,
    student_kwargs: dict[str, Any],
    teacher: Any,
    terms: Sequence[tuple[str, Callable, float, dict[str, Any]]],
) -> FeatureTaps | None:
    """Taps for student and teacher when a configured term needs features, else ``None`` (zero overhead).
    Probes both models once on blank images so projectors get their widths and shape mismatches fail now."""
    if not any(needs_features(fn) for _, fn, _, _ in terms):
        return None
    if teacher is None:
        raise ValueError(
            "feature loss terms need a teacher; set DistillationConfig.teacher_model_name_or_path"
        )
    student_layers, teacher_layers = list(args.student_feature_layers), list(args.teacher_feature_layers)
    if not student_layers or len(student_layers) != len(teacher_layers):
        raise ValueError(
            "DistillationConfig.student_feature_layers / teacher_feature_layers: feature loss terms need one "
            f"teacher layer per student layer, got {student_layers} and {teacher_layers}"
        )
    s_tap = FeatureTap(
        student_module, student_library, student_layers, args.feature_layout, "student_feature_layers"
    )
    t_tap = FeatureTap(
        teacher.module, teacher.library, teacher_layers, args.feature_layout, "teacher_feature_layers"
    )
    s_shapes = probe_feature_shapes(s_tap, student_module, student_size, student_kwargs)
    t_shapes = probe_feature_shapes(t_tap, teacher.module, teacher.preprocess.image_size, teacher._kwargs)
    return FeatureTaps(s_tap, t_tap, s_shapes, t_shapes)


def _check_params(name: str, fn: Callable, params: dict[str, Any]) -> None:
    accepted = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return
    unknown = sorted(set(params) - set(accepted) - {"student", "teacher", "batch"})
    if unknown:
        raise ValueError(
            f"DistillationConfig.loss_kwargs['{name}']: unknown parameters {unknown}; "
            f"'{name}' takes {[p for p in accepted if p not in ('student', 'teacher', 'batch')]}"
        )


def build_feature_modules(
    taps: FeatureTaps,
    terms: Sequence[tuple[str, Callable, float, dict[str, Any]]],
    num_train_samples: int | None,
    seed: int = 0,
    train_labels: Tensor | Sequence[int] | None = None,
) -> dict[str, nn.Module]:
    """The trainable modules the configured feature terms need (named after their term): ``fitnet``
    projectors, ``vid`` regressors, the ``crd`` embeddings and memory bank. Also checks every feature
    term's parameters and the shapes it will see, so mistakes surface before training.

    ``train_labels`` (see :func:`train_labels_by_sample_id`) is the class of every training sample, by
    sample id; the ``crd`` term's default ``negative_sampling: exact`` needs it."""
    count = len(taps.student_shapes)
    modules: dict[str, nn.Module] = {}
    s_shapes, t_shapes = taps.student_shapes, taps.teacher_shapes
    for name, fn, _, params in terms:
        if not needs_features(fn):
            continue
        _check_params(name, fn, params)
        if name == "fitnet":
            modules[name] = FeatureProjectors(
                s_shapes,
                t_shapes,
                _pair_indices(params.get("pairs"), count, "all"),
                regressor=params.get("regressor", "conv"),
                relu=params.get("regressor_relu", True),
            )
        elif name == "vid":
            pairs = _pair_indices(params.get("pairs"), count, "all")
            vid_kwargs = {k: params[k] for k in ("hidden_channels", "init_variance") if k in params}
            modules[name] = VIDModules(s_shapes, t_shapes, pairs, **vid_kwargs)
        elif name == "crd":
            if not num_train_samples:
                raise ValueError(
                    "DistillationConfig.loss_types: the crd term needs a map-style train_dataset of known length "
                    "(its memory bank holds one row per training sample), but none was given or it is streamed "
                    "(IterableDataset / streaming=True); pass a map-style datasets.Dataset, or drop 'crd'"
                )
            sampling = params.get("negative_sampling", "exact")
            if sampling == "exact" and train_labels is None:
                raise ValueError(
                    "DistillationConfig.loss_kwargs['crd']: negative_sampling='exact' (the default, as the CRD "
                    "authors' code) draws each sample's negatives from the other classes and needs the class "
                    "label of every training sample, but the train_dataset gives none (no label column, or "
                    "unlabelled samples); set loss_kwargs: {crd: {negative_sampling: uniform}} to draw "
                    "negatives uniformly from all samples"
                )
            (pair,) = _pair_indices(params.get("pair"), count, "last")
            s_dim, t_dim = math.prod(s_shapes[pair][1:]), math.prod(t_shapes[pair][1:])
            modules[name] = CRDModule(
                pair,
                s_dim,
                t_dim,
                num_train_samples,
                feat_dim=params.get("feat_dim", 128),
                num_negatives=params.get("num_negatives") or min(16384, num_train_samples),
                nce_temperature=params.get("nce_temperature", 0.07),
                momentum=params.get("momentum", 0.5),
                seed=seed,
                negative_sampling=sampling,
                train_labels=train_labels if sampling == "exact" else None,
            )
        elif name == "fsp":
            for i in _pair_indices(params.get("pairs"), count, "all"):
                if len(s_shapes[i]) != 4 or len(t_shapes[i]) != 4 or s_shapes[i][1] != t_shapes[i][1]:
                    raise ValueError(
                        f"DistillationConfig.student_feature_layers: fsp compares channel-by-channel FSP matrices, "
                        f"so paired maps need equal channels; pair {i} has student {tuple(s_shapes[i][1:])} and "
                        f"teacher {tuple(t_shapes[i][1:])}"
                    )
        elif name == "at":
            for i in _pair_indices(params.get("pairs"), count, "all"):
                if len(s_shapes[i]) != 4 or len(t_shapes[i]) != 4:
                    raise ValueError(
                        f"DistillationConfig.feature_layout: attention transfer needs spatial maps; pair {i} has "
                        f"shapes {tuple(s_shapes[i][1:])} and {tuple(t_shapes[i][1:])} (use feature_layout='map')"
                    )
    return modules


# ------------------------------------------------------------------------------------------------- method
def _feature_term_names(args: Any) -> list[str]:
    return [
        t if isinstance(t, str) else getattr(t, "__name__", "custom")
        for t in args.loss_types
        if needs_features(LOSSES.get(t) if isinstance(t, str) else t)
    ]


class FeatureMethod(Method):
    """Feature, relational and contrastive terms as a method: taps on both models (the student's inside
    ``Trainer.model``'s forward, the teacher's in the teacher source's forward) and the trainable modules
    the terms need (projectors, VID regressors, the CRD memory)."""

    name = "features"
    default_exports = {"feature_taps": None}

    @classmethod
    def enabled(cls, args: Any) -> bool:
        return bool(_feature_term_names(args))

    @staticmethod
    def validate_config(config: Any, fail: Callable[[str, str], None]) -> None:
        if config.feature_layout not in FEATURE_LAYOUTS:
            fail("feature_layout", f"must be 'map' or 'vector', got {config.feature_layout!r}")
        feature_terms = _feature_term_names(config)
        if feature_terms and not config.student_feature_layers:
            fail(
                "student_feature_layers",
                f"is empty but {feature_terms} compare features; name the layers to tap",
            )
        if len(config.student_feature_layers) != len(config.teacher_feature_layers):
            fail(
                "teacher_feature_layers",
                f"has {len(config.teacher_feature_layers)} entries but student_feature_layers has "
                f"{len(config.student_feature_layers)}; give one teacher layer per student layer",
            )

    def __init__(self, args: Any):
        super().__init__(args)
        self.taps: FeatureTaps | None = None

    def check(self, build: Build) -> None:
        self.taps = build_feature_taps(
            self.args,
            build.student.module,
            build.student.library,
            build.student_preprocess.image_size,
            build.student_kwargs,
            build.teacher,
            build.terms,
        )
        if self.taps is not None:
            build.student_tap, build.teacher_tap = self.taps.student, self.taps.teacher

    def auxiliary_modules(self, build: Build) -> dict[str, nn.Module]:
        if self.taps is None:
            return {}
        return build_feature_modules(
            self.taps, build.terms, build.num_train_samples, self.args.seed, train_labels=build.train_labels
        )

    def exports(self, trainer: Any) -> dict[str, Any]:
        return {"feature_taps": self.taps}
