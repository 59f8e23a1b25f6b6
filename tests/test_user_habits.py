"""Code written the way users write it: the transformers knowledge-distillation guide, plain ``Trainer``
habits, modules instead of names, a collator of one's own."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn
from transformers import TrainingArguments, ViTConfig, ViTForImageClassification, ViTImageProcessor

from hf_distill import DistillationConfig, DistillationTrainer

from .conftest import DIGIT_NAMES, SMALL, make_args

TEACHER_MEAN, TEACHER_STD = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]
STUDENT_MEAN, STUDENT_STD = [0.1, 0.2, 0.3], [0.6, 0.7, 0.8]


def tiny_vit(seed: int = 0) -> ViTForImageClassification:
    torch.manual_seed(seed)
    id2label = dict(enumerate(DIGIT_NAMES))
    config = ViTConfig(
        image_size=SMALL,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=10,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    return ViTForImageClassification(config)


@pytest.fixture
def vit_teacher_dir(tmp_path):
    """A teacher trained with its own statistics, saved as `save_pretrained` saves it: weights + processor."""
    directory = tmp_path / "vit-teacher"
    tiny_vit(seed=1).save_pretrained(directory)
    ViTImageProcessor(
        image_mean=TEACHER_MEAN, image_std=TEACHER_STD, size={"height": SMALL, "width": SMALL}
    ).save_pretrained(directory)
    return str(directory)


def plain_cnn(batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if batch_norm:
        layers.append(nn.BatchNorm1d(8))
    return nn.Sequential(*layers, nn.Linear(8, 10))


# ------------------------------------------------------------------------ 1. modules keep their processors
def test_modules_are_normalised_with_their_own_and_the_given_processor(tmp_path, digits, vit_teacher_dir):
    teacher = ViTForImageClassification.from_pretrained(vit_teacher_dir)  # the guide passes modules
    student_processor = ViTImageProcessor(image_mean=STUDENT_MEAN, image_std=STUDENT_STD)
    trainer = DistillationTrainer(
        model=tiny_vit(seed=2),
        teacher_model=teacher,
        args=make_args(tmp_path),
        train_dataset=digits["train"],
        processing_class=student_processor,
    )
    assert trainer.teacher.preprocess.mean == pytest.approx(TEACHER_MEAN)
    assert trainer.teacher.preprocess.std == pytest.approx(TEACHER_STD)
    assert trainer.student_preprocess.mean == pytest.approx(STUDENT_MEAN)
    assert trainer.student_preprocess.std == pytest.approx(STUDENT_STD)
    pixels = torch.full((1, 3, SMALL, SMALL), 255, dtype=torch.uint8)
    expected = (1.0 - torch.tensor(STUDENT_MEAN)) / torch.tensor(STUDENT_STD)
    torch.testing.assert_close(trainer.student_normalizer(pixels)[0, :, 0, 0], expected)

    trainer.train()
    trainer.save_model(str(tmp_path / "student"))
    saved = json.loads((tmp_path / "student" / "preprocessor_config.json").read_text())
    assert saved["image_mean"] == pytest.approx(STUDENT_MEAN)
    assert saved["image_std"] == pytest.approx(STUDENT_STD)


def test_a_plain_module_without_statistics_is_refused_with_the_fix(tmp_path, digits, timm_teacher_dir):
    with pytest.raises(ValueError, match=r"teacher_image_mean.*unknown.*teacher_processing_class"):
        DistillationTrainer(
            model="test_resnet",
            teacher_model=plain_cnn(),
            args=make_args(tmp_path),
            train_dataset=digits["train"],
        )
    with pytest.raises(ValueError, match=r"student_image_mean.*unknown.*processing_class"):
        DistillationTrainer(
            model=plain_cnn(),
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path),
            train_dataset=digits["train"],
        )
    trainer = DistillationTrainer(
        model=plain_cnn(),
        teacher_model=plain_cnn(),
        args=make_args(tmp_path, teacher_image_mean=TEACHER_MEAN, teacher_image_std=TEACHER_STD),
        train_dataset=digits["train"],
        processing_class=ViTImageProcessor(image_mean=STUDENT_MEAN, image_std=STUDENT_STD),
        teacher_processing_class=None,
    )
    assert trainer.teacher.preprocess.mean == pytest.approx(TEACHER_MEAN)
    assert trainer.student_preprocess.mean == pytest.approx(STUDENT_MEAN)


def test_normalisation_settings_are_checked(tmp_path):
    with pytest.raises(
        ValueError, match=r"DistillationConfig\.student_image_std: is needed with student_image_mean"
    ):
        DistillationConfig(output_dir=str(tmp_path), student_image_mean=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"teacher_image_mean: .*0-255 values; give fractions of 255"):
        DistillationConfig(
            output_dir=str(tmp_path),
            teacher_image_mean=[123.7, 116.3, 103.5],
            teacher_image_std=[58.4, 57.1, 57.4],
        )


# --------------------------------------------------------------- 7. a compute_metrics written for Trainer
def test_compute_metrics_written_for_trainer_and_the_teacher_metrics(tmp_path, digits, timm_teacher_dir):
    seen = {}

    def compute_metrics(eval_pred):  # as in the transformers guides
        predictions, labels = eval_pred
        seen["shape"] = predictions.shape
        return {"my_accuracy": float(np.mean(np.argmax(predictions, axis=1) == labels))}

    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path),
        train_dataset=digits["train"],
        eval_dataset=digits["test"],
        compute_metrics=compute_metrics,
    )
    metrics = trainer.evaluate()
    assert seen["shape"] == (len(digits["test"]), 10)
    student, teacher = trainer.predict(digits["test"]).predictions
    labels = np.asarray(digits["test"]["label"])
    assert metrics["eval_my_accuracy"] == pytest.approx(np.mean(student.argmax(1) == labels))
    assert metrics["eval_teacher_accuracy"] == pytest.approx(np.mean(teacher.argmax(1) == labels))
    assert metrics["eval_teacher_agreement"] == pytest.approx(np.mean(student.argmax(1) == teacher.argmax(1)))
    assert metrics["eval_kl_to_teacher"] >= 0.0
    assert "eval_accuracy" not in metrics  # the student's metrics are the user's

    reduced = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path),
        train_dataset=digits["train"],
        eval_dataset=digits["test"],
        compute_metrics=lambda p: {"my_accuracy": float(np.mean(p.predictions == p.label_ids))},
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
    ).evaluate()
    assert reduced["eval_my_accuracy"] == pytest.approx(metrics["eval_my_accuracy"])
    assert reduced["eval_teacher_accuracy"] == pytest.approx(metrics["eval_teacher_accuracy"])


# --------------------------------------------------------------------- 8. the guide's and Trainer's habits
def test_guide_keywords_and_training_arguments(tmp_path, digits, timm_teacher_dir, caplog):
    training_args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        max_steps=1,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
    )
    with caplog.at_level(logging.WARNING, logger="hf_distill.trainer"):
        trainer = DistillationTrainer(
            student_model="test_resnet",
            teacher_model=timm_teacher_dir,
            args=training_args,
            train_dataset=digits["train"],
        )
    assert isinstance(trainer.args, DistillationConfig)
    assert (trainer.args.learning_rate, trainer.args.per_device_train_batch_size) == (3e-3, 16)
    assert trainer.args.remove_unused_columns is False  # the collator reads the image column
    assert "DistillationConfig(...)" in caplog.text
    trainer.train()
    assert trainer.state.global_step == 1

    with pytest.raises(TypeError) as error:
        DistillationTrainer(
            student_model="test_resnet",
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path),
            temperature=5,
            lambda_param=0.5,
        )
    message = str(error.value)
    assert "DistillationConfig(..., temperature=5, alpha=0.5)" in message and "\n" not in message
    assert len(message) < 200


def test_positional_trainer_order_and_short_errors(tmp_path, digits, timm_teacher_dir):
    args = make_args(tmp_path, teacher_model_name_or_path=timm_teacher_dir)
    trainer = DistillationTrainer("test_resnet", args, train_dataset=digits["train"])  # Trainer(model, args)
    assert trainer.args is args and trainer.teacher is not None

    without_teacher = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none")
    with pytest.raises(ValueError) as error:
        DistillationTrainer("test_resnet", without_teacher, train_dataset=digits["train"])
    assert "teacher_model=" in str(error.value) and len(str(error.value)) < 300
    with pytest.raises(TypeError) as error:
        DistillationTrainer("test_resnet", timm_teacher_dir, {"output_dir": "out"})
    assert "DistillationConfig(output_dir=" in str(error.value) and len(str(error.value)) < 200
    with pytest.raises(TypeError, match="`model=` or `student_model=`, not both"):
        DistillationTrainer(model="test_resnet", student_model="test_resnet", args=args)


# ------------------------------------------------------- 10. a last batch of one sample, BatchNorm student
def test_last_batch_of_one_sample_does_not_crash_a_batchnorm_student(
    tmp_path, digits, timm_teacher_dir, caplog
):
    seventeen = digits["train"].select(range(17))  # batch 16: the epoch ends with one sample
    args = make_args(tmp_path, max_steps=-1, num_train_epochs=1, per_device_train_batch_size=16)
    with caplog.at_level(logging.WARNING, logger="hf_distill.trainer"):
        trainer = DistillationTrainer(
            model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=seventeen
        )
    assert "would hold 1 sample" in caplog.text
    trainer.train()  # without the drop: "Expected more than 1 value per channel when training"
    assert trainer.state.global_step == 1
    assert args.dataloader_drop_last is False  # the user's config is left as it was

    bn_free = DistillationTrainer(
        model=plain_cnn(),
        teacher_model=timm_teacher_dir,
        args=make_args(
            tmp_path / "plain",
            max_steps=-1,
            num_train_epochs=1,
            student_image_mean=STUDENT_MEAN,
            student_image_std=STUDENT_STD,
        ),
        train_dataset=seventeen,
    )
    bn_free.train()
    assert bn_free.state.global_step == 2  # nothing to protect: the one-sample batch is trained on


# --------------------------------------------------------------------------- 2. a collator of one's own
def test_user_collator_is_used_for_training_and_evaluation(tmp_path, digits, timm_teacher_dir):
    calls = {"n": 0}

    def collate(rows):
        calls["n"] += 1
        pixels = [
            torch.from_numpy(np.array(row["image"].convert("RGB").resize((SMALL, SMALL)))).permute(2, 0, 1)
            for row in rows
        ]
        return {"pixel_values": torch.stack(pixels), "labels": torch.tensor([row["label"] for row in rows])}

    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path, max_steps=1),
        train_dataset=digits["train"],
        eval_dataset=digits["test"],
        data_collator=collate,
    )
    assert trainer.eval_collator is collate
    trainer.train()
    before = calls["n"]
    metrics = trainer.evaluate()
    assert calls["n"] > before and "eval_teacher_accuracy" in metrics


def test_user_collator_with_normalised_floats_is_refused(tmp_path, digits, timm_teacher_dir):
    processor = ViTImageProcessor(size={"height": SMALL, "width": SMALL})

    def collate(rows):  # the guide's pre-processing: normalised float pixels
        pixel_values = processor([row["image"] for row in rows], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": torch.tensor([row["label"] for row in rows])}

    with pytest.raises(
        ValueError, match=r"torch\.float32 in \[-?\d.*normalised already\?.*uint8 pixel_values"
    ):
        DistillationTrainer(
            model="test_resnet",
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path),
            train_dataset=digits["train"],
            data_collator=collate,
        )


def test_ensemble_members_take_one_processor_each(tmp_path, digits, timm_teacher_dir):
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=[plain_cnn(), timm_teacher_dir],
        args=make_args(tmp_path, teacher_image_size=None, teacher_image_sizes=[SMALL, SMALL]),
        train_dataset=digits["train"],
        teacher_processing_class=[ViTImageProcessor(image_mean=TEACHER_MEAN, image_std=TEACHER_STD), None],
    )
    plain, timm_member = trainer.teacher.members
    assert plain.preprocess.mean == pytest.approx(TEACHER_MEAN)
    assert timm_member.preprocess.mean == pytest.approx(tuple(timm_member.module.pretrained_cfg["mean"]))
    with pytest.raises(TypeError, match="one per teacher"):
        DistillationTrainer(
            model="test_resnet",
            teacher_model=[plain_cnn(), timm_teacher_dir],
            args=make_args(tmp_path, teacher_image_size=None, teacher_image_sizes=[SMALL, SMALL]),
            train_dataset=digits["train"],
            teacher_processing_class=ViTImageProcessor(),
        )
