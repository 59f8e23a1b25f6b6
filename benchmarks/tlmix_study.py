"""Digits study of KD + data augmentation (Wang et al., "Understanding the success of KD — a DA perspective").

CE, KD, KD+CutMix (mixed hard labels), KD+TLCutMix and KD+TLCutMix+pick, each at a short and a long
schedule (the cosine schedule scales with the length, as the paper scales its step schedule), over several
seeds; top-1 accuracy of the student on the held-out digits split, mean ± std. Writes a Markdown table.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/tlmix_study.py

The teacher is ``outputs/teacher-digits`` (``python recipes/train_teacher.py``). The student trains on a
class-balanced subset of the training split so that data, not capacity, limits it — the regime where the
paper's augmentation argument applies — and so the whole study fits in a CPU budget of about 25 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402
from hf_distill.data import digits_dataset  # noqa: E402

METHODS: dict[str, dict] = {
    "CE": dict(alpha=0.0),
    "KD": dict(),
    "KD+CutMix": dict(augmentation_mode="cutmix"),
    "KD+TLCutMix": dict(augmentation_mode="tlcutmix"),
    "KD+TLCutMix+pick": dict(augmentation_mode="tlcutmix", pick=True),
}


def balanced_subset(dataset, per_class: int):
    """The first ``per_class`` images of every class (the split is already shuffled)."""
    counts: dict[int, int] = {}
    keep = []
    for index, label in enumerate(dataset["label"]):
        if counts.get(label, 0) < per_class:
            counts[label] = counts.get(label, 0) + 1
            keep.append(index)
    return dataset.select(keep)


def accuracy(trainer: DistillationTrainer, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    """Student top-1 on pre-collated evaluation views (no teacher forward: the study only needs the student)."""
    model = trainer.model.eval()
    with torch.no_grad():
        logits = trainer.student_logits(model, pixels.to(trainer.args.device))
    return float((logits.argmax(-1).cpu() == labels).float().mean())


def run_one(method: str, seed: int, epochs: int, train, test_views, opts) -> tuple[float, float]:
    overrides = dict(METHODS[method])
    args = DistillationConfig(
        output_dir=str(Path(opts.work_dir) / f"{method}-{epochs}-{seed}"),
        student_model_name_or_path=opts.student,
        temperature=4.0,
        alpha=overrides.pop("alpha", 0.9),
        mixup_alpha=0.0,
        cutmix_alpha=1.0,
        image_size=32,
        crop="rs",
        hflip=0.0,
        num_train_epochs=epochs,
        per_device_train_batch_size=opts.batch_size,
        learning_rate=opts.lr,
        weight_decay=0.05,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10_000,
        report_to=[],
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        **overrides,
    )
    teacher = opts.teacher if args.alpha > 0 else None
    trainer = DistillationTrainer(teacher_model=teacher, args=args, train_dataset=train)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return accuracy(trainer, *test_views), seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="outputs/teacher-digits")
    parser.add_argument("--student", default="test_resnet")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--short-epochs", type=int, default=5)
    parser.add_argument("--long-epochs", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=30, help="training images per class")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--work-dir", default="/tmp/tlmix_study")
    parser.add_argument("--out", default="benchmarks/results/tlmix_study.md")
    parser.add_argument("--jsonl", default="benchmarks/results/tlmix_study.jsonl", help="per-run records")
    parser.add_argument("--schedules", nargs="+", choices=["short", "long"], default=["short", "long"])
    parser.add_argument("--report-only", action="store_true", help="write the report from --jsonl")
    opts = parser.parse_args(argv)
    if not Path(opts.teacher, "config.json").exists():
        sys.exit(f"no teacher at {opts.teacher}: run `.venv/bin/python recipes/train_teacher.py` first")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    transformers.logging.set_verbosity_error()

    splits = digits_dataset(seed=0, test_size=0.3)
    train = balanced_subset(splits["train"], opts.per_class)
    probe = DistillationTrainer(
        model=opts.student,
        teacher_model=opts.teacher,
        args=DistillationConfig(
            output_dir=str(Path(opts.work_dir) / "probe"), image_size=32, use_cpu=True, report_to=[]
        ),
        train_dataset=train,
    )
    rows = [splits["test"][i] | {"sample_id": i} for i in range(len(splits["test"]))]
    batch = probe.eval_collator(rows)
    test_views = (batch["pixel_values"], batch["labels"])
    with torch.no_grad():
        teacher_acc = float(
            (probe.teacher(batch["pixel_values"]).argmax(-1) == batch["labels"]).float().mean()
        )

    jsonl = Path(opts.jsonl)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    if opts.report_only:
        write_report(opts, jsonl, teacher_acc, len(train), len(splits["test"]))
        return
    schedules = {"short": opts.short_epochs, "long": opts.long_epochs}
    started = time.perf_counter()
    for schedule in opts.schedules:
        epochs = schedules[schedule]
        for seed in opts.seeds:
            for method in opts.methods:
                acc, secs = run_one(method, seed, epochs, train, test_views, opts)
                record = dict(method=method, epochs=epochs, seed=seed, accuracy=acc, seconds=round(secs, 1))
                with jsonl.open("a") as handle:  # one line per run: separate processes can share the file
                    handle.write(json.dumps(record) + "\n")
                print(f"{method:18s} epochs={epochs:3d} seed={seed} acc={acc:.4f} ({secs:.0f}s)", flush=True)
    print(f"runs took {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    write_report(opts, jsonl, teacher_acc, len(train), len(splits["test"]))


def _fmt(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def write_report(opts, jsonl: Path, teacher_acc, n_train, n_test) -> None:
    short, long = opts.short_epochs, opts.long_epochs
    results: dict[str, dict[int, list[float]]] = {m: {short: [], long: []} for m in METHODS}
    seconds: dict[str, dict[int, list[float]]] = {m: {short: [], long: []} for m in METHODS}
    records = sorted((json.loads(line) for line in jsonl.read_text().splitlines()), key=lambda r: r["seed"])
    for record in records:
        if record["epochs"] in (short, long) and record["method"] in results:
            results[record["method"]][record["epochs"]].append(record["accuracy"])
            seconds[record["method"]][record["epochs"]].append(record["seconds"])
    results = {m: r for m, r in results.items() if r[short] and r[long]}
    cmd = f"OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/tlmix_study.py --short-epochs {short} --long-epochs {long}"
    lines = [
        "# KD + data augmentation on digits (TLCutMix, pick, long schedules)",
        "",
        f"Command: `{cmd}` (equivalently, in parallel: one process per `--seeds S --schedules long`, then "
        "`--report-only`)",
        "",
        f"Student `{opts.student}` (from scratch) at 32x32, teacher `{opts.teacher}` (resnet18, test accuracy "
        f"{100 * teacher_acc:.2f} % on the student's 32 px views). {n_train} training images ({opts.per_class} per class), {n_test} test images; "
        f"AdamW lr {opts.lr}, cosine schedule with 5 % warmup, batch {opts.batch_size}, tau 4, alpha 0.9 "
        "(CE: alpha 0), CutMix Beta(1, 1). Seeds "
        f"{opts.seeds}; top-1 test accuracy (%), mean ± std over seeds. Schedules: {short} and {long} epochs "
        f"(the schedule scales with the length). {platform.machine()}, {os.cpu_count()} shared cores, one "
        f"thread per run; per-run records in `{jsonl}`.",
        "",
        f"| method | {short} epochs | {long} epochs | gain from the long schedule | s/run ({short} / {long} ep.) |",
        "|---|---|---|---|---|",
    ]
    for method, by_epochs in results.items():
        gain = 100 * (statistics.mean(by_epochs[long]) - statistics.mean(by_epochs[short]))
        secs = seconds[method]
        lines.append(
            f"| {method} | {_fmt(by_epochs[short])} | {_fmt(by_epochs[long])} | {gain:+.2f} | "
            f"{statistics.mean(secs[short]):.0f} / {statistics.mean(secs[long]):.0f} |"
        )
    lines += [
        "",
        "Per-seed accuracies (JSON): ",
        "",
        "```json",
        json.dumps({m: {str(e): [round(a, 4) for a in v] for e, v in r.items()} for m, r in results.items()}),
        "```",
        "",
    ]
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
