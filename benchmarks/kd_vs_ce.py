"""Hinton KD vs cross-entropy alone: the same student, data, schedule and budget, several seeds.

    .venv/bin/python benchmarks/kd_vs_ce.py --seeds 0 1 2 --student resnet10t --epochs 15

Needs the digits teacher (`recipes/train_teacher.py` writes outputs/teacher-digits). Writes
benchmarks/results/kd_vs_ce.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--student", default="resnet10t")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--teacher", default="outputs/teacher-digits")
    parser.add_argument(
        "--max-train-samples", type=int, default=None, help="distil on the first N training digits"
    )
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "kd_vs_ce.md"))
    options = parser.parse_args()

    import distill

    results: dict[str, list[float]] = {"CE (alpha=0)": [], "KD (alpha=0.9, tau=4)": []}
    seconds: dict[str, list[float]] = {name: [] for name in results}
    teacher_accuracy = None
    for seed in options.seeds:
        for name, alpha in (("CE (alpha=0)", 0.0), ("KD (alpha=0.9, tau=4)", 0.9)):
            start = time.perf_counter()
            metrics = distill.main(
                [
                    "--student_model_name_or_path",
                    options.student,
                    "--teacher_model_name_or_path",
                    options.teacher,
                    "--alpha",
                    str(alpha),
                    "--seed",
                    str(seed),
                    "--num_train_epochs",
                    str(options.epochs),
                    "--output_dir",
                    f"outputs/bench-kd-vs-ce/{name.split()[0]}-{seed}",
                    "--disable_tqdm",
                    "true",
                    "--write_model_card",
                    "false",
                    *(
                        ["--max_train_samples", str(options.max_train_samples)]
                        if options.max_train_samples
                        else []
                    ),
                ]
            )
            seconds[name].append(time.perf_counter() - start)
            results[name].append(metrics["eval_accuracy"])
            teacher_accuracy = metrics.get("eval_teacher_accuracy", teacher_accuracy)

    command = "python benchmarks/kd_vs_ce.py " + " ".join(sys.argv[1:])
    lines = [
        "# Hinton KD vs cross-entropy on the embedded digits data",
        "",
        f"Command: `{command.strip()}` (2-core CPU). Student `{options.student}` from scratch at 32x32, "
        f"{options.epochs} epochs, {options.max_train_samples or 'all 1257'} training digits, AdamW lr 2e-3 cosine, batch 64, seeds {options.seeds}; teacher "
        f"`{options.teacher}` (resnet18, test accuracy {teacher_accuracy:.4f}). Test split: 30% (540 images).",
        "",
        "| loss | top-1 accuracy (mean ± std) | per seed | seconds per run |",
        "|---|---|---|---|",
    ]
    for name, values in results.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        per_seed = ", ".join(f"{v:.4f}" for v in values)
        lines.append(
            f"| {name} | {statistics.mean(values):.4f} ± {std:.4f} | {per_seed} | {statistics.mean(seconds[name]):.0f} |"
        )
    Path(options.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
