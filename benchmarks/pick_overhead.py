"""Training-step cost of TLCutMix+pick against TLCutMix without pick, measured side by side in one run.

The paper reports that picking raises the wall-clock training time by about 30 %. Its authors' runs score a
pool of two CutMix runs per batch (2N images: a no-grad student forward and a teacher forward over all of
them) and train on the N best; TLCutMix trains on N mixes. The defaults here are that setting.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/pick_overhead.py

Variants run interleaved (rotating order) on the same batches with identically initialised students;
each timed step is collation + ``Trainer.training_step`` (forward, loss, backward). Reported: median
wall-clock and median process CPU time per step, and their ratios to TLCutMix without pick. On CPU only:
the ratio is what it measures, not the absolute speed. Without a trained digits teacher the teacher is an
untrained timm resnet18 of the same shape (the cost does not depend on its weights).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402
from hf_distill.data import digits_dataset  # noqa: E402

VARIANTS: dict[str, dict] = {
    "KD+TLCutMix": dict(augmentation_mode="tlcutmix"),
    "KD+TLCutMix+pick (authors': pool 2N, keep N, train-mode scoring)": dict(
        augmentation_mode="tlcutmix", pick=True, pick_pool_size_factor=2.0, pick_keep_factor=1.0
    ),
    "KD+TLCutMix+pick (pool 2N, keep N, eval-mode scoring)": dict(
        augmentation_mode="tlcutmix",
        pick=True,
        pick_pool_size_factor=2.0,
        pick_keep_factor=1.0,
        pick_scoring="eval",
    ),
    "KD+TLCutMix+pick (pool N, keep N/2)": dict(
        augmentation_mode="tlcutmix", pick=True, pick_pool_size_factor=1.0, pick_keep_factor=0.5
    ),
}
IMAGES = {  # student images with gradient (+ no-grad scoring), teacher images
    "KD+TLCutMix": ("2N", "2N"),
    "KD+TLCutMix+pick (authors': pool 2N, keep N, train-mode scoring)": ("2N (+ 2N no-grad)", "3N"),
    "KD+TLCutMix+pick (pool 2N, keep N, eval-mode scoring)": ("2N (+ 2N no-grad)", "3N"),
    "KD+TLCutMix+pick (pool N, keep N/2)": ("1.5N (+ N no-grad)", "2N"),
}
BASELINE = "KD+TLCutMix"


def build(name: str, opts, train) -> DistillationTrainer:
    args = DistillationConfig(
        output_dir=f"/tmp/pick_overhead/{len(name)}",
        student_model_name_or_path=opts.student,
        temperature=4.0,
        alpha=0.9,
        mixup_alpha=0.0,
        cutmix_alpha=1.0,
        image_size=32,
        crop="rs",
        hflip=0.0,
        per_device_train_batch_size=opts.batch_size,
        use_cpu=True,
        report_to=[],
        seed=0,
        **VARIANTS[name],
    )
    torch.manual_seed(0)
    teacher = opts.teacher
    if not Path(teacher, "config.json").exists():
        torch.manual_seed(1)
        teacher = timm.create_model("resnet18", num_classes=10)
        torch.manual_seed(0)
    return DistillationTrainer(teacher_model=teacher, args=args, train_dataset=train)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="outputs/teacher-digits")
    parser.add_argument("--student", default="resnet10t")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/pick_overhead.md")
    opts = parser.parse_args(argv)
    trained_teacher = Path(opts.teacher, "config.json").exists()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    transformers.logging.set_verbosity_error()
    train = digits_dataset(seed=0)["train"]
    trainers = {name: build(name, opts, train) for name in VARIANTS}
    for trainer in trainers.values():
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); training_step reads it
    rows = [train[i] | {"sample_id": i} for i in range(len(train))]
    wall: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for step in range(opts.warmup + opts.steps):
        start = (step * opts.batch_size) % (len(rows) - opts.batch_size)
        batch_rows = rows[start : start + opts.batch_size]
        order = names[step % len(names) :] + names[: step % len(names)]  # rotate: no variant always first
        for name in order:
            trainer = trainers[name]
            t0, c0 = time.perf_counter(), time.process_time()
            batch = trainer.data_collator(batch_rows)
            trainer.training_step(trainer.model, batch)
            t1, c1 = time.perf_counter(), time.process_time()
            trainer.model.zero_grad(set_to_none=True)
            if step >= opts.warmup:
                wall[name].append(t1 - t0)
                cpu[name].append(c1 - c0)
    base_wall, base_cpu = statistics.median(wall[BASELINE]), statistics.median(cpu[BASELINE])
    cmd = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/pick_overhead.py " + " ".join(
        sys.argv[1:]
    )
    lines = [
        "# Cost of pick: TLCutMix+pick vs TLCutMix, side by side",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"CPU only. Student `{opts.student}` (train mode), teacher "
        + (
            f"`{opts.teacher}` (resnet18)"
            if trained_teacher
            else "an untrained timm `resnet18` (no trained digits teacher here; cost does not depend on weights)"
        )
        + f", digits at 32x32, batch N = {opts.batch_size}; {opts.steps} timed steps per variant after "
        f"{opts.warmup} warm-up steps, variants interleaved in rotating order on the same batches. A step = "
        "collation + `Trainer.training_step` (forwards, loss, backward). "
        f"{platform.machine()}, {os.cpu_count()} shared cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s).",
        "",
        "| variant | student images with gradient | teacher images | median wall s/step | vs TLCutMix | median CPU s/step | vs TLCutMix |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        student_images, teacher_images = IMAGES[name]
        lines.append(
            f"| {name} | {student_images} | {teacher_images} | {w:.3f} | {100 * (w / base_wall - 1):+.1f} % | "
            f"{c:.3f} | {100 * (c / base_cpu - 1):+.1f} % |"
        )
    lines += [
        "",
        "Reading: TLCutMix trains on N originals + N mixes, the teacher labels both. The authors' pick builds a",
        "pool of 2N mixes (two CutMix runs), labels all of them with the teacher, scores them with one no-grad",
        "student forward and trains on the N best: the same gradient work as TLCutMix plus a teacher and a",
        "student forward over 2N images. The teacher's pool outputs are reused for the kept mixes.",
        "",
    ]
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
