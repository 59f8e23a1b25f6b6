"""SLKD: self-learning teachers (SL-Ts) that transfer the teacher's learning ability.

"Improving Knowledge Distillation via Transferring Learning Ability" adds, beside the frozen pretrained
teacher ``T``, one or two *untrained* networks with the teacher's architecture. Each SL-T learns from the
teacher exactly as a student would (Eq. 2, 5, 6)::

    L_SLT_i = (1 - a) * CE(z_i, y) + a * tau^2 * KL(softmax(t / tau) || softmax(z_i / tau))

while the student learns from the teacher *and* from the SL-Ts' current output (Eq. 4)::

    L_S = (1 - alpha) * CE(s, y) + alpha * KD(s, t) + beta * KD(s, z)

With two SL-Ts their logits are fused, ``z = w * z_1 + (1 - w) * z_2`` (Eq. 7). Because the SL-Ts are
still learning, ``z`` follows a teacher-like learning trajectory that starts close to the student's own
output, which the paper argues is easier to follow than the finished teacher.

How this maps onto :class:`~hf_distill.DistillationTrainer`:

* the SL-Ts live in :class:`SelfLearningTeachers`, an auxiliary module inside ``Trainer.model``: the
  optimizer, DDP/FSDP/DeepSpeed and checkpoints include them and resuming restores them, while
  ``save_model`` writes the student alone;
* the student's CE + KD(teacher) are the trainer's own terms (``alpha``, ``temperature``); the SL-T loss
  and the student's KD towards the SL-Ts are two extra terms, logged as ``loss_slkd_slt`` and
  ``loss_slkd_kd``;
* SL-Ts see the teacher's view of each image (``teacher_pixel_values`` when the collator makes one),
  normalised with the teacher's mean/std: they stand in for the teacher, so they get its input;
* the student's KD(SL-T) term uses the SL-T output detached (``slkd_detach=True``): in the paper the SL-Ts
  learn from the teacher only. The authors' released code lets that gradient through; ``slkd_detach=False``
  does the same.

Modes (``slkd_mode``):

* ``parallel`` (the paper's main setting): in every optimizer step the SL-Ts and the student both update
  from one forward/backward.
* ``sequential`` (the paper's ablation, "the SL-T first learns from the teacher, then the student learns
  from teacher and SL-T"): optimizer steps alternate between phases of ``slkd_phase_steps`` steps. In an
  SL-T phase only the SL-Ts update (the student's outputs are detached, so its parameters get no
  gradient); in the following student phase only the student updates, distilling from the SL-Ts as they
  stand after their phase (they run without gradient). Phases start with the SL-Ts at step 0 and follow
  ``TrainerState.global_step``, so a resumed run continues the same schedule. Each network gets half the
  optimizer steps, so give sequential runs twice the steps for the same number of updates. Under DDP set
  ``ddp_find_unused_parameters=True`` (one side has no gradient in each step). BatchNorm running
  statistics of the held side still follow the batches it sees. The hold covers the student's logits and
  tapped features; outputs other auxiliary modules computed before the SL-Ts ran are not held.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import TrainerCallback

from .hub import Normalizer, forward_logits
from .losses import ModelOutputs, kd_loss

logger = logging.getLogger(__name__)

SLKD_NAME = "slkd"  # the auxiliary-module name, and the prefix of the two loss terms
SLKD_MODES = ("parallel", "sequential")


def validate_slkd_config(config: Any, fail: Callable[[str, str], None]) -> None:
    """Check the ``slkd_*`` fields of a :class:`~hf_distill.DistillationConfig` (called from its validation)."""
    n = config.slkd_num_teachers
    if not isinstance(n, int) or isinstance(n, bool) or n not in (0, 1, 2):
        fail("slkd_num_teachers", f"must be 0 (SLKD off), 1 or 2 self-learning teachers, got {n!r}")
    for name in ("slkd_weight",):
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            fail(name, f"must be a finite number >= 0, got {value!r}")
    for name in ("slkd_fusion_weight", "slkd_alpha"):
        value = getattr(config, name)
        if value is None and name == "slkd_alpha":
            continue
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            fail(name, f"must be in [0, 1], got {value!r}")
    tau = config.slkd_temperature
    if tau is not None and not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        fail("slkd_temperature", f"must be a finite number > 0 or None (use `temperature`), got {tau!r}")
    if config.slkd_mode not in SLKD_MODES:
        fail("slkd_mode", f"must be one of {list(SLKD_MODES)}, got {config.slkd_mode!r}")
    steps = config.slkd_phase_steps
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        fail("slkd_phase_steps", f"must be an integer >= 1 (optimizer steps per phase), got {steps!r}")
    if n and config.slkd_architecture is not None:
        import timm

        if not timm.is_model(config.slkd_architecture):
            fail(
                "slkd_architecture",
                f"{config.slkd_architecture!r} is not a timm architecture; give a name from timm.list_models() "
                "or None to copy the teacher's architecture",
            )


def fuse_logits(logits: Sequence[Tensor], fusion_weight: float = 0.5) -> Tensor:
    """The SL-Ts' supervision signal: one SL-T's logits as they are; two fused as ``w * z1 + (1 - w) * z2``
    (the paper's Eq. 7, on logits as in the authors' code)."""
    if len(logits) == 1:
        return logits[0]
    if len(logits) != 2:
        raise ValueError(f"SLKD fuses one or two self-learning teachers, got {len(logits)}")
    return fusion_weight * logits[0] + (1.0 - fusion_weight) * logits[1]


def reinitialise(module: nn.Module) -> nn.Module:
    """Give ``module`` fresh random weights in place: every submodule's ``reset_parameters`` (PyTorch's default
    initialisation), then the model's own scheme where it has one (timm ``init_weights``, transformers
    ``_init_weights``)."""
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
    init_weights = getattr(module, "init_weights", None)
    hf_init = getattr(module, "_init_weights", None)
    if callable(hf_init) and hasattr(module, "config"):
        module.apply(hf_init)
    elif callable(init_weights):
        try:
            init_weights()
        except TypeError:  # a signature we do not know: the reset above already gave fresh weights
            pass
    return module


@dataclass
class SLTOutputs:
    """What the SL-Ts produced in one forward: each one's logits (student's class order) and the fusion."""

    logits: list[Tensor]
    fused: Tensor


class SelfLearningTeachers(nn.Module, TrainerCallback):
    """One or two self-learning teachers, run as an auxiliary module of the trainer's model.

    Called as ``module(student_outputs, teacher_outputs, batch)`` inside the model's forward: runs every SL-T
    on the teacher's view of the batch and returns :class:`SLTOutputs`. As a ``TrainerCallback`` it follows
    ``TrainerState.global_step``, which sets the phase in ``sequential`` mode.
    """

    def __init__(
        self,
        networks: Sequence[nn.Module],
        library: str,
        mean: Sequence[float],
        std: Sequence[float],
        label_index: Tensor | None = None,
        fusion_weight: float = 0.5,
        mode: str = "parallel",
        phase_steps: int = 1,
        forward_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        if mode not in SLKD_MODES:
            raise ValueError(f"mode must be one of {list(SLKD_MODES)}, got {mode!r}")
        self.networks = nn.ModuleList(networks)
        self.library = library
        self.normalizer = Normalizer(tuple(mean), tuple(std))
        self.register_buffer("label_index", label_index, persistent=False)
        self.fusion_weight = float(fusion_weight)
        self.mode = mode
        self.phase_steps = int(phase_steps)
        self.forward_kwargs = dict(forward_kwargs or {})
        self.global_step = 0

    # TrainerCallback: the optimizer step about to run.
    def on_step_begin(self, args, state, control, **kwargs):
        self.global_step = state.global_step

    @property
    def phase(self) -> str:
        """'both' (parallel), or in sequential mode 'slt' (SL-Ts learn) / 'student' (student learns)."""
        if self.mode == "parallel":
            return "both"
        return "slt" if (self.global_step // self.phase_steps) % 2 == 0 else "student"

    def network_logits(self, pixels: Tensor) -> list[Tensor]:
        """Each SL-T's logits for uint8 ``pixels`` (normalised here with the teacher's mean/std)."""
        inputs = self.normalizer(pixels)
        outputs = []
        for network in self.networks:
            logits = forward_logits(network, inputs, self.library, **self.forward_kwargs)
            if self.label_index is not None:
                logits = logits.index_select(-1, self.label_index)
            outputs.append(logits)
        return outputs

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, Tensor]
    ) -> SLTOutputs:
        pixels = batch.get("teacher_pixel_values")
        if pixels is None:
            pixels = batch["pixel_values"]
        phase = self.phase if self.training else "both"
        if phase == "student":
            with torch.no_grad():  # SL-Ts held: they supervise, they do not learn
                logits = self.network_logits(pixels)
        else:
            logits = self.network_logits(pixels)
        if phase == "slt":
            # Student held: the trainer's CE/KD terms and ours see detached outputs, so no gradient reaches it
            # (its parameters keep grad None and the optimizer skips them).
            student.logits = student.logits.detach()
            student.features = {name: value.detach() for name, value in student.features.items()}
        return SLTOutputs(logits=logits, fused=fuse_logits(logits, self.fusion_weight))


def build_self_learning_teachers(args: Any, teacher: Any, num_classes: int) -> SelfLearningTeachers:
    """The SL-Ts a :class:`~hf_distill.DistillationConfig` asks for: ``slkd_num_teachers`` untrained copies of
    the teacher's architecture (deep copy, re-initialised, fp32) or of the timm ``slkd_architecture``, each
    from its own seed derived from ``args.seed``."""
    if teacher is None:
        raise ValueError(
            "DistillationConfig.slkd_num_teachers: SLKD needs a pretrained teacher for the self-learning "
            "teachers to learn from; set teacher_model_name_or_path (or pass teacher_model=) or set "
            "slkd_num_teachers=0"
        )
    if args.slkd_architecture is None and not hasattr(teacher, "module"):
        raise ValueError(
            "DistillationConfig.slkd_architecture: the teacher is an ensemble, which has no single architecture "
            "to copy; name a timm architecture for the self-learning teachers"
        )
    networks: list[nn.Module] = []
    for index in range(args.slkd_num_teachers):
        with torch.random.fork_rng(devices=[]):
            # Independent initialisations: two SL-Ts of one architecture must not start identical.
            torch.manual_seed(args.seed + 7919 * (index + 1))
            if args.slkd_architecture is not None:
                import timm

                network = timm.create_model(args.slkd_architecture, pretrained=False, num_classes=num_classes)
            else:
                network = reinitialise(copy.deepcopy(teacher.module).float())
        networks.append(network.requires_grad_(True).train())
    if args.slkd_architecture is None:
        _warn_if_not_reinitialised(teacher.module, networks[0])
        library, label_index = teacher.library, teacher.label_index
        kwargs = dict(getattr(teacher, "_kwargs", {}))
    else:
        library, label_index, kwargs = "timm", None, {}
    preprocess = teacher.preprocess if hasattr(teacher, "preprocess") else None
    mean = preprocess.mean if preprocess is not None else (0.485, 0.456, 0.406)
    std = preprocess.std if preprocess is not None else (0.229, 0.224, 0.225)
    return SelfLearningTeachers(
        networks,
        library=library,
        mean=mean,
        std=std,
        label_index=label_index.cpu() if label_index is not None else None,
        fusion_weight=args.slkd_fusion_weight,
        mode=args.slkd_mode,
        phase_steps=args.slkd_phase_steps,
        forward_kwargs=kwargs,
    )


def _warn_if_not_reinitialised(source: nn.Module, copy_: nn.Module) -> None:
    kept = [
        name
        for (name, a), b in zip(source.named_parameters(), copy_.parameters())
        # Constant tensors (a fresh BatchNorm's ones and zeros) legitimately match an untrained source.
        if a.shape == b.shape
        and a.numel() > 1
        and a.min() != a.max()
        and torch.equal(a.detach().float().cpu(), b.detach().cpu())
    ]
    if kept:
        logger.warning(
            "SLKD: %d parameter tensors of the SL-T still equal the teacher's: %s", len(kept), kept[:5]
        )


# ------------------------------------------------------------------------------------------- loss terms
def _slt_outputs(student: ModelOutputs) -> SLTOutputs:
    try:
        return student.auxiliary[SLKD_NAME]
    except KeyError:
        raise KeyError(f"the SLKD terms need the '{SLKD_NAME}' auxiliary module's outputs") from None


def _cross_entropy(logits: Tensor, batch: dict[str, Tensor], label_smoothing: float) -> Tensor:
    """Hard-label CE in fp32; with batch mixing the mixed-label CE, as the trainer computes the student's."""
    labels = batch["labels"]
    logits = logits.float()
    perm, lam = batch.get("mix_perm"), batch.get("mix_lam")
    if perm is None:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    own = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    partner = F.cross_entropy(logits, labels[perm], reduction="none", label_smoothing=label_smoothing)
    return (lam * own + (1.0 - lam) * partner).mean()


def slt_term(
    student: ModelOutputs,
    teacher: ModelOutputs,
    batch: dict[str, Tensor],
    temperature: float = 4.0,
    alpha: float = 0.9,
    label_smoothing: float = 0.0,
) -> Tensor:
    """The SL-Ts' own loss, summed over SL-Ts: ``(1 - alpha) * CE(z_i, y) + alpha * KD(z_i, teacher)``
    (Eq. 2/5/6; KD only when the batch has no labels). Its gradient reaches only the SL-Ts."""
    outputs = _slt_outputs(student)
    labels = batch.get("labels")
    total = outputs.fused.new_zeros((), dtype=torch.float32)
    for logits in outputs.logits:
        if labels is None:
            total = total + kd_loss(logits, teacher.logits, temperature)
            continue
        if alpha < 1.0:
            total = total + (1.0 - alpha) * _cross_entropy(logits, batch, label_smoothing)
        if alpha > 0.0:
            total = total + alpha * kd_loss(logits, teacher.logits, temperature)
    return total


def student_slt_kd_term(
    student: ModelOutputs,
    teacher: ModelOutputs,
    batch: dict[str, Tensor],
    temperature: float = 4.0,
    detach: bool = True,
) -> Tensor:
    """The student's KD towards the (fused) SL-T logits (Eq. 3/4); ``detach`` keeps its gradient off the SL-Ts."""
    fused = _slt_outputs(student).fused
    return kd_loss(student.logits, fused.detach() if detach else fused, temperature)


def slkd_terms(args: Any) -> list[tuple[str, Callable[..., Tensor], float, dict[str, Any]]]:
    """The two extra loss terms SLKD adds to the trainer's CE + KD: ``(name, fn, weight, params)`` each."""
    temperature = args.slkd_temperature if args.slkd_temperature is not None else args.temperature
    alpha = args.slkd_alpha if args.slkd_alpha is not None else args.alpha
    return [
        (
            f"{SLKD_NAME}_slt",
            slt_term,
            1.0,
            {"temperature": temperature, "alpha": alpha, "label_smoothing": args.label_smoothing_factor},
        ),
        (
            f"{SLKD_NAME}_kd",
            student_slt_kd_term,
            float(args.slkd_weight),
            {"temperature": temperature, "detach": args.slkd_detach},
        ),
    ]
