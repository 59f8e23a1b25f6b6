"""Where the frozen teacher lives under each Accelerate backend, and the precision/speed switches.

``Trainer.model`` is the student (or the wrapper holding the student and every trainable auxiliary module);
Accelerate wraps only that. The teacher never goes through ``accelerator.prepare``: the evaluation-mode
paths of FSDP and DeepSpeed would wrap it with the student's settings or leave it on the wrong device.
Instead :func:`place_teacher` puts it where each backend wants it:

==================  ==========================================================================================
backend             teacher (``teacher_placement="auto"``)
==================  ==========================================================================================
single / DDP        a plain frozen module on ``accelerator.device`` (one full copy per process)
FSDP                the same plain copy; ``teacher_placement="shard"`` gives it FSDP units of its own
DeepSpeed ZeRO-0-2  the same plain copy
DeepSpeed ZeRO-3    a ZeRO-3 inference engine (no optimizer): parameters partitioned across the processes and
                    gathered layer by layer, so a teacher larger than one device's memory fits
==================  ==========================================================================================
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

TEACHER_PLACEMENTS = ("auto", "replicate", "shard")


# ------------------------------------------------------------------------------------------- backend
def backend_of(accelerator: Any) -> str:
    """``"deepspeed"``, ``"fsdp"``, ``"ddp"`` (any multi-process data parallelism) or ``"single"``."""
    kind = str(getattr(accelerator, "distributed_type", "NO")).rsplit(".", 1)[-1]
    if kind == "DEEPSPEED":
        return "deepspeed"
    if kind == "FSDP":
        return "fsdp"
    return "ddp" if getattr(accelerator, "num_processes", 1) > 1 else "single"


def deepspeed_stage(accelerator: Any) -> int | None:
    """The ZeRO stage of the accelerator's DeepSpeed plugin, or None without DeepSpeed."""
    if backend_of(accelerator) != "deepspeed":
        return None
    plugin = accelerator.state.deepspeed_plugin
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def resolve_teacher_placement(placement: str, accelerator: Any) -> str:
    """Map ``DistillationConfig.teacher_placement`` to ``"device"``, ``"fsdp"`` or ``"zero3"`` for this backend.

    Raises ValueError (before training) when ``"shard"`` is asked on a backend that cannot shard a teacher.
    """
    if placement not in TEACHER_PLACEMENTS:
        raise ValueError(
            f"DistillationConfig.teacher_placement: must be one of {list(TEACHER_PLACEMENTS)}, got {placement!r}"
        )
    backend = backend_of(accelerator)
    stage = deepspeed_stage(accelerator)
    if placement == "replicate":
        return "device"
    if placement == "auto":
        return "zero3" if stage == 3 else "device"
    # placement == "shard"
    if backend == "fsdp":
        return "fsdp"
    if stage == 3:
        return "zero3"
    raise ValueError(
        f"DistillationConfig.teacher_placement: 'shard' needs FSDP or DeepSpeed ZeRO-3, but this run uses "
        f"{backend}{'' if stage is None else f' ZeRO-{stage}'}; launch with "
        "recipes/accelerate_configs/fsdp.yaml or deepspeed_zero3.yaml, or set teacher_placement='auto'"
    )


# -------------------------------------------------------------------------------------------- teacher
def place_teacher(teacher: Any, accelerator: Any, placement: str = "auto", micro_batch_size: int = 1) -> str:
    """Put a :class:`hf_distill.teacher.Teacher` where the backend wants it; returns the placement used
    (``"device"``, ``"fsdp"`` or ``"zero3"``). The teacher stays frozen and out of ``accelerator.prepare``."""
    where = resolve_teacher_placement(placement, accelerator)
    device = accelerator.device
    if where == "fsdp":
        teacher.module = shard_teacher_fsdp(teacher.module, accelerator)
    elif where == "zero3":
        teacher.module = zero3_teacher_engine(teacher.module, accelerator, micro_batch_size, teacher.dtype)
        teacher.dtype = engine_dtype(teacher.module)
    else:
        teacher.module.to(device)
    # The small pieces the teacher uses around its forward always live on the device.
    teacher.normalizer.to(device)
    if teacher.label_index is not None:
        teacher.label_index = teacher.label_index.to(device)
    teacher.module.eval()
    return where


def place_teachers(
    teacher: Any,
    accelerator: Any,
    placement: str = "auto",
    micro_batch_size: int = 1,
    channels_last: bool = False,
    compile_kwargs: dict[str, Any] | None = None,
) -> str:
    """:func:`place_teacher` for a teacher or a :class:`~hf_distill.teacher.TeacherEnsemble` (each member),
    then the optional channels-last layout and ``torch.compile`` (``compile_kwargs``: backend/mode)."""
    members = list(getattr(teacher, "members", [teacher]))
    where = "device"
    for member in members:
        if channels_last:
            to_channels_last(member.module)
        where = place_teacher(member, accelerator, placement, micro_batch_size)
        if compile_kwargs is not None:
            member.module = compile_module(member.module, **compile_kwargs)
    if hasattr(teacher, "members"):
        teacher.module = nn.ModuleList([m.module for m in members])
    return where


def shard_teacher_fsdp(module: nn.Module, accelerator: Any, min_num_params: int | None = None) -> nn.Module:
    """Give the teacher FSDP units of its own (FSDP2 ``fully_shard``), separate from the student's.

    Units follow a size rule: bottom-up, a submodule whose not-yet-sharded parameters reach
    ``min_num_params`` (the plugin's ``min_num_params`` when set, else 1e6) becomes a unit; the root is
    the last. Parameters are gathered per unit during the forward and freed after it.
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    plugin = accelerator.state.fsdp_plugin
    threshold = min_num_params or getattr(plugin, "min_num_params", 0) or 1_000_000
    module.to(accelerator.device)
    dtype = next((p.dtype for p in module.parameters()), torch.float32)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype)
    mesh = getattr(accelerator, "torch_device_mesh", None)
    kwargs: dict[str, Any] = {"reshard_after_forward": True, "mp_policy": policy}
    if mesh is not None and getattr(accelerator, "parallelism_config", None) is not None:
        kwargs["mesh"] = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    unsharded: dict[nn.Module, int] = {}
    for child in reversed(list(module.modules())):  # children before parents
        own = sum(p.numel() for p in child.parameters(recurse=False))
        below = sum(unsharded.get(c, 0) for c in child.children())
        unsharded[child] = own + below
        if child is not module and unsharded[child] >= threshold and not isinstance(child, FSDPModule):
            fully_shard(child, **kwargs)
            unsharded[child] = 0
    fully_shard(module, **kwargs)
    return module


def zero3_inference_config(
    deepspeed_config: dict[str, Any],
    micro_batch_size: int,
    world_size: int,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """A DeepSpeed config for a frozen ZeRO-3 engine derived from the student's: no optimizer or scheduler,
    no gradient accumulation, every unresolved ``"auto"`` left to DeepSpeed's default, and the precision of
    ``dtype`` (else of the student's bf16/fp16 sections)."""

    def drop_auto(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop_auto(v) for k, v in value.items() if v != "auto"}
        return value

    config = drop_auto(copy.deepcopy(deepspeed_config))
    for key in ("optimizer", "scheduler", "gradient_clipping"):
        config.pop(key, None)
    zero = config.setdefault("zero_optimization", {})
    zero["stage"] = 3
    zero.pop("offload_optimizer", None)
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = 1
    config["train_batch_size"] = micro_batch_size * world_size
    if dtype is not None:
        config["bf16"] = {"enabled": dtype == torch.bfloat16}
        config["fp16"] = {"enabled": dtype == torch.float16}
    return config


def zero3_teacher_engine(
    module: nn.Module, accelerator: Any, micro_batch_size: int, dtype: torch.dtype | None = None
) -> nn.Module:
    """Wrap the frozen teacher in its own DeepSpeed ZeRO-3 engine without optimizer (parameters partitioned
    over the processes, gathered per layer in the forward). Needs the ``deepspeed`` extra."""
    import deepspeed

    config = zero3_inference_config(
        accelerator.state.deepspeed_plugin.deepspeed_config,
        micro_batch_size,
        accelerator.num_processes,
        dtype,
    )
    engine, *_ = deepspeed.initialize(model=module, config=config)
    engine.eval()
    return engine


def engine_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype a DeepSpeed engine runs its module in (bf16/fp16/None for fp32)."""
    if getattr(module, "bfloat16_enabled", lambda: False)():
        return torch.bfloat16
    if getattr(module, "fp16_enabled", lambda: False)():
        return torch.float16
    return None


# ------------------------------------------------------------------------------------------ precision
def autocast_dtype(bf16: bool, fp16: bool) -> torch.dtype | None:
    """The autocast dtype of a run with ``--bf16`` / ``--fp16`` (None: full precision)."""
    if bf16:
        return torch.bfloat16
    if fp16:
        return torch.float16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for both forward passes (no-op without a dtype). Loss terms cast to fp32 themselves."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Channels-last weights for convolutional models (faster convolutions on tensor-core GPUs)."""
    return module.to(memory_format=torch.channels_last)


def compile_module(module: nn.Module, backend: str | None = None, mode: str | None = None) -> nn.Module:
    """``torch.compile`` with the run's backend/mode (TrainingArguments ``torch_compile_backend``/``_mode``)."""
    kwargs: dict[str, Any] = {}
    if backend:
        kwargs["backend"] = backend
    if mode:
        kwargs["mode"] = mode
    return torch.compile(module, **kwargs)


# --------------------------------------------------------------------------------------------- checks
class _PartitionView(nn.Module):
    """The tensors a ZeRO-3 engine really holds on this rank: each parameter's local partition (``ds_tensor``)
    and every buffer, as buffers sharing their storage (no copy)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        for index, param in enumerate(module.parameters()):
            self.register_buffer(f"p{index}", getattr(param, "ds_tensor", param.data), persistent=True)
        for index, (_, buffer) in enumerate(module.named_buffers()):
            self.register_buffer(f"b{index}", buffer, persistent=True)


def integrity_module(module: nn.Module | None) -> nn.Module | None:
    """What a bit-identity check of the teacher should fingerprint: the module itself, or for a ZeRO-3 engine
    (whose parameters are empty placeholders outside its forward) the local partitions."""
    if module is None or not any(hasattr(p, "ds_tensor") for p in module.parameters()):
        return module
    return _PartitionView(module)
