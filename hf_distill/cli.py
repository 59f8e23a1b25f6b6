"""What every recipe script shares: YAML config + CLI overrides, dataset loading, the train/eval/save run."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from datasets import Dataset, DatasetDict, load_dataset
from transformers import HfArgumentParser

from .config import DistillationConfig
from .data import DIGITS_DATASET_ID, digits_dataset

logger = logging.getLogger(__name__)


def parse_config(
    config_class: type = DistillationConfig,
    default_config: str | os.PathLike | None = None,
    argv: list[str] | None = None,
):
    """Parse ``--config file.yaml`` (or ``default_config`` when none is given) into ``config_class``; any other
    flag on the command line overrides the file (``--num_train_epochs 3``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    config_path = known.config or default_config
    values: dict[str, Any] = {}
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise FileNotFoundError(f"--config {config_path}: no such file")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(
                f"--config {config_path}: expected a mapping of field: value, got {type(values).__name__}"
            )
    parser = HfArgumentParser(config_class)
    known_fields = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known_fields)
    if unknown:
        raise ValueError(
            f"--config {config_path}: unknown fields {unknown}; see {config_class.__name__} for the fields"
        )
    for key, value in values.items():
        if isinstance(value, dict):
            values[key] = json.dumps(value)
    parser.set_defaults(**values)
    # Fields the file provides are no longer required on the command line.
    for action in parser._actions:
        if action.dest in values:
            action.required = False
    (config,) = parser.parse_args_into_dataclasses(args=rest)
    return config


def load_splits(args: DistillationConfig) -> tuple[Dataset, Dataset | None]:
    """The train and eval splits named by the config (the embedded digits data when ``dataset_name`` is unset
    or ``sklearn/digits``)."""
    if args.dataset_name in (None, DIGITS_DATASET_ID):
        splits: DatasetDict = digits_dataset(seed=args.data_seed if args.data_seed is not None else 0)
    elif os.path.isdir(args.dataset_name) and not Path(args.dataset_name, "dataset_info.json").exists():
        splits = load_dataset("imagefolder", data_dir=args.dataset_name)
    else:
        splits = load_dataset(args.dataset_name, args.dataset_config_name)
    if args.train_split not in splits:
        raise ValueError(
            f"train_split='{args.train_split}' is not a split of {args.dataset_name}: {list(splits)}"
        )
    train = splits[args.train_split]
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    eval_split = splits[args.eval_split] if args.eval_split in splits else None
    return train, eval_split


def run(trainer, args: DistillationConfig) -> dict[str, float]:
    """Train, evaluate, save the student (with its card) and print where it is."""
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    trainer.save_model()
    if trainer.is_world_process_zero():
        out = Path(args.output_dir).resolve()
        if "eval_accuracy" in metrics:
            print(f"student accuracy: {metrics['eval_accuracy']:.4f}")
        if "eval_teacher_accuracy" in metrics:
            print(f"teacher accuracy: {metrics['eval_teacher_accuracy']:.4f}")
        print(f"student saved to: {out}")
        card = out / "README.md"
        if card.exists():
            print(f"model card: {card}")
        if args.model_card_dir and card.exists():
            print(f"card copied to: {Path(args.model_card_dir).resolve()}")
        if (
            args.push_to_hub and trainer.hub_model_id
        ):  # save_model() uploaded the student (hf_distill.release)
            print(f"pushed to: https://huggingface.co/{trainer.hub_model_id}")
    return metrics
