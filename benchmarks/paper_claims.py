"""The papers' claims on a CPU: few-shot digits with patient schedules.

The FunMatch paper's evidence is small datasets trained for thousands of epochs, where the student of a
fixed teacher plateaus while consistent teaching keeps improving. This study reproduces that regime on the
embedded digits: ``k`` training images per class (a stratified draw that varies with the seed), a student
from scratch, schedules spaced on a log scale up to 1,000 epochs, three seeds (the subset, the
initialisation and the data order all follow the seed), evaluated on the 540 held-out digits.

Parts (each at most about an hour of CPU; finished runs are skipped, so a killed part resumes):

* ``inputs``   teacher inputs, k = 10: fixed (cached), independent, consistent, FunMatch.
* ``inputs30`` the same at k = 30.
* ``bank``     label banks at the longest schedule, k = 10: R recorded views per image, recorded mixes
               (``label_bank_mix: recorded``) against crops mixed at replay (``label_bank_mix: replay``).
* ``kdda``     KD + data augmentation (Wang et al.), k = 10: CE, KD, KD+CutMix, KD+TLCutMix,
               KD+TLCutMix+pick (the authors' pool of 2N, N kept).
* ``slkd``     SLKD (Song et al.) against KD, k = 10: one and two self-learning teachers.
* ``cost``     seconds per training step, in one process, settings alternated: live FunMatch, the two
               banks (R = 8) and student-only training on the same views (no teacher).

Every run appends one JSON line to ``benchmarks/results/paper_claims.jsonl`` (the command that produced it
included); ``--report`` turns the lines into ``benchmarks/results/paper_claims.md`` and the figures
``paper_claims_*.png``.

    .venv/bin/python benchmarks/paper_claims.py --part inputs --jobs 2
    .venv/bin/python benchmarks/paper_claims.py --part bank --jobs 2
    .venv/bin/python benchmarks/paper_claims.py --report

Shared by every arm: the teacher ``outputs/teacher-digits-16`` (resnet18 trained with cross-entropy on all
1,257 training digits at 16x16 px by ``recipes/train_teacher.py --image_size 16`` with two threads; trained
when missing, the same weights bit for bit on the same machine type),
the student timm ``test_resnet`` (0.37 M parameters) from scratch at 16x16 px, inception crops with scale
[0.35, 1] and no flips (a flipped digit is another digit), AdamW lr 3e-3, weight decay 1e-4, cosine decay
with 5% warm-up, batch 50, gradient clipping 1.0, one thread per run.
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
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
TEACHER_DIR = ROOT / "outputs" / "teacher-digits-16"
RESULTS = ROOT / "benchmarks" / "results"
RECORDS = RESULTS / "paper_claims.jsonl"
REPORT = RESULTS / "paper_claims.md"
SIZE = 16
BATCH = 50
STUDENT = "test_resnet"
SEEDS = [0, 1, 2]
SCHEDULES = [10, 30, 100, 300, 1000]

BASE = dict(
    student_model_name_or_path=STUDENT,
    student_pretrained=False,
    image_size=SIZE,
    teacher_image_size=SIZE,
    crop="ic",
    crop_scale=[0.35, 1.0],
    hflip=0.0,
    per_device_train_batch_size=BATCH,
    per_device_eval_batch_size=270,
    learning_rate=3e-3,
    weight_decay=1e-4,
    max_grad_norm=1.0,
    lr_scheduler_type="cosine",
    warmup_steps=0.05,
    optimizer_name="adamw",
)
# The paper's KD term alone (alpha=1, T=1: the FunMatch defaults, stated for every input so all four match).
FUNMATCH_KD = dict(alpha=1.0, temperature=1.0)
INPUT_ARMS = {
    "fixed (fix/cc, cached)": dict(teacher_input="fix/cc", **FUNMATCH_KD),
    "independent (ind/ic)": dict(teacher_input="ind/ic", **FUNMATCH_KD),
    "consistent (same/ic)": dict(teacher_input="same/ic", **FUNMATCH_KD),
    "FunMatch (same/ic + mixup)": dict(teacher_input="funmatch", **FUNMATCH_KD),
}
BANK_RECORDS = [1, 8, 64]
BANK_ARMS = {
    f"bank R={r}, {mix}": dict(
        teacher_input="funmatch", label_bank_records=r, label_bank_mix=mix, **FUNMATCH_KD
    )
    for mix in ("recorded", "replay")
    for r in BANK_RECORDS
}
# KD + DA: Hinton KD (T=4, alpha=0.9: the project's KD defaults) with the teacher on the student's view.
HINTON = dict(teacher_input="same/ic", temperature=4.0, alpha=0.9)
KDDA_ARMS = {
    "CE": dict(alpha=0.0, teacher_input="same/ic"),
    "KD": dict(HINTON),
    "KD+CutMix": dict(HINTON, augmentation_mode="cutmix", cutmix_alpha=1.0),  # CutMix's Beta(1, 1)
    "KD+TLCutMix": dict(HINTON, augmentation_mode="tlcutmix", cutmix_alpha=1.0),
    "KD+TLCutMix+pick": dict(HINTON, augmentation_mode="tlcutmix", cutmix_alpha=1.0, pick=True),
}
SLKD_ARMS = {
    "KD": dict(HINTON),
    "SLKD, 1 SL-T": dict(HINTON, slkd_num_teachers=1),
    "SLKD, 2 SL-Ts": dict(HINTON, slkd_num_teachers=2),
}
# An arm whose settings equal another part's arm is that arm: its runs are shared, not repeated.
SHARED_ARMS = {("slkd", "KD"): ("kdda", "KD")}
PARTS = {
    "inputs": dict(k=10, schedules=SCHEDULES, arms=INPUT_ARMS),
    "inputs30": dict(k=30, schedules=SCHEDULES, arms=INPUT_ARMS),
    "bank": dict(k=10, schedules=[100, 1000], arms=BANK_ARMS),
    "kdda": dict(k=10, schedules=[30, 100, 300, 1000], arms=KDDA_ARMS),
    "slkd": dict(k=10, schedules=[30, 100, 300, 1000], arms=SLKD_ARMS),
}
for (_part, _arm), (_source, _source_arm) in SHARED_ARMS.items():
    assert PARTS[_part]["arms"][_arm] == PARTS[_source]["arms"][_source_arm]
    assert PARTS[_part]["k"] == PARTS[_source]["k"]


# ------------------------------------------------------------------------------------------------- running
# The teacher is trained with this many threads: CPU kernels reduce in an order that depends on the thread
# count, so the same command gives the same teacher, bit for bit, only with the same count.
TEACHER_THREADS = 2


def ensure_teacher() -> str:
    """Train the teacher when it is missing; returns its fingerprint (see :func:`teacher_fingerprint`)."""
    if not (TEACHER_DIR / "config.json").exists():
        import torch

        sys.path.insert(0, str(ROOT / "recipes"))
        import train_teacher

        threads = torch.get_num_threads()
        torch.set_num_threads(TEACHER_THREADS)
        try:
            train_teacher.main(
                ["--output_dir", str(TEACHER_DIR), "--image_size", str(SIZE), "--disable_tqdm", "true"]
            )
        finally:
            torch.set_num_threads(threads)
    return teacher_fingerprint()


def teacher_fingerprint() -> str:
    """The first 16 hex digits of the SHA-256 of the teacher's weights: every record carries it, and a part
    refuses to add runs beside records of another teacher."""
    import hashlib

    return hashlib.sha256((TEACHER_DIR / "model.safetensors").read_bytes()).hexdigest()[:16]


def check_one_teacher(records: list[dict], teacher: str) -> None:
    others = sorted({str(r.get("teacher_sha256")) for r in records} - {teacher})
    if others:
        raise SystemExit(
            f"{RECORDS} holds runs of another teacher ({', '.join(others)}; this teacher is {teacher}): runs "
            "of two teachers cannot share one table. Move those records away (or pass --records for a new "
            f"file), or put their teacher back in {TEACHER_DIR}."
        )


def run_key(record: dict) -> tuple:
    return (record["part"], record["arm"], record["k"], record["epochs"], record["seed"])


def source_task(task: tuple) -> tuple:
    """The task whose runs stand for ``task`` (itself unless its arm is shared with another part's)."""
    part, arm, *rest = task
    source = SHARED_ARMS.get((part, arm))
    return (*source, *rest) if source else task


def done_keys() -> set[tuple]:
    if not RECORDS.exists():
        return set()
    return {run_key(json.loads(line)) for line in RECORDS.read_text().splitlines() if line.strip()}


def config_for(part: str, arm: str, k: int, epochs: int, seed: int, workdir: str, **extra):
    from hf_distill import DistillationConfig

    overrides = dict(PARTS[part]["arms"][arm])
    overrides.pop("label_bank_records", None)
    overrides.pop("label_bank_mix", None)
    fields = dict(
        output_dir=os.path.join(workdir, "run"),
        teacher_model_name_or_path=str(TEACHER_DIR),
        num_train_epochs=epochs,
        seed=seed,
        teacher_cache_dir=os.path.join(workdir, "cache"),
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        logging_steps=10**6,
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        write_model_card=False,
    )
    return DistillationConfig(**{**fields, **BASE, **overrides, **extra})


def make_bank(part: str, arm: str, k: int, seed: int, train, workdir: str) -> tuple[str, float]:
    """Generate the arm's label bank over this seed's subset (R views per image, the bank seeded by the run's
    seed); returns its path and the generation's CPU seconds."""
    from hf_distill import DistillationTrainer
    from hf_distill.label_bank import generate_for_trainer

    spec = PARTS[part]["arms"][arm]
    path = os.path.join(workdir, "bank")
    args = config_for(
        part,
        arm,
        k,
        1,
        seed,
        workdir,
        label_bank_records=spec["label_bank_records"],
        label_bank_mix=spec["label_bank_mix"],
    )
    start = time.process_time()
    trainer = DistillationTrainer(args=args, train_dataset=train)
    generate_for_trainer(trainer, train, path)
    return path, time.process_time() - start


def run_one(task: tuple[str, str, int, int, int], command: str) -> dict:
    """Train and evaluate one (part, arm, k, epochs, seed); returns its record."""
    import logging

    import torch
    import transformers

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    logging.getLogger("hf_distill").setLevel(logging.WARNING)
    from hf_distill import DistillationTrainer
    from hf_distill.data import digits_dataset, per_class_subset

    part, arm, k, epochs, seed = task
    splits = digits_dataset(seed=0)
    train = per_class_subset(splits["train"], k, seed)
    spec = PARTS[part]["arms"][arm]
    with tempfile.TemporaryDirectory() as workdir:
        bank_seconds = 0.0
        extra = {}
        if "label_bank_records" in spec:
            bank, bank_seconds = make_bank(part, arm, k, seed, train, workdir)
            extra = dict(teacher_label_bank=bank, label_bank_mix=spec["label_bank_mix"])
        args = config_for(part, arm, k, epochs, seed, workdir, **extra)
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        trainer = DistillationTrainer(args=args, train_dataset=train, eval_dataset=splits["test"])
        output = trainer.train()
        train_wall = time.perf_counter() - wall_start
        metrics = trainer.evaluate()
        cpu = time.process_time() - cpu_start
    return {
        "part": part,
        "arm": arm,
        "k": k,
        "epochs": epochs,
        "seed": seed,
        "accuracy": metrics["eval_accuracy"],
        "agreement": metrics.get("eval_teacher_agreement"),
        "teacher_accuracy": metrics.get("eval_teacher_accuracy"),
        "steps": output.global_step,
        "train_seconds": round(train_wall, 2),
        "seconds_per_step": round(train_wall / max(1, output.global_step), 5),
        "cpu_seconds": round(cpu + bank_seconds, 2),
        "bank_cpu_seconds": round(bank_seconds, 2),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "command": command,
        "teacher_sha256": teacher_fingerprint(),
    }


def tasks_of(part: str, seeds: list[int], arms: list[str] | None, schedules: list[int] | None) -> list:
    spec = PARTS[part]
    chosen = arms or list(spec["arms"])
    unknown = [a for a in chosen if a not in spec["arms"]]
    if unknown:
        raise SystemExit(f"--arms {unknown} are not arms of part {part!r}: {list(spec['arms'])}")
    tasks = [
        (part, arm, spec["k"], epochs, seed)
        for seed in seeds
        for epochs in schedules or spec["schedules"]
        for arm in chosen
    ]
    # Longest first so that two workers finish together; every finished run is written at once.
    return sorted(tasks, key=lambda t: -t[3])


COST_ARMS = {
    "live FunMatch": "FunMatch (same/ic + mixup)",
    "bank R=8, recorded": "bank R=8, recorded",
    "bank R=8, replay": "bank R=8, replay",
    "student only (same views, CE)": None,
}


def step_cost(options: argparse.Namespace, command: str) -> None:
    """Seconds per step of each setting after ``warmup`` steps, alternated ``repeats`` times (reversed on every
    other repeat), in this process, one thread: ratios that a shared machine does not bias."""
    import logging

    import torch
    import transformers
    from transformers import TrainerCallback

    from hf_distill import DistillationTrainer
    from hf_distill.data import digits_dataset, per_class_subset

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    logging.getLogger("hf_distill").setLevel(logging.WARNING)
    warmup, steps = 4, options.cost_steps
    train = per_class_subset(digits_dataset(seed=0)["train"], 10, 0)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                self.start = time.perf_counter()
            elif state.global_step == args.max_steps:
                self.seconds = (time.perf_counter() - self.start) / (args.max_steps - warmup)

    settings = list(COST_ARMS.items())
    with tempfile.TemporaryDirectory() as workdir:
        banks = {}
        for name, arm in settings:
            if arm and arm.startswith("bank"):
                banks[name] = make_bank("bank", arm, 10, 0, train, os.path.join(workdir, name))[0]
        for repeat in range(options.cost_repeats):
            for name, arm in settings if repeat % 2 == 0 else settings[::-1]:
                part = "bank" if arm and arm.startswith("bank") else "inputs"
                extra = dict(max_steps=warmup + steps)
                if name in banks:
                    extra.update(
                        teacher_label_bank=banks[name], label_bank_mix=BANK_ARMS[arm]["label_bank_mix"]
                    )
                if arm is None:  # the FunMatch views and mixup, CE on mixed labels, no teacher
                    arm, part = "FunMatch (same/ic + mixup)", "inputs"
                    extra.update(teacher_model_name_or_path=None, alpha=0.0)
                args = config_for(part, arm, 10, 1, 0, os.path.join(workdir, f"run-{repeat}"), **extra)
                trainer = DistillationTrainer(args=args, train_dataset=train)
                timer = Timer()
                trainer.add_callback(timer)
                trainer.train()
                record = dict(
                    part="cost",
                    arm=name,
                    k=10,
                    epochs=0,
                    seed=repeat,
                    seconds_per_step=round(timer.seconds, 5),
                    steps=steps,
                    threads=torch.get_num_threads(),
                    torch=torch.__version__,
                    machine=f"{platform.machine()}, {os.cpu_count()} CPU cores",
                    command=command,
                    teacher_sha256=teacher_fingerprint(),
                    cpu_seconds=0.0,
                    accuracy=None,
                )
                with RECORDS.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(f"step cost, repeat {repeat}: {name} {timer.seconds:.4f} s/step", flush=True)


def cost_table(records: list[dict]) -> list[str]:
    runs: dict[str, list[float]] = {}
    for record in records:
        if record["part"] == "cost":
            runs.setdefault(record["arm"], []).append(record["seconds_per_step"])
    if not runs:
        return []
    base = statistics.median(runs.get("student only (same views, CE)", [float("nan")]))
    lines = ["| setting | s/step (median) | × student only |", "|---|---|---|"]
    for name in COST_ARMS:
        if name in runs:
            median = statistics.median(runs[name])
            lines.append(f"| {name} | {median:.4f} | {median / base:.2f} |")
    return lines


def run_part(options: argparse.Namespace) -> None:
    teacher = ensure_teacher()
    check_one_teacher(load_records(), teacher)
    command = " ".join([".venv/bin/python", "benchmarks/paper_claims.py", *map(shlex.quote, sys.argv[1:])])
    if options.part == "cost":
        RESULTS.mkdir(parents=True, exist_ok=True)
        step_cost(options, command)
        return
    finished = done_keys()
    tasks = [
        t
        for t in tasks_of(options.part, options.seeds, options.arms, options.epochs)
        if source_task(t) not in finished
    ]
    print(
        f"part {options.part}: {len(tasks)} runs to do ({len(finished)} records already written)", flush=True
    )
    os.environ["OMP_NUM_THREADS"] = "1"  # one thread per run; --jobs runs side by side
    RESULTS.mkdir(parents=True, exist_ok=True)
    context = get_context("spawn")
    with ProcessPoolExecutor(max_workers=options.jobs, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_one, source_task(task), command): task for task in tasks}
        for future in as_completed(futures):
            record = future.result()
            with RECORDS.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(
                f"{record['arm']:34s} k={record['k']} epochs={record['epochs']:5d} seed={record['seed']} "
                f"acc={record['accuracy']:.4f} {record['seconds_per_step']:.3f} s/step {record['cpu_seconds']:.0f} s CPU",
                flush=True,
            )


# ------------------------------------------------------------------------------------------------ reporting
def load_records() -> list[dict]:
    if not RECORDS.exists():
        return []
    return [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]


def grouped(records: list[dict], part: str) -> dict[tuple[str, int], list[dict]]:
    """The part's runs by (arm, epochs), shared arms included (see ``SHARED_ARMS``)."""
    sources = {source: arm for (owner, arm), source in SHARED_ARMS.items() if owner == part}
    groups: dict[tuple[str, int], list[dict]] = {}
    for record in records:
        arm = record["arm"] if record["part"] == part else sources.get((record["part"], record["arm"]))
        if arm is not None:
            groups.setdefault((arm, record["epochs"]), []).append(record)
    return groups


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(runs: list[dict] | None, key: str = "accuracy") -> str:
    if not runs:
        return "–"
    mean, std = mean_std([r[key] for r in runs])
    note = "" if len(runs) >= len(SEEDS) else f" (n={len(runs)})"
    return f"{100 * mean:.1f} ± {100 * std:.1f}{note}"


def curve_table(part: str, records: list[dict]) -> list[str]:
    spec = PARTS[part]
    groups = grouped(records, part)
    schedules = sorted({e for _, e in groups})
    lines = [
        "| setting | " + " | ".join(f"{e} ep" for e in schedules) + " | s/step |",
        "|---|" + "---|" * (len(schedules) + 1),
    ]
    for arm in spec["arms"]:
        runs = [r for (a, _), rs in groups.items() if a == arm for r in rs]
        if not runs:
            continue
        per_step = statistics.median(r["seconds_per_step"] for r in runs)
        lines.append(
            f"| {arm} | " + " | ".join(cell(groups.get((arm, e))) for e in schedules) + f" | {per_step:.3f} |"
        )
    return lines


def new_axes(panels: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, panels, figsize=(6.4 * panels, 4.2), squeeze=False)


def save_figure(figure, axes, path: Path, title: str, xlabel: str) -> None:
    import matplotlib.pyplot as plt

    for axis in axes.flat:
        axis.set_xlabel(xlabel)
        axis.set_ylabel("student top-1 on held-out digits (%)")
        axis.grid(True, alpha=0.3)
    axes.flat[0].set_title(title)
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def curve_figure(part: str, records: list[dict], path: Path, title: str) -> bool:
    groups = grouped(records, part)
    if not groups:
        return False
    figure, axes = new_axes(2)
    for arm in PARTS[part]["arms"]:
        points = sorted((e, [r["accuracy"] for r in rs]) for (a, e), rs in groups.items() if a == arm)
        if not points:
            continue
        epochs = [e for e, _ in points]
        means = [100 * mean_std(v)[0] for _, v in points]
        stds = [100 * mean_std(v)[1] for _, v in points]
        for axis in axes.flat:
            (line,) = axis.plot(epochs, means, marker="o", label=arm)
            axis.fill_between(
                epochs,
                [m - s for m, s in zip(means, stds)],
                [m + s for m, s in zip(means, stds)],
                color=line.get_color(),
                alpha=0.2,
            )
    teacher = next(
        (r["teacher_accuracy"] for rs in groups.values() for r in rs if r.get("teacher_accuracy")), None
    )
    for axis in axes.flat:
        axis.set_xscale("log")
        if teacher:
            axis.axhline(100 * teacher, linestyle=":", color="grey", label="teacher")
    # right: the long schedules, where the settings separate
    longest = max(e for _, e in groups)
    tail = [100 * r["accuracy"] for (_, e), rs in groups.items() if e >= longest / 10 for r in rs]
    axes[0, 1].set_xlim(longest / 12, longest * 1.2)
    axes[0, 1].set_ylim(max(0.0, min(tail) - 2), min(100.0, max(tail) + 1))
    axes[0, 1].set_title(f"the same, schedules from {longest // 10} epochs")
    save_figure(figure, axes, path, title, "training epochs (one cosine schedule per point)")
    return True


def bank_table(records: list[dict]) -> list[str]:
    groups = grouped(records, "bank")
    anchors = grouped(records, "inputs")
    schedules = sorted({e for _, e in groups})
    lines = [
        "| setting | " + " | ".join(f"{e} ep" for e in schedules) + " | s/step | bank generation CPU (s) |",
        "|---|" + "---|" * (len(schedules) + 2),
    ]

    def row(name: str, by_epochs: dict, arm: str, generation: str) -> None:
        runs = [r for e in schedules for r in by_epochs.get((arm, e), [])]
        if runs:
            per_step = statistics.median(r["seconds_per_step"] for r in runs)
            cells = " | ".join(cell(by_epochs.get((arm, e))) for e in schedules)
            lines.append(f"| {name} | {cells} | {per_step:.3f} | {generation} |")

    for arm in ("fixed (fix/cc, cached)", "FunMatch (same/ic + mixup)"):
        row(f"{arm}, live teacher", anchors, arm, "–")
    for arm in BANK_ARMS:
        runs = [r for e in schedules for r in groups.get((arm, e), [])]
        if runs:
            row(arm, groups, arm, f"{statistics.fmean(r['bank_cpu_seconds'] for r in runs):.1f}")
    return lines


def bank_figure(records: list[dict], path: Path) -> bool:
    groups = grouped(records, "bank")
    if not groups:
        return False
    longest = max(e for _, e in groups)
    figure, axes = new_axes()
    axis = axes[0, 0]
    for mix in ("recorded", "replay"):
        points = [
            (r, [x["accuracy"] for x in groups[(f"bank R={r}, {mix}", longest)]])
            for r in BANK_RECORDS
            if (f"bank R={r}, {mix}", longest) in groups
        ]
        if points:
            xs = [p[0] for p in points]
            means = [100 * mean_std(v)[0] for _, v in points]
            stds = [100 * mean_std(v)[1] for _, v in points]
            axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=f"bank, {mix} mix")
    anchors = grouped(records, "inputs")
    for arm, style in (("fixed (fix/cc, cached)", ":"), ("FunMatch (same/ic + mixup)", "--")):
        runs = anchors.get((arm, longest))
        if runs:
            axis.axhline(
                100 * mean_std([r["accuracy"] for r in runs])[0],
                linestyle=style,
                color="grey",
                label=f"{arm}, teacher in training",
            )
    axis.set_xscale("log", base=2)
    save_figure(
        figure, axes, path, f"Label banks, k=10 per class, {longest} epochs", "recorded views per image R"
    )
    return True


TITLES = {
    "inputs": "Teacher inputs, k=10 images per class",
    "inputs30": "Teacher inputs, k=30 images per class",
    "kdda": "KD + data augmentation, k=10 images per class",
    "slkd": "SLKD against KD, k=10 images per class",
}


def report() -> None:
    records = load_records()
    if not records:
        raise SystemExit(f"no records in {RECORDS}; run a part first")
    fingerprint = records[0].get("teacher_sha256")
    check_one_teacher(records, str(fingerprint))
    teacher = next((r["teacher_accuracy"] for r in records if r.get("teacher_accuracy")), None)
    total_cpu = sum(r["cpu_seconds"] for r in records)
    commands = sorted({r["command"] for r in records})
    lines = [
        "# The papers' claims on a CPU: few-shot digits",
        "",
        "Written by `.venv/bin/python benchmarks/paper_claims.py --report` from the per-run records in "
        "`paper_claims.jsonl` (one line per run: part, arm, k, epochs, seed, accuracy, seconds, command).",
        "",
        "Setup: " + " ".join(__doc__.split("Shared by every arm: ")[1].split()).replace("``", "`"),
        (f"Teacher top-1 on the held-out digits: {100 * teacher:.2f}%; " if teacher else "")
        + f"the SHA-256 of its weights begins `{fingerprint}` (trained with {TEACHER_THREADS} threads; every "
        "record carries it).",
        "",
        f"Runs: {len(records)}; total CPU time of the study so far: {total_cpu / 3600:.2f} h "
        f"({records[0]['machine']}, one thread per run, two runs side by side). Cells are mean ± std of "
        "student top-1 (%) over seeds 0, 1, 2; `(n=…)` marks cells with fewer seeds. s/step is the median "
        "wall time per training step of the arm's runs (two runs shared the machine).",
        "",
        "Commands that wrote the records:",
        "",
        *[f"    {c}" for c in commands],
        "",
    ]
    for part, title in TITLES.items():
        if not grouped(records, part):
            lines += [
                f"## {title}",
                "",
                f"Not run yet: `.venv/bin/python benchmarks/paper_claims.py --part {part} --jobs 2`.",
                "",
            ]
            continue
        figure = RESULTS / f"paper_claims_{part}.png"
        curve_figure(part, records, figure, title)
        lines += [f"## {title}", "", f"![{title}]({figure.name})", "", *curve_table(part, records), ""]
        lines += [
            f"The `{arm}` line is the `{source}` part's `{source_arm}` runs (the same settings), shared rather "
            "than run again.\n"
            for (owner, arm), (source, source_arm) in SHARED_ARMS.items()
            if owner == part
        ]
    if grouped(records, "bank"):
        bank_figure(records, RESULTS / "paper_claims_bank.png")
        lines += ["## Label banks, k=10 images per class", "", "![label banks](paper_claims_bank.png)", ""]
        lines += [*bank_table(records), ""]
        if cost_table(records):
            lines += [
                "Step cost, measured side by side in one process (`--part cost`: 40 steps after 4, three "
                "alternated repeats, one thread):",
                "",
                *cost_table(records),
                "",
            ]
    else:
        lines += ["## Label banks, k=10 images per class", "", "Not run yet: `--part bank`.", ""]
    REPORT.write_text("\n".join(lines))
    print(REPORT.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part", choices=[*PARTS, "cost"], help="the part to run (finished runs are skipped)"
    )
    parser.add_argument("--cost_steps", type=int, default=40, help="--part cost: timed steps per measurement")
    parser.add_argument("--cost_repeats", type=int, default=3, help="--part cost: alternated measurements")
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--arms", nargs="+", default=None, help="only these arms of the part")
    parser.add_argument("--epochs", type=int, nargs="+", default=None, help="only these schedules")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each")
    parser.add_argument("--report", action="store_true", help="write the Markdown report and the figures")
    parser.add_argument("--records", type=Path, default=None, help="another records file (a trial run)")
    options = parser.parse_args()
    if options.records is not None:  # a trial: its report and figures go beside its records
        global RECORDS, RESULTS, REPORT
        RECORDS, RESULTS = options.records, options.records.parent
        REPORT = options.records.with_suffix(".md")
    if options.part:
        run_part(options)
    if options.report or not options.part:
        report()


if __name__ == "__main__":
    main()
