"""DistillationConfig validation and the recipes' YAML + command-line parsing."""

from __future__ import annotations

import pytest

from hf_distill import DistillationConfig
from hf_distill.cli import parse_config


def config(**kwargs):
    return DistillationConfig(output_dir="unused", use_cpu=True, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, r"temperature: must be a finite number > 0, got 0.0"),
        ({"temperature": -2.0}, r"temperature: must be a finite number > 0"),
        ({"temperature": float("nan")}, r"temperature: must be a finite number > 0"),
        ({"alpha": 1.5}, r"alpha: must be in \[0, 1\]"),
        ({"label_bank_records": 0}, r"label_bank_records: must be a positive integer, got 0"),
        ({"label_bank_shard_size": 0}, r"label_bank_shard_size: must be a positive integer, got 0"),
        (
            {"label_bank_in_memory": "yes"},
            r"label_bank_in_memory: must be true, false or null \(auto\), got 'yes'",
        ),
        ({"label_bank_topk": 0}, r"label_bank_topk: must be a positive integer or None"),
        ({"alpha": -0.1}, r"alpha: must be in \[0, 1\]"),
        ({"loss_types": ["dkd"], "loss_weights": []}, r"loss_weights: has 0 entries but loss_types has 1"),
        ({"loss_types": ["dkd"], "loss_weights": [-1.0]}, r"loss_weights: weights must be finite and >= 0"),
        ({"loss_types": ["nope"], "loss_weights": [1.0]}, r"loss_types: unknown loss 'nope'; known: \["),
        ({"loss_types": ["dkd", "dkd"], "loss_weights": [1.0, 1.0]}, r"loss_types: lists a loss twice"),
        (
            {"loss_kwargs": {"jsd": {"beta": 0.3}}},
            r"loss_kwargs: has parameters for 'jsd', which is not in loss_types",
        ),
        ({"loss_kwargs": "{not json"}, r"loss_kwargs must be a JSON object string"),
        ({"image_size": 0}, r"image_size: must be a positive integer"),
        ({"teacher_image_size": -3}, r"teacher_image_size: must be a positive integer"),
        ({"teacher_input": "same/xx"}, r"teacher_input: must be one of"),
        ({"crop": "zoom"}, r"crop: must be one of"),
        ({"crop_scale": [0.5, 0.2]}, r"crop_scale: must be \[min, max\] with 0 < min <= max <= 1"),
        ({"crop_ratio": [0.0, 1.0]}, r"crop_ratio: must be \[min, max\]"),
        ({"hflip": 2.0}, r"hflip: is a probability"),
        ({"interpolation": "lanczos9"}, r"interpolation: must be one of"),
        ({"teacher_dtype": "int8"}, r"teacher_dtype: must be"),
        ({"mixup_alpha": -1.0}, r"mixup_alpha"),
        ({"mix_prob": 1.5}, r"prob"),
        (
            {"dataloader_persistent_workers": True, "dataloader_num_workers": 1},
            r"dataloader_persistent_workers: is not supported",
        ),
    ],
)
def test_invalid_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(**kwargs)


def test_valid_config_and_json_loss_kwargs():
    args = config(loss_types=["jsd"], loss_weights=[0.5], loss_kwargs='{"jsd": {"beta": 0.3}}')
    assert args.loss_kwargs == {"jsd": {"beta": 0.3}}
    assert args.remove_unused_columns is False


def test_yaml_config_with_cli_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "student_model_name_or_path: resnet10t\nteacher_model_name_or_path: some/teacher\n"
        "temperature: 2.0\nalpha: 0.5\nloss_types: [jsd]\nloss_weights: [0.25]\n"
        "loss_kwargs: {jsd: {beta: 0.2}}\noutput_dir: out\nuse_cpu: true\n"
    )
    args = parse_config(argv=["--config", str(path), "--temperature", "3.5", "--num_train_epochs", "2"])
    assert args.temperature == 3.5 and args.alpha == 0.5 and args.num_train_epochs == 2
    assert args.loss_types == ["jsd"] and args.loss_weights == [0.25]
    assert args.loss_kwargs == {"jsd": {"beta": 0.2}}
    assert args.student_model_name_or_path == "resnet10t"


def test_yaml_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("temprature: 2.0\n")
    with pytest.raises(ValueError, match=r"unknown fields \['temprature'\]"):
        parse_config(argv=["--config", str(bad)])
    with pytest.raises(FileNotFoundError, match="no such file"):
        parse_config(argv=["--config", str(tmp_path / "missing.yaml")])
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("output_dir: o\nalpha: 3\nuse_cpu: true\n")
    with pytest.raises(ValueError, match=r"alpha: must be in \[0, 1\]"):
        parse_config(argv=["--config", str(invalid)])


def test_shipped_digits_configs_parse():
    """Every digits config parses into the config class of the recipe that runs it."""
    from pathlib import Path

    from hf_distill.online import TAKDConfig

    config_classes = {"takd": TAKDConfig}
    for path in sorted(Path(__file__).parents[1].glob("recipes/configs/*digits*.yaml")):
        config_class = config_classes.get(path.name.split("_")[0], DistillationConfig)
        args = parse_config(config_class, argv=["--config", str(path)])
        assert isinstance(args, DistillationConfig), path
