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
import shlex
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


class StepTimer:
    """Seconds per step after the first ``warmup`` steps (cold caches, the first batch's set-up left out)."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == timer.warmup:
                    timer.start = time.perf_counter()
                elif state.global_step == args.max_steps:
                    timer.seconds = (time.perf_counter() - timer.start) / (args.max_steps - timer.warmup)

        self.warmup, self.start, self.seconds, self.callback = warmup, 0.0, None, Callback()


def step_cost(workdir: str, bank: str, steps: int, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per training step of each setting (after ``warmup`` steps), measured ``repeats`` times in
    alternation, in reversed order on every other repeat."""
    settings = list(
        {
            "live FunMatch": ([], False),
            "bank replay (R=16)": (["--teacher_label_bank", bank], False),
            "student only": ([], True),
        }.items()
    )
    times: dict[str, list[float]] = {name: [] for name, _ in settings}
    for repeat in range(repeats):
        for name, (extra, student_only) in settings if repeat % 2 == 0 else settings[::-1]:
            trainer = funmatch_trainer(workdir, 0, [*extra, "--max_steps", str(warmup + steps)], student_only)
            timer = StepTimer(warmup)
            trainer.add_callback(timer.callback)
            trainer.train()
            times[name].append(timer.seconds)
            print(f"step cost, repeat {repeat}: {name} {timer.seconds:.4f} s/step", flush=True)
    return times


def quality(
    workdir: str, seeds: list[int], banks: dict[int, str], log: Path, only: list[str] | None = None
) -> dict[str, list[float]]:
    settings = {"live FunMatch": []}
    settings.update({f"bank R={r}": ["--teacher_label_bank", path] for r, path in banks.items()})
    settings["fixed teacher (fix/cc, cached)"] = ["--teacher_input", "fix/cc", "--teacher_cache_dir", workdir]
    if only is not None:
        unknown = set(only) - set(settings)
        if unknown:
            raise SystemExit(
                f"--quality_only: unknown settings {sorted(unknown)}; choose from {list(settings)}"
            )
        settings = {name: extra for name, extra in settings.items() if name in only}
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
    parser.add_argument(
        "--steps", type=int, default=30, help="timed training steps per step-cost measurement"
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed steps before each step-cost measurement"
    )
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
    parser.add_argument(
        "--quality_only",
        nargs="+",
        metavar="SETTING",
        help="run only these quality settings (e.g. 'bank R=64', 'fixed teacher (fix/cc, cached)') for --seeds, "
        "append them to label_bank.jsonl and stop; a later --skip_quality run tabulates the whole log",
    )
    cli = parser.parse_args()
    import torch

    ensure_teacher()
    if cli.quality_only:
        with tempfile.TemporaryDirectory() as workdir:
            wanted = {int(n.split("=")[1]) for n in cli.quality_only if n.startswith("bank R=")}
            banks = {r: make_bank(workdir, r)[0] for r in sorted(wanted)}
            quality(workdir, cli.seeds, banks, RESULTS.with_suffix(".jsonl"), only=cli.quality_only)
        return
    lines = [
        "# Teacher label bank (digits)",
        "",
        "Command (repository root):",
        "",
        "    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/label_bank.py "
        + shlex.join(sys.argv[1:]),
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
        times = step_cost(workdir, banks[16], cli.steps, cli.repeats, cli.warmup)
        student = statistics.median(times["student only"])
        lines += [
            "## Step cost",
            "",
            f"Seconds per training step (median of {cli.repeats} alternating runs of {cli.steps} steps timed after "
            f"{cli.warmup} untimed ones, batch 64, data loading included), and the ratio to student-only training "
            "with the same views:",
            "",
            "| setting | s/step | × student only |",
            "|---|---|---|",
        ]
        for name, values in times.items():
            median = statistics.median(values)
            lines.append(f"| {name} | {median:.4f} | {median / student:.2f} |")
        replay = statistics.median(times["bank replay (R=16)"]) / student
        lines += [
            "",
            f"Bank replay costs {replay:.2f}x student-only training (goal <= 1.1x: "
            f"{'met' if replay <= 1.1 else 'not met'}); the live teacher "
            f"{statistics.median(times['live FunMatch']) / student:.2f}x.",
        ]
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
            # "matches": the bank's mean is no more than one standard deviation of live FunMatch below it
            floor = live - (statistics.stdev(accuracy["live FunMatch"]) if len(cli.seeds) > 1 else 0.0)
            banks_r = sorted(int(n.split("=")[1]) for n in accuracy if n.startswith("bank R="))
            matching = [r for r in banks_r if statistics.mean(accuracy[f"bank R={r}"]) >= floor]
            first = next((r for r in banks_r if all(m in matching for m in banks_r if m >= r)), None)
            lines += [
                "",
                "The bank matches live FunMatch (mean within one standard deviation of live FunMatch's, or above) "
                + (f"from R={first} on." if first is not None else "at none of the R measured."),
            ]
            lines.append("")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
