"""The recipes' command line: --help, unknown flags, --resume_from_checkpoint as a boolean, the documented
two-process CPU launch, output_dir checks, and what `make demo` writes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hf_distill import DistillationConfig
from hf_distill.cli import parse_config, resume_checkpoint_argument, run

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv=list(argv))
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_lists_config_and_distillation_options_first(capsys):
    text = help_text(capsys, "--help")
    lines = text.splitlines()
    assert lines[0].startswith("usage:") and "--config FILE.yaml" in lines[0]
    inherited = text.index("common training options (transformers.TrainingArguments):")
    assert inherited < text.index("transformers.TrainingArguments options:")
    config_flag = text.index("--config FILE.yaml    ")
    for option in (
        "--teacher_model_name_or_path",
        "--temperature",
        "--alpha",
        "--teacher_input",
        "--image_size",
    ):
        assert config_flag < text.index(f"\n  {option} ") < inherited, option
    # Grouped by the config's sections, each under its own heading.
    assert re.search(r"^models:\n  --student_model_name_or_path", text, re.M)
    assert re.search(r"^loss:\n  --temperature", text, re.M)
    # Inherited options: a few common ones with their help, the rest named with where to read about them.
    tail = text[inherited:]
    assert "--learning_rate" in tail and "--output_dir" in tail and "--help_all" in tail
    assert "--learning_rate FLOAT" in tail  # a common one, with its help
    assert "--lr_scheduler_type" in tail and "The learning rate scheduler type to use" not in text
    assert "--resume_from_checkpoint VALUE" in tail and "latest checkpoint in output_dir" in tail
    assert len(lines) < 600


def test_help_all_adds_the_training_arguments_help_after_the_distillation_options(capsys):
    text = help_text(capsys, "--help_all")
    assert text.index("\n  --temperature ") < text.index("\n  --lr_scheduler_type ")
    assert "The learning rate scheduler type to use" in text


def test_recipe_script_help(capsys):
    sys.path.insert(0, str(RECIPES))
    try:
        import distill
    finally:
        sys.path.remove(str(RECIPES))
    with pytest.raises(SystemExit) as exit_info:
        distill.main(["--help"])
    assert exit_info.value.code == 0
    assert "--config FILE.yaml" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["--lerning_rate", "0.1"],
            "unknown option --lerning_rate (did you mean --learning_rate?); see --help",
        ),
        (["--temprature=2"], "unknown option --temprature (did you mean --temperature?); see --help"),
        (
            ["--alpah", "0.5", "--xyzzy"],
            "unknown options --alpah (did you mean --alpha?), --xyzzy; see --help",
        ),
    ],
)
def test_unknown_flag_is_one_line_with_a_suggestion(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv=["--output_dir", str(tmp_path), "--use_cpu", "true", *argv])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.rstrip().endswith(expected), error


def test_unknown_yaml_field_names_the_closest_one(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("temprature: 2.0\noutput_dir: out\nuse_cpu: true\n")
    with pytest.raises(ValueError, match=r"'temprature': did you mean 'temperature'\?"):
        parse_config(argv=["--config", str(path)])


@pytest.mark.parametrize(
    "value, expected",
    [("true", True), ("True", True), ("false", None), ("False", None), ("outputs/run/checkpoint-8", None)],
)
def test_resume_from_checkpoint_true_means_the_latest_checkpoint(tmp_path, value, expected):
    args = parse_config(
        argv=["--output_dir", str(tmp_path), "--use_cpu", "true", "--resume_from_checkpoint", value]
    )
    assert args.resume_from_checkpoint == (value if value.startswith("outputs/") else expected)


def test_resume_from_checkpoint_from_yaml_and_python():
    assert resume_checkpoint_argument(True) is True  # YAML `resume_from_checkpoint: true`
    assert resume_checkpoint_argument(False) is None
    assert resume_checkpoint_argument(None) is None
    assert resume_checkpoint_argument("yes") is True
    assert resume_checkpoint_argument(" ckpt/dir ") == "ckpt/dir"


class RecordingTrainer:
    """Stands in for a DistillationTrainer: records what run() asks of it."""

    eval_dataset = None
    hub_model_id = None

    def __init__(self):
        self.resume = "not called"

    def train(self, resume_from_checkpoint=None):
        self.resume = resume_from_checkpoint

    def save_model(self):
        pass

    def is_world_process_zero(self):
        return True


def test_run_passes_true_to_trainer_train(tmp_path):
    # A config built in Python with the string "true" still means the latest checkpoint, never a directory.
    args = DistillationConfig(output_dir=str(tmp_path), use_cpu=True, resume_from_checkpoint="true")
    trainer = RecordingTrainer()
    run(trainer, args)
    assert trainer.resume is True
    args.resume_from_checkpoint = "false"
    run(trainer, args)
    assert trainer.resume is None


def test_output_dir_that_is_a_file_fails_at_construction(tmp_path):
    existing = tmp_path / "results.txt"
    existing.write_text("not a directory")
    with pytest.raises(
        ValueError, match=r"DistillationConfig\.output_dir: .*results\.txt' is an existing file"
    ):
        DistillationConfig(output_dir=str(existing), use_cpu=True)
    with pytest.raises(ValueError, match=r"DistillationConfig\.output_dir: .*lies under .*results\.txt'"):
        DistillationConfig(output_dir=str(existing / "run"), use_cpu=True)
    with pytest.raises(ValueError, match=r"output_dir"):
        parse_config(argv=["--output_dir", str(existing), "--use_cpu", "true"])
    DistillationConfig(output_dir=str(tmp_path / "new" / "run"), use_cpu=True)  # missing: fine, created later


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_readme_cpu_command_starts_two_processes(tmp_path):
    """The README's two-process CPU launch really gives a world size of 2 (``--cpu --num_processes 2``
    does not)."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(
        r"^accelerate launch (--multi_gpu --num_processes 2) recipes/distill\.py", readme, re.M
    )
    assert command, "README lost the two-process CPU command"
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from hf_distill import DistillationConfig\n"
        f"args = DistillationConfig(output_dir={str(tmp_path / 'out')!r}, use_cpu=True, report_to='none')\n"
        "print(f'world_size={args.world_size} rank={args.process_index}', flush=True)\n"
    )
    launcher = [sys.executable, "-m", "accelerate.commands.launch", *command.group(1).split()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*launcher, "--num_machines", "1", "--main_process_port", str(free_port()), str(probe)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(re.findall(r"world_size=(\d) rank=(\d)", result.stdout)) == [("2", "0"), ("2", "1")]


def test_demo_leaves_the_tracked_catalogue_alone_unless_asked(tmp_path, monkeypatch):
    calls = []

    class FakeRecipe:
        @staticmethod
        def main(argv):
            calls.append(list(argv))

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "teacher-digits").mkdir(parents=True)
    (tmp_path / "outputs" / "teacher-digits" / "config.json").write_text("{}")
    monkeypatch.setenv("DEMO_RECIPE", "funmatch")
    monkeypatch.setitem(sys.modules, "funmatch", FakeRecipe)
    monkeypatch.setitem(sys.modules, "train_teacher", FakeRecipe)
    monkeypatch.syspath_prepend(str(RECIPES))
    import demo

    demo.main([])
    assert calls[-1] == ["--disable_tqdm", "true"]
    assert not any("model_card_dir" in argument for argument in calls[-1])
    demo.main(["--update-catalogue-card"])
    assert calls[-1][-2:] == ["--model_card_dir", os.path.join("model_cards", "digits-funmatch")]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t.*recipes/demo\.py\n", makefile, re.M)  # no catalogue flag
    assert re.search(r"^demo-card:.*\n\t.*recipes/demo\.py --update-catalogue-card\n", makefile, re.M)


def test_package_license_is_an_spdx_expression():
    """A license table makes setuptools >= 77 print a deprecation on every install."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    (setuptools,) = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    assert setuptools == "setuptools>=77"  # SPDX strings need setuptools 77


def test_train_samples_per_class_draws_a_stratified_subset_by_the_data_seed(tmp_path):
    from collections import Counter

    from hf_distill.cli import load_splits
    from hf_distill.data import digits_dataset

    full = digits_dataset(seed=0)["train"]
    args = parse_config(argv=["--output_dir", str(tmp_path), "--train_samples_per_class", "3", "--seed", "5"])
    train, evaluation = load_splits(args)
    assert Counter(train["label"]) == {c: 3 for c in range(10)} and len(evaluation) == 540
    again, _ = load_splits(args)
    other, _ = load_splits(
        parse_config(argv=["--output_dir", str(tmp_path), "--train_samples_per_class", "3"])
    )
    pixels = [image.tobytes() for image in train["image"]]
    assert pixels == [image.tobytes() for image in again["image"]]  # the same seed, the same images
    assert pixels != [image.tobytes() for image in other["image"]]  # another seed, another draw
    assert set(pixels) <= {image.tobytes() for image in full["image"]}
    with pytest.raises(
        ValueError, match=r"train_samples_per_class=200: classes .* lower train_samples_per_class"
    ):
        load_splits(parse_config(argv=["--output_dir", str(tmp_path), "--train_samples_per_class", "200"]))
    from hf_distill.release import training_config

    assert training_config(args)["train_samples_per_class"] == 3  # the card says the data was a subset
    assert "train_samples_per_class" not in training_config(
        parse_config(argv=["--output_dir", str(tmp_path)])
    )
    from hf_distill.data import per_class_subset

    with pytest.raises(ValueError, match="train_samples_per_class needs labels.*label_column_name='label'"):
        per_class_subset(full.remove_columns("label"), 3)
    with pytest.raises(ValueError, match="train_samples_per_class must be a positive integer, got 0"):
        per_class_subset(full, 0)
    with pytest.raises(ValueError, match="train_samples_per_class: must be a positive integer"):
        DistillationConfig(output_dir=str(tmp_path), train_samples_per_class=0)
