"""What every recipe script shares: YAML config + CLI overrides, dataset loading, the train/eval/save run."""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from datasets import Dataset, DatasetDict, load_dataset
from transformers import HfArgumentParser

from .config import DistillationConfig
from .data import DIGITS_DATASET_ID, digits_dataset, per_class_subset

logger = logging.getLogger(__name__)


TRAINING_ARGUMENTS_DOCS = (
    "https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments"
)
USAGE = "%(prog)s [--config FILE.yaml] [--FIELD VALUE ...]"
# TrainingArguments options whose help the short --help shows too (with help of our own where theirs is long).
COMMON_TRAINING_OPTIONS = {
    "output_dir": None,
    "num_train_epochs": None,
    "max_steps": None,
    "per_device_train_batch_size": None,
    "learning_rate": None,
    "seed": None,
    "use_cpu": None,
    "bf16": None,
    "resume_from_checkpoint": "true: resume from the latest checkpoint in output_dir; false: start afresh; "
    "anything else: the checkpoint directory to resume from",
    "push_to_hub": None,
    "hub_model_id": None,
}
_SECTION = re.compile(r"#\s*--\s*(.+?)\s*-*\s*$")
_FIELD = re.compile(r"(\w+)\s*:")


def parse_config(
    config_class: type = DistillationConfig,
    default_config: str | os.PathLike | None = None,
    argv: list[str] | None = None,
):
    """Parse ``--config file.yaml`` (or ``default_config`` when none is given) into ``config_class``; any other
    flag on the command line overrides the file (``--num_train_epochs 3``).

    ``--help`` lists ``--config`` and the distillation options by topic, then the common
    ``TrainingArguments`` options and the names of the other inherited ones (``--help_all`` shows their help
    too). An unknown flag exits with one line naming the closest known flag. ``--resume_from_checkpoint true``
    means the latest checkpoint in ``output_dir`` and ``false`` none, as ``Trainer.train`` reads a boolean."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help_all" in argv or "-h" in argv or "--help" in argv:
        build_parser(config_class, full_help="--help_all" in argv).print_help()
        raise SystemExit(0)
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
    parser = build_parser(config_class)
    known_fields = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known_fields)
    if unknown:
        hints = "".join(
            f"; {name!r}: did you mean {match[0]!r}?"
            for name in unknown
            if (match := difflib.get_close_matches(name, sorted(known_fields), n=1))
        )
        raise ValueError(
            f"--config {config_path}: unknown fields {unknown}{hints}; see {config_class.__name__} for the fields"
        )
    for key, value in values.items():
        if isinstance(value, dict):
            values[key] = json.dumps(value)
    parser.set_defaults(**values)
    # Fields the file provides are no longer required on the command line.
    for action in parser._actions:
        if action.dest in values:
            action.required = False
    _, unknown_args = parser.parse_known_args(rest)
    if unknown_args:
        sys.stderr.write(f"{parser.prog}: {unknown_option_message(unknown_args, parser)}\n")
        raise SystemExit(2)
    (config,) = parser.parse_args_into_dataclasses(args=rest)
    config.resume_from_checkpoint = resume_checkpoint_argument(config.resume_from_checkpoint)
    return config


def resume_checkpoint_argument(value: Any) -> str | bool | None:
    """``resume_from_checkpoint`` as ``Trainer.train`` takes it: ``True`` (the latest checkpoint in
    ``output_dir``) for true/yes/1, ``None`` for false/no/0/empty, else the checkpoint path."""
    if value is None or isinstance(value, bool):
        return value or None
    text = str(value).strip()
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0", "", "none"):
        return None
    return text


def unknown_option_message(unknown_args: list[str], parser: argparse.ArgumentParser) -> str:
    """One line naming each unknown flag and, where one is close, the known flag it probably meant."""
    known = sorted(
        {
            option
            for action in parser._actions
            for option in action.option_strings
            if option.startswith("--") and "-" not in option[2:]
        }
    )
    parts = []
    for token in unknown_args:
        if not token.startswith("-"):
            continue  # the value of an unknown flag
        flag = token.split("=", 1)[0]
        match = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        parts.append(f"{flag} (did you mean {match[0]}?)" if match else flag)
    if not parts:
        return (
            f"unexpected arguments {' '.join(unknown_args)}; options are given as --FIELD VALUE (see --help)"
        )
    noun = "option" if len(parts) == 1 else "options"
    return f"unknown {noun} {', '.join(parts)}; see --help"


def field_sections(config_class: type) -> dict[str, str]:
    """Field name -> the ``# -- section --`` comment it is declared under, for the fields ``config_class`` and
    its bases up to ``TrainingArguments`` declare (in declaration order, bases first)."""
    from transformers import TrainingArguments

    sections: dict[str, str] = {}
    for cls in reversed(config_class.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, TrainingArguments)) or cls is TrainingArguments:
            continue
        declared = set(cls.__dict__.get("__annotations__", {}))
        try:
            lines = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):
            lines = []
        header = next((i for i, line in enumerate(lines) if line.lstrip().startswith("class ")), len(lines))
        body_indent, current = None, f"{cls.__name__} options"
        for line in lines[header + 1 :]:
            stripped = line.strip()
            if not stripped:
                continue
            indent = len(line) - len(line.lstrip())
            body_indent = indent if body_indent is None else body_indent
            if indent != body_indent:
                continue
            if section := _SECTION.match(stripped):
                current = section.group(1)
            elif (name := _FIELD.match(stripped)) and name.group(1) in declared:
                sections[name.group(1)] = current
        for name in declared:  # a field the source could not place
            sections.setdefault(name, f"{cls.__name__} options")
    return sections


def _metavar(action: argparse.Action) -> str | None:
    if action.choices is not None or action.nargs == 0:
        return action.metavar
    if action.nargs == "?" and action.const is True:
        return "true|false"
    kind = {int: "INT", float: "FLOAT"}.get(action.type, "VALUE")
    return "V" if action.nargs == "+" else kind


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Wraps between words only, so that a URL in a description stays whole."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.fill(
            text, width, initial_indent=indent, subsequent_indent=indent, break_long_words=False
        )


def build_parser(config_class: type = DistillationConfig, full_help: bool = False) -> HfArgumentParser:
    """The parser of ``config_class`` with its help arranged for people: ``--config`` first, then the
    distillation options grouped by the ``# -- section --`` comments of the config class, then the common
    ``TrainingArguments`` options, then the other inherited ones (named only, unless ``full_help``)."""
    parser = HfArgumentParser(config_class, usage=USAGE, formatter_class=_HelpFormatter)
    files = parser.add_argument_group("config file")
    files.add_argument(
        "--config",
        metavar="FILE.yaml",
        default=argparse.SUPPRESS,
        help="YAML file of field: value pairs (the recipe's default config when omitted); flags given on the "
        "command line override it",
    )
    files.add_argument(
        "--help_all",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show this help with the help of every TrainingArguments option too",
    )
    sections = field_sections(config_class)
    groups = {title: parser.add_argument_group(title) for title in dict.fromkeys(sections.values())}
    # Created after the distillation groups: shown after them.
    common = parser.add_argument_group("common training options (transformers.TrainingArguments)")
    inherited = parser.add_argument_group("transformers.TrainingArguments options")
    inherited_names: list[str] = []
    for action in list(parser._optionals._group_actions):
        if not action.option_strings:
            continue
        parser._optionals._group_actions.remove(action)
        if action.dest == "help":
            files._group_actions.insert(0, action)
            continue
        # One spelling per option (the dashed aliases still parse) and short value names.
        underscored = [option for option in action.option_strings if "-" not in option[2:]]
        action.option_strings = underscored or action.option_strings
        action.metavar = _metavar(action)
        section = sections.get(action.dest)
        if section is not None:
            groups[section]._group_actions.append(action)
            continue
        if action.dest in COMMON_TRAINING_OPTIONS and not action.option_strings[0].startswith("--no_"):
            action.help = COMMON_TRAINING_OPTIONS[action.dest] or action.help
            common._group_actions.append(action)
            continue
        inherited._group_actions.append(action)
        if not full_help:
            action.help = argparse.SUPPRESS
            name = action.option_strings[0]
            if not name.startswith("--no_") and name not in inherited_names:
                inherited_names.append(name)
    if not full_help:
        inherited.description = (
            f"{len(inherited_names)} more options, documented at {TRAINING_ARGUMENTS_DOCS} "
            "(--help_all shows their help here): " + " ".join(inherited_names)
        )
    return parser


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
    if args.train_samples_per_class is not None:
        seed = args.data_seed if args.data_seed is not None else args.seed
        train = per_class_subset(train, args.train_samples_per_class, seed, args.label_column_name)
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    eval_split = splits[args.eval_split] if args.eval_split in splits else None
    return train, eval_split


def run(trainer, args: DistillationConfig) -> dict[str, float]:
    """Train, evaluate, save the student (with its card) and print where it is."""
    trainer.train(resume_from_checkpoint=resume_checkpoint_argument(args.resume_from_checkpoint))
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
