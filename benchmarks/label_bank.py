"""Teacher label bank on the embedded digits: step cost, quality against live FunMatch, bytes on disk.

1. Step cost, side by side in one process, alternating: live FunMatch (teacher forward every step), bank
   replay (no teacher), student-only training (the same FunMatch views and mixup, CE only, no teacher).
2. Quality: student top-1 on the held-out digits after equal epochs, mean ± std over seeds, for live
   FunMatch, banks with R = 1, 4, 16, 64 recorded views per image, and a fixed teacher (fix/cc, cached).
3. Disk: bytes per image per record of a full-logit bank and a top-k bank, split into teacher output and
   augmentation record.

Every run uses recipes/configs/funmatch_digits.yaml (banks: recipes/configs/label_bank_digits.yaml), the
digits teacher of recipes/train_teacher.py (``outputs/teacher-digits``, trained when missing).

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/label_bank.py
    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/label_bank.py --seeds 0 1 2 --records 1 4 16 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
TEACHER_DIR = ROOT / "outputs" / "teacher-digits"
FUNMATCH_CONFIG = ROOT / "recipes" / "configs" / "funmatch_digits.yaml"
BANK_CONFIG = ROOT / "recipes" / "configs" / "label_bank_digits.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "label_bank.md"
COMMON = ["--teacher_model_name_or_path", str(TEACHER_DIR), "--disable_tqdm", "true", "--report_to", "none"]
COMMON += [
    "--write_model_card",
    "false",
    "--save_strategy",
    "no",
    "--eval_strategy",
    "no",
    "--logging_steps",
    "1000",
]


def ensure_teacher() -> None:
    if (TEACHER_DIR / "config.json").exists():
        return
    import train_teacher

    train_teacher.main(["--output_dir", str(TEACHER_DIR), "--disable_tqdm", "true"])


def make_bank(workdir: str, records: int, topk: int | None = None) -> tuple[str, float]:
    """Generate a bank; returns its path and the generation time in seconds."""
    import label_bank

    path = os.path.join(workdir, f"bank-r{records}" + (f"-k{topk}" if topk else ""))
    argv = ["--config", str(BANK_CONFIG), "--output_dir", path, "--label_bank_records", str(records), *COMMON]
    if topk:
        argv += ["--label_bank_topk", str(topk)]
    start = time.perf_counter()
    label_bank.main(argv)
    return path, time.perf_counter() - start


def funmatch_trainer(workdir: str, seed: int, extra: list[str], student_only: bool = False):
    import funmatch

    from hf_distill.cli import parse_config

    argv = [
        "--config",
        str(FUNMATCH_CONFIG),
        "--output_dir",
        os.path.join(workdir, "run"),
        "--seed",
        str(seed),
    ]
    args = parse_config(default_config=FUNMATCH_CONFIG, argv=argv + COMMON + extra)
    if student_only:  # same views and mixup, CE on the mixed labels, no teacher at all
        args.teacher_model_name_or_path, args.alpha = None, 0.0
    return funmatch.build_trainer(args)


def step_cost(workdir: str, bank: str, steps: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per training step of each setting, measured `repeats` times in alternation."""
    settings = {
        "live FunMatch": ([], False),
        "bank replay (R=16)": (["--teacher_label_bank", bank], False),
        "student only": ([], True),
    }
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(repeats):
        for name, (extra, student_only) in settings.items():
            trainer = funmatch_trainer(workdir, 0, [*extra, "--max_steps", str(steps)], student_only)
            metrics = trainer.train().metrics
            times[name].append(metrics["train_runtime"] / steps)
    return times


def quality(workdir: str, seeds: list[int], banks: dict[int, str], log: Path) -> dict[str, list[float]]:
    settings = {"live FunMatch": []}
    settings.update({f"bank R={r}": ["--teacher_label_bank", path] for r, path in banks.items()})
    settings["fixed teacher (fix/cc, cached)"] = ["--teacher_input", "fix/cc", "--teacher_cache_dir", workdir]
    accuracy: dict[str, list[float]] = {name: [] for name in settings}
    for seed in seeds:
        for name, extra in settings.items():
            trainer = funmatch_trainer(workdir, seed, extra)
            trainer.train()
            value = trainer.evaluate()["eval_accuracy"]
            accuracy[name].append(value)
            with log.open("a") as handle:
                handle.write(json.dumps({"setting": name, "seed": seed, "accuracy": value}) + "\n")
            print(f"{name} seed {seed}: {value:.4f}", flush=True)
    return accuracy


def disk(workdir: str, records: int, topk: int) -> list[tuple[str, float, float, float]]:
    """(storage, total, teacher-output, augmentation-record) bytes per image per record."""
    from datasets import load_from_disk

    out = []
    for k in (None, topk):
        path, _ = make_bank(workdir, records, k)
        meta = json.loads(Path(path, "label_bank.json").read_text())
        data = load_from_disk(path)
        rows = len(data)
        output_columns = ["logits"] if k is None else ["topk_values", "topk_indices", "tail"]
        output = sum(data.data.column(c).nbytes for c in output_columns) / rows
        record = sum(data.data.column(c).nbytes for c in data.column_names if c not in output_columns) / rows
        name = "full logits (fp16)" if k is None else f"top-{k} (fp16 values, int32 ids, fp32 tail)"
        out.append((name, meta["bytes_per_image_per_record"], output, record))
    return out


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--records", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--steps", type=int, default=30, help="training steps per step-cost measurement")
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternating step-cost measurements per setting"
    )
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument(
        "--skip_quality",
        action="store_true",
        help="measure step cost and disk only; the quality table is rebuilt from label_bank.jsonl when present",
    )
    parser.add_argument("--quality_command", default=None, help="the command that wrote label_bank.jsonl")
    cli = parser.parse_args()
    import torch

    ensure_teacher()
    lines = [
        "# Teacher label bank (digits)",
        "",
        "Command (repository root):",
        "",
        "    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/label_bank.py "
        + " ".join(sys.argv[1:]),
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, no GPU. Teacher: resnet18 "
        "(outputs/teacher-digits); student: resnet10t from scratch; recipes/configs/funmatch_digits.yaml "
        "(inception crop + mixup 0.2, KD only, T=1, batch 64, 32x32).",
        "",
    ]
    with tempfile.TemporaryDirectory() as workdir:
        banks: dict[int, str] = {}
        generation: dict[int, float] = {}
        for r in sorted(set(cli.records) | {16}):
            banks[r], generation[r] = make_bank(workdir, r)
        times = step_cost(workdir, banks[16], cli.steps, cli.repeats)
        student = statistics.median(times["student only"])
        lines += [
            "## Step cost",
            "",
            f"Seconds per training step (median of {cli.repeats} alternating runs of {cli.steps} steps, batch 64, "
            "data loading included), and the ratio to student-only training with the same views:",
            "",
            "| setting | s/step | × student only |",
            "|---|---|---|",
        ]
        for name, values in times.items():
            median = statistics.median(values)
            lines.append(f"| {name} | {median:.4f} | {median / student:.2f} |")
        lines += [
            "",
            "Bank generation (one pass of the teacher over R views of the 1257 training digits): "
            + ", ".join(f"R={r}: {seconds:.0f} s" for r, seconds in sorted(generation.items())),
            "",
        ]
        rows = disk(workdir, 4, cli.topk)
        lines += [
            "## Disk",
            "",
            "Bytes per image per record (Arrow files on disk; the split counts the in-memory column sizes). The "
            "augmentation record is the own and partner crop boxes (fp64, so the rebuilt pixels are exact), flips, "
            "partner id, mix flags, lam and cut box; 10 classes.",
            "",
            "| storage | on disk | teacher output | augmentation record |",
            "|---|---|---|---|",
            *[f"| {n} | {t:.1f} | {o:.1f} | {r:.1f} |" for n, t, o, r in rows],
            "",
        ]
        RESULTS.write_text("\n".join(lines) + "\n")  # partial results survive a long quality study
        log = RESULTS.with_suffix(".jsonl")
        accuracy = None
        if not cli.skip_quality:
            log.write_text("")
            accuracy = quality(workdir, cli.seeds, {r: banks[r] for r in cli.records}, log)
        elif log.is_file() and log.read_text().strip():
            accuracy = {}
            for line in log.read_text().splitlines():
                entry = json.loads(line)
                accuracy.setdefault(entry["setting"], []).append(entry["accuracy"])
            cli.seeds = sorted({json.loads(line)["seed"] for line in log.read_text().splitlines()})
            if cli.quality_command:
                lines += [
                    f"Quality rows from `benchmarks/results/label_bank.jsonl`, written by: `{cli.quality_command}`",
                    "",
                ]
        if accuracy:
            live = statistics.mean(accuracy["live FunMatch"])
            lines += [
                "## Quality",
                "",
                f"Student top-1 (%) on the 540 held-out digits after the config's 10 epochs, mean ± std over seeds "
                f"{cli.seeds} (the seed sets the student's init, the data order and which record each sample "
                "replays; every bank was generated once with seed 0):",
                "",
                "| setting | top-1 (%) | Δ vs live FunMatch (points) |",
                "|---|---|---|",
            ]
            for name, values in accuracy.items():
                lines.append(
                    f"| {name} | {mean_std(values)} | {100 * (statistics.mean(values) - live):+.2f} |"
                )
            lines.append("")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
