"""Fine-tune a teacher with plain cross-entropy and save it in Hub layout.

accelerate launch recipes/train_teacher.py                       # embedded digits, resnet18 -> outputs/teacher-digits
accelerate launch recipes/train_teacher.py --config recipes/configs/train_teacher_digits.yaml --num_train_epochs 5
"""

from pathlib import Path

from hf_distill import DistillationTrainer
from hf_distill.cli import load_splits, parse_config, run

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "train_teacher_digits.yaml"


def main(argv=None):
    args = parse_config(default_config=DEFAULT_CONFIG, argv=argv)
    if args.alpha != 0.0 or args.teacher_model_name_or_path:
        raise ValueError(
            "train_teacher.py trains with labels only: set alpha: 0 and no teacher_model_name_or_path"
        )
    train, evaluation = load_splits(args)
    trainer = DistillationTrainer(args=args, train_dataset=train, eval_dataset=evaluation)
    return run(trainer, args)


if __name__ == "__main__":
    main()
