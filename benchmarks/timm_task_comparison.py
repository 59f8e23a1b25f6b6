"""timm's ``LogitDistillationTask`` in a plain training loop vs ``DistillationTrainer``: same pair, data, budget.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/timm_task_comparison.py --seeds 0 1 2 --epochs 4

Both sides train the same student architecture from scratch against the same frozen teacher
(``outputs/teacher-digits``, resnet18 at 32x32; ``recipes/train_teacher.py`` writes it) on the embedded
digits data resized to 32x32 without augmentation, with the same loss (``0.1 * CE + 0.9 * tau^2 * KL``,
tau = 4), optimizer (AdamW, lr 2e-3, weight decay 0.05 on all but biases and norms), cosine schedule with
5% warmup, batch size and epochs. The timm side is what a timm user writes: a ``DataLoader`` with a
PIL -> tensor transform, ``task(input, target)["loss"].backward()``. For each seed both run back to back in
one process, so throughput is compared on the same machine state; accuracy of both students is measured by
one evaluation function on the test split. Writes ``benchmarks/results/timm_task_comparison.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ALPHA, TEMPERATURE, LR, WEIGHT_DECAY, BATCH, WARMUP = 0.9, 4.0, 2e-3, 0.05, 64, 0.05
SIZE = 32
NOTE = (
    "Read the ratio with the machine's load in mind: on a CPU shared with other jobs, per-seed throughput "
    "varies with the load of the moment. Part of any difference is the input pipeline: the timm loop converts "
    "and normalises each PIL image to float in the DataLoader, hf_distill collates uint8 tensors and "
    "normalises the whole batch at once."
)


def tensor_dataset(split, mean, std):
    """Images resized to SIZE (bilinear), as normalised float tensors, plus labels."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    class Digits(torch.utils.data.Dataset):
        def __len__(self):
            return len(split)

        def __getitem__(self, i):
            row = split[i]
            image = row["image"].convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
            return TF.normalize(TF.to_tensor(image), mean, std), row["label"]

    return Digits()


@torch.no_grad()
def accuracy(model: nn.Module, split, mean, std) -> float:
    """Top-1 of ``model`` on ``split``, the same function for both students."""
    model.eval()
    loader = torch.utils.data.DataLoader(tensor_dataset(split, mean, std), batch_size=256)
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(-1) == y).sum().item()
        total += len(y)
    return correct / total


def run_timm(
    student_name: str, teacher_dir: str, splits, seed: int, epochs: int
) -> tuple[nn.Module, float, int]:
    """timm's LogitDistillationTask in a plain loop. Returns (student, train seconds, samples seen)."""
    import timm
    from timm.optim import create_optimizer_v2
    from timm.task import LogitDistillationTask
    from transformers import get_cosine_schedule_with_warmup

    torch.manual_seed(seed)
    student = timm.create_model(student_name, num_classes=10)
    teacher = timm.create_model(f"local-dir:{teacher_dir}", pretrained=True)
    task = LogitDistillationTask(
        student,
        teacher,
        criterion=nn.CrossEntropyLoss(),
        task_loss_weight=1.0 - ALPHA,
        temperature=TEMPERATURE,
        verbose=False,
    )
    mean, std = student.pretrained_cfg["mean"], student.pretrained_cfg["std"]
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        tensor_dataset(splits["train"], mean, std), batch_size=BATCH, shuffle=True, generator=generator
    )
    optimizer = create_optimizer_v2(student, "adamw", lr=LR, weight_decay=WEIGHT_DECAY)
    steps = epochs * len(loader)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(WARMUP * steps), steps)
    task.train()
    seen = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            loss = task(x, y)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(y)
    return student, time.perf_counter() - start, seen


def run_hf_distill(student_name: str, teacher_dir: str, splits, seed: int, epochs: int, output_dir: str):
    """DistillationTrainer with the same settings. Returns (student, train seconds, samples seen)."""
    from hf_distill import DistillationConfig, DistillationTrainer

    args = DistillationConfig(
        output_dir=output_dir,
        student_model_name_or_path=student_name,
        teacher_model_name_or_path=teacher_dir,
        alpha=ALPHA,
        temperature=TEMPERATURE,
        image_size=SIZE,
        teacher_image_size=SIZE,
        interpolation="bilinear",
        crop="rs",
        hflip=0.0,
        num_train_epochs=epochs,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        lr_scheduler_type="cosine",
        warmup_steps=WARMUP,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10_000,
        report_to=[],
        seed=seed,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    import timm

    # The teacher sees the student's bilinear view, as in the timm loop (by default it would get its own
    # view rendered with its own bicubic interpolation).
    teacher = timm.create_model(f"local-dir:{teacher_dir}", pretrained=True)
    teacher.pretrained_cfg = dict(teacher.pretrained_cfg, interpolation="bilinear")
    trainer = DistillationTrainer(teacher_model=teacher, args=args, train_dataset=splits["train"])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return trainer.student, seconds, epochs * len(splits["train"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--student", default="resnet10t")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--teacher", default="outputs/teacher-digits")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "timm_task_comparison.md"))
    options = parser.parse_args()
    if not (Path(options.teacher) / "config.json").is_file():
        raise SystemExit(
            f"no teacher at {options.teacher}: run .venv/bin/python recipes/train_teacher.py first"
        )

    import timm

    from hf_distill.data import digits_dataset

    splits = digits_dataset(seed=0)
    teacher = timm.create_model(f"local-dir:{options.teacher}", pretrained=True)
    t_mean, t_std = teacher.pretrained_cfg["mean"], teacher.pretrained_cfg["std"]
    teacher_accuracy = accuracy(teacher, splits["test"], t_mean, t_std)

    rows: dict[str, dict[str, list[float]]] = {
        name: {"accuracy": [], "throughput": []}
        for name in ("timm LogitDistillationTask", "DistillationTrainer")
    }
    ratios = []
    for seed in options.seeds:
        student, seconds, seen = run_timm(options.student, options.teacher, splits, seed, options.epochs)
        mean, std = student.pretrained_cfg["mean"], student.pretrained_cfg["std"]
        rows["timm LogitDistillationTask"]["accuracy"].append(accuracy(student, splits["test"], mean, std))
        rows["timm LogitDistillationTask"]["throughput"].append(seen / seconds)
        student, seconds, seen = run_hf_distill(
            options.student, options.teacher, splits, seed, options.epochs, f"outputs/bench-timm-task/{seed}"
        )
        rows["DistillationTrainer"]["accuracy"].append(accuracy(student, splits["test"], mean, std))
        rows["DistillationTrainer"]["throughput"].append(seen / seconds)
        ratios.append(
            rows["DistillationTrainer"]["throughput"][-1]
            / rows["timm LogitDistillationTask"]["throughput"][-1]
        )
        print(
            f"seed {seed}: " + ", ".join(f"{k}: {v['accuracy'][-1]:.4f}" for k, v in rows.items()), flush=True
        )

    command = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/timm_task_comparison.py " + " ".join(
        sys.argv[1:]
    )
    lines = [
        "# timm `LogitDistillationTask` (plain loop) vs `DistillationTrainer`",
        "",
        f"Command: `{command.strip()}` on a shared 2-core CPU (torch {torch.__version__}, timm {timm.__version__}).",
        "",
        f"Same pair, data and budget on both sides: student `{options.student}` from scratch, teacher "
        f"`{options.teacher}` (resnet18, test top-1 {teacher_accuracy:.4f}); embedded digits resized to {SIZE}x{SIZE} "
        f"(bilinear, no augmentation), {len(splits['train'])} train / {len(splits['test'])} test images; loss "
        f"{1 - ALPHA:.1f} * CE + {ALPHA} * tau^2 * KL with tau = {TEMPERATURE}; AdamW lr {LR}, weight decay "
        f"{WEIGHT_DECAY} (not on biases/norms), cosine schedule with {WARMUP:.0%} warmup, batch {BATCH}, "
        f"{options.epochs} epochs; seeds {options.seeds}. Accuracy: one evaluation function for both students. "
        "Throughput: training images per second over the whole `train()` / loop (data loading included), both "
        "sides run back to back per seed in one process; the ratio is DistillationTrainer / timm per seed.",
        "",
        "| training | test top-1 (mean ± std) | per seed | train images/s (mean) |",
        "|---|---|---|---|",
    ]
    for name, values in rows.items():
        acc = values["accuracy"]
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        per_seed = ", ".join(f"{v:.4f}" for v in acc)
        lines.append(
            f"| {name} | {statistics.mean(acc):.4f} ± {std:.4f} | {per_seed} | {statistics.mean(values['throughput']):.0f} |"
        )
    lines += [
        "",
        f"Throughput ratio DistillationTrainer / timm loop: {statistics.mean(ratios):.2f} "
        f"(per seed: {', '.join(f'{r:.2f}' for r in ratios)}).",
        "",
        NOTE,
    ]
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    Path(options.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
