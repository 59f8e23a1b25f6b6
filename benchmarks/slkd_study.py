"""KD vs SLKD (one and two self-learning teachers) on the embedded digits data, several seeds.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/slkd_study.py --seeds 0 1 2

Same student, teacher, data, schedule and budget for every arm; only the SL-Ts differ. Needs the digits
teacher (`recipes/train_teacher.py` writes outputs/teacher-digits). Writes benchmarks/results/slkd_study.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--student", default="resnet10t")
    parser.add_argument("--teacher", default="outputs/teacher-digits")
    parser.add_argument(
        "--slt-architecture",
        default="resnet10t",
        help="timm architecture of the SL-Ts; 'teacher' copies the teacher's (resnet18: ~2x the CPU cost)",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-train-samples", type=int, default=256)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "slkd_study.md"))
    options = parser.parse_args()

    import slkd

    arms = {"KD": 0, "SLKD, 1 SL-T": 1, "SLKD, 2 SL-Ts (fused 0.5/0.5)": 2}
    accuracy: dict[str, list[float]] = {name: [] for name in arms}
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    teacher_accuracy = None
    for seed in options.seeds:
        for name, count in arms.items():
            argv = [
                "--student_model_name_or_path", options.student,
                "--teacher_model_name_or_path", options.teacher,
                "--slkd_num_teachers", str(count),
                "--seed", str(seed),
                "--num_train_epochs", str(options.epochs),
                "--max_train_samples", str(options.max_train_samples),
                "--output_dir", f"outputs/bench-slkd/{count}-{seed}",
                "--disable_tqdm", "true",
                "--logging_steps", "1000",
                "--dataloader_num_workers", "0",
            ]  # fmt: skip
            if options.slt_architecture != "teacher":
                argv += ["--slkd_architecture", options.slt_architecture]
            start = time.process_time()
            metrics = slkd.main(argv)
            cpu[name].append(time.process_time() - start)
            accuracy[name].append(metrics["eval_accuracy"])
            teacher_accuracy = metrics.get("eval_teacher_accuracy", teacher_accuracy)
            print(f"seed {seed} {name}: {metrics['eval_accuracy']:.4f}", flush=True)

    command = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/slkd_study.py " + " ".join(
        sys.argv[1:]
    )
    base_cpu = statistics.mean(cpu["KD"])
    slt = (
        "the teacher's architecture (resnet18)"
        if options.slt_architecture == "teacher"
        else (f"`{options.slt_architecture}` (not the teacher's resnet18: a CPU budget choice)")
    )
    lines = [
        "# SLKD vs KD on the embedded digits data",
        "",
        f"Command: `{command.strip()}` (2-core CPU shared with other jobs).",
        "",
        f"Student `{options.student}` from scratch at 32x32; teacher `{options.teacher}` (resnet18, test accuracy "
        f"{teacher_accuracy:.4f}); SL-Ts: {slt}, untrained, learning from the teacher with (1 - alpha) CE + alpha KD. "
        f"Training data: the first {options.max_train_samples} training digits, {options.epochs} epochs, batch 64, "
        "AdamW lr 2e-3 cosine, alpha 0.9, tau 4, slkd_weight 1, parallel mode. Test split: 540 images. "
        f"Seeds {options.seeds}.",
        "",
        "| arm | test accuracy % (mean ± std) | per seed | CPU time vs KD |",
        "|---|---|---|---|",
    ]
    for name in arms:
        per_seed = ", ".join(f"{100 * a:.2f}" for a in accuracy[name])
        lines.append(
            f"| {name} | {mean_std(accuracy[name])} | {per_seed} | {statistics.mean(cpu[name]) / base_cpu:.2f}x |"
        )
    lines.append("")
    options_path = Path(options.output)
    options_path.parent.mkdir(parents=True, exist_ok=True)
    options_path.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
