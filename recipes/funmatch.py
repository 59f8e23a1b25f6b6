"""FunMatch (Beyer et al., "Knowledge distillation: a good teacher is patient and consistent").

The teacher and the student see the same inception crop, mixed with the same mixup parameters, and the
student matches the teacher's function with a KL loss over a long schedule. Every teacher-input mode of the
paper is one `--teacher_input` away (fix/rs, fix/cc, fix/ic_ens, ind/rc, ind/ic, same/rc, same/ic, funmatch).

    accelerate launch recipes/funmatch.py                                   # digits, configs/funmatch_digits.yaml
    accelerate launch recipes/funmatch.py --teacher_input fix/cc            # a fixed (cached) teacher instead
    accelerate launch recipes/funmatch.py --config recipes/configs/funmatch_pets.yaml
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset, load_dataset

from hf_distill import DistillationTrainer
from hf_distill.cli import load_splits, parse_config, run
from hf_distill.config import DistillationConfig
from hf_distill.data import DIGITS_DATASET_ID, digits_dataset

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "funmatch_digits.yaml"


def load_distill_dataset(args: DistillationConfig) -> Dataset | None:
    """The images to distil on when they differ from the evaluation data (``distill_dataset_name``).

    Their labels, if any, are dropped: the paper distils on unlabelled and out-of-domain images, whose
    classes need not be the task's, so the loss is KD only.
    """
    name = args.distill_dataset_name
    if name is None:
        return None
    if name == DIGITS_DATASET_ID:
        splits = digits_dataset(seed=args.data_seed if args.data_seed is not None else 0)
        data = splits[args.distill_split]
    elif os.path.isdir(name) and not Path(name, "dataset_info.json").exists():
        data = load_dataset("imagefolder", data_dir=name, split=args.distill_split)
    else:
        data = load_dataset(name, args.distill_dataset_config_name, split=args.distill_split)
    if args.max_train_samples is not None:
        data = data.select(range(min(args.max_train_samples, len(data))))
    extra = [c for c in data.column_names if c != args.image_column_name]
    return data.remove_columns(extra) if extra else data


def build_trainer(args: DistillationConfig) -> DistillationTrainer:
    """The trainer for ``args``: the teacher (or list of teachers) and datasets the config names."""
    train, evaluation = load_splits(args)
    distill = load_distill_dataset(args)
    return DistillationTrainer(
        args=args, train_dataset=distill if distill is not None else train, eval_dataset=evaluation
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_config(default_config=DEFAULT_CONFIG, argv=argv)
    return run(build_trainer(args), args)


if __name__ == "__main__":
    main()
