"""A saved student serves what evaluation measured: ``pipeline("image-classification")`` (transformers and timm
students) and timm's eval transform see the evaluation view of non-square images (the largest central square
at the trained resolution) and predict what ``trainer.predict`` predicts; the saved image processor is the
architecture's own; a student trained at another resolution than its config's is saved at the trained one."""

from __future__ import annotations

import json

import numpy as np
import timm
import torch
from datasets import Dataset
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

from hf_distill import DistillationTrainer
from hf_distill.hub import PreprocessSpec, evaluation_view_mismatch, save_student, serving_image_processor

from .conftest import DIGIT_NAMES, make_args

# (width, height) of the padded digits: landscape and portrait, the 8x8 digit in the middle.
SHAPES = [(12, 8), (8, 14), (9, 8), (8, 20)]


def padded_digits(digits, n: int = 16) -> Dataset:
    """Digits padded to non-square images with noise in the margins: stretching the whole image (instead of
    cropping the central square) changes what the student sees."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(n):
        row = digits["test"][i]
        width, height = SHAPES[i % len(SHAPES)]
        canvas = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        top, left = (height - 8) // 2, (width - 8) // 2
        canvas[top : top + 8, left : left + 8] = np.asarray(row["image"].convert("RGB"))
        images.append(Image.fromarray(canvas))
        labels.append(row["label"])
    return Dataset.from_dict({"image": images, "label": labels}).cast(digits["test"].features)


def tiny_vit(image_size: int = 32):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=image_size,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=10,
    )
    return ViTForImageClassification(config)


def tiny_convnext():
    from transformers import ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(0)
    config = ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10, image_size=32)
    return ConvNextForImageClassification(config)


def train_and_save(tmp_path, digits, teacher_dir, model, image_size: int, **overrides):
    evaluation = padded_digits(digits)
    args = make_args(tmp_path, image_size=image_size, max_steps=2, **overrides)
    trainer = DistillationTrainer(
        model=model,
        teacher_model=teacher_dir,
        args=args,
        train_dataset=digits["train"],
        eval_dataset=evaluation,
    )
    trainer.train()
    out = tmp_path / "student"
    trainer.save_model(str(out))
    student_logits = trainer.predict(evaluation).predictions[0]
    return trainer, evaluation, out, torch.as_tensor(student_logits)


def evaluation_pixels(trainer, evaluation) -> torch.Tensor:
    """The normalised pixels the student saw in trainer.evaluate / trainer.predict."""
    batch = trainer.eval_collator([evaluation[i] for i in range(len(evaluation))])
    return trainer.student_normalizer(batch["pixel_values"]).cpu()


def pipeline_scores(directory, evaluation) -> tuple[torch.Tensor, object]:
    classifier = pipeline("image-classification", model=str(directory), device="cpu")
    outputs = classifier([evaluation[i]["image"] for i in range(len(evaluation))], top_k=10)
    scores = torch.tensor(
        [[{p["label"]: p["score"] for p in output}[name] for name in DIGIT_NAMES] for output in outputs]
    )
    return scores, classifier


def assert_served_as_evaluated(trainer, evaluation, out, student_logits):
    scores, classifier = pipeline_scores(out, evaluation)
    expected = torch.softmax(student_logits.float(), dim=-1)
    assert torch.equal(scores.argmax(-1), expected.argmax(-1))
    assert torch.allclose(scores, expected, atol=1e-4), float((scores - expected).abs().max())
    images = [evaluation[i]["image"] for i in range(len(evaluation))]
    reference = evaluation_pixels(trainer, evaluation)
    for processor in (
        classifier.image_processor,
        AutoImageProcessor.from_pretrained(str(out), backend="pil"),
    ):
        served = torch.as_tensor(np.asarray(processor(images, return_tensors="np")["pixel_values"]))
        assert served.shape == reference.shape
        assert torch.allclose(served, reference, atol=1e-4), type(processor).__name__
    return classifier


def test_transformers_student_serves_the_evaluation_view_in_its_own_processor_class(
    tmp_path, digits, timm_teacher_dir
):
    model = tiny_convnext()
    trainer, evaluation, out, logits = train_and_save(tmp_path, digits, timm_teacher_dir, model, 32)
    classifier = assert_served_as_evaluated(trainer, evaluation, out, logits)
    own = IMAGE_PROCESSOR_MAPPING[type(model.config)]
    assert type(classifier.image_processor) is own["torchvision"]  # ConvNextImageProcessor, not ViT's
    assert type(AutoImageProcessor.from_pretrained(str(out), backend="pil")) is own["pil"]
    saved = json.loads((out / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 32} and saved["crop_pct"] == 1.0


def test_vit_trained_at_another_resolution_is_saved_and_served_at_it(tmp_path, digits, timm_teacher_dir):
    model = tiny_vit(image_size=32)
    trainer, evaluation, out, logits = train_and_save(tmp_path, digits, timm_teacher_dir, model, 48)
    assert json.loads((out / "config.json").read_text())["image_size"] == 48
    saved = json.loads((out / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "ViTImageProcessor"
    assert saved["size"] == {"shortest_edge": 48} and saved["crop_size"] == {"height": 48, "width": 48}
    assert saved["do_center_crop"] is True
    assert model.config.image_size == 32  # the live model is left as it trained
    assert_served_as_evaluated(trainer, evaluation, out, logits)
    reloaded = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    pixels = evaluation_pixels(trainer, evaluation)
    with torch.no_grad():  # no interpolate_pos_encoding needed: the table was baked at 48 px
        assert torch.allclose(reloaded(pixel_values=pixels).logits, logits, atol=1e-5)


def test_timm_student_serves_the_evaluation_view(tmp_path, digits, timm_teacher_dir):
    trainer, evaluation, out, logits = train_and_save(tmp_path, digits, timm_teacher_dir, "test_resnet", 32)
    config = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert config["crop_pct"] == 1.0 and config["crop_mode"] == "center"
    reference = evaluation_pixels(trainer, evaluation)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
    pixels = torch.stack([transform(evaluation[i]["image"]) for i in range(len(evaluation))])
    assert torch.allclose(pixels, reference, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(model(pixels), logits, atol=1e-5)
    scores, classifier = pipeline_scores(out, evaluation)  # transformers' TimmWrapper
    assert type(classifier.model).__name__ == "TimmWrapperForImageClassification"
    expected = torch.softmax(logits.float(), dim=-1)
    assert torch.equal(scores.argmax(-1), expected.argmax(-1))
    assert torch.allclose(scores, expected, atol=1e-4)


def position_table_shape(directory) -> tuple[int, ...]:
    weights = load_file(str(directory / "model.safetensors"))
    (name,) = [name for name in weights if name.endswith("embeddings.position_embeddings")]
    return tuple(weights[name].shape)


def test_checkpoints_keep_the_live_models_layout(tmp_path):
    """Checkpoints resume into the live model: no baked table, the config's own resolution."""
    model = tiny_vit(image_size=32)
    live_table = tuple(model.vit.embeddings.position_embeddings.shape)
    spec = PreprocessSpec(image_size=48)
    for directory, for_serving in ((tmp_path / "checkpoint-2", None), (tmp_path / "resumable", False)):
        save_student(model, directory, label_names=DIGIT_NAMES, preprocess=spec, for_serving=for_serving)
        assert json.loads((directory / "config.json").read_text())["image_size"] == 32
        assert position_table_shape(directory) == live_table == (1, 17, 16)
        reloaded = AutoModelForImageClassification.from_pretrained(str(directory))
        assert torch.equal(
            reloaded.vit.embeddings.position_embeddings, model.vit.embeddings.position_embeddings
        )
    served = tmp_path / "served"
    save_student(model, served, label_names=DIGIT_NAMES, preprocess=spec)
    assert position_table_shape(served) == (1, 37, 16)  # (48 / 8)^2 patches + the class token


def test_processor_falls_back_where_the_architecture_cannot_crop():
    """ConvNeXT's processor warps the whole image at 384 px and more: a centre crop needs another class."""
    from transformers import ConvNextConfig, ConvNextImageProcessor, ViTImageProcessor

    spec = PreprocessSpec(image_size=384, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    own = ConvNextImageProcessor(
        size={"shortest_edge": 384}, crop_pct=1.0, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    assert evaluation_view_mismatch(own, spec) is not None
    chosen = serving_image_processor(ConvNextConfig(), spec)
    assert type(chosen) is ViTImageProcessor
    assert evaluation_view_mismatch(chosen, spec) is None
    small = serving_image_processor(ConvNextConfig(), PreprocessSpec(image_size=64))
    assert type(small) is ConvNextImageProcessor


def test_vit_at_another_resolution_resumes_from_the_trainers_checkpoint(tmp_path, digits, timm_teacher_dir):
    def trainer_for(max_steps: int, **overrides):
        args = make_args(tmp_path, image_size=48, max_steps=max_steps, **overrides)
        return DistillationTrainer(
            model=tiny_vit(image_size=32),
            teacher_model=timm_teacher_dir,
            args=args,
            train_dataset=digits["train"],
        )

    trainer_for(2, save_strategy="steps", save_steps=2).train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert json.loads((checkpoint / "config.json").read_text())["image_size"] == 32
    resumed = trainer_for(3)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
