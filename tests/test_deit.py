"""DeiT token distillation: loss formulas, both student libraries end to end, saving, bad configs."""

from __future__ import annotations

import pytest
import timm
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

from hf_distill import DistillationTrainer
from hf_distill.deit import DEIT_HEADS, DeiTHeads, deit_heads, deit_loss
from hf_distill.losses import ModelOutputs

from .conftest import DIGIT_NAMES, make_args

# A DeiT small enough for a few CPU steps: 32x32 inputs, 8x8 patches, one block.
TINY_DEIT_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


def tiny_hf_deit(seed: int = 0):
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    torch.manual_seed(seed)
    id2label = dict(enumerate(DIGIT_NAMES))
    config = DeiTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    return DeiTForImageClassificationWithTeacher(config)


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def kl_teacher_student(student_logits, teacher_logits, tau):
    """Independent formula: tau^2 * mean_b sum_c p_t (log p_t - log p_s)."""
    p_t = torch.softmax(teacher_logits.double() / tau, -1)
    log_p_s = torch.log_softmax(student_logits.double() / tau, -1)
    return (p_t * (p_t.log() - log_p_s)).sum(-1).mean() * tau**2


def nll(logits, targets):
    return -torch.log_softmax(logits.double(), -1)[torch.arange(len(targets)), targets].mean()


# ----------------------------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_deit_loss_formula(mode, alpha):
    torch.manual_seed(0)
    cls, dist, teacher = torch.randn(6, 5) * 3, torch.randn(6, 5) * 3, torch.randn(6, 5) * 3
    labels = torch.randint(0, 5, (6,))
    student = ModelOutputs((cls + dist) / 2, auxiliary={DEIT_HEADS: DeiTHeads(cls, dist)})
    total, terms = deit_loss(student, ModelOutputs(teacher), labels, mode=mode, alpha=alpha, temperature=2.5)
    distill = kl_teacher_student(dist, teacher, 2.5) if mode == "soft" else nll(dist, teacher.argmax(-1))
    expected = (1 - alpha) * nll(cls, labels) + alpha * distill
    assert torch.allclose(total.double(), expected, atol=1e-5)
    assert torch.allclose(terms[f"deit_{mode}"].double(), distill, atol=1e-5)
    assert ("ce" in terms) == (alpha < 1.0)
    assert total.dtype == torch.float32


def test_deit_loss_without_labels_is_distillation_only():
    torch.manual_seed(1)
    cls, dist, teacher = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    student = ModelOutputs((cls + dist) / 2, auxiliary={DEIT_HEADS: DeiTHeads(cls, dist)})
    total, terms = deit_loss(student, ModelOutputs(teacher), None, mode="hard", alpha=0.2, temperature=1.0)
    assert set(terms) == {"deit_hard"}
    assert torch.allclose(total.double(), nll(dist, teacher.argmax(-1)), atol=1e-6)


def test_deit_loss_gradients_reach_each_head_from_its_own_target():
    cls = torch.randn(4, 3, requires_grad=True)
    dist = torch.randn(4, 3, requires_grad=True)
    student = ModelOutputs((cls + dist) / 2, auxiliary={DEIT_HEADS: DeiTHeads(cls, dist)})
    labels = torch.tensor([0, 1, 2, 0])
    total, _ = deit_loss(
        student, ModelOutputs(torch.randn(4, 3)), labels, mode="soft", alpha=1.0, temperature=2.0
    )
    total.backward()
    # alpha = 1: the class head gets no gradient, the distillation head does.
    assert cls.grad is None or torch.all(cls.grad == 0)
    assert dist.grad.abs().sum() > 0


def test_timm_eval_heads_match_distilled_training_forward():
    model = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=10, **TINY_DEIT_KWARGS)
    model.set_distilled_training(True)
    x = torch.randn(3, 3, 32, 32)
    model.train()
    cls_train, dist_train = model(x)
    model.eval()
    heads = deit_heads(model, x, "timm")
    assert torch.allclose(heads.cls_logits, cls_train, atol=1e-6)
    assert torch.allclose(heads.distillation_logits, dist_train, atol=1e-6)
    assert torch.allclose(heads.average, model(x), atol=1e-6)  # what timm predicts at inference


# ----------------------------------------------------------------------------------------------- end to end


def _batch(trainer, digits, n=8):
    return trainer.data_collator([digits["train"][i] | {"sample_id": i} for i in range(n)])


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_timm_deit_student_distils_saves_and_loads(tmp_path, digits, timm_teacher_dir, mode):
    args = make_args(
        tmp_path,
        student_model_name_or_path="deit_tiny_distilled_patch16_224",
        student_model_kwargs=TINY_DEIT_KWARGS,
        deit_distillation=mode,
        alpha=0.5,
        temperature=2.0,
    )
    trainer = DistillationTrainer(teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"])
    student = trainer.model
    assert student.patch_embed.patch_size == (8, 8) and len(student.blocks) == 1
    assert student.distilled_training

    # The training loss equals CE(class head, y) and the distillation-head term, computed here by hand.
    batch = _batch(trainer, digits)
    student.train()
    with torch.no_grad():
        loss = trainer.compute_loss(student, batch)
        cls, dist = student(trainer.student_normalizer(batch["pixel_values"]))
        teacher = trainer.teacher.module
        mean = torch.tensor(teacher.pretrained_cfg["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(teacher.pretrained_cfg["std"]).view(1, 3, 1, 1)
        # the teacher's own view (its own interpolation) of the same crop
        t = teacher((batch.get("teacher_pixel_values", batch["pixel_values"]).float() / 255 - mean) / std)
    distill = kl_teacher_student(dist, t, 2.0) if mode == "soft" else nll(dist, t.argmax(-1))
    assert torch.allclose(loss.double(), 0.5 * nll(cls, batch["labels"]) + 0.5 * distill, atol=1e-5)

    before = state(student)
    trainer.train()
    after = state(student)
    for head in ("head.weight", "head_dist.weight"):
        assert not torch.equal(before[head], after[head]), f"{head} did not train"
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all(f"loss_deit_{mode}" in e and "loss_ce" in e for e in logged)

    # Evaluation sees the average of both heads.
    _, (logits, _), _ = trainer.prediction_step(
        student, _batch(trainer, digits, 4), prediction_loss_only=False
    )
    student.eval()
    with torch.no_grad():
        pixels = trainer.student_normalizer(_batch(trainer, digits, 4)["pixel_values"])
        tokens = student.forward_features(pixels)
        average = (student.head(tokens[:, 0]) + student.head_dist(tokens[:, 1])) / 2
    assert torch.allclose(logits, average, atol=1e-5)

    out = tmp_path / "student"
    trainer.save_model(str(out))
    reloaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert reloaded.patch_embed.patch_size == (8, 8) and len(reloaded.blocks) == 1
    with torch.no_grad():
        assert torch.allclose(reloaded(pixels), average, atol=1e-5)
    classifier = pipeline("image-classification", model=str(out), device="cpu")
    image = digits["test"][0]["image"].convert("RGB").resize((32, 32), Image.BILINEAR)
    predictions = classifier(image, top_k=10)
    assert {p["label"] for p in predictions} == set(DIGIT_NAMES)
    assert abs(sum(p["score"] for p in predictions) - 1.0) < 1e-4


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_transformers_deit_with_teacher_distils_saves_and_loads(tmp_path, digits, timm_teacher_dir, mode):
    from transformers import DeiTForImageClassificationWithTeacher

    model = tiny_hf_deit()
    args = make_args(tmp_path, deit_distillation=mode, alpha=0.5, temperature=2.0)
    trainer = DistillationTrainer(
        model=model, teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    batch = _batch(trainer, digits)
    model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        output = model(pixel_values=trainer.student_normalizer(batch["pixel_values"]))
        t = trainer.teacher(batch.get("teacher_pixel_values", batch["pixel_values"]))
    distill = (
        kl_teacher_student(output.distillation_logits, t, 2.0)
        if mode == "soft"
        else nll(output.distillation_logits, t.argmax(-1))
    )
    assert torch.allclose(
        loss.double(), 0.5 * nll(output.cls_logits, batch["labels"]) + 0.5 * distill, atol=1e-5
    )

    before = state(model)
    trainer.train()
    after = state(model)
    for head in ("cls_classifier.weight", "distillation_classifier.weight"):
        assert not torch.equal(before[head], after[head]), f"{head} did not train"

    out = tmp_path / "student"
    trainer.save_model(str(out))
    reloaded = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    # Saved as itself: AutoModelForImageClassification and the pipeline accept the two-head class.
    assert isinstance(reloaded, DeiTForImageClassificationWithTeacher)
    model.eval()
    pixels = trainer.student_normalizer(_batch(trainer, digits, 4)["pixel_values"])
    with torch.no_grad():
        expected = model(pixel_values=pixels)
        got = reloaded(pixel_values=pixels)
    assert torch.allclose(got.logits, (expected.cls_logits + expected.distillation_logits) / 2, atol=1e-5)
    classifier = pipeline("image-classification", model=str(out), device="cpu")
    predictions = classifier(digits["test"][0]["image"].convert("RGB"), top_k=10)
    assert {p["label"] for p in predictions} == set(DIGIT_NAMES)


# ----------------------------------------------------------------------------------------------- bad input


def test_deit_distillation_needs_a_distillation_token(tmp_path, digits, timm_teacher_dir):
    args = make_args(tmp_path, deit_distillation="soft")
    with pytest.raises(
        ValueError, match="deit_distillation='soft' needs a student with a distillation token"
    ):
        DistillationTrainer(
            model="test_vit", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
        )


def test_bad_deit_config_values(tmp_path):
    with pytest.raises(ValueError, match="DistillationConfig.deit_distillation: must be one of"):
        make_args(tmp_path, deit_distillation="medium")
    with pytest.raises(ValueError, match="DistillationConfig.alpha: is 0 with deit_distillation='hard'"):
        make_args(tmp_path, deit_distillation="hard", alpha=0.0)
    with pytest.raises(ValueError, match="DistillationConfig.student_model_kwargs: must be a JSON object"):
        make_args(tmp_path, student_model_kwargs="{img_size: 32")
    args = make_args(tmp_path, student_model_kwargs='{"img_size": 32, "patch_size": 8}')
    assert args.student_model_kwargs == {"img_size": 32, "patch_size": 8}


def test_student_model_kwargs_only_for_timm_students(tmp_path, digits):
    args = make_args(tmp_path, alpha=0.0, student_model_kwargs={"img_size": 32})
    with pytest.raises(ValueError, match="student_model_kwargs"):
        DistillationTrainer(model=tiny_hf_deit(), args=args, train_dataset=digits["train"])


def test_model_card_names_the_deit_method(tmp_path):
    from hf_distill.release import methods_of

    assert methods_of(make_args(tmp_path, deit_distillation="hard", alpha=0.5)) == ["deit"]
    assert methods_of(make_args(tmp_path, alpha=0.5)) == ["kd"]
