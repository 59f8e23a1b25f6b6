"""DistillationTrainer end to end on tiny models: what trains, what stays frozen, what gets saved."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from transformers import pipeline

from hf_distill import DistillationTrainer
from hf_distill.losses import kd_loss

from .conftest import make_args, tiny_hf_resnet, tiny_timm


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_students_weights_change_teacher_stays_bit_identical(tmp_path, digits, timm_teacher_dir):
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path),
        train_dataset=digits["train"],
    )
    student_before, teacher_before = state(trainer.model), state(trainer.teacher.module)
    trainer.train()
    changed = [
        k
        for k, v in state(trainer.model).items()
        if v.is_floating_point() and not torch.equal(v, student_before[k])
    ]
    assert changed, "no student parameter changed"
    assert any("fc" in k or "head" in k for k in changed)
    for key, value in state(trainer.teacher.module).items():
        assert torch.equal(value, teacher_before[key]), f"teacher tensor {key} changed"
    assert not any(p.requires_grad for p in trainer.teacher.module.parameters())
    assert not trainer.teacher.module.training
    # The teacher is not part of what the optimizer updates.
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in trainer.teacher.module.parameters()}
    # Each term is logged under its own name.
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all("loss_kd" in e and "loss_ce" in e for e in logged)


def test_gradients_reach_student_never_teacher(tmp_path, digits, timm_teacher_dir):
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path),
        train_dataset=digits["train"],
    )
    batch = trainer.data_collator([digits["train"][i] | {"sample_id": i} for i in range(8)])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for p in trainer.model.parameters()
        if p.requires_grad
    )
    assert sum(p.grad.abs().sum() for p in trainer.model.parameters()) > 0
    assert all(p.grad is None for p in trainer.teacher.module.parameters())


def test_loss_is_weighted_sum_of_ce_and_kd(tmp_path, digits, timm_teacher_dir):
    args = make_args(tmp_path, alpha=0.7, temperature=3.0)
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    batch = trainer.data_collator([digits["train"][i] | {"sample_id": i} for i in range(8)])
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        student = trainer.model(
            (batch["pixel_values"].float() / 255 - trainer.student_normalizer.mean / 255)
            / (1 / (trainer.student_normalizer.inv_std * 255))
        )
        teacher = trainer.teacher(batch["pixel_values"])
    expected = 0.3 * nn.functional.cross_entropy(student, batch["labels"]) + 0.7 * kd_loss(
        student, teacher, 3.0
    )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_is_exact(tmp_path, digits, timm_teacher_dir):
    """GA=2 at batch B/2 updates the student like GA=1 at batch B (a student without batch norm)."""

    def student():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
        )

    results = []
    for batch_size, steps in ((16, 1), (8, 2)):
        args = make_args(
            tmp_path / f"ga{steps}",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=steps,
            optim="sgd",
            learning_rate=0.5,
            max_steps=2,
            # a plain nn.Module carries no normalisation of its own
            student_image_mean=[0.5, 0.5, 0.5],
            student_image_std=[0.25, 0.25, 0.25],
        )
        trainer = DistillationTrainer(
            model=student(), teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
        )
        trainer.train()
        results.append(state(trainer.model))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-6)


def test_evaluate_reports_student_and_teacher_metrics(tmp_path, digits, timm_teacher_dir):
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path),
        train_dataset=digits["train"],
        eval_dataset=digits["test"],
    )
    metrics = trainer.evaluate()
    for key in (
        "eval_accuracy",
        "eval_top5_accuracy",
        "eval_teacher_accuracy",
        "eval_teacher_agreement",
        "eval_kl_to_teacher",
    ):
        assert key in metrics, key
    # Check the agreement against the models themselves on the evaluation view.
    batch = trainer.eval_collator([digits["test"][i] for i in range(48)])
    with torch.no_grad():
        trainer.model.eval()
        s = trainer.student_logits(trainer.model, batch["pixel_values"]).argmax(-1)
        t = trainer.teacher(batch["pixel_values"]).argmax(-1)
    assert metrics["eval_teacher_agreement"] == pytest.approx((s == t).float().mean().item())
    assert metrics["eval_accuracy"] == pytest.approx((s == batch["labels"]).float().mean().item())


def test_saved_timm_student_loads_in_timm_and_pipeline(tmp_path, digits, timm_teacher_dir):
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path),
        train_dataset=digits["train"],
    )
    trainer.train()
    trainer.save_model()
    out = trainer.args.output_dir
    batch = trainer.eval_collator([digits["test"][i] for i in range(6)])
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.student_logits(trainer.model, batch["pixel_values"].to(trainer.args.device))
        reloaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        data_config = timm.data.resolve_data_config(model=reloaded)
        mean = torch.tensor(data_config["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(data_config["std"]).view(1, 3, 1, 1)
        got = reloaded((batch["pixel_values"].float() / 255 - mean) / std)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert reloaded.pretrained_cfg["label_names"] == [str(i) for i in range(10)]

    classifier = pipeline("image-classification", model=out, device="cpu")
    image = digits["test"][0]["image"]
    predictions = classifier(image, top_k=10)
    assert {p["label"] for p in predictions} == {str(i) for i in range(10)}
    scores = {p["label"]: p["score"] for p in predictions}
    probs = expected[0].softmax(-1)
    for i in range(10):
        assert scores[str(i)] == pytest.approx(probs[i].item(), abs=2e-3)
    # Only the student: no teacher weights, no optimizer state.
    import os

    assert sorted(f for f in os.listdir(out) if not f.startswith(".")) == [
        "README.md",  # the model card and its training curve (hf_distill.release)
        "config.json",
        "model.safetensors",
        "training_curve.png",
    ]


def test_saved_transformers_student_loads_in_pipeline(tmp_path, digits, timm_teacher_dir):
    trainer = DistillationTrainer(
        model=tiny_hf_resnet(label_names=None),
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path),
        train_dataset=digits["train"],
    )
    trainer.train()
    trainer.save_model()
    out = trainer.args.output_dir
    classifier = pipeline("image-classification", model=out, device="cpu")
    predictions = classifier(digits["test"][0]["image"], top_k=3)
    assert all(p["label"] in {str(i) for i in range(10)} for p in predictions)
    from transformers import AutoModelForImageClassification

    reloaded = AutoModelForImageClassification.from_pretrained(out).eval()
    batch = trainer.eval_collator([digits["test"][i] for i in range(4)])
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.student_logits(trainer.model, batch["pixel_values"])
        got = reloaded(pixel_values=trainer.student_normalizer(batch["pixel_values"])).logits
    torch.testing.assert_close(got, expected)
    assert reloaded.config.id2label[3] == "3"


def test_teacher_with_permuted_labels_is_mapped(tmp_path, digits):
    order = [str(i) for i in (3, 1, 4, 0, 5, 9, 2, 6, 8, 7)]
    teacher = tiny_timm(seed=3, label_names=order)
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=teacher, args=make_args(tmp_path), train_dataset=digits["train"]
    )
    pixels = trainer.eval_collator([digits["test"][i] for i in range(4)])["pixel_values"]
    with torch.no_grad():
        raw = teacher(trainer.teacher.normalizer(pixels))
        mapped = trainer.teacher(pixels)
    for student_index, name in enumerate(str(i) for i in range(10)):
        torch.testing.assert_close(mapped[:, student_index], raw[:, order.index(name)])


def test_label_mismatch_raises_with_both_label_lists(tmp_path, digits):
    teacher = tiny_timm(seed=3, label_names=[f"class_{i}" for i in range(10)])
    with pytest.raises(ValueError, match=r"label spaces differ(.|\n)*class_0(.|\n)*'0'"):
        DistillationTrainer(
            model="test_resnet",
            teacher_model=teacher,
            args=make_args(tmp_path),
            train_dataset=digits["train"],
        )


def test_unnamed_teacher_with_wrong_head_size_raises(tmp_path, digits):
    teacher = tiny_timm(num_classes=7, label_names=None)
    with pytest.raises(ValueError, match="teacher has 7 outputs but the dataset has 10 classes"):
        DistillationTrainer(
            model="test_resnet",
            teacher_model=teacher,
            args=make_args(tmp_path),
            train_dataset=digits["train"],
        )


def test_teacher_resolution_differs_from_student(tmp_path, digits, timm_teacher_dir):
    args = make_args(tmp_path, image_size=24, teacher_image_size=40, crop="ic", teacher_input="same/ic")
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    batch = trainer.data_collator([digits["train"][i] | {"sample_id": i} for i in range(4)])
    assert batch["pixel_values"].shape[-1] == 24 and batch["teacher_pixel_values"].shape[-1] == 40
    trainer.train()
    assert trainer.teacher.calls >= 3


def test_vit_student_rejects_a_resolution_it_cannot_take(tmp_path, digits, timm_teacher_dir):
    from transformers import ViTConfig, ViTForImageClassification

    vit = ViTForImageClassification(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            num_labels=10,
        )
    )
    with pytest.raises(ValueError, match="image_size=30"):
        DistillationTrainer(
            model=vit,
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path, image_size=30),
            train_dataset=digits["train"],
        )


def test_missing_image_column_and_empty_dataset(tmp_path, digits, timm_teacher_dir):
    renamed = digits["train"].rename_column("image", "img")
    with pytest.raises(ValueError, match="image_column_name"):
        DistillationTrainer(
            model="test_resnet",
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path),
            train_dataset=renamed,
        )
    with pytest.raises(ValueError, match="train_dataset is empty"):
        DistillationTrainer(
            model="test_resnet",
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path),
            train_dataset=digits["train"].select([]),
        )


def test_unlabelled_distillation_data_uses_kd_only(tmp_path, digits, timm_teacher_dir):
    unlabelled = digits["train"].remove_columns("label")
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path, alpha=0.5),
        train_dataset=unlabelled,
        eval_dataset=digits["test"],
    )
    batch = trainer.data_collator([unlabelled[i] | {"sample_id": i} for i in range(4)])
    assert "labels" not in batch
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all("loss_ce" not in e for e in logged)
    assert all(e["loss"] == pytest.approx(e["loss_kd"], rel=1e-3) for e in logged)


def test_extra_loss_terms_and_custom_callable(tmp_path, digits, timm_teacher_dir):
    calls = []

    def logit_l1(student, teacher, batch, scale=1.0):
        calls.append(scale)
        return scale * (student.logits.float() - teacher.logits.float()).abs().mean()

    args = make_args(
        tmp_path,
        loss_types=["dkd", logit_l1],
        loss_weights=[0.5, 2.0],
        loss_kwargs={"logit_l1": {"scale": 3.0}},
    )
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert all("loss_dkd" in e and "loss_logit_l1" in e for e in logged)
    assert calls and set(calls) == {3.0}
    first = logged[0]
    total = (
        0.1 * first["loss_ce"]
        + 0.9 * first["loss_kd"]
        + 0.5 * first["loss_dkd"]
        + 2.0 * first["loss_logit_l1"]
    )
    assert first["loss"] == pytest.approx(total, rel=1e-3)


def test_timm_vit_with_fixed_input_size_rejects_other_resolution(tmp_path, digits, timm_teacher_dir):
    vit = timm.create_model("test_vit", num_classes=10, img_size=32, patch_size=8, dynamic_img_size=False)
    with pytest.raises(ValueError, match="image_size=48: the model cannot take 48x48"):
        DistillationTrainer(
            model=vit,
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path, image_size=48),
            train_dataset=digits["train"],
        )
