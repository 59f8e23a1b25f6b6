"""Teacher placement per backend, the shipped Accelerate configs, and real multi-process runs on CPU.

The launched runs (marked slow: each ``accelerate launch`` takes about a minute on two CPU cores) compare a
distributed run against one plain process with the same global batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from torch import nn

from hf_distill import DistillationTrainer
from hf_distill.distributed import (
    backend_of,
    integrity_module,
    place_teachers,
    resolve_teacher_placement,
    zero3_inference_config,
)

from . import distributed_run
from .conftest import make_args, tiny_timm

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "accelerate_configs"


def fake_accelerator(kind: str, num_processes: int = 2, stage: int | None = None):
    """The attributes of an ``accelerate.Accelerator`` that placement reads."""
    plugin = (
        SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": stage}})
        if stage is not None
        else None
    )
    return SimpleNamespace(
        distributed_type=f"DistributedType.{kind}",
        num_processes=num_processes,
        device=torch.device("cpu"),
        state=SimpleNamespace(deepspeed_plugin=plugin),
    )


# ------------------------------------------------------------------------------------------- placement
@pytest.mark.parametrize(
    ("kind", "processes", "stage", "backend", "auto", "shard"),
    [
        ("NO", 1, None, "single", "device", None),
        ("MULTI_GPU", 2, None, "ddp", "device", None),
        ("MULTI_CPU", 2, None, "ddp", "device", None),
        ("FSDP", 2, None, "fsdp", "device", "fsdp"),
        ("DEEPSPEED", 2, 2, "deepspeed", "device", None),
        ("DEEPSPEED", 2, 3, "deepspeed", "zero3", "zero3"),
    ],
)
def test_teacher_placement_per_backend(kind, processes, stage, backend, auto, shard):
    accelerator = fake_accelerator(kind, processes, stage)
    assert backend_of(accelerator) == backend
    assert resolve_teacher_placement("auto", accelerator) == auto
    # 'replicate' keeps a full copy on each device even where sharding is possible.
    assert resolve_teacher_placement("replicate", accelerator) == "device"
    if shard is None:
        with pytest.raises(ValueError, match=r"teacher_placement: 'shard' needs FSDP or DeepSpeed ZeRO-3"):
            resolve_teacher_placement("shard", accelerator)
    else:
        assert resolve_teacher_placement("shard", accelerator) == shard


def test_teacher_placement_is_validated_in_the_config(tmp_path):
    with pytest.raises(
        ValueError, match=r"DistillationConfig.teacher_placement: must be 'auto', 'replicate'"
    ):
        make_args(tmp_path, teacher_placement="everywhere")


def test_shard_placement_without_a_sharding_backend_fails_before_training(tmp_path, digits, timm_teacher_dir):
    with pytest.raises(ValueError, match=r"'shard' needs FSDP or DeepSpeed ZeRO-3, but this run uses single"):
        DistillationTrainer(
            model="test_resnet",
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path, teacher_placement="shard"),
            train_dataset=digits["train"],
        )


def test_teacher_stays_outside_the_wrapped_model(tmp_path, digits, timm_teacher_dir):
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path),
        train_dataset=digits["train"],
    )
    assert trainer.teacher_placement == "device"
    assert not trainer.teacher.module.training
    student_params = {id(p) for p in trainer.model.parameters()}
    assert not student_params & {id(p) for p in trainer.teacher.module.parameters()}
    assert all(p.device == trainer.accelerator.device for p in trainer.teacher.module.parameters())


def test_ensemble_members_are_each_placed():
    class Member:
        def __init__(self, seed):
            self.module = tiny_timm(seed=seed).train()
            self.normalizer = nn.Identity()
            self.label_index = torch.arange(10)
            self.dtype = None

    members = [Member(1), Member(2)]
    ensemble = SimpleNamespace(members=members, module=None)
    where = place_teachers(ensemble, fake_accelerator("MULTI_GPU"), "auto", channels_last=True)
    assert where == "device"
    assert isinstance(ensemble.module, nn.ModuleList) and len(ensemble.module) == 2
    for member in members:
        assert not member.module.training
        conv = next(m for m in member.module.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_zero3_inference_config_is_frozen_and_resolved():
    student = {
        "zero_optimization": {
            "stage": 2,
            "offload_optimizer": {"device": "cpu"},
            "reduce_bucket_size": "auto",
        },
        "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
        "scheduler": {"type": "WarmupLR"},
        "gradient_clipping": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": 4,
        "bf16": {"enabled": "auto"},
    }
    config = zero3_inference_config(student, micro_batch_size=8, world_size=4, dtype=torch.bfloat16)
    assert "optimizer" not in config and "scheduler" not in config and "gradient_clipping" not in config
    assert config["zero_optimization"] == {"stage": 3}
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["gradient_accumulation_steps"] == 1
    assert config["train_batch_size"] == 32
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert "auto" not in json.dumps(config)
    assert student["zero_optimization"]["stage"] == 2, "the student's config must not be modified"


def test_integrity_view_of_a_plain_module_is_the_module():
    module = tiny_timm()
    assert integrity_module(module) is module
    assert integrity_module(None) is None


@pytest.mark.parametrize(
    ("name", "distributed_type", "section", "expected"),
    [
        ("ddp", "MULTI_GPU", None, {}),
        ("fsdp", "FSDP", "fsdp_config", {"fsdp_version": 2, "fsdp_state_dict_type": "FULL_STATE_DICT"}),
        ("deepspeed_zero2", "DEEPSPEED", "deepspeed_config", {"zero_stage": 2}),
        ("deepspeed_zero3", "DEEPSPEED", "deepspeed_config", {"zero_stage": 3, "zero3_init_flag": False}),
    ],
)
def test_accelerate_configs_load(name, distributed_type, section, expected):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert str(config.distributed_type).endswith(distributed_type)
    assert config.mixed_precision == "bf16"
    values = getattr(config, section) if section else {}
    for key, value in expected.items():
        assert values[key] == value


# ------------------------------------------------------------------------------------- launched runs
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    tmp_path: Path, launcher_args: list[str], script_args: list[str], env: dict[str, str] | None = None
):
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launcher_args,
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(REPO / "tests" / "distributed_run.py"),
        *script_args,
    ]
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    result = subprocess.run(command, cwd=REPO, env=run_env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads((tmp_path / "run.json").read_text()) if (tmp_path / "run.json").exists() else None


@pytest.fixture(scope="module")
def single_process_reference(tmp_path_factory):
    """One plain process, global batch 16, 4 SGD steps: the parameters every distributed run must reach."""
    out = tmp_path_factory.mktemp("single")
    distributed_run.main(["--output_dir", str(out), "--per_device_batch", "16", "--cpu"])
    return torch.load(out / "params.pt"), json.loads((out / "run.json").read_text())


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path, single_process_reference):
    reference, reference_run = single_process_reference
    # 2 processes x 8 samples = the reference's 16; DDP averages gradients over the global batch.
    run = launch(
        tmp_path,
        ["--multi_gpu", "--num_processes", "2", "--mixed_precision", "no"],
        ["--output_dir", str(tmp_path), "--per_device_batch", "8", "--cpu"],
    )
    assert run["backend"] == "ddp" and run["num_processes"] == 2
    assert run["student_type"] == "DistributedDataParallel"
    assert run["teacher_placement"] == "device" and run["teacher_type"] == "ResNet"
    # Tolerance: float32 summation order differs between one batch of 16 and an all-reduce of two batches
    # of 8; after 4 SGD steps at lr 0.05 that is ~1e-8, far below 1e-6.
    assert max_difference(torch.load(tmp_path / "params.pt"), reference) < 1e-6
    assert run["losses"] == pytest.approx(reference_run["losses"], abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_two_process_slkd_matches_one_process(tmp_path, mode):
    """SLKD under DDP: in ``sequential`` mode the SL-Ts take their own update inside the forward, with their
    gradients all-reduced by hand; two processes of 8 must reach the one-process run of 16, SL-Ts included."""
    single = tmp_path / "single"
    distributed_run.main(
        ["--output_dir", str(single), "--per_device_batch", "16", "--cpu", "--slkd_mode", mode]
    )
    reference = torch.load(single / "params.pt")
    assert any(k.startswith("auxiliary.") for k in reference)  # the SL-T is in the compared state
    run = launch(
        tmp_path,
        ["--multi_gpu", "--num_processes", "2", "--mixed_precision", "no"],
        ["--output_dir", str(tmp_path), "--per_device_batch", "8", "--cpu", "--slkd_mode", mode],
    )
    assert run["backend"] == "ddp" and run["num_processes"] == 2
    params = torch.load(tmp_path / "params.pt")
    initial = torch.load(single / "initial.pt")
    assert max_difference(params, reference) < 1e-6
    for prefix in ("student.", "auxiliary."):  # both networks trained
        assert any(
            not torch.equal(params[k], initial[k])
            for k in params
            if k.startswith(prefix) and params[k].is_floating_point()
        )


def deepspeed_env() -> dict[str, str]:
    # DeepSpeed picks CUDA when it sees a GPU; on a CPU-only machine say so explicitly.
    return {} if torch.cuda.is_available() else {"DS_ACCELERATOR": "cpu"}


def check_saved_student(directory: Path, reference: dict[str, torch.Tensor]) -> None:
    from transformers import pipeline

    model = timm.create_model(f"local-dir:{directory}", pretrained=True)
    assert max_difference({k: v for k, v in model.state_dict().items()}, reference) < 1e-5
    classify = pipeline("image-classification", model=str(directory), device="cpu")
    from PIL import Image

    predictions = classify(Image.new("RGB", (32, 32), (128, 64, 32)), top_k=3)
    assert len(predictions) == 3 and all(p["label"] in [str(i) for i in range(10)] for p in predictions)


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "teacher_type"), [(2, "ResNet"), (3, "DeepSpeedEngine")])
def test_deepspeed_single_process_trains_and_saves_a_loadable_student(
    tmp_path, single_process_reference, stage, teacher_type
):
    pytest.importorskip("deepspeed")
    reference, reference_run = single_process_reference
    run = launch(
        tmp_path,
        [
            "--config_file",
            str(CONFIGS / f"deepspeed_zero{stage}.yaml"),
            "--num_processes",
            "1",
            "--mixed_precision",
            "no",
        ],
        ["--output_dir", str(tmp_path), "--per_device_batch", "16", "--save"],
        env=deepspeed_env(),
    )
    assert run["backend"] == "deepspeed" and run["student_type"] == "DeepSpeedEngine"
    # ZeRO-2: the teacher is a plain replicated module; ZeRO-3: its own inference engine.
    assert run["teacher_type"] == teacher_type
    assert run["teacher_placement"] == ("zero3" if stage == 3 else "device")
    assert run["losses"] == pytest.approx(reference_run["losses"], abs=1e-5)
    # Trainer._save received DeepSpeed's (consolidated) state_dict: the student must load and match.
    check_saved_student(tmp_path / "student", reference)
