"""SLKD: distil a teacher and, at the same time, one or two self-learning teachers (SL-Ts) that learn from it.

    accelerate launch recipes/slkd.py --config recipes/configs/slkd_digits.yaml
    accelerate launch recipes/slkd.py --config recipes/configs/slkd_digits.yaml --slkd_num_teachers 1
    accelerate launch recipes/slkd.py --config recipes/configs/slkd_digits.yaml --slkd_mode sequential

The student's loss is (1 - alpha) * CE + alpha * KD(teacher) + slkd_weight * (slkd_ce_weight * CE + KD(SL-Ts))
(the authors' code: its own CE in the SL-T branch too); each SL-T learns with (1 - alpha) * CE + alpha *
KD(teacher). ``sequential`` updates the SL-Ts, then the student, on each batch (the authors' SLKD*). Only the
student is saved; checkpoints also hold the SL-Ts.
"""

from pathlib import Path

from hf_distill import DistillationTrainer
from hf_distill.cli import load_splits, parse_config, run

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "slkd_digits.yaml"


def main(argv=None):
    args = parse_config(default_config=DEFAULT_CONFIG, argv=argv)
    train, evaluation = load_splits(args)
    trainer = DistillationTrainer(args=args, train_dataset=train, eval_dataset=evaluation)
    return run(trainer, args)


if __name__ == "__main__":
    main()
