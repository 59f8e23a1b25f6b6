"""SLKD: self-learning teachers (SL-Ts) that transfer the teacher's learning ability.

"Improving Knowledge Distillation via Transferring Learning Ability" adds, beside the frozen pretrained
teacher ``T``, one or two *untrained* networks with the teacher's architecture. Each SL-T learns from the
teacher exactly as a student would (Eq. 2, 5, 6)::

    L_SLT_i = (1 - a) * CE(z_i, y) + a * tau^2 * KL(softmax(t / tau) || softmax(z_i / tau))

while the student learns from the teacher *and* from the SL-Ts' current output (Eq. 3/4), with its own CE in
that branch too, as the authors' code computes it::

    L_S = (1 - alpha) * CE(s, y) + alpha * KD(s, t) + beta * (c * CE(s, y) + KD(s, z))

(``slkd_weight`` = beta, ``slkd_ce_weight`` = c. The authors' ``Tech_KD``: ``loss_kd_cs = PROCESS_WEIGHT *
(CE_WEIGHT_CS * CE + KD_WEIGHT_CS * KD(s, child))`` with all three weights 1, beside ``0.1 CE + 0.9 KD``, so
the student's CE weighs 1.1 in all. ``slkd_ce_weight=0`` makes the branch KD only.)

With two SL-Ts their logits are fused, ``z = w * z_1 + (1 - w) * z_2`` (Eq. 7). Because the SL-Ts are
still learning, ``z`` follows a teacher-like learning trajectory that starts close to the student's own
output, which the paper argues is easier to follow than the finished teacher.

How this maps onto :class:`~hf_distill.DistillationTrainer`:

* the SL-Ts live in :class:`SelfLearningTeachers`, an auxiliary module inside ``Trainer.model``: the
  optimizer, DDP/FSDP/DeepSpeed and checkpoints include them and resuming restores them, while
  ``save_model`` writes the student alone;
* the student's CE + KD(teacher) are the trainer's own terms (``alpha``, ``temperature``); the SL-T loss,
  the student's CE of the SL-T branch and its KD towards the SL-Ts are three extra terms, logged as
  ``loss_slkd_slt``, ``loss_slkd_ce`` and ``loss_slkd_kd``;
* SL-Ts see the teacher's view of each image (``teacher_pixel_values`` when the collator makes one),
  normalised with the teacher's mean/std: they stand in for the teacher, so they get its input;
* ``slkd_detach=True`` (default) detaches the SL-T output in the student's KD(SL-T) term: the paper's
  update rule for the SL-Ts (Eq. 2, 5, 6) has the teacher as their only supervisor, and the paper is the
  specification. The authors' released code sums all losses into one backward without a detach, so that
  term also pulls the SL-Ts towards the student; ``slkd_detach=False`` reproduces it (parallel mode only:
  in the sequential modes the SL-Ts are never trained by the student's loss).

Modes (``slkd_mode``):

* ``parallel`` (the paper's main setting, the authors' ``KD_Trainer``): in every optimizer step the SL-Ts
  and the student both update from one forward/backward.
* ``sequential`` (the paper's SLKD*, the authors' sequential trainer: ``train_iter_p1``, ``train_iter_p2``,
  ``train_iter_s`` on the same batch): inside each training step, the SL-Ts first take one optimizer update
  on the batch from their own loss (the two are independent networks, so one joint update equals the
  authors' two in turn), then the student learns from the teacher and from the SL-Ts *as they stand after
  that update*, on the same batch, in the trainer's ordinary step. The SL-T update runs inside the model's
  forward with the trainer's own optimizer restricted to the SL-T parameters (same class, hyper-parameters
  and learning-rate schedule; its state sits in the trainer's optimizer state, so checkpoints and resume
  keep it), gradients by ``torch.autograd.grad`` (nothing enters ``.grad`` before the student's backward),
  averaged over DDP processes by an all-reduce, clipped to ``max_grad_norm``. In the student's step the
  SL-Ts run without gradient, so the optimizer skips them. BatchNorm running statistics of the SL-Ts see the
  batch twice (update and target pass; the authors' code runs them three times). Refused under FSDP and
  DeepSpeed (they own the parameters and the optimizer), with gradient accumulation (one SL-T update per
  micro-batch would not be the authors' schedule) and with fp16 (no loss scaler for the inner update; use
  bf16). The loss logged as ``loss_slkd_slt`` is the SL-Ts' loss before their update.
* ``alternating`` (an earlier reading of the ablation, kept because it runs everywhere — FSDP, DeepSpeed,
  gradient accumulation — with no update inside the step): optimizer steps alternate between phases of
  ``slkd_phase_steps`` steps on different batches. In an SL-T phase only the SL-Ts update (the student's
  outputs are detached, ``student.held``, so no term sends it gradient); in the following student phase
  only the student updates, distilling from the SL-Ts as they stand (they run without gradient). Phases
  start with the SL-Ts at step 0 and follow ``TrainerState.global_step``, so a resumed run continues the
  same schedule. Each network gets half the optimizer steps. Under DDP set
  ``ddp_find_unused_parameters=True`` (the default for this wrapper). The hold covers the student's logits and
  tapped features; outputs other auxiliary modules computed before the SL-Ts ran are not held.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import Tensor, nn
from transformers import TrainerCallback

from .batch import PIXEL_VALUES, TEACHER_PIXEL_VALUES, mixed_cross_entropy
from .contract import TEACHER_NONE, TEACHER_PROBABILITIES, Needs, declare
from .hub import IMAGENET_MEAN, IMAGENET_STD, Normalizer, forward_logits
from .losses import ModelOutputs, kd_loss
from .method import Build, Method, Term
from .teacher import sum_over_members

logger = logging.getLogger(__name__)

SLKD_NAME = "slkd"  # the auxiliary-module name, and the prefix of the two loss terms
SLKD_MODES = ("parallel", "sequential", "alternating")


def validate_slkd_config(config: Any, fail: Callable[[str, str], None]) -> None:
    """Check the ``slkd_*`` fields of a :class:`~hf_distill.DistillationConfig` (called from its validation)."""
    n = config.slkd_num_teachers
    if not isinstance(n, int) or isinstance(n, bool) or n not in (0, 1, 2):
        fail("slkd_num_teachers", f"must be 0 (SLKD off), 1 or 2 self-learning teachers, got {n!r}")
    for name in ("slkd_weight", "slkd_ce_weight"):
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
    if n and config.slkd_mode == "sequential":
        why = "updates the SL-Ts inside each training step with the trainer's optimizer"
        if config.fsdp or config.deepspeed:
            fail(
                "slkd_mode",
                f"'sequential' {why}, which FSDP / DeepSpeed (owners of the parameters and the optimizer) do not "
                "allow; use slkd_mode='alternating' or 'parallel'",
            )
        if config.gradient_accumulation_steps != 1:
            fail(
                "slkd_mode",
                f"'sequential' {why}: with gradient_accumulation_steps={config.gradient_accumulation_steps} the "
                "SL-Ts would update once per micro-batch; set gradient_accumulation_steps=1 or use "
                "slkd_mode='alternating'",
            )
        if config.fp16:
            fail("slkd_mode", f"'sequential' {why}, without fp16's loss scaler; use bf16 (or fp32)")
    steps = config.slkd_phase_steps
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        fail("slkd_phase_steps", f"must be an integer >= 1 (optimizer steps per phase), got {steps!r}")
    if n and config.slkd_architecture is not None:
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
    """What the SL-Ts produced in one forward: each one's logits (student's class order) and the fusion;
    in ``sequential`` mode also their loss before this step's update (detached, for logging)."""

    logits: list[Tensor]
    fused: Tensor
    updated_loss: Tensor | None = None


def slt_loss(
    logits: Sequence[Tensor],
    teacher_logits: Tensor,
    batch: dict[str, Tensor],
    temperature: float = 4.0,
    alpha: float = 0.9,
    label_smoothing: float = 0.0,
) -> Tensor:
    """The SL-Ts' own loss, summed over SL-Ts: ``(1 - alpha) * CE(z_i, y) + alpha * KD(z_i, teacher)``
    (Eq. 2/5/6; KD only when the batch has no labels). KD as the trainer's (summed over an ensemble's members
    when it is reduced by ``kl_sum``)."""
    labels = batch.get("labels")
    total = logits[0].new_zeros((), dtype=torch.float32)
    for z in logits:
        if labels is None:
            total = total + _kd(z, teacher_logits, temperature)
            continue
        if alpha < 1.0:
            total = total + (1.0 - alpha) * mixed_cross_entropy(z, batch, label_smoothing)
        if alpha > 0.0:
            total = total + alpha * _kd(z, teacher_logits, temperature)
    return total


_kd = sum_over_members(kd_loss)


def _all_reduce_mean(grads: list[Tensor]) -> None:
    """Average gradients over the processes of a DDP run in place (no-op in a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class SelfLearningTeachers(nn.Module, TrainerCallback):
    """One or two self-learning teachers, run as an auxiliary module of the trainer's model.

    Called as ``module(student_outputs, teacher_outputs, batch)`` inside the model's forward: runs every SL-T
    on the teacher's view of the batch and returns :class:`SLTOutputs`. In ``sequential`` mode it first
    updates the SL-Ts on the batch (see the module docstring). As a ``TrainerCallback`` it follows
    ``TrainerState.global_step`` (the phase in ``alternating`` mode) and picks up the trainer's optimizer and
    ``max_grad_norm`` (the update in ``sequential`` mode).
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
        loss_params: dict[str, Any] | None = None,
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
        # temperature / alpha / label_smoothing of the SL-T loss, for the update of the sequential mode
        self.loss_params = dict(loss_params or {})
        self.global_step = 0
        self.optimizer: Any = None  # the trainer's optimizer (sequential mode), set by on_step_begin
        self.max_grad_norm: float | None = None

    # TrainerCallback: the optimizer step about to run.
    def on_step_begin(self, args, state, control, **kwargs):
        self.global_step = state.global_step
        if kwargs.get("optimizer") is not None:
            self.optimizer = kwargs["optimizer"]
        self.max_grad_norm = getattr(args, "max_grad_norm", None)

    @property
    def phase(self) -> str:
        """'both' (parallel, and sequential: the update happens inside the forward), or in alternating mode
        'slt' (SL-Ts learn) / 'student' (student learns)."""
        if self.mode != "alternating":
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

    def update(self, pixels: Tensor, teacher_logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """One optimizer update of the SL-Ts from their own loss on this batch (``sequential`` mode); returns
        that loss, detached. Uses the trainer's optimizer with its param groups restricted to the SL-Ts."""
        if self.optimizer is None:
            raise RuntimeError(
                "slkd_mode='sequential' updates the SL-Ts with the trainer's optimizer, which the module receives "
                "at on_step_begin; run it through Trainer.train() (or call on_step_begin(args, state, control, "
                "optimizer=...) first)"
            )
        params = [p for p in self.networks.parameters() if p.requires_grad]
        with torch.enable_grad():
            loss = slt_loss(self.network_logits(pixels), teacher_logits, batch, **self.loss_params)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
        _all_reduce_mean(grads)
        if self.max_grad_norm is not None and self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(grads, self.max_grad_norm)
        raw = getattr(
            self.optimizer, "optimizer", self.optimizer
        )  # accelerate's AcceleratedOptimizer wraps it
        ids = {id(p) for p in params}
        groups = raw.param_groups
        restricted = [{**g, "params": [p for p in g["params"] if id(p) in ids]} for g in groups]
        held = [(p, p.grad) for g in groups for p in g["params"] if id(p) not in ids]
        for p, _ in held:  # only the SL-Ts move in this update
            p.grad = None
        for p, g in zip(params, grads):
            p.grad = g.to(p.dtype)
        raw.param_groups = [g for g in restricted if g["params"]]
        try:
            with torch.no_grad():
                raw.step()
        finally:
            raw.param_groups = groups
            for p in params:
                p.grad = None
            for p, grad in held:
                p.grad = grad
        return loss.detach()

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, Tensor]
    ) -> SLTOutputs:
        pixels = batch.get(TEACHER_PIXEL_VALUES)
        if pixels is None:
            pixels = batch[PIXEL_VALUES]
        phase = self.phase if self.training else "both"
        updated_loss = None
        if self.training and self.mode == "sequential" and teacher is not None and teacher.logits is not None:
            updated_loss = self.update(pixels, teacher.logits, batch)
            with torch.no_grad():  # the student's targets: the SL-Ts as they stand after their update
                logits = self.network_logits(pixels)
        elif phase == "student":
            with torch.no_grad():  # SL-Ts held: they supervise, they do not learn
                logits = self.network_logits(pixels)
        else:
            logits = self.network_logits(pixels)
        if phase == "slt":
            # Student held: the trainer's CE/KD terms and ours see detached outputs, so no gradient reaches it
            # (its parameters keep grad None and the optimizer skips them).
            student.logits = student.logits.detach()
            student.features = {name: value.detach() for name, value in student.features.items()}
            student.held = True  # terms computed outside this forward (TL-mix's x') must leave it alone too
        return SLTOutputs(
            logits=logits, fused=fuse_logits(logits, self.fusion_weight), updated_loss=updated_loss
        )


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
    mean = preprocess.mean if preprocess is not None else IMAGENET_MEAN
    std = preprocess.std if preprocess is not None else IMAGENET_STD
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
        loss_params=slt_loss_params(args),
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


def slt_loss_params(args: Any) -> dict[str, Any]:
    """Temperature, alpha and label smoothing of the SL-Ts' loss (``slkd_*``, else the student's)."""
    return {
        "temperature": float(
            args.slkd_temperature if args.slkd_temperature is not None else args.temperature
        ),
        "alpha": float(args.slkd_alpha if args.slkd_alpha is not None else args.alpha),
        "label_smoothing": args.label_smoothing_factor,
    }


def slt_term(
    student: ModelOutputs,
    teacher: ModelOutputs,
    batch: dict[str, Tensor],
    temperature: float = 4.0,
    alpha: float = 0.9,
    label_smoothing: float = 0.0,
) -> Tensor:
    """The SL-Ts' own loss, summed over SL-Ts: ``(1 - alpha) * CE(z_i, y) + alpha * KD(z_i, teacher)``
    (Eq. 2/5/6; :func:`slt_loss`). Its gradient reaches only the SL-Ts. In ``sequential`` mode the SL-Ts
    already took their update inside the forward: the term is that loss, detached (logged, no gradient)."""
    outputs = _slt_outputs(student)
    if outputs.updated_loss is not None:
        return outputs.updated_loss
    return slt_loss(outputs.logits, teacher.logits, batch, temperature, alpha, label_smoothing)


@declare(Needs(teacher=TEACHER_NONE))
def student_ce_term(
    student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Tensor], label_smoothing: float = 0.0
) -> Tensor:
    """The student's own CE inside its SL-T branch (Eq. 3/4 as the authors' code computes it); 0 without
    labels."""
    if batch.get("labels") is None:
        return student.logits.float().sum() * 0.0
    return mixed_cross_entropy(student.logits, batch, label_smoothing)


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


def slkd_terms(args: Any) -> list[Term]:
    """The extra loss terms SLKD adds to the trainer's CE + KD: the SL-Ts' loss and the student's SL-T branch
    ``slkd_weight * (slkd_ce_weight * CE(s, y) + KD(s, z))``, ``(name, fn, weight, params)`` each."""
    params = slt_loss_params(args)
    terms = [Term(f"{SLKD_NAME}_slt", slt_term, 1.0, params)]
    ce_weight = float(args.slkd_weight) * float(args.slkd_ce_weight)
    if ce_weight > 0:
        terms.append(
            Term(
                f"{SLKD_NAME}_ce",
                student_ce_term,
                ce_weight,
                {"label_smoothing": args.label_smoothing_factor},
            )
        )
    terms.append(
        Term(
            f"{SLKD_NAME}_kd",
            student_slt_kd_term,
            float(args.slkd_weight),
            {"temperature": params["temperature"], "detach": args.slkd_detach},
        )
    )
    return terms


class SLKDMethod(Method):
    """SLKD as a method: the self-learning teachers (one auxiliary module, also a ``TrainerCallback`` for the
    sequential phases) and their two loss terms."""

    name = SLKD_NAME

    @classmethod
    def enabled(cls, args: Any) -> bool:
        return bool(args.slkd_num_teachers)

    validate_config = staticmethod(validate_slkd_config)

    @classmethod
    def needs(cls, args: Any) -> list[tuple[str, Needs]]:
        temperature = args.slkd_temperature if args.slkd_temperature is not None else args.temperature
        return [
            (
                f"slkd_num_teachers={args.slkd_num_teachers}",
                Needs(
                    teacher=TEACHER_PROBABILITIES,
                    temperature=float(temperature),
                    labels_new=True,  # the SL-Ts learn beside the student: a stored bank cannot serve them
                    teacher_view=True,
                    why="trains self-learning teachers on the teacher's view from its tempered probabilities",
                    without_teacher="slkd_num_teachers: SLKD needs a pretrained teacher for the self-learning "
                    "teachers to learn from; set teacher_model_name_or_path (or pass teacher_model=) or set "
                    "slkd_num_teachers=0",
                ),
            )
        ]

    @classmethod
    def refuse(cls, args: Any) -> str | None:
        teachers = args.teacher_model_name_or_path
        if isinstance(teachers, (list, tuple)) and len(teachers) > 1 and args.slkd_architecture is None:
            return (
                f"slkd_num_teachers={args.slkd_num_teachers} copies the teacher's architecture for the self-learning "
                "teachers, but teacher_model_name_or_path is an ensemble, which has no single architecture; set "
                "slkd_architecture to a timm architecture"
            )
        return None

    def auxiliary_modules(self, build: Build) -> dict[str, nn.Module]:
        return {SLKD_NAME: build_self_learning_teachers(self.args, build.teacher, len(build.label_names))}

    def terms(self, build: Build) -> list[Term]:
        return slkd_terms(self.args)
