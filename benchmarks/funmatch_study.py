"""Digits study of the paper's teacher-input settings: fixed vs independent vs consistent vs FunMatch.

For each setting, schedule (short, long) and seed a student is distilled from the digits teacher
(``outputs/teacher-digits``, trained by ``recipes/train_teacher.py`` when missing) and evaluated on the
held-out digits; the table reports mean ± std of student accuracy and teacher agreement over the seeds.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/funmatch_study.py
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/funmatch_study.py --seeds 0 1 2 --short 2 --long 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
TEACHER_DIR = ROOT / "outputs" / "teacher-digits"
TEACHER_ACCURACY = (
    0.9981  # eval_teacher_accuracy of outputs/teacher-digits, as every run of the study logs it
)

SETTINGS = {
    "fixed (fix/cc, cached)": dict(teacher_input="fix/cc"),
    "independent (ind/ic)": dict(teacher_input="ind/ic", crop="ic"),
    "consistent (same/ic)": dict(teacher_input="same/ic", crop="ic"),
    "FunMatch (same/ic + mixup)": dict(teacher_input="funmatch", crop="ic"),
}


def ensure_teacher() -> None:
    if (TEACHER_DIR / "config.json").exists():
        return
    sys.path.insert(0, str(ROOT / "recipes"))
    import train_teacher

    train_teacher.main(["--output_dir", str(TEACHER_DIR), "--disable_tqdm", "true"])


def run_one(
    setting: dict, epochs: int, seed: int, args: argparse.Namespace, workdir: str
) -> dict[str, float]:
    from hf_distill import DistillationConfig, DistillationTrainer
    from hf_distill.data import digits_dataset

    splits = digits_dataset(seed=0)
    train = splits["train"]
    if args.train_samples is not None:
        train = train.shuffle(seed=0).select(range(min(args.train_samples, len(train))))
    config = DistillationConfig(
        output_dir=os.path.join(workdir, "run"),
        student_model_name_or_path=args.student,
        teacher_model_name_or_path=str(TEACHER_DIR),
        image_size=args.student_size,
        teacher_image_size=32,
        crop_scale=[0.35, 1.0],
        hflip=0.0,
        mixup_alpha=args.mixup_alpha,
        alpha=1.0,
        temperature=1.0,
        num_train_epochs=epochs,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=256,
        learning_rate=args.lr,
        weight_decay=1e-4,
        max_grad_norm=1.0,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        teacher_cache_dir=os.path.join(workdir, "cache"),
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        logging_steps=1000,
        disable_tqdm=True,
        use_cpu=True,
        seed=seed,
        dataloader_num_workers=0,
        **setting,
    )
    trainer = DistillationTrainer(args=config, train_dataset=train, eval_dataset=splits["test"])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    metrics = trainer.evaluate()
    return {
        "accuracy": metrics["eval_accuracy"],
        "agreement": metrics["eval_teacher_agreement"],
        "teacher_accuracy": metrics["eval_teacher_accuracy"],
        "seconds": seconds,
    }


def summarise(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--short", type=int, default=2, help="epochs of the short schedule")
    parser.add_argument("--long", type=int, default=10, help="epochs of the long schedule")
    parser.add_argument("--student", default="resnet10t")
    parser.add_argument(
        "--train_samples", type=int, default=None, help="distil on this many training digits (None: all 1257)"
    )
    parser.add_argument("--student_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--mixup_alpha", type=float, default=0.2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "funmatch_study.md"))
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="write the report from the per-run lines of these logs (runs of one seed each, in parallel)",
    )
    args = parser.parse_args()
    if args.merge:
        merge_logs(args)
        return

    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("hf_distill").setLevel(logging.WARNING)
    ensure_teacher()
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    start = time.perf_counter()
    # Seed-major order: after each seed the table is complete, so a partial study is still a valid report.
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            for epochs in (args.short, args.long):
                for name, setting in SETTINGS.items():
                    result = run_one(setting, epochs, seed, args, workdir)
                    results.setdefault((name, epochs), []).append(result)
                    print(
                        f"{name:30s} epochs={epochs:3d} seed={seed} acc={result['accuracy']:.4f} "
                        f"agree={result['agreement']:.4f} {result['seconds']:.0f}s",
                        flush=True,
                    )
            write_report(results, args, time.perf_counter() - start)
    print(Path(args.out).read_text())


def merge_logs(args: argparse.Namespace) -> None:
    """Rebuild the report from the lines ``<setting> epochs=E seed=S acc=A agree=G Ns`` of several logs."""
    import re

    pattern = re.compile(r"^(.*?)\s+epochs=\s*(\d+) seed=(\d+) acc=([\d.]+) agree=([\d.]+) (\d+)s$")
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    seeds, total = set(), 0.0
    for log in args.merge:
        for line in Path(log).read_text().splitlines():
            match = pattern.match(line.strip())
            if match:
                name, epochs, seed, acc, agree, seconds = match.groups()
                results.setdefault((name, int(epochs)), []).append(
                    {
                        "accuracy": float(acc),
                        "agreement": float(agree),
                        "seconds": float(seconds),
                        "seed": int(seed),
                    }
                )
                seeds.add(int(seed))
                total += float(seconds)
    args.seeds = sorted(seeds)
    teacher = re.search(r"'eval_teacher_accuracy': '([\d.]+)'", Path(args.merge[0]).read_text())
    args.teacher_accuracy = float(teacher.group(1)) if teacher else float("nan")
    write_report(results, args, total, wall="summed training time of the runs (run as one process per seed)")


def write_report(
    results: dict, args: argparse.Namespace, total: float, wall: str = "total wall time"
) -> None:
    first = next(iter(results.values()))[0]
    teacher_acc = first.get("teacher_accuracy", getattr(args, "teacher_accuracy", float("nan")))
    seeds_done = min((len(v) for v in results.values()), default=0)
    lines = [
        "# FunMatch teacher-input study on digits",
        "",
        f"Student `{args.student}` from scratch at {args.student_size}x{args.student_size} px, distilled on "
        f"{args.train_samples or 1257} of the 1257 training digits, teacher "
        f"`outputs/teacher-digits` (resnet18, 32x32 px, test accuracy {100 * teacher_acc:.2f}%). KD only "
        f"(alpha=1, T=1), AdamW lr {args.lr}, cosine, batch 64, inception crops with scale [0.35, 1], no flips, "
        f"mixup alpha {args.mixup_alpha} (FunMatch). Held-out digits (540 images); mean ± std over seeds "
        f"{args.seeds[:seeds_done]}. {wall.capitalize()}: {total / 60:.1f} min on a shared, heavily loaded 2-core CPU.",
        "",
        "Command:",
        "",
        "    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/funmatch_study.py "
        f"--short {args.short} --long {args.long} --train_samples {args.train_samples} --seeds "
        + " ".join(map(str, args.seeds)),
        "",
        f"| setting | acc. {args.short} ep (%) | acc. {args.long} ep (%) | agreement {args.short} ep (%) "
        f"| agreement {args.long} ep (%) | s/run {args.long} ep |",
        "|---|---|---|---|---|---|",
    ]
    for name in SETTINGS:
        short, long = results.get((name, args.short), []), results.get((name, args.long), [])
        lines.append(
            f"| {name} | {summarise([r['accuracy'] for r in short])} | {summarise([r['accuracy'] for r in long])} "
            f"| {summarise([r['agreement'] for r in short])} | {summarise([r['agreement'] for r in long])} "
            f"| {statistics.fmean(r['seconds'] for r in long) if long else float('nan'):.0f} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
