"""The frozen teacher: placement, its own normalisation and resolution, label alignment."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from .hub import LoadedModel, Normalizer, PreprocessSpec, forward_logits


def forward_kwargs(module: nn.Module, library: str, image_size: int) -> dict[str, Any]:
    """Extra forward arguments a model needs at ``image_size`` (transformers ViTs at another resolution
    than their config's need ``interpolate_pos_encoding=True``)."""
    if library != "transformers":
        return {}
    native = getattr(module.config, "image_size", None)
    native = native[0] if isinstance(native, (tuple, list)) else native
    accepts = "interpolate_pos_encoding" in inspect.signature(module.forward).parameters
    return (
        {"interpolate_pos_encoding": True} if accepts and native is not None and native != image_size else {}
    )


def patch_size_of(module: nn.Module, library: str) -> int | None:
    """The patch size of a ViT-like model (transformers ``config.patch_size``, timm ``patch_embed``), or None."""
    if library == "transformers":
        patch = getattr(module.config, "patch_size", None)
    else:
        patch = getattr(getattr(module, "patch_embed", None), "patch_size", None)
    if isinstance(patch, (tuple, list)):
        patch = patch[0]
    return int(patch) if isinstance(patch, int) and patch > 1 else None


def probe_num_outputs(module: nn.Module, library: str, preprocess: PreprocessSpec, field_name: str) -> int:
    """One forward pass on a blank image at the configured resolution, before training starts: returns the
    number of logits, or raises ValueError naming the config field when the model cannot take that size."""
    patch = patch_size_of(module, library)
    if patch and preprocess.image_size % patch:
        raise ValueError(
            f"{field_name}={preprocess.image_size} is not a multiple of the model's patch size {patch}; the last "
            f"{preprocess.image_size % patch} pixel rows/columns would be dropped. Set {field_name} to a multiple of "
            f"{patch} (e.g. {max(patch, preprocess.image_size // patch * patch)})."
        )
    was_training = module.training
    module.eval()
    try:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        blank = torch.zeros(1, 3, preprocess.image_size, preprocess.image_size, device=device)
        kwargs = forward_kwargs(module, library, preprocess.image_size)
        with torch.no_grad():
            logits = forward_logits(module, blank, library, **kwargs)
    except Exception as error:  # the model's own message follows ours
        raise ValueError(
            f"{field_name}={preprocess.image_size}: the model cannot take {preprocess.image_size}x"
            f"{preprocess.image_size} inputs ({type(error).__name__}: {error}). Set {field_name} to a size the "
            "model accepts (e.g. a multiple of its patch size, or its native input size)."
        ) from error
    finally:
        module.train(was_training)
    if logits.ndim != 2:
        raise ValueError(
            f"the model behind {field_name} returns logits of shape {tuple(logits.shape)}, expected (batch, classes)"
        )
    return int(logits.shape[-1])


class Teacher:
    """A frozen teacher: ``requires_grad_(False)``, ``eval()``, never in the optimizer, run under
    ``torch.no_grad()`` (not ``inference_mode``, whose tensors cannot enter autograd graphs later).

    Called with uint8 pixels at its own resolution, it normalises them with its own mean/std on the device
    and returns logits in the student's class order.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        preprocess: PreprocessSpec,
        label_index: Tensor | None = None,
        dtype: torch.dtype | None = None,
    ):
        self.module = loaded.module.eval().requires_grad_(False)
        self.library = loaded.library
        self.source = loaded.source
        self.preprocess = preprocess
        self.normalizer = Normalizer(preprocess.mean, preprocess.std)
        self.label_index = label_index
        self.dtype = dtype
        self.calls = 0  # forward passes run; lets tests and users see that a cache really skipped the teacher
        self._kwargs = forward_kwargs(self.module, self.library, preprocess.image_size)
        if dtype is not None:
            self.module.to(dtype)

    def to(self, device: torch.device | str) -> Teacher:
        self.module.to(device)
        self.normalizer.to(device)
        if self.label_index is not None:
            self.label_index = self.label_index.to(device)
        return self

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @torch.no_grad()
    def __call__(self, pixels: Tensor) -> Tensor:
        self.calls += 1
        if self.module.training:  # someone called .train() on it: a teacher must stay in eval mode
            self.module.eval()
        inputs = self.normalizer(pixels)
        if self.dtype is not None:
            inputs = inputs.to(self.dtype)
        logits = forward_logits(self.module, inputs, self.library, **self._kwargs)
        if self.label_index is not None:
            logits = logits.index_select(-1, self.label_index)
        return logits

    @torch.no_grad()
    def forward_with_features(self, pixels: Tensor, tap: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """Like calling the teacher, but through a :class:`hf_distill.features.FeatureTap` built on
        ``self.module``: returns ``(logits, {layer: feature})``, all without gradient."""
        self.calls += 1
        if self.module.training:
            self.module.eval()
        inputs = self.normalizer(pixels)
        if self.dtype is not None:
            inputs = inputs.to(self.dtype)
        logits, features = tap(self.module, inputs, **self._kwargs)
        if self.label_index is not None:
            logits = logits.index_select(-1, self.label_index)
        return logits, features


def average_tempered_probabilities(logits: list[Tensor], temperature: float) -> Tensor:
    """Ensemble logits whose tempered softmax is the mean of the members' tempered softmaxes.

    Returns ``temperature * log(mean_k softmax(z_k / temperature))`` in fp32, so that
    ``softmax(output / temperature)`` — what ``kd_loss`` computes — equals the averaged probabilities exactly,
    and ``argmax(output)`` is the ensemble's prediction.
    """
    log_probs = torch.stack([torch.log_softmax(z.float() / temperature, dim=-1) for z in logits])
    mean = torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(len(logits))))
    return temperature * mean


class TeacherEnsemble:
    """Several frozen :class:`Teacher` s, each at its own resolution, whose probabilities at ``temperature``
    are averaged (the paper's 224 + 384 ensemble). See :func:`average_tempered_probabilities` for how the
    average enters ``kd_loss``.

    Called with a dict ``{resolution: uint8 pixels}`` each member takes the view at its own resolution (a
    member whose resolution is missing gets the first view resized); a plain tensor is shared by all.
    """

    def __init__(self, members: list[Teacher], temperature: float):
        if len(members) < 2:
            raise ValueError("a TeacherEnsemble needs at least two teachers")
        self.members = list(members)
        self.temperature = float(temperature)
        self.preprocess = members[0].preprocess
        self.library = members[0].library
        self.source = [m.source for m in members]
        self.module = nn.ModuleList([m.module for m in members])
        self.normalizer = members[0].normalizer
        self.label_index = members[0].label_index

    @property
    def image_sizes(self) -> tuple[int, ...]:
        return tuple(m.preprocess.image_size for m in self.members)

    @property
    def calls(self) -> int:
        return sum(m.calls for m in self.members)

    @property
    def num_parameters(self) -> int:
        return sum(m.num_parameters for m in self.members)

    def to(self, device: torch.device | str) -> TeacherEnsemble:
        for member in self.members:
            member.to(device)
        return self

    @torch.no_grad()
    def __call__(self, pixels: Tensor | dict[int, Tensor]) -> Tensor:
        views = pixels if isinstance(pixels, dict) else {int(pixels.shape[-1]): pixels}
        logits = []
        for member in self.members:
            size = member.preprocess.image_size
            view = views.get(size)
            if view is None:  # no view rendered at this size: resize the first one on the device
                first = next(iter(views.values()))
                view = torch.nn.functional.interpolate(
                    first.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
                )
            logits.append(member(view))
        return average_tempered_probabilities(logits, self.temperature)
