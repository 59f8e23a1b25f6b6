"""Make a teacher label bank: run the teacher once over R recorded views of every training image.

    accelerate launch recipes/label_bank.py --config recipes/configs/label_bank_digits.yaml --output_dir banks/digits-r16
    accelerate launch recipes/funmatch.py --config recipes/configs/funmatch_digits.yaml --teacher_label_bank banks/digits-r16

The bank (a `datasets` dataset saved with `save_to_disk`, see hf_distill.label_bank) lands in `output_dir`. The
augmentation and mixing settings must be the ones the training run will use (the bank's fingerprint is checked
when training starts). An interrupted generation resumes where it stopped when run again with the same settings.
With `--push_to_hub true --hub_model_id org/name` the finished bank is uploaded to that Hub *dataset* repo, and
training runs can name it: `--teacher_label_bank org/name`.
"""

from __future__ import annotations

from pathlib import Path

from hf_distill import DistillationTrainer
from hf_distill.cli import load_splits, parse_config
from hf_distill.label_bank import generate_for_trainer, push_label_bank

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "label_bank_digits.yaml"


def main(argv: list[str] | None = None) -> dict:
    args = parse_config(default_config=DEFAULT_CONFIG, argv=argv)
    if args.teacher_label_bank is not None:
        raise ValueError("label_bank.py makes a bank; unset teacher_label_bank (it is for training runs)")
    if not args.teacher_model_name_or_path:
        raise ValueError("label_bank.py needs a teacher: set teacher_model_name_or_path")
    # The bank goes to a dataset repo once it is complete; the trainer itself must not create a model repo.
    push_repo = (args.hub_model_id or Path(args.output_dir).name) if args.push_to_hub else None
    args.push_to_hub = False
    train, _ = load_splits(args)
    from funmatch import load_distill_dataset  # the same distillation data a FunMatch run would use

    distill = load_distill_dataset(args)
    data = distill if distill is not None else train
    # The trainer loads the teacher exactly as a training run would (label alignment, resolution, dtype).
    trainer = DistillationTrainer(args=args, train_dataset=data)
    meta = generate_for_trainer(trainer, data, args.output_dir)
    if trainer.is_world_process_zero() and meta is not None:
        storage = "full fp16 logits" if meta["topk"] is None else f"top-{meta['topk']}"
        print(
            f"label bank: {meta['num_samples']} images x {meta['num_records']} records -> "
            f"{Path(args.output_dir).resolve()}\n"
            f"bytes per image per record: {meta['bytes_per_image_per_record']:.1f} "
            f"({storage})"
        )
        if push_repo is not None:
            info = push_label_bank(
                args.output_dir, push_repo, token=args.hub_token, private=args.hub_private_repo
            )
            print(f"pushed to the Hub dataset repo: {getattr(info, 'commit_url', info)}")
    return meta


if __name__ == "__main__":
    main()
