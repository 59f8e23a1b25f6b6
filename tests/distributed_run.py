"""A tiny distillation run under whatever ``accelerate launch`` set up (DDP on CPU, DeepSpeed, ...), used by
tests/test_distributed.py and benchmarks/gpu.sh. Rank 0 writes the trained student's parameters to
``<output_dir>/params.pt`` and the run's layout to ``<output_dir>/run.json``; ``--save`` also saves the student.

    accelerate launch --cpu --num_processes 2 tests/distributed_run.py --output_dir /tmp/ddp --per_device_batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hf_distill import DistillationTrainer  # noqa: E402
from hf_distill.data import digits_dataset  # noqa: E402
from hf_distill.distributed import backend_of  # noqa: E402
from tests.conftest import make_args, save_in_hub_layout, tiny_timm  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--per_device_batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--student", default="test_convnext", help="no BatchNorm: batch statistics would differ"
    )
    parser.add_argument("--teacher", default="test_resnet")
    parser.add_argument("--optim", default="sgd")
    parser.add_argument("--learning_rate", type=float, default=0.05)
    parser.add_argument("--cpu", action="store_true", help="use_cpu=True (DDP over gloo)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--teacher_placement", default="auto")
    parser.add_argument("--save", action="store_true", help="also save_model() to <output_dir>/student")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument(
        "--slkd_mode",
        default=None,
        help="train one SL-T (test_convnext: no BatchNorm) beside the student in this slkd_mode",
    )
    options = parser.parse_args(argv)

    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Every rank builds the same teacher from the same seed and writes its own copy: no barrier is needed
    # before the trainer (and with it the process group) exists.
    rank = int(os.environ.get("RANK", "0"))
    teacher_dir = out / f"teacher-rank{rank}"
    save_in_hub_layout(tiny_timm(options.teacher, seed=1), teacher_dir)
    ds = digits_dataset(seed=0, test_size=0.3)["train"].select(range(128))
    slkd = {}
    if options.slkd_mode:
        slkd = dict(slkd_num_teachers=1, slkd_mode=options.slkd_mode, slkd_architecture="test_convnext")
    args = make_args(
        out,
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=options.per_device_batch,
        max_steps=options.steps,
        optim=options.optim,
        learning_rate=options.learning_rate,
        lr_scheduler_type="constant",
        use_cpu=options.cpu,
        bf16=options.bf16,
        teacher_placement=options.teacher_placement,
        report_to="none",
        image_size=options.image_size,
        teacher_image_size=options.image_size,
        **slkd,
    )
    trainer = DistillationTrainer(
        model=tiny_timm(options.student, seed=3),
        teacher_model=str(teacher_dir),
        args=args,
        train_dataset=ds,
    )
    if trainer.accelerator.is_main_process:
        initial = trainer.accelerator.unwrap_model(trainer.model).state_dict()
        torch.save({k: v.detach().float().cpu() for k, v in initial.items()}, out / "initial.pt")
    trainer.train()
    if options.save:
        trainer.save_model(str(out / "student"))
    if trainer.accelerator.is_main_process:
        student = trainer.accelerator.unwrap_model(trainer.model)
        state = {k: v.detach().float().cpu() for k, v in student.state_dict().items()}
        torch.save(state, out / "params.pt")
        layout = {
            "backend": backend_of(trainer.accelerator),
            "num_processes": trainer.accelerator.num_processes,
            "teacher_placement": trainer.teacher_placement,
            "teacher_type": type(trainer.teacher.module).__name__,
            "student_type": type(trainer.model_wrapped).__name__,
            "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
            "teacher": options.teacher,
            "student": options.student,
            "max_memory_allocated_mib": (
                round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None
            ),
        }
        (out / "run.json").write_text(json.dumps(layout, indent=2))


if __name__ == "__main__":
    main()
