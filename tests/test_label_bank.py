"""Label bank: recorded views rebuild the generated pixels, stored outputs match the live teacher, replay never
runs the teacher, top-k with k = C is exact, fingerprints are checked, generation resumes exactly."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import concatenate_datasets, load_from_disk

import hf_distill.teacher_cache as teacher_cache
from hf_distill import DistillationTrainer
from hf_distill.label_bank import (
    LabelBank,
    LabelBankCollator,
    generate_for_trainer,
    load_label_bank,
    push_label_bank,
    render_records,
    replay_record,
)
from hf_distill.losses import kd_loss
from hf_distill.teacher_cache import topk_compress, topk_expand

from .conftest import COMMIT, make_args, save_in_hub_layout, tiny_timm

N = 24  # training images in the bank
R = 4
BANK_ARGS = dict(
    teacher_input="funmatch",
    crop="ic",
    crop_scale=[0.35, 1.0],
    hflip=0.5,
    mixup_alpha=1.0,
    cutmix_alpha=1.0,  # both mixup and cutmix records
    alpha=1.0,
    temperature=2.0,
    interpolation="bilinear",
    label_bank_records=R,
    disable_tqdm=True,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("bank")
    teacher_dir = save_in_hub_layout(tiny_timm(seed=1), root / "teacher")
    data = digits["train"].select(range(N))
    return root, teacher_dir, data


def _teacher_trainer(root, teacher_dir, data, **overrides):
    args = make_args(root, teacher_model_name_or_path=teacher_dir, **{**BANK_ARGS, **overrides})
    return DistillationTrainer(model=tiny_timm(seed=0), args=args, train_dataset=data), args


@pytest.fixture(scope="module")
def bank(setup):
    """A full-logit bank, and every teacher input the generation rendered, keyed by (sample id, record)."""
    root, teacher_dir, data = setup
    trainer, args = _teacher_trainer(root, teacher_dir, data)
    seen = []
    original = teacher_cache._teacher_forward

    def recording(teacher, views):
        seen.append(views[32].clone())
        return original(teacher, views)

    teacher_cache._teacher_forward = recording
    try:
        meta = generate_for_trainer(trainer, data, root / "bank-full", shard_size=10, batch_size=7)
    finally:
        teacher_cache._teacher_forward = original
    # generation order: shard by shard, sample by sample, record by record
    pixels = torch.cat(seen)
    order = [(s, r) for s in range(N) for r in range(R)]
    return trainer, str(root / "bank-full"), meta, dict(zip(order, pixels))


def test_bank_layout_and_metadata(bank):
    _, path, meta, _ = bank
    data = load_from_disk(path)
    assert len(data) == N * R
    pairs = set(zip(data["sample_id"], data["record"]))
    assert pairs == {(s, r) for s in range(N) for r in range(R)}  # no duplicate, none missing
    assert meta["num_records"] == R and meta["topk"] is None and meta["resolutions"] == [32]
    assert meta["mixing"]["mixup_alpha"] == 1.0 and meta["teacher"][0]["weights"]
    assert meta["bytes_per_image_per_record"] > 2 * 10  # at least the fp16 logits
    assert any(data["cutmix"]) and any(m and not c for m, c in zip(data["mixed"], data["cutmix"]))
    partner_ids = np.asarray(data["partner_id"])
    assert (partner_ids != np.asarray(data["sample_id"])).all()


def test_rebuilt_view_equals_generated_pixels(bank):
    trainer, path, _, generated = bank
    loaded = load_label_bank(path)
    rows = [loaded.row(s, r) for s in range(N) for r in range(R)]
    records = [loaded.record(i) for i in rows]
    images = [trainer.train_dataset[s]["image"] for s in range(N) for _ in range(R)]
    from hf_distill.reliability import load_image

    images = [load_image(img, 0, "image") for img in images]
    partners = [
        load_image(trainer.train_dataset[rec.partner_id]["image"], 0, "image") if rec.mixed else None
        for rec in records
    ]
    rebuilt = render_records(records, images, partners, 32, "bilinear")
    expected = torch.stack([generated[(s, r)] for s in range(N) for r in range(R)])
    assert torch.equal(rebuilt, expected)


def test_live_teacher_reproduces_stored_outputs(bank):
    trainer, path, _, generated = bank
    loaded = load_label_bank(path)
    rows = torch.tensor([loaded.row(s, r) for s in range(N) for r in range(R)])
    pixels = torch.stack([generated[(s, r)] for s in range(N) for r in range(R)])
    live = trainer.teacher(pixels).float()
    stored = loaded.teacher_logits(rows)
    assert torch.allclose(stored, live, rtol=1e-3, atol=2e-3)  # fp16 storage


def test_replay_collator_rebuilds_the_chosen_record(bank, setup):
    root, teacher_dir, data = setup
    _, path, _, generated = bank
    args = make_args(root, teacher_label_bank=path, **BANK_ARGS)
    trainer = DistillationTrainer(model=tiny_timm(seed=0), args=args, train_dataset=data)
    collator = trainer.data_collator
    assert isinstance(collator, LabelBankCollator) and trainer.teacher is None
    collator.set_epoch(3)
    batch = collator([trainer.train_dataset[i] for i in range(8)])
    for i in range(8):
        record = replay_record(args.seed, 3, i, R)
        assert int(batch["bank_rows"][i]) == trainer.label_bank.row(i, record)
        assert torch.equal(batch["pixel_values"][i], generated[(i, record)])
        bank_record = trainer.label_bank.record(int(batch["bank_rows"][i]))
        assert float(batch["mix_lam"][i]) == pytest.approx(bank_record.lam)
        # the mixed-label CE needs the partner's label even when the partner is not in the batch
        partner_label = data[bank_record.partner_id]["label"] if bank_record.mixed else data[i]["label"]
        assert int(batch["mix_partner_labels"][i]) == partner_label
    collator.partner_cache_bytes = 0  # no decoded partner kept: the same batch again, the same pixels
    again = collator([trainer.train_dataset[i] for i in range(8)])
    assert torch.equal(again["pixel_values"], batch["pixel_values"]) and not collator._cache


def test_training_with_bank_never_runs_the_teacher(bank, setup, monkeypatch):
    root, teacher_dir, data = setup
    _, path, _, _ = bank
    from hf_distill import hub, teacher
    from hf_distill import trainer as trainer_module

    calls = {"forward": 0, "load_teacher": 0}
    original_call, original_load = teacher.Teacher.__call__, trainer_module.load_model

    def counting_call(self, pixels):
        calls["forward"] += 1
        return original_call(self, pixels)

    def counting_load(model, *a, role=None, **k):
        calls["load_teacher"] += role == "teacher"
        return original_load(model, *a, role=role, **k)

    monkeypatch.setattr(teacher.Teacher, "__call__", counting_call)
    monkeypatch.setattr(trainer_module, "load_model", counting_load)
    assert hub.load_model is original_load
    args = make_args(root, teacher_model_name_or_path=teacher_dir, teacher_label_bank=path, **BANK_ARGS)
    student = tiny_timm(seed=0)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = DistillationTrainer(model=student, args=args, train_dataset=data)
    trainer.train()
    assert calls == {"forward": 0, "load_teacher": 0}
    kd_logs = [log["loss_kd"] for log in trainer.state.log_history if "loss_kd" in log]
    assert kd_logs and all(v > 0 for v in kd_logs)
    after = trainer.student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def test_kd_from_full_topk_bank_equals_live_kd(setup):
    root, teacher_dir, data = setup
    trainer, args = _teacher_trainer(root, teacher_dir, data, label_bank_topk=10)  # k = C
    generate_for_trainer(trainer, data, root / "bank-k10")
    loaded = load_label_bank(str(root / "bank-k10"))
    assert loaded.logits is None and loaded.topk_values.shape[-1] == 10
    replay_args = make_args(root, teacher_label_bank=str(root / "bank-k10"), label_bank_topk=10, **BANK_ARGS)
    replay = DistillationTrainer(model=tiny_timm(seed=0), args=replay_args, train_dataset=data)
    batch = replay.data_collator([replay.train_dataset[i] for i in range(N)])
    student_logits = replay.student_logits(replay.model, batch["pixel_values"]).detach()
    from_bank = kd_loss(student_logits, replay.teacher_logits(batch), args.temperature)
    mapped = load_label_bank(str(root / "bank-k10"), in_memory=False)  # top-k read from the Arrow files
    assert torch.equal(mapped.teacher_logits(batch["bank_rows"]), replay.teacher_logits(batch))
    live = kd_loss(student_logits, trainer.teacher(batch["pixel_values"]).float(), args.temperature)
    assert math.isclose(float(from_bank), float(live), rel_tol=2e-3, abs_tol=1e-5)


def test_topk_tail_spreads_remaining_mass_evenly():
    torch.manual_seed(0)
    logits, k, temperature = torch.randn(5, 12) * 3, 4, 2.0
    values, indices, tail = topk_compress(logits, k, temperature)
    probs = torch.softmax(topk_expand(values, indices, tail, 12).double() / temperature, -1)
    true = torch.softmax(logits.double() / temperature, -1)
    top = true.gather(-1, indices.long())
    assert torch.allclose(probs.gather(-1, indices.long()), top, atol=1e-6)
    others = torch.ones_like(true, dtype=torch.bool).scatter_(-1, indices.long(), False)
    expected_each = (1 - top.sum(-1, keepdim=True)) / (12 - k)
    assert torch.allclose(probs[others].view(5, -1), expected_each.expand(5, 12 - k), atol=1e-6)


def test_fingerprint_mismatch_names_the_field(bank, setup):
    root, _, data = setup
    _, path, _, _ = bank
    args = make_args(root, teacher_label_bank=path, **{**BANK_ARGS, "hflip": 0.0})
    with pytest.raises(
        ValueError, match=r"augmentation\.hflip=0\.5 but this run has augmentation\.hflip=0\.0"
    ):
        DistillationTrainer(model=tiny_timm(seed=0), args=args, train_dataset=data)
    args = make_args(root, teacher_label_bank=path, **BANK_ARGS)
    with pytest.raises(ValueError, match="teacher_label_bank.*dataset="):
        DistillationTrainer(model=tiny_timm(seed=0), args=args, train_dataset=data.select(range(N - 1)))
    # an explicit override replays anyway
    args = make_args(
        root,
        teacher_label_bank=path,
        teacher_label_bank_ignore_fingerprint=True,
        **{**BANK_ARGS, "hflip": 0.0},
    )
    assert DistillationTrainer(model=tiny_timm(seed=0), args=args, train_dataset=data).label_bank is not None


def test_a_bank_rendered_by_an_earlier_format_is_refused(bank, setup, tmp_path):
    """Format 1 banks saw views of sub-pixel boxes resampled by PIL; this version renders other pixels."""
    import json
    import shutil

    from hf_distill.label_bank import BANK_FORMAT_VERSION

    root, _, data = setup
    _, path, _, _ = bank
    old = tmp_path / "bank-format-1"
    shutil.copytree(path, old)
    meta_path = old / "label_bank.json"
    meta = json.loads(meta_path.read_text())
    assert meta["version"] == BANK_FORMAT_VERSION == 2
    meta_path.write_text(json.dumps({**meta, "version": 1}))
    args = make_args(root, teacher_label_bank=str(old), **BANK_ARGS)
    with pytest.raises(ValueError, match="version=1 but this run has version=2; regenerate the bank"):
        DistillationTrainer(model=tiny_timm(seed=0), args=args, train_dataset=data)


def test_unrepresentable_modes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="teacher_input.*cannot be replayed from a label bank"):
        make_args(tmp_path, teacher_label_bank="x", teacher_input="fix/ic_ens")
    with pytest.raises(ValueError, match="augmentation_mode.*label bank"):
        make_args(tmp_path, teacher_label_bank="x", augmentation_mode="tlmixup")


def test_generation_resumes_to_the_same_bank(setup):
    root, teacher_dir, data = setup
    trainer, _ = _teacher_trainer(root, teacher_dir, data, label_bank_topk=3)
    generate_for_trainer(trainer, data, root / "whole", shard_size=10)
    assert (
        generate_for_trainer(trainer, data, root / "resumed", shard_size=10, max_shards=1) is None
    )  # "killed"
    assert not (root / "resumed" / "label_bank.json").exists()
    (root / "resumed" / "shards" / ".shard-00001.999.tmp").mkdir()  # a shard whose writer died half way
    forward = trainer.teacher.calls
    generate_for_trainer(trainer, data, root / "resumed", shard_size=10)
    batch = trainer.args.per_device_eval_batch_size
    unfinished = [min(10, N - start) for start in range(10, N, 10)]  # shards 1 and 2 only
    assert trainer.teacher.calls - forward == sum(math.ceil(n * R / batch) for n in unfinished)
    whole, resumed = load_from_disk(str(root / "whole")), load_from_disk(str(root / "resumed"))
    assert whole.column_names == resumed.column_names
    for column in whole.column_names:
        assert whole[column] == resumed[column], column


def test_push_to_hub_and_train_from_the_hub_id(bank, setup, hub):
    root, _, data = setup
    _, path, meta, _ = bank
    staged = set(Path(tempfile.gettempdir()).glob("hf-distill-upload-*"))
    info = push_label_bank(path, "someorg/digits-bank", token="hf_test_token")
    assert info.endswith(COMMIT)
    assert hub.created == ["someorg/digits-bank"] and hub.created_types == ["dataset"]
    upload = hub.uploads[-1]
    assert upload["repo_type"] == "dataset"
    names = set(upload["files"])
    arrow = {n for n in names if n.endswith(".arrow")}
    assert arrow and names == arrow | {"dataset_info.json", "state.json", "label_bank.json", "README.md"}
    card = upload["files"]["README.md"].decode()
    assert "label-bank" in card and f"| records per image (R) | {R} |" in card
    assert "--teacher_label_bank someorg/digits-bank" in card
    assert set(Path(tempfile.gettempdir()).glob("hf-distill-upload-*")) == staged  # staging removed

    repo = hub.publish("someorg/digits-bank", repo_type="dataset")
    loaded = load_label_bank(repo)
    local = load_label_bank(path)
    assert loaded.meta == local.meta and torch.equal(loaded.logits, local.logits)
    # a training run names the Hub id; its fingerprint check passes as for the local bank
    args = make_args(root, teacher_label_bank=repo, **BANK_ARGS)
    trainer = DistillationTrainer(model=tiny_timm(seed=0), args=args, train_dataset=data)
    assert trainer.teacher is None and trainer.label_bank.meta == meta


def test_bank_sources_that_are_not_banks_are_refused(tmp_path, bank):
    _, path, _, _ = bank
    with pytest.raises(ValueError, match="teacher_label_bank.*is not a directory"):
        load_label_bank(str(tmp_path / "missing" / "bank"))
    with pytest.raises(ValueError, match="teacher_label_bank.*Hub dataset could not be fetched"):
        load_label_bank("someorg/no-such-bank")  # offline in tests: nothing cached under that id
    (tmp_path / "half").mkdir()
    with pytest.raises(ValueError, match="has no label_bank.json"):
        load_label_bank(str(tmp_path / "half"))
    with pytest.raises(FileNotFoundError, match="not a finished label bank"):
        push_label_bank(tmp_path / "half", "someorg/x")


def test_the_two_recipe_commands_through_a_hub_dataset_repo(tmp_path, timm_teacher_dir, hub):
    """recipes/label_bank.py makes and pushes a bank; recipes/funmatch.py trains from its Hub id alone."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    import funmatch
    import label_bank

    common = [
        "--student_model_name_or_path", "test_resnet",
        "--teacher_model_name_or_path", timm_teacher_dir,
        "--max_train_samples", "32",
        "--per_device_train_batch_size", "16",
        "--report_to", "none",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    meta = label_bank.main(
        [
            *common,
            "--label_bank_records", "2",
            "--output_dir", str(tmp_path / "bank"),
            "--push_to_hub", "true",
            "--hub_model_id", "someorg/digits-r2",
            "--hub_token", "hf_test_token",
        ]
    )  # fmt: skip
    assert meta["num_samples"] == 32 and meta["num_records"] == 2
    assert hub.created_types == ["dataset"] and hub.uploads[-1]["repo_id"] == "someorg/digits-r2"
    repo = hub.publish("someorg/digits-r2", repo_type="dataset")
    metrics = funmatch.main(
        [*common, "--teacher_label_bank", repo, "--max_steps", "2", "--output_dir", str(tmp_path / "student")]
    )
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert (tmp_path / "student" / "model.safetensors").exists()


@pytest.mark.slow
def test_generation_split_over_two_launched_processes_equals_one_process(tmp_path, timm_teacher_dir):
    """`accelerate launch --num_processes 2 recipes/label_bank.py`: the processes take shards round-robin and
    the main process merges them into the same bank one process writes."""
    import os
    import socket
    import subprocess
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    import label_bank

    options = [
        "--student_model_name_or_path", "test_resnet",
        "--teacher_model_name_or_path", timm_teacher_dir,
        "--max_train_samples", "40",
        "--label_bank_records", "3",
        "--per_device_eval_batch_size", "16",
        "--report_to", "none",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    label_bank.main([*options, "--output_dir", str(tmp_path / "one")])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(port),
        str(root / "recipes" / "label_bank.py"), *options, "--output_dir", str(tmp_path / "two"),
        "--label_bank_shard_size", "8",  # 5 shards: both processes write some
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert result.stdout.count("label bank: 40 images x 3 records") == 1  # reported once, by the main process
    assert "(generated by 2 processes)" in result.stdout
    one, two = load_from_disk(str(tmp_path / "one")), load_from_disk(str(tmp_path / "two"))
    assert len(two) == 40 * 3 and one.column_names == two.column_names
    for column in one.column_names:
        if column == "logits":  # batches differ between the runs: equal up to fp16 rounding
            assert np.allclose(np.asarray(one[column]), np.asarray(two[column]), atol=2e-3)
        else:
            assert one[column] == two[column], column


def test_memory_mapped_bank_reads_what_the_in_memory_bank_reads(bank, setup):
    root, _, data = setup
    _, path, _, _ = bank
    memory, mapped = load_label_bank(path, in_memory=True), load_label_bank(path, in_memory=False)
    assert memory.in_memory and not mapped.in_memory and len(mapped) == len(memory) == N * R
    rows = [memory.row(s, r) for s in range(N) for r in range(R)]
    assert [mapped.row(s, r) for s in range(N) for r in range(R)] == rows
    assert mapped.records(rows) == memory.records(rows)
    index = torch.tensor(rows[::-1])
    assert torch.equal(mapped.teacher_logits(index), memory.teacher_logits(index))
    with pytest.raises(KeyError, match="sample id 999 is not in the label bank"):
        mapped.row(999, 0)
    # training runs asking for either reader replay the same batch and the same teacher outputs
    replayed = []
    for in_memory in (True, False):
        args = make_args(root, teacher_label_bank=path, label_bank_in_memory=in_memory, **BANK_ARGS)
        trainer = DistillationTrainer(model=tiny_timm(seed=0), args=args, train_dataset=data)
        assert trainer.label_bank.in_memory is in_memory
        trainer.data_collator.set_epoch(2)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
        replayed.append((batch, trainer.teacher_logits(batch)))
    (first, first_logits), (second, second_logits) = replayed
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert torch.equal(first_logits, second_logits)


def test_memory_mapped_bank_needs_the_generation_order(bank):
    _, path, _, _ = bank
    ordered = load_label_bank(path)
    shuffled = load_from_disk(path).shuffle(seed=0)
    with pytest.raises(ValueError, match="not in generation order; set label_bank_in_memory=true"):
        LabelBank(shuffled, ordered.meta, path, in_memory=False)
    anywhere = LabelBank(shuffled, ordered.meta, path, in_memory=True)  # the in-memory index takes any order
    rows = load_from_disk(path)
    with pytest.raises(ValueError, match=f"{N * R - 1} rows are not a whole number of {R}-record images"):
        LabelBank(rows.select(range(N * R - 1)), ordered.meta, path, in_memory=False)
    twice = concatenate_datasets([rows, rows.select(range(R))])  # image 0's records once more at the end
    with pytest.raises(ValueError, match="an image appears twice; set label_bank_in_memory=true"):
        LabelBank(twice, ordered.meta, path, in_memory=False)
    assert anywhere.record(anywhere.row(5, 2)) == ordered.record(ordered.row(5, 2))
