"""Hinton knowledge distillation: (1 - alpha) * CE + alpha * tau^2 * KL(teacher || student).

accelerate launch recipes/distill.py --config recipes/configs/distill_digits.yaml
accelerate launch recipes/distill.py --config recipes/configs/distill_digits.yaml --alpha 0 --output_dir outputs/ce-digits
"""

from pathlib import Path

from hf_distill import DistillationTrainer
from hf_distill.cli import load_splits, parse_config, run

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "distill_digits.yaml"


def main(argv=None):
    args = parse_config(default_config=DEFAULT_CONFIG, argv=argv)
    train, evaluation = load_splits(args)
    teacher = args.teacher_model_name_or_path if args.alpha > 0 or args.loss_types else None
    trainer = DistillationTrainer(
        teacher_model=teacher, args=args, train_dataset=train, eval_dataset=evaluation
    )
    return run(trainer, args)


if __name__ == "__main__":
    main()
