"""Releasing a student: what push_to_hub uploads (intercepted, offline), the card it carries, loading the
uploaded files back by repo id from a Hub cache, and the checks and failure modes around pushing."""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from huggingface_hub import ModelCard
from torch import nn
from transformers import AutoModelForImageClassification, pipeline

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.release import (
    PushToHubError,
    latest_eval_metrics,
    main,
    methods_of,
    student_files,
    upload_student,
)

from .conftest import DIGIT_NAMES, make_args, tiny_hf_resnet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = "someorg/digits-student"


class UnusedAuxiliary(nn.Module):
    """A trainable auxiliary module: it must reach checkpoints but never a release."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))

    def forward(self, student, teacher, batch):
        return None


def push_args(tmp_path, **overrides):
    base = dict(push_to_hub=True, hub_model_id=REPO, hub_token="hf_test_token", card_throughput_batches=1)
    base.update(overrides)
    return make_args(tmp_path, **base)


def local_files(directory) -> dict[str, bytes]:
    return {name: (Path(directory) / name).read_bytes() for name in student_files(directory)}


def eval_batch(trainer, digits, n=6):
    batch = trainer.eval_collator([digits["test"][i] for i in range(n)])
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.student_logits(trainer.model, batch["pixel_values"].to(trainer.args.device))
    return batch, logits


# ------------------------------------------------------------------------------------ timm student


def test_push_uploads_only_the_timm_student_and_it_loads_by_repo_id(tmp_path, digits, timm_teacher_dir, hub):
    args = push_args(tmp_path, save_strategy="steps", save_steps=2, hub_strategy="every_save")
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=args,
        train_dataset=digits["train"],
        eval_dataset=digits["test"],
        auxiliary_modules={"extra": UnusedAuxiliary()},
    )
    assert hub.created == [REPO]  # the repo is created (and the token used) at construction, before training
    trainer.train()
    metrics = trainer.evaluate()
    trainer.push_to_hub()

    out = Path(args.output_dir)
    # What stayed local: checkpoints with optimizer state and the auxiliary module.
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "optimizer.pt").exists() and (checkpoint / "auxiliary.safetensors").exists()

    *checkpoint_pushes, final = hub.uploads
    assert len(checkpoint_pushes) == 2  # hub_strategy='every_save': steps 2 and 3
    for push in checkpoint_pushes:
        assert push["repo_id"] == REPO
        assert sorted(push["files"]) == ["config.json", "model.safetensors"]
    assert final["repo_id"] == REPO and final["commit_message"] == "End of training"
    assert sorted(final["files"]) == ["README.md", "config.json", "model.safetensors", "training_curve.png"]
    assert final["files"] == local_files(out)  # byte for byte what the output directory holds
    assert final["files"]["training_curve.png"].startswith(PNG_MAGIC)
    assert not any(
        Path(tempfile_dir).name.startswith("hf-distill-upload-") for tempfile_dir in os.listdir(out)
    )

    repo_id = hub.publish(REPO)
    batch, expected = eval_batch(trainer, digits)
    with torch.no_grad():
        reloaded = timm.create_model("hf-hub:" + repo_id, pretrained=True).eval()
        config = timm.data.resolve_data_config(model=reloaded)
        mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(config["std"]).view(1, 3, 1, 1)
        got = reloaded((batch["pixel_values"].float() / 255 - mean) / std)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert reloaded.pretrained_cfg["label_names"] == DIGIT_NAMES

    classifier = pipeline("image-classification", model=repo_id, device="cpu")
    for i in range(3):
        scores = {p["label"]: p["score"] for p in classifier(digits["test"][i]["image"], top_k=10)}
        probabilities = expected[i].softmax(-1)
        for label, name in enumerate(DIGIT_NAMES):
            assert scores[name] == pytest.approx(probabilities[label].item(), abs=2e-3)

    # The card that went up: metadata parses, results are trainer.evaluate()'s.
    card = ModelCard.load(huggingface_hub.hf_hub_download(repo_id, "README.md"))
    data = card.data
    assert data.library_name == "timm" and data.pipeline_tag == "image-classification"
    assert {"distillation", "hf-distill"} <= set(data.tags)
    assert data.datasets == ["sklearn/digits"]
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results == {"accuracy": metrics["eval_accuracy"], "top_5_accuracy": metrics["eval_top5_accuracy"]}
    assert all(r.dataset_split == "test" for r in data.eval_results)
    text = card.text
    assert f"{100 * metrics['eval_teacher_accuracy']:.2f}%" in text
    assert f"{100 * metrics['eval_teacher_agreement']:.2f}% of the evaluation images" in text
    student_params = sum(p.numel() for p in trainer.student.parameters())
    assert f"{student_params:,}" in text
    assert "**Speed-up:**" in text  # throughput of both was measured
    assert "@article{hinton2015distilling," in text  # BibTeX of the method used (KD)
    assert "](training_curve.png)" in text
    assert "| `temperature` | 4 |" in text and "| `teacher_input` | same |" in text
    assert f'timm.create_model("hf-hub:{REPO}", pretrained=True)' in text
    assert f'pipeline("image-classification", model="{REPO}")' in text
    assert "## Intended uses" in text and "## Limitations" in text
    assert "timm-teacher" in text and "https://huggingface.co/./" not in text  # a local teacher is a path


# ---------------------------------------------------------------------------- transformers student


def test_transformers_student_release_files_and_catalogue_copy(tmp_path, digits, timm_teacher_dir, hub):
    catalogue = tmp_path / "model_cards" / "digits"
    args = push_args(
        tmp_path, hub_model_id=None, output_dir=str(tmp_path / "tiny-digits"), model_card_dir=str(catalogue)
    )
    trainer = DistillationTrainer(
        model=tiny_hf_resnet(label_names=None),
        teacher_model=timm_teacher_dir,
        args=args,
        train_dataset=digits["train"],
        eval_dataset=digits["test"],
    )
    assert hub.created == ["tiny-digits"]  # derived from the output directory's name, like the Trainer does
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()  # with push_to_hub: saves, writes the card, then uploads (commit "Model save")

    (upload,) = hub.uploads
    assert upload["commit_message"] == "Model save"
    assert sorted(upload["files"]) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "training_curve.png",
    ]
    assert upload["files"] == local_files(args.output_dir)
    assert (catalogue / "README.md").read_bytes() == upload["files"]["README.md"]
    assert (catalogue / "training_curve.png").read_bytes() == upload["files"]["training_curve.png"]

    repo_id = hub.publish("someorg/tiny-digits")
    card = ModelCard.load(huggingface_hub.hf_hub_download(repo_id, "README.md"))
    assert card.data.library_name == "transformers"
    assert card.data.eval_results[0].metric_value == metrics["eval_accuracy"]
    assert "timm.create_model" not in card.text  # a transformers student: only the transformers snippet

    batch, expected = eval_batch(trainer, digits, n=4)
    reloaded = AutoModelForImageClassification.from_pretrained(repo_id).eval()
    assert reloaded.config.id2label == dict(enumerate(DIGIT_NAMES))
    with torch.no_grad():
        got = reloaded(pixel_values=trainer.student_normalizer(batch["pixel_values"])).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    classifier = pipeline("image-classification", model=repo_id, device="cpu")
    top = classifier(digits["test"][0]["image"], top_k=1)[0]
    assert top["label"] == DIGIT_NAMES[int(expected[0].argmax())]


# ----------------------------------------------------------------------------------- failed pushes


def test_failed_upload_leaves_complete_output_dir_and_names_the_retry(
    tmp_path, digits, timm_teacher_dir, hub
):
    args = push_args(tmp_path, hub_strategy="end")
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    trainer.train()
    hub.fail = ConnectionError("connection reset by peer")
    out = Path(args.output_dir)
    with pytest.raises(
        PushToHubError, match=r"python -m hf_distill\.release .*someorg/digits-student"
    ) as info:
        trainer.save_model()
    assert "connection reset by peer" in str(info.value) and "complete and unchanged" in str(info.value)

    # The upload had the full student; the output directory holds it, complete, with no temporary files.
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors", "training_curve.png"]
    assert hub.uploads[-1]["files"] == local_files(out)
    _, expected = eval_batch(trainer, digits, n=2)
    reloaded = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(
        p.numel() for p in trainer.student.parameters()
    )
    assert ModelCard.load(out / "README.md").data.library_name == "timm"

    # The retry the message names uploads the same files.
    hub.fail = None
    main([str(out), REPO])
    assert hub.uploads[-1]["files"] == local_files(out) and hub.created[-1] == REPO


def test_upload_without_saved_student_is_refused(tmp_path, hub):
    (tmp_path / "README.md").write_text("---\n---\n")
    with pytest.raises(FileNotFoundError, match=r"no saved student.*trainer\.save_model\(\)"):
        upload_student(tmp_path, REPO)
    assert not hub.uploads


# ------------------------------------------------------------------------------ checks at construction


def test_push_without_token_fails_at_construction(tmp_path, monkeypatch, hub):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match=r"DistillationConfig\.hub_token: .*hf auth login.*HF_TOKEN"):
        push_args(tmp_path, hub_token=None)


def test_push_enabled_after_validation_is_checked_before_training(
    tmp_path, digits, timm_teacher_dir, monkeypatch, hub
):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    args = make_args(tmp_path)
    args.push_to_hub = True  # bypasses DistillationConfig validation
    with pytest.raises(ValueError, match=r"DistillationConfig\.hub_token"):
        DistillationTrainer(
            model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
        )
    assert not hub.created


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hub_model_id": "org/with space"}, r"DistillationConfig\.hub_model_id: is not a valid Hub repo id"),
        ({"hub_model_id": None, "output_dir": "runs/bad name!"}, r"output directory name 'bad name!'"),
        ({"hub_strategy": "checkpoint"}, r"DistillationConfig\.hub_strategy: .*optimizer state"),
        ({"hub_strategy": "all_checkpoints"}, r"DistillationConfig\.hub_strategy"),
    ],
)
def test_unusable_push_settings_fail_at_construction(tmp_path, hub, overrides, message):
    if "output_dir" in overrides:
        overrides = {**overrides, "output_dir": str(tmp_path / overrides["output_dir"])}
    with pytest.raises(ValueError, match=message):
        push_args(tmp_path, **overrides)


def test_offline_mode_fails_at_construction(tmp_path, monkeypatch, hub):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"DistillationConfig\.push_to_hub: HF_HUB_OFFLINE is set"):
        push_args(tmp_path)


def test_card_settings_are_validated(tmp_path):
    with pytest.raises(ValueError, match=r"DistillationConfig\.card_throughput_batches"):
        make_args(tmp_path, card_throughput_batches=-1)


# ------------------------------------------------------------------------------------ card contents


def test_no_card_when_disabled_or_without_teacher(tmp_path, digits, timm_teacher_dir):
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path, write_model_card=False, max_steps=1),
        train_dataset=digits["train"],
    )
    trainer.train()
    trainer.save_model()
    assert student_files(trainer.args.output_dir) == ["config.json", "model.safetensors"]

    plain = DistillationTrainer(
        model="test_resnet",
        args=make_args(tmp_path / "ce", alpha=0.0, max_steps=1),
        train_dataset=digits["train"],
    )
    plain.train()
    plain.save_model()  # a model trained without a teacher is no distilled student: no card
    assert student_files(plain.args.output_dir) == ["config.json", "model.safetensors"]


def test_methods_follow_the_config(tmp_path):
    def methods(**overrides):
        return methods_of(DistillationConfig(output_dir=str(tmp_path), **overrides))

    assert methods() == ["kd"]
    assert methods(teacher_input="funmatch", alpha=1.0) == ["funmatch", "kd"]
    assert methods(alpha=0.0, loss_types=["dkd"], loss_weights=[1.0]) == ["dkd"]
    assert methods(logit_standardization=True) == ["kd", "kd_standardized"]
    assert methods(augmentation_mode="tlcutmix", cutmix_alpha=1.0, pick=True) == ["kd", "tlcutmix", "pick"]


def test_latest_eval_metrics_takes_the_last_evaluation_and_drops_set_names():
    history = [
        {"loss": 2.0, "step": 1},
        {"eval_accuracy": 0.1, "eval_loss": 3.0, "step": 1},
        {"loss": 1.0, "step": 2},
        {
            "eval_digits_accuracy": 0.5,
            "eval_digits_teacher_accuracy": 0.7,
            "eval_digits_loss": 1.5,
            "step": 2,
        },
        {"train_runtime": 3.0, "step": 2},
    ]
    assert latest_eval_metrics(history) == {
        "eval_accuracy": 0.5,
        "eval_teacher_accuracy": 0.7,
        "eval_loss": 1.5,
    }
    assert latest_eval_metrics(history[:3]) == {"eval_accuracy": 0.1, "eval_loss": 3.0}
    assert latest_eval_metrics([{"loss": 1.0}]) == {}
    named = {
        "eval_my_set_teacher_accuracy": 0.4,
        "eval_my_set_accuracy": 0.3,
        "eval_my_set_top5_accuracy": 0.9,
    }
    assert latest_eval_metrics([named]) == {
        "eval_accuracy": 0.3,
        "eval_teacher_accuracy": 0.4,
        "eval_top5_accuracy": 0.9,
    }


def test_explicit_push_checks_the_token_then_uploads_the_student(
    tmp_path, digits, timm_teacher_dir, monkeypatch, hub
):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path, hub_model_id=REPO, max_steps=1),  # push_to_hub off: pushing only on request
        train_dataset=digits["train"],
    )
    trainer.train()
    with pytest.raises(ValueError, match=r"DistillationConfig\.hub_token: .*none was found"):
        trainer.push_to_hub()
    assert not hub.created and student_files(trainer.args.output_dir) == []  # nothing saved before the error
    trainer.push_to_hub(token="hf_explicit", commit_message="First release")
    (upload,) = hub.uploads
    assert (
        hub.created == [REPO]
        and upload["token"] == "hf_explicit"
        and upload["commit_message"] == "First release"
    )
    assert sorted(upload["files"]) == ["README.md", "config.json", "model.safetensors", "training_curve.png"]


# ------------------------------------------------------------------------------------- the catalogue

CATALOGUE = Path(__file__).resolve().parents[1] / "model_cards"


@pytest.mark.parametrize("card_path", sorted(CATALOGUE.glob("*/README.md")), ids=lambda p: p.parent.name)
def test_catalogue_cards_parse(card_path):
    card = ModelCard.load(card_path)
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.library_name in ("timm", "transformers")
    assert {"distillation", "hf-distill"} <= set(card.data.tags)
    assert "```bibtex" in card.text and "## Limitations" in card.text
    if "](training_curve.png)" in card.text:
        assert (card_path.parent / "training_curve.png").read_bytes().startswith(PNG_MAGIC)
    if "Pre-release card" not in card.text:  # a trained student's card reports its measured accuracy
        assert card.data.eval_results and 0 <= card.data.eval_results[0].metric_value <= 1


def test_catalogue_has_the_demo_student():
    assert (CATALOGUE / "digits-funmatch" / "README.md").exists(), "run `make demo` to write it"


def test_cli_push_to_hub_flag_uploads_after_training(tmp_path, digits, timm_teacher_dir, hub, capsys):
    from hf_distill.cli import parse_config, run

    args = parse_config(
        argv=[
            *("--output_dir", str(tmp_path / "cli-out"), "--student_model_name_or_path", "test_resnet"),
            *("--teacher_model_name_or_path", timm_teacher_dir, "--image_size", "32", "--crop", "rs"),
            *("--max_steps", "2", "--logging_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true"),
            *("--push_to_hub", "true", "--hub_model_id", REPO, "--hub_token", "hf_cli"),
            *("--card_throughput_batches", "0"),
        ]
    )
    trainer = DistillationTrainer(args=args, train_dataset=digits["train"], eval_dataset=digits["test"])
    metrics = run(trainer, args)
    *checkpoint_pushes, upload = (
        hub.uploads
    )  # the Trainer checkpoints the last step: its student goes up first
    assert all(sorted(push["files"]) == ["config.json", "model.safetensors"] for push in checkpoint_pushes)
    assert upload["commit_message"] == "Model save"
    assert upload["files"] == local_files(args.output_dir)
    card = ModelCard(upload["files"]["README.md"].decode())
    assert card.data.eval_results[0].metric_value == metrics["eval_accuracy"]
    assert "Speed-up" not in card.text  # card_throughput_batches=0: not timed
    assert f"pushed to: https://huggingface.co/{REPO}" in capsys.readouterr().out
