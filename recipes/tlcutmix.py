"""KD + stronger data augmentation: TLCutMix / TLmixup, optionally with "pick", and long schedules.

Wang et al., "Understanding the success of knowledge distillation — a data augmentation perspective":
each batch keeps its images x ((1 - alpha) CE + alpha tau^2 KL) and adds CutMix/mixup images x' that
the teacher labels (KL only); `pick: true` trains on the N/2 most informative x' of a pool.

    accelerate launch recipes/tlcutmix.py                                               # digits
    accelerate launch recipes/tlcutmix.py --config recipes/configs/tlcutmix_cifar100.yaml
    accelerate launch recipes/tlcutmix.py --config recipes/configs/tlcutmix_cifar100.yaml --num_train_epochs 960
    accelerate launch recipes/tlcutmix.py --augmentation_mode cutmix --pick false --output_dir outputs/kd-cutmix-digits

The paper's step schedule (lr x0.1 at fixed fractions of training, e.g. epochs 150/180/210 of 240) is
`lr_decay_fractions`; the fractions stay put when `num_train_epochs` is scaled, as in the paper's long
schedules (960 epochs decay at 600/720/840).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.cli import load_splits, parse_config, run

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "tlcutmix_digits.yaml"


@dataclass
class TLCutMixConfig(DistillationConfig):
    """``DistillationConfig`` plus the paper's step learning-rate schedule."""

    lr_decay_fractions: list[float] | None = field(
        default=None,
        metadata={
            "help": "Multiply the learning rate by lr_decay_rate after these fractions of the training steps "
            "(the paper: [0.625, 0.75, 0.875] = epochs 150/180/210 of 240). None: lr_scheduler_type decides."
        },
    )
    lr_decay_rate: float = field(default=0.1, metadata={"help": "Factor of each step decay."})

    def __post_init__(self) -> None:
        if self.lr_decay_fractions is not None:
            if any(not 0 < f < 1 for f in self.lr_decay_fractions) or sorted(self.lr_decay_fractions) != list(
                self.lr_decay_fractions
            ):
                raise ValueError(
                    f"TLCutMixConfig.lr_decay_fractions: must be increasing fractions in (0, 1), "
                    f"got {self.lr_decay_fractions!r}"
                )
            if not 0 < self.lr_decay_rate <= 1:
                raise ValueError(
                    f"TLCutMixConfig.lr_decay_rate: must be in (0, 1], got {self.lr_decay_rate!r}"
                )
        super().__post_init__()


class StepDecayTrainer(DistillationTrainer):
    """A DistillationTrainer whose schedule is the paper's step decay when ``lr_decay_fractions`` is set."""

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        fractions = getattr(self.args, "lr_decay_fractions", None)
        if self.lr_scheduler is None and fractions:
            milestones = [max(1, round(f * num_training_steps)) for f in fractions]
            self.lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer if optimizer is not None else self.optimizer,
                milestones,
                gamma=self.args.lr_decay_rate,
            )
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)


def main(argv=None):
    args = parse_config(TLCutMixConfig, default_config=DEFAULT_CONFIG, argv=argv)
    train, evaluation = load_splits(args)
    teacher = args.teacher_model_name_or_path if args.alpha > 0 or args.loss_types else None
    trainer = StepDecayTrainer(teacher_model=teacher, args=args, train_dataset=train, eval_dataset=evaluation)
    return run(trainer, args)


if __name__ == "__main__":
    main()
