"""The frozen teacher: placement, its own normalisation and resolution, label alignment."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch import PIXEL_VALUES, TEACHER_PIXEL_VALUES, teacher_views
from .contract import Provides
from .hub import LoadedModel, Normalizer, PreprocessSpec, forward_logits
from .losses import ModelOutputs


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


# How a TeacherEnsemble turns its members' logits into what the KD term reads.
ENSEMBLE_REDUCTIONS = ("logit_mean", "probability_mean", "kl_sum")
# Attribute of an ensemble output (kl_sum) that holds the members' logits stacked (K, B, C): the KD function
# (hf_distill.terms.kd_function) sums its loss over them. Plain tensor attribute, so every other reader of the
# teacher's outputs (metrics, pick, loss_types terms) sees an ordinary (B, C) tensor.
MEMBER_LOGITS = "ensemble_member_logits"


def member_logits(teacher_logits: Tensor | None) -> Tensor | None:
    """The ensemble members' logits ``(K, B, C)`` an output of a ``kl_sum`` ensemble carries, else None."""
    return getattr(teacher_logits, MEMBER_LOGITS, None) if teacher_logits is not None else None


def with_member_logits(output: Tensor, members: Tensor | None) -> Tensor:
    """``output`` carrying ``members`` (``(K, B, C)``) for the KD function; unchanged when ``members`` is None."""
    if members is not None:
        setattr(output, MEMBER_LOGITS, members)
    return output


def select_teacher_rows(teacher_logits: Tensor, index: Tensor) -> Tensor:
    """``teacher_logits.index_select(0, index)``, keeping the members' logits of a ``kl_sum`` output in step."""
    members = member_logits(teacher_logits)
    rows = teacher_logits.index_select(0, index)
    return with_member_logits(rows, members.index_select(1, index) if members is not None else None)


def sum_over_members(
    kd: Callable[[Tensor, Tensor, float], Tensor],
) -> Callable[[Tensor, Tensor, float], Tensor]:
    """``kd`` that, for a teacher output carrying members' logits (``kl_sum``), returns
    ``sum_k kd(student, z_k, temperature)`` — big_vision's ensemble loss, one KL per teacher — and otherwise
    ``kd(student, teacher, temperature)`` unchanged."""

    def reduced(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
        members = member_logits(teacher_logits)
        if members is None:
            return kd(student_logits, teacher_logits, temperature)
        return torch.stack([kd(student_logits, z, temperature) for z in members.unbind(0)]).sum()

    reduced.__name__ = getattr(kd, "__name__", "kd")
    reduced.__doc__ = kd.__doc__
    reduced.base = kd
    return reduced


def reduce_ensemble(logits: list[Tensor], reduction: str, temperature: float) -> Tensor:
    """The ensemble's output for the KD term, from its members' logits (each ``(B, C)``, student class order):

    * ``logit_mean`` (Beyer et al.'s "224 + 384 logit average", the default): ``mean_k z_k`` — real logits, so
      every term that reads logits (logit standardisation, DKD …) applies;
    * ``probability_mean``: ``T log mean_k softmax(z_k / T)`` (:func:`average_tempered_probabilities`): KD
      against the averaged tempered probabilities; only those are exact, not logits;
    * ``kl_sum`` (google-research/big_vision's distill trainer): the output is the probability mean (for
      metrics and any other reader) carrying the members' logits, and the KD term becomes
      ``sum_k KD(s, z_k)``: its gradient is K times that of ``probability_mean`` (KL is linear in the
      target), which matters under gradient clipping (``max_grad_norm``).
    """
    if reduction not in ENSEMBLE_REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(ENSEMBLE_REDUCTIONS)}, got {reduction!r}")
    if reduction == "logit_mean":
        return torch.stack([z.float() for z in logits]).mean(0)
    averaged = average_tempered_probabilities(logits, temperature)
    if reduction == "kl_sum":
        return with_member_logits(averaged, torch.stack([z.float() for z in logits]))
    return averaged


class TeacherEnsemble:
    """Several frozen :class:`Teacher` s, each at its own resolution, reduced to one output by ``reduction``
    (see :func:`reduce_ensemble`): ``logit_mean`` (the paper's 224 + 384 logit average, default),
    ``probability_mean`` (mean of the probabilities at ``temperature``) or ``kl_sum`` (one KL per member,
    summed, as big_vision).

    Called with a dict ``{resolution: uint8 pixels}`` each member takes the view at its own resolution (a
    member whose resolution is missing gets the first view resized); a plain tensor is shared by all.
    """

    def __init__(self, members: list[Teacher], temperature: float, reduction: str = "logit_mean"):
        if len(members) < 2:
            raise ValueError("a TeacherEnsemble needs at least two teachers")
        if reduction not in ENSEMBLE_REDUCTIONS:
            raise ValueError(f"reduction must be one of {list(ENSEMBLE_REDUCTIONS)}, got {reduction!r}")
        self.members = list(members)
        self.temperature = float(temperature)
        self.reduction = reduction
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
    def member_outputs(self, pixels: Tensor | dict[int, Tensor]) -> list[Tensor]:
        """Each member's logits on the view at its own resolution."""
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
        return logits

    @torch.no_grad()
    def __call__(self, pixels: Tensor | dict[int, Tensor]) -> Tensor:
        return reduce_ensemble(self.member_outputs(pixels), self.reduction, self.temperature)


# ------------------------------------------------------------------------------------ teacher sources
class TeacherSource:
    """The contract every teacher source keeps (live teacher, ensemble, fixed-view cache, label bank).

    ``source(batch, train)`` returns the teacher's :class:`~hf_distill.losses.ModelOutputs` for a batch,
    ``provides(train)`` says what those outputs are (:class:`~hf_distill.contract.Provides`),
    ``teacher_view_sizes(train)`` which teacher views the collator must render for it (none: it reads the
    student's pixels or none at all), and ``label(views)`` labels images made inside a step (TL-mix's x';
    live sources only). ``teacher`` is the frozen model behind it, or None.
    """

    teacher: Any = None
    default_exports: dict[str, Any] = {}
    loads_teacher = True  # False: the source replaces the teacher, which is never loaded (a label bank)

    @classmethod
    def applies(cls, args: Any, has_teacher: bool) -> bool:
        return False

    @classmethod
    def provisions(cls, args: Any, ensemble: bool) -> Provides:
        raise NotImplementedError

    def provides(self, train: bool) -> Provides | None:
        raise NotImplementedError

    def teacher_view_sizes(self, train: bool) -> tuple[int, ...]:
        return ()

    def attach(self, collator: Any, source_dataset: Any, train_dataset: Any, label_names: list[str]) -> Any:
        """The training collator this source reads from (default: ``collator`` unchanged)."""
        return collator

    def prepare(self, trainer: Any) -> None:
        """Called once the ``Trainer`` exists (devices known), before the first step."""

    def __call__(self, batch: dict[str, Tensor], train: bool) -> ModelOutputs:
        raise NotImplementedError

    def label(self, views: dict[str, Tensor]) -> Tensor:
        raise ValueError(f"{type(self).__name__} cannot label new images")

    def set_feature_tap(self, tap: Any) -> None:
        """Return the tapped features of the teacher's forward from now on."""
        raise ValueError(f"{type(self).__name__} holds no teacher features")

    def exports(self) -> dict[str, Any]:
        return {}


def _is_ensemble(teacher: Any) -> bool:
    return isinstance(teacher, TeacherEnsemble)


def ensemble_reduction_of(args: Any) -> str:
    """The config's ``teacher_ensemble_reduction`` (``logit_mean`` when the config has no such field)."""
    return getattr(args, "teacher_ensemble_reduction", None) or "logit_mean"


def is_ensemble_config(args: Any) -> bool:
    """Whether the config names more than one teacher (``teacher_model_name_or_path`` as a list)."""
    teachers = getattr(args, "teacher_model_name_or_path", None)
    return isinstance(teachers, (list, tuple)) and len(teachers) > 1


def validate_teacher_config(config: Any, fail: Callable[[str, str], None]) -> None:
    """Config check of the ensemble fields (registered in :mod:`hf_distill.registry`)."""
    reduction = config.teacher_ensemble_reduction
    if reduction not in ENSEMBLE_REDUCTIONS:
        fail(
            "teacher_ensemble_reduction",
            f"must be one of {list(ENSEMBLE_REDUCTIONS)} ('logit_mean' is the paper's), got {reduction!r}",
        )


def teacher_sizes_of(teacher: Any) -> tuple[int, ...]:
    """Every resolution a teacher (or ensemble) reads, its main one first."""
    if teacher is None:
        return ()
    if _is_ensemble(teacher):
        return tuple(dict.fromkeys(teacher.image_sizes))
    return (teacher.preprocess.image_size,)


class LiveTeacher(TeacherSource):
    """The frozen teacher (or ensemble) run on every batch, on the view the teacher-input mode prescribes:
    ``teacher_pixel_values`` (and the further ensemble views) when the collator renders one, else the
    student's pixels (the views coincide). With a feature tap it also returns the tapped features of that
    same forward."""

    def __init__(self, teacher: Teacher | TeacherEnsemble, args: Any, feature_tap: Any = None):
        self.teacher = teacher
        self.args = args
        self.feature_tap = feature_tap
        if _is_ensemble(teacher):  # the config decides how the members are reduced (and at which temperature)
            teacher.reduction = ensemble_reduction_of(args)
            teacher.temperature = float(args.temperature)

    @classmethod
    def applies(cls, args: Any, has_teacher: bool) -> bool:
        return has_teacher

    @classmethod
    def provisions(cls, args: Any, ensemble: bool) -> Provides:
        if ensemble:
            reduction = ensemble_reduction_of(args)
            if reduction == "logit_mean":
                # The mean of the members' logits is a logit vector: everything that reads logits applies.
                return Provides(
                    name="a teacher ensemble (teacher_ensemble_reduction='logit_mean')",
                    setting="teacher_ensemble_reduction",
                    logits=True,
                    features=False,
                    alternative="use a single teacher",
                )
            return Provides(
                name=f"a teacher ensemble (teacher_ensemble_reduction={reduction!r}: tempered probabilities only)",
                setting="teacher_ensemble_reduction",
                logits=False,
                temperature=float(args.temperature),
                features=False,
                alternative="set teacher_ensemble_reduction='logit_mean' (the paper's), or use a single teacher",
            )
        return Provides(name="the live teacher", setting="teacher_model_name_or_path", features=True)

    def provides(self, train: bool) -> Provides:
        return self.provisions(self.args, _is_ensemble(self.teacher))

    def teacher_view_sizes(self, train: bool) -> tuple[int, ...]:
        return teacher_sizes_of(self.teacher)

    def __call__(self, batch: dict[str, Tensor], train: bool) -> ModelOutputs:
        if _is_ensemble(self.teacher):
            return ModelOutputs(self.teacher(teacher_views(batch)))
        pixels = batch.get(TEACHER_PIXEL_VALUES)
        pixels = pixels if pixels is not None else batch[PIXEL_VALUES]
        size = self.teacher.preprocess.image_size
        if tuple(pixels.shape[-2:]) != (size, size):
            # No view at the teacher's resolution (a user's own collator): the student's pixels, resized on the
            # device, never an input of the wrong size.
            pixels = F.interpolate(
                pixels.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            ).clamp(0, 255)
        if self.feature_tap is not None:
            return ModelOutputs(*self.teacher.forward_with_features(pixels, self.feature_tap))
        return ModelOutputs(self.teacher(pixels))

    def label(self, views: dict[str, Tensor]) -> Tensor:
        return label_new_images(self.teacher, views)

    def set_feature_tap(self, tap: Any) -> None:
        self.feature_tap = tap


def label_new_images(teacher: Teacher | TeacherEnsemble, views: dict[str, Tensor]) -> Tensor:
    """The live teacher's logits on images made inside a step (x'), given as batch-like views: each member
    reads the view at its own resolution; a member whose resolution was not rendered reads the student's
    pixels resized on the device (what the student sees, at the teacher's resolution)."""
    student = views[PIXEL_VALUES]
    rendered = teacher_views(views)
    out = {}
    for size in teacher_sizes_of(teacher):
        view = rendered.get(size)
        if view is None:
            view = F.interpolate(
                student.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            ).clamp(0, 255)
        out[size] = view
    if _is_ensemble(teacher):
        return teacher(out)
    return teacher(next(iter(out.values())))
