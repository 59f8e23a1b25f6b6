"""Datasets the way users make them: preprocessed by a transform or ``map`` as the Hugging Face tutorials do,
and streamed (``IterableDataset``, as ``load_dataset(..., streaming=True)`` gives)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from datasets import Array3D, Features, IterableDataset
from datasets.distributed import split_dataset_by_node
from transformers import DefaultDataCollator, TrainerCallback, ViTImageProcessor

from hf_distill import DistillationTrainer
from hf_distill.data import with_stream_sample_ids
from hf_distill.trainer import STREAM_POSITION_NAME

from .conftest import SMALL, make_args, save_in_hub_layout, tiny_timm


def to_uint8(image, size: int = SMALL) -> torch.Tensor:
    """What a user writes instead of ToTensor()/Normalize(): the pixels as they are."""
    return torch.from_numpy(np.array(image.convert("RGB").resize((size, size)))).permute(2, 0, 1)


class RecordingTransform:
    """A tutorial-style transform (``examples["pixel_values"] = [...]; del examples["image"]``) that remembers
    what it was given."""

    def __init__(self, size: int = SMALL, normalise: bool = False):
        self.size, self.normalise, self.seen = size, normalise, []

    def __call__(self, examples):
        self.seen.extend(type(image).__name__ for image in examples["image"])
        pixels = [to_uint8(image, self.size) for image in examples["image"]]
        if self.normalise:
            pixels = [(p.float() / 255 - 0.5) / 0.5 for p in pixels]
        examples["pixel_values"] = pixels
        del examples["image"]
        return examples


def student_weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.student.state_dict().items() if v.is_floating_point()}


def changed(before: dict, trainer) -> bool:
    after = trainer.student.state_dict()
    return any(not torch.equal(value, after[name]) for name, value in before.items())


# ------------------------------------------------------------------------------------- preprocessed data
@pytest.mark.parametrize("teacher_input", ["same", "funmatch"])
def test_with_transform_uint8_pixel_values_train_and_evaluate(
    tmp_path, digits, timm_teacher_dir, teacher_input
):
    train_transform, eval_transform = RecordingTransform(), RecordingTransform()
    train = digits["train"].with_transform(train_transform)
    trainer = DistillationTrainer(
        model=tiny_timm(seed=0),
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path, teacher_input=teacher_input, teacher_image_size=48),
        train_dataset=train,
        eval_dataset=digits["test"].with_transform(eval_transform),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["pixel_values"].dtype == torch.uint8 and "teacher_pixel_values" not in batch
    ids = batch["sample_ids"].tolist()
    assert len(set(ids)) == len(ids) and all(0 <= i < len(train) for i in ids)
    # The ids are the rows' indices: row i's pixels are what the transform made of image i.
    row = ids[0]
    position = ids.index(row)
    if teacher_input == "same":
        assert torch.equal(batch["pixel_values"][position], to_uint8(digits["train"][row]["image"]))
    before = student_weights(trainer)
    trainer.train()
    metrics = trainer.evaluate()
    assert changed(before, trainer)
    assert np.isfinite(metrics["eval_loss"]) and "eval_teacher_accuracy" in metrics
    # The user's transform always got decoded images, never the undecoded {bytes, path} dicts.
    assert set(train_transform.seen) | set(eval_transform.seen) == {"PngImageFile"}
    assert train.features["image"].decode  # the user's dataset itself is untouched


def test_set_transform_producing_other_size_is_refused_naming_image_size(tmp_path, digits, timm_teacher_dir):
    train = digits["train"].with_format(None)
    train.set_transform(RecordingTransform(size=24))
    with pytest.raises(ValueError, match=r"24x24.*image_size=32.*image_size=24"):
        DistillationTrainer(
            model=tiny_timm(seed=0),
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path),
            train_dataset=train,
        )


def test_transform_with_normalised_float_pixels_is_refused_with_the_fix(tmp_path, digits, timm_teacher_dir):
    train = digits["train"].with_transform(RecordingTransform(normalise=True))
    with pytest.raises(
        ValueError, match=r"train_dataset: sample 0: pixel_values are float32 in \[-1.00, 1.00\]"
    ) as info:
        DistillationTrainer(
            model=tiny_timm(seed=0),
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path),
            train_dataset=train,
        )
    assert "PILToTensor" in str(info.value) and "built-in collator" in str(info.value)


@pytest.mark.parametrize("teacher_input", ["fix/rs", "ind/rc"])
def test_preprocessed_pixels_refuse_modes_with_a_teacher_view_of_its_own(
    tmp_path, digits, timm_teacher_dir, teacher_input
):
    with pytest.raises(
        ValueError, match=rf"teacher_input='{teacher_input}'.*preprocessed pixel_values.*'funmatch'"
    ):
        DistillationTrainer(
            model=tiny_timm(seed=0),
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path, teacher_input=teacher_input),
            train_dataset=digits["train"].with_transform(RecordingTransform()),
        )


def test_preprocessed_pixels_refuse_a_label_bank(tmp_path, digits):
    with pytest.raises(ValueError, match=r"teacher_label_bank.*raw images.*preprocessed pixel_values"):
        DistillationTrainer(
            model=tiny_timm(seed=0),
            args=make_args(tmp_path, teacher_label_bank=str(tmp_path / "bank")),
            train_dataset=digits["train"].with_transform(RecordingTransform()),
        )


def test_transform_that_fails_is_named_as_the_cause(tmp_path, digits, timm_teacher_dir):
    def broken(examples):
        return {"pixel_values": [image.size.nonexistent for image in examples["image"]]}

    with pytest.raises(ValueError, match=r"transform \(broken.*AttributeError.*fix the transform"):
        DistillationTrainer(
            model=tiny_timm(seed=0),
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path),
            train_dataset=digits["train"].with_transform(broken),
        )


def test_transform_returning_augmented_images_keeps_decoded_images(tmp_path, digits, timm_teacher_dir):
    seen = []

    def flip(examples):
        seen.extend(type(image).__name__ for image in examples["image"])
        examples["image"] = [image.transpose(0) for image in examples["image"]]
        return examples

    trainer = DistillationTrainer(
        model=tiny_timm(seed=0),
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path, max_steps=1),
        train_dataset=digits["train"].with_transform(flip),
    )
    trainer.train()
    assert seen and set(seen) == {"PngImageFile"}


def guide_processor() -> ViTImageProcessor:
    return ViTImageProcessor(size={"height": SMALL, "width": SMALL})


def test_guide_map_with_default_data_collator_names_the_image_column(tmp_path, digits, timm_teacher_dir):
    processor = guide_processor()

    def process(examples):
        return processor(examples["image"])

    processed = digits["train"].map(process, batched=True)
    with pytest.raises(ValueError, match=r"data_collator fails.*\['image'\] hold images.*remove_columns"):
        DistillationTrainer(
            model=tiny_timm(seed=0),
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path),
            train_dataset=processed,
            data_collator=DefaultDataCollator(),
        )
    # Without the image column the normalised floats are the problem, and the message says so.
    processed = processed.remove_columns("image")
    with pytest.raises(ValueError, match=r"float32 in \[-1.00, 1.00\], normalised already\?.*uint8"):
        DistillationTrainer(
            model=tiny_timm(seed=0),
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path),
            train_dataset=processed,
            data_collator=DefaultDataCollator(),
        )


def test_guide_map_without_collator_refuses_normalised_floats(tmp_path, digits, timm_teacher_dir):
    processor = guide_processor()
    processed = digits["train"].map(lambda examples: processor(examples["image"]), batched=True)
    with pytest.raises(ValueError, match=r"pixel_values are float\d+.*PILToTensor"):
        DistillationTrainer(
            model=tiny_timm(seed=0),
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path),
            train_dataset=processed,
        )


def test_map_to_uint8_pixel_values_trains_with_the_built_in_collator(tmp_path, digits, timm_teacher_dir):
    def process(examples):
        return {"pixel_values": [to_uint8(image).numpy() for image in examples["image"]]}

    processed = digits["train"].map(process, batched=True, remove_columns=["image"])
    trainer = DistillationTrainer(
        model=tiny_timm(seed=0),
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path),
        train_dataset=processed,
        eval_dataset=digits["test"].map(process, batched=True, remove_columns=["image"]),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    row = int(batch["sample_ids"][0])
    assert torch.equal(batch["pixel_values"][0], to_uint8(digits["train"][row]["image"]))
    before = student_weights(trainer)
    trainer.train()
    assert changed(before, trainer)
    assert np.isfinite(trainer.evaluate()["eval_loss"])


# ---------------------------------------------------------------------------------------------- streams
def test_stream_without_max_steps_is_refused_naming_max_steps(tmp_path, digits, timm_teacher_dir):
    with pytest.raises(ValueError, match=r"streamed IterableDataset.*DistillationConfig.max_steps"):
        DistillationTrainer(
            model=tiny_timm(seed=0),
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path, max_steps=-1, num_train_epochs=1),
            train_dataset=digits["train"].to_iterable_dataset(),
        )


def test_stream_trains_and_evaluates(tmp_path, digits, timm_teacher_dir):
    trainer = DistillationTrainer(
        model=tiny_timm(seed=0),
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path, max_steps=3, crop="ic", hflip=0.5),
        train_dataset=digits["train"].to_iterable_dataset(num_shards=4),
        eval_dataset=digits["test"].to_iterable_dataset(),
    )
    before = student_weights(trainer)
    trainer.train()
    assert changed(before, trainer)
    metrics = trainer.evaluate()
    assert np.isfinite(metrics["eval_loss"]) and 0.0 <= metrics["eval_teacher_accuracy"] <= 1.0


def test_streamed_views_are_those_of_the_same_samples_in_a_map_style_dataset(
    tmp_path, digits, timm_teacher_dir
):
    """Randomness is a function of (seed, epoch, sample): an unshuffled stream numbers its rows as the
    map-style dataset does, so every epoch's views are identical; the next epoch draws new ones."""

    def batches(train_dataset, epoch):
        trainer = DistillationTrainer(
            model=tiny_timm(seed=0),
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path, max_steps=3, crop="ic", hflip=0.5),
            train_dataset=train_dataset,
        )
        trainer.data_collator.set_epoch(epoch)
        dataset = trainer.train_dataset  # with the sample ids the trainer gives its rows
        rows = (
            list(dataset.take(16))
            if isinstance(dataset, IterableDataset)
            else [dataset[i] for i in range(16)]
        )
        return trainer.data_collator(rows)

    for epoch in (0, 1):
        streamed = batches(digits["train"].to_iterable_dataset(num_shards=3), epoch)
        mapped = batches(digits["train"], epoch)
        assert streamed["sample_ids"].tolist() == list(range(16))
        assert torch.equal(streamed["sample_ids"], mapped["sample_ids"])
        assert torch.equal(streamed["pixel_values"], mapped["pixel_values"])
    assert not torch.equal(
        batches(digits["train"].to_iterable_dataset(), 0)["pixel_values"],
        batches(digits["train"].to_iterable_dataset(), 1)["pixel_values"],
    )


def test_stream_collator_epoch_follows_the_passes_over_the_stream(tmp_path, digits, timm_teacher_dir):
    trainer = DistillationTrainer(
        model=tiny_timm(seed=0),
        teacher_model=timm_teacher_dir,
        # 96 rows / 16 = 6 batches a pass: step 8 is in the second pass (epoch 1)
        args=make_args(tmp_path, max_steps=8),
        train_dataset=digits["train"].to_iterable_dataset(),
    )
    epochs = []

    class EpochRecorder(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            epochs.append(trainer.data_collator.epoch)

    trainer.add_callback(EpochRecorder())
    trainer.train()
    assert epochs == [0] * 6 + [1] * 2


def test_stream_sample_ids_are_unique_across_workers_and_processes(digits):
    stream = digits["train"].select(range(40)).to_iterable_dataset(num_shards=4)
    loader = torch.utils.data.DataLoader(
        with_stream_sample_ids(stream),
        batch_size=None,
        num_workers=2,
        collate_fn=lambda row: row["sample_id"],
    )
    assert sorted(loader) == list(range(40))
    # One shard set per process (datasets' split_dataset_by_node, Accelerate's dispatch_batches=False).
    per_rank = [
        [row["sample_id"] for row in with_stream_sample_ids(split_dataset_by_node(stream, rank, 2), rank, 2)]
        for rank in range(2)
    ]
    assert sorted(per_rank[0] + per_rank[1]) == sorted(set(per_rank[0] + per_rank[1]))
    assert len(per_rank[0]) + len(per_rank[1]) == 40
    # Every epoch numbers its stream again from the start, in the order the epoch reads it.
    shuffled = with_stream_sample_ids(stream.shuffle(seed=0, buffer_size=8))
    shuffled.set_epoch(1)
    assert [row["sample_id"] for row in shuffled] == list(range(40))


def test_stream_refuses_the_teacher_cache_at_construction(tmp_path, digits, timm_teacher_dir):
    with pytest.raises(
        ValueError,
        match=r"use_teacher_cache.*map-style datasets.Dataset.*streaming=True.*use_teacher_cache=false",
    ):
        DistillationTrainer(
            model=tiny_timm(seed=0),
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path, teacher_input="fix/rs", use_teacher_cache=True, max_steps=2),
            train_dataset=digits["train"].to_iterable_dataset(),
        )


def test_stream_refuses_a_label_bank_at_construction(tmp_path, digits):
    with pytest.raises(ValueError, match=r"teacher_label_bank.*map-style datasets.Dataset.*streaming=True"):
        DistillationTrainer(
            model=tiny_timm(seed=0),
            args=make_args(tmp_path, teacher_label_bank=str(tmp_path / "bank"), max_steps=2),
            train_dataset=digits["train"].to_iterable_dataset(),
        )


def test_streamed_preprocessed_rows_train(tmp_path, digits, timm_teacher_dir):
    def process(row):
        return {"pixel_values": to_uint8(row["image"]).numpy()}

    without_features = digits["train"].to_iterable_dataset().map(process, remove_columns=["image"])
    with pytest.raises(ValueError, match=r"label column 'label'.*IterableDataset.map without features="):
        DistillationTrainer(
            model=tiny_timm(seed=0),
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path, max_steps=2),
            train_dataset=without_features,
        )
    features = Features(
        {"label": digits["train"].features["label"], "pixel_values": Array3D((3, SMALL, SMALL), "uint8")}
    )
    stream = digits["train"].to_iterable_dataset().map(process, remove_columns=["image"], features=features)
    trainer = DistillationTrainer(
        model=tiny_timm(seed=0),
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path, max_steps=2),
        train_dataset=stream,
    )
    before = student_weights(trainer)
    trainer.train()
    assert changed(before, trainer)


# ------------------------------------------------------------------------------------- resuming a stream
def _stream_run(out, digits, teacher_dir, resume=None, **overrides):
    """8 steps over a 96-row stream (6 batches a pass: steps 7 and 8 are in the second pass), a checkpoint
    every step; returns the trainer and the (global step, sample ids) of every batch it trained on."""
    trainer = DistillationTrainer(
        model=tiny_timm(seed=0),
        teacher_model=teacher_dir,
        args=make_args(out, max_steps=8, crop="ic", save_strategy="steps", save_steps=1, **overrides),
        train_dataset=digits["train"].to_iterable_dataset(),
    )
    batches = []
    compute_loss = trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        batches.append(
            (trainer.state.global_step, inputs["sample_ids"].tolist(), trainer.data_collator.epoch)
        )
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording
    trainer.train(resume_from_checkpoint=resume)
    return trainer, batches


@pytest.fixture(scope="module")
def straight_stream_run(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("straight-stream")
    teacher_dir = save_in_hub_layout(tiny_timm(seed=1), root / "teacher")
    return (*_stream_run(root, digits, teacher_dir), teacher_dir)


@pytest.mark.parametrize("resume_at", [3, 6], ids=["mid-pass", "end-of-first-pass"])
def test_stream_resumed_within_its_first_pass_matches_the_straight_run(
    tmp_path, digits, straight_stream_run, resume_at
):
    straight, straight_batches, teacher_dir = straight_stream_run
    checkpoint = os.path.join(straight.args.output_dir, f"checkpoint-{resume_at}")
    with open(os.path.join(checkpoint, STREAM_POSITION_NAME)) as handle:
        assert json.load(handle) == {"pass": 0, "global_step": resume_at}
    resumed, batches = _stream_run(tmp_path, digits, teacher_dir, resume=checkpoint)
    # The resumed run reads exactly the batches (sample ids and epochs) the straight run read after resume_at.
    assert batches == straight_batches[resume_at:]
    for name, value in straight.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[name]), name


def test_stream_resume_past_its_first_pass_is_refused_before_training(tmp_path, digits, straight_stream_run):
    straight, straight_batches, teacher_dir = straight_stream_run
    assert [epoch for _, _, epoch in straight_batches] == [0] * 6 + [1] * 2
    checkpoint = os.path.join(straight.args.output_dir, "checkpoint-7")
    with open(os.path.join(checkpoint, STREAM_POSITION_NAME)) as handle:
        assert json.load(handle)["pass"] == 1
    with pytest.raises(
        ValueError,
        match=r"checkpoint-7.*pass 1 .*streamed train_dataset.*first pass.*map-style datasets.Dataset.*"
        r"ignore_data_skip=True",
    ):
        _stream_run(tmp_path, digits, teacher_dir, resume=checkpoint)
    assert not list((tmp_path / "out").glob("checkpoint-*"))  # refused before a step or a checkpoint
    # resume_from_checkpoint=True: the last checkpoint of output_dir, checked the same way.
    shutil.copytree(straight.args.output_dir, tmp_path / "again" / "out")
    with pytest.raises(ValueError, match=r"checkpoint-8.*pass 1 "):
        _stream_run(tmp_path / "again", digits, teacher_dir, resume=True)

    # A checkpoint that does not say where in the stream it was saved cannot be checked: refused too.
    unknown = tmp_path / "unknown"
    shutil.copytree(os.path.join(straight.args.output_dir, "checkpoint-3"), unknown)
    os.remove(unknown / STREAM_POSITION_NAME)
    with pytest.raises(ValueError, match=rf"does not record.*{STREAM_POSITION_NAME}"):
        _stream_run(tmp_path, digits, teacher_dir, resume=str(unknown))

    # ignore_data_skip=True asks for no fast-forward: the run continues from the stream's first batch.
    resumed, batches = _stream_run(tmp_path, digits, teacher_dir, resume=checkpoint, ignore_data_skip=True)
    assert resumed.state.global_step == 8
    assert batches[0][:2] == (7, straight_batches[0][1])
