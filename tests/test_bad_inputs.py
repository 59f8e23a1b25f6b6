"""Bad input fails at construction with a ValueError that names the setting and the fix; images that can be
converted are; the collator survives random image sizes and modes (hypothesis)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as ImageFeature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hf_distill import DistillationCollator, DistillationConfig, DistillationTrainer
from hf_distill.collators import CROPS, TEACHER_INPUTS, AugmentationConfig
from hf_distill.hub import Normalizer
from hf_distill.mixing import MixConfig

from .conftest import DIGIT_NAMES, make_args, tiny_timm

NAMES = DIGIT_NAMES


# ------------------------------------------------------------------------------------------ config values
@pytest.mark.parametrize(
    "overrides,field,fix",
    [
        ({"temperature": 0.0}, "temperature", r"finite number > 0"),
        ({"temperature": -2.0}, "temperature", r"finite number > 0"),
        ({"temperature": math.nan}, "temperature", r"finite number > 0"),
        ({"temperature": math.inf}, "temperature", r"finite number > 0"),
        ({"alpha": 1.5}, "alpha", r"must be in \[0, 1\]"),
        ({"alpha": -0.1}, "alpha", r"must be in \[0, 1\]"),
        ({"alpha": math.nan}, "alpha", r"must be in \[0, 1\]"),
        ({"loss_types": ["dkd"], "loss_weights": [-1.0]}, "loss_weights", r"finite and >= 0"),
        ({"loss_types": ["dkd"], "loss_weights": [math.nan]}, "loss_weights", r"finite and >= 0"),
        ({"loss_types": ["dkd"], "loss_weights": []}, "loss_weights", r"one weight per loss type"),
        ({"loss_types": ["no_such_loss"], "loss_weights": [1.0]}, "loss_types", r"known: "),
        ({"mixup_alpha": -1.0}, "mixup_alpha", r">= 0 \(0 disables it\)"),
        ({"cutmix_alpha": math.inf}, "cutmix_alpha", r">= 0 \(0 disables it\)"),
        ({"mix_prob": 1.5}, "mix_prob", r"\[0, 1\]"),
        ({"switch_prob": -0.5}, "switch_prob", r"\[0, 1\]"),
        ({"cutmix_minmax": [0.8, 0.2]}, "cutmix_minmax", r"0 < min < max <= 1"),
        ({"mix_mode": "rows"}, "mix_mode", r"must be one of"),
        ({"label_smoothing_factor": 1.0}, "label_smoothing_factor", r"\[0, 1\)"),
        ({"hflip": 2.0}, "hflip", r"\[0, 1\]"),
        ({"crop_scale": [0.9, 0.1]}, "crop_scale", r"0 < min <= max <= 1"),
        ({"image_size": 0}, "image_size", r"positive integer"),
        ({"teacher_image_size": -8}, "teacher_image_size", r"positive integer"),
        ({"max_train_samples": 0}, "max_train_samples", r">= 1 or None"),
        ({"save_on_sigterm": True, "enable_jit_checkpoint": True}, "save_on_sigterm", r"set only one"),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(f"{k}={v[k]}" for k in v),
)
def test_config_values_out_of_range(tmp_path, overrides, field, fix):
    with pytest.raises(ValueError, match=rf"DistillationConfig\.{field}: .*{fix}"):
        DistillationConfig(output_dir=str(tmp_path), **overrides)


# ------------------------------------------------------------------------------------- models and labels
def _build(tmp_path, digits, teacher, model="test_resnet", train=None, **overrides):
    return DistillationTrainer(
        model=model,
        teacher_model=teacher,
        args=make_args(tmp_path, **overrides),
        train_dataset=digits["train"] if train is None else train,
    )


def test_teacher_labels_that_cannot_be_aligned(tmp_path, digits):
    teacher = tiny_timm(seed=3, label_names=[f"class_{i}" for i in range(10)])
    with pytest.raises(
        ValueError, match=r"teacher_model_name_or_path(.|\n)*rename the dataset's ClassLabel names"
    ):
        _build(tmp_path, digits, teacher)


def test_named_teacher_with_other_num_labels(tmp_path, digits):
    teacher = tiny_timm(num_classes=12, seed=3, label_names=[str(i) for i in range(12)])
    with pytest.raises(
        ValueError, match=r"teacher_model_name_or_path(.|\n)*'11'(.|\n)*trained on the same classes"
    ):
        _build(tmp_path, digits, teacher)


def test_unnamed_teacher_with_other_num_labels(tmp_path, digits):
    teacher = tiny_timm(num_classes=7, label_names=None)
    with pytest.raises(
        ValueError, match=r"teacher_model_name_or_path.*7 outputs.*10 classes.*trained on these classes"
    ):
        _build(tmp_path, digits, teacher)


@pytest.mark.parametrize("path", ["/nonexistent/dir/teacher", "./missing-teacher/model"])
def test_teacher_path_that_does_not_exist(tmp_path, digits, path):
    with pytest.raises(ValueError, match=r"teacher_model_name_or_path.*does not exist"):
        _build(tmp_path, digits, path)


def test_teacher_hub_id_unavailable_offline(tmp_path, digits):
    with pytest.raises(ValueError, match=r"teacher_model_name_or_path.*'no-such-org/no-such-model'.*Hub id"):
        _build(tmp_path, digits, "no-such-org/no-such-model")


def test_student_that_is_neither_path_nor_architecture(tmp_path, digits, timm_teacher_dir):
    with pytest.raises(
        ValueError, match=r"student_model_name_or_path.*not_a_model_anywhere.*timm architecture"
    ):
        _build(tmp_path, digits, timm_teacher_dir, model="not_a_model_anywhere")


def test_teacher_directory_holding_a_text_model(tmp_path, digits):
    from transformers import BertConfig, BertModel

    directory = tmp_path / "bert"
    BertModel(
        BertConfig(
            vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
        )
    ).save_pretrained(directory)
    with pytest.raises(
        ValueError, match=r"(?s)teacher_model_name_or_path.*BertConfig.*not an image classifier"
    ):
        _build(tmp_path, digits, str(directory))


def test_teacher_directory_without_config(tmp_path, digits):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"teacher_model_name_or_path.*has no config\.json.*Hub layout"):
        _build(tmp_path, digits, str(tmp_path / "empty"))


def _tiny_vit(image_size=32, patch=8, num_labels=10):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=image_size,
        patch_size=patch,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=num_labels,
    )
    return ViTForImageClassification(config)


def test_resolution_a_vit_student_cannot_take(tmp_path, digits, timm_teacher_dir):
    with pytest.raises(ValueError, match=r"image_size=30 .*patch size 8.*Set image_size to a multiple of 8"):
        _build(tmp_path, digits, timm_teacher_dir, model=_tiny_vit(), image_size=30)


def test_resolution_a_vit_teacher_cannot_take(tmp_path, digits):
    with pytest.raises(
        ValueError, match=r"teacher_image_size=36 .*Set teacher_image_size to a multiple of 8"
    ):
        _build(tmp_path, digits, _tiny_vit(), teacher_image_size=36)


# ------------------------------------------------------------------------------------------ dataset shape
def test_missing_image_column(tmp_path, digits, timm_teacher_dir):
    with pytest.raises(ValueError, match=r"no column 'image'.*DistillationConfig\.image_column_name"):
        _build(tmp_path, digits, timm_teacher_dir, train=digits["train"].rename_column("image", "img"))


def test_misnamed_label_column(tmp_path, digits, timm_teacher_dir):
    with pytest.raises(ValueError, match=r"label column 'labels'.*DistillationConfig\.label_column_name"):
        _build(tmp_path, digits, timm_teacher_dir, label_column_name="labels")


def test_label_column_that_is_not_a_classlabel(tmp_path, digits, timm_teacher_dir):
    plain = digits["train"].cast_column("label", Value("int64"))
    with pytest.raises(
        ValueError, match=r"not a ClassLabel.*cast_column.*DistillationConfig\.label_column_name"
    ):
        _build(tmp_path, digits, timm_teacher_dir, train=plain)


def test_rows_without_a_label(tmp_path, digits, timm_teacher_dir):
    labels = digits["train"]["label"]
    broken = digits["train"].map(
        lambda row, i: {"label": -1 if i in (5, 17) else row["label"]}, with_indices=True
    )
    assert broken.features["label"] == digits["train"].features["label"] and labels[5] != -1
    with pytest.raises(ValueError, match=r"2 row\(s\).*rows \[5, 17\].*dataset\.filter.*label_column_name"):
        _build(tmp_path, digits, timm_teacher_dir, train=broken)
    # Row numbers are those of the dataset as given (through its indices mapping), not of the Arrow table.
    with pytest.raises(ValueError, match=r"1 row\(s\).*rows \[7\]"):
        _build(tmp_path, digits, timm_teacher_dir, train=broken.select(range(10, 40)))


def test_empty_datasets(tmp_path, digits, timm_teacher_dir):
    with pytest.raises(ValueError, match=r"train_dataset is empty; give a dataset with at least one image"):
        _build(tmp_path, digits, timm_teacher_dir, train=digits["train"].select([]))
    with pytest.raises(ValueError, match=r"eval_dataset is empty"):
        DistillationTrainer(
            model="test_resnet",
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path),
            train_dataset=digits["train"],
            eval_dataset=digits["test"].select([]),
        )


def test_image_column_that_holds_no_images(tmp_path, timm_teacher_dir):
    features = Features({"image": Value("int64"), "label": ClassLabel(names=NAMES)})
    data = Dataset.from_dict({"image": [1, 2, 3], "label": [0, 1, 2]}, features=features)
    with pytest.raises(ValueError, match=r"sample_id=0: column 'image' cannot be decoded.*image_column_name"):
        _build(tmp_path, {"train": data}, timm_teacher_dir)


# ------------------------------------------------------------------------------------------------ images
def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _image_dataset(values: list, labels: list[int] | None = None) -> Dataset:
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=NAMES)})
    labels = labels if labels is not None else [i % 10 for i in range(len(values))]
    return Dataset.from_dict({"image": values, "label": labels}, features=features)


def _awkward_images() -> list[dict]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    sixteen = Image.fromarray(rng.integers(0, 65535, (20, 24), dtype=np.uint16))
    palette = Image.fromarray(rgb).convert("P")
    palette.info["transparency"] = 0
    return [
        {"bytes": _encoded(Image.fromarray(grey, "L"), "PNG"), "path": None},
        {"bytes": _encoded(Image.fromarray(rgb).convert("RGBA"), "PNG"), "path": None},
        {"bytes": _encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG"), "path": None},
        {"bytes": _encoded(sixteen, "PNG"), "path": None},
        {"bytes": _encoded(Image.fromarray(grey, "L").convert("LA"), "PNG"), "path": None},
        {"bytes": _encoded(palette, "PNG"), "path": None},
        {"bytes": _encoded(Image.fromarray(grey > 128), "PNG"), "path": None},  # mode "1"
        {"bytes": _encoded(Image.fromarray(rgb[:1, :1]), "PNG"), "path": None},  # 1x1
        {"bytes": _encoded(Image.new("RGB", (3000, 2000), (30, 60, 90)), "JPEG"), "path": None},  # large
        {
            "bytes": _encoded(Image.fromarray(rng.normal(size=(20, 24)).astype(np.float32), "F"), "TIFF"),
            "path": None,
        },
    ]


def test_awkward_images_are_converted_and_train(tmp_path, timm_teacher_dir):
    images = _awkward_images()
    modes = [Image.open(io.BytesIO(v["bytes"])).mode for v in images]
    assert {"L", "RGBA", "CMYK", "I;16", "LA", "P", "1", "F"} <= set(modes), modes
    data = _image_dataset(images * 2)
    trainer = _build(
        tmp_path,
        {"train": data},
        timm_teacher_dir,
        crop="ic",
        hflip=0.5,
        per_device_train_batch_size=10,
        max_steps=2,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(images))])
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (10, 3, 32, 32)
    # The flat 3000x2000 image stays flat after cropping and resizing.
    assert batch["pixel_values"][8].float().std(dim=(1, 2)).max() < 2
    trainer.train()
    assert all(math.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)


def test_corrupt_image_among_the_first_rows_fails_at_construction(tmp_path, timm_teacher_dir):
    images = _awkward_images()[:3] + [{"bytes": b"\x89PNG\r\n\x1a\n not really a png", "path": None}]
    with pytest.raises(
        ValueError, match=r"sample_id=3: column 'image' cannot be decoded.*repair or drop that row"
    ):
        _build(tmp_path, {"train": _image_dataset(images)}, timm_teacher_dir)


def test_corrupt_image_later_is_reported_with_its_sample_id(tmp_path, timm_teacher_dir):
    good = _awkward_images()[0]
    truncated = dict(good, bytes=good["bytes"][: len(good["bytes"]) // 2])
    images = [good] * 20 + [truncated] + [good] * 11
    trainer = _build(
        tmp_path,
        {"train": _image_dataset(images)},
        timm_teacher_dir,
        per_device_train_batch_size=8,
        max_steps=4,
    )
    with pytest.raises(ValueError, match=r"sample_id=20: column 'image' cannot be decoded"):
        trainer.train()


def test_decompression_bomb_names_the_sample_and_the_setting(tmp_path, timm_teacher_dir, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    images = [{"bytes": _encoded(Image.new("RGB", (30, 30)), "PNG"), "path": None}] * 2
    with pytest.raises(
        ValueError, match=r"sample_id=0.*DecompressionBombError.*PIL\.Image\.MAX_IMAGE_PIXELS"
    ):
        _build(tmp_path, {"train": _image_dataset(images)}, timm_teacher_dir)


# ------------------------------------------------------------------------------------------------- fuzz
_MODES = [
    "1",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "HSV",
    "I",
    "I;16",
    "F",
]


def _random_image(mode: str, width: int, height: int, seed: int, special: bool) -> Image.Image:
    rng = np.random.default_rng(seed)
    size = len(Image.new(mode, (width, height)).tobytes())
    image = Image.frombytes(mode, (width, height), rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    if mode == "F" and special:  # NaN/inf pixels must not leak into the batch
        array = np.array(image, dtype=np.float32)
        array.flat[rng.integers(0, array.size)] = np.nan
        array.flat[rng.integers(0, array.size)] = np.inf
        image = Image.fromarray(array, "F")
    return image


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    images=st.lists(
        st.tuples(
            st.sampled_from(_MODES),
            st.integers(1, 70),
            st.integers(1, 70),
            st.integers(0, 2**16),
            st.booleans(),
        ),
        min_size=1,
        max_size=4,
    ),
    teacher_input=st.sampled_from([t for t in TEACHER_INPUTS if t != "fix/ic_ens"]),
    crop=st.sampled_from(CROPS),
    student_size=st.integers(1, 40),
    teacher_size=st.integers(1, 40),
    train=st.booleans(),
    hflip=st.floats(0, 1),
    epoch=st.integers(0, 3),
)
def test_collator_fuzz_no_crash_no_nan(
    images, teacher_input, crop, student_size, teacher_size, train, hflip, epoch
):
    collator = DistillationCollator(
        student_size=student_size,
        teacher_size=teacher_size,
        teacher_input=teacher_input,
        augmentation=AugmentationConfig(crop=crop, hflip=hflip),
        train=train,
        seed=7,
        epoch=epoch,
        mix_config=MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0),
    )
    rows = [
        {"image": _random_image(*spec), "label": i % 10, "sample_id": 1000 + i}
        for i, spec in enumerate(images)
    ]
    batch = collator(rows)
    pixels = batch["pixel_values"]
    assert pixels.shape == (len(rows), 3, student_size, student_size)
    normalizer = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    for key, value in batch.items():
        if key.endswith("pixel_values"):
            assert value.shape[:2] == (len(rows), 3)
            assert torch.isfinite(normalizer(value)).all(), key
        elif value.is_floating_point():
            assert torch.isfinite(value).all(), key
    assert batch["labels"].tolist() == [i % 10 for i in range(len(rows))]
    assert batch["sample_ids"].tolist() == [1000 + i for i in range(len(rows))]
