"""label_bank_mix='replay': a bank of crops only, mixed at replay. The student's pixels are the two recorded
crops mixed with parameters drawn from (seed, epoch, sample id); the target is the same mix of the two stored
teacher distributions; R records give R² pairs; the teacher never runs; mismatched banks are refused."""

from __future__ import annotations

import math

import pytest
import torch

import hf_distill.teacher_cache as teacher_cache
from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.label_bank import generate_for_trainer, load_label_bank, replay_mix_plan, replay_record

from .conftest import make_args, save_in_hub_layout, tiny_timm

N, R, T = 20, 4, 2.0
ARGS = dict(
    teacher_input="funmatch",
    crop="ic",
    crop_scale=[0.35, 1.0],
    hflip=0.5,
    mixup_alpha=1.0,
    cutmix_alpha=1.0,  # mixup and CutMix pairs
    alpha=1.0,
    temperature=T,
    label_bank_records=R,
    label_bank_mix="replay",
    disable_tqdm=True,
)


@pytest.fixture(scope="module")
def crops_bank(tmp_path_factory, digits):
    """A crops-only bank and every teacher input its generation rendered, keyed by (sample id, record)."""
    root = tmp_path_factory.mktemp("replay-mix")
    teacher_dir = save_in_hub_layout(tiny_timm(seed=1), root / "teacher")
    data = digits["train"].select(range(N))
    args = make_args(root, teacher_model_name_or_path=teacher_dir, **ARGS)
    trainer = DistillationTrainer(model=tiny_timm(seed=0), args=args, train_dataset=data)
    seen, original = [], teacher_cache._teacher_forward

    def recording(teacher, views):
        seen.append(views[32].clone())
        return original(teacher, views)

    teacher_cache._teacher_forward = recording
    try:
        meta = generate_for_trainer(trainer, data, root / "bank", batch_size=9)
    finally:
        teacher_cache._teacher_forward = original
    crops = dict(zip([(s, r) for s in range(N) for r in range(R)], torch.cat(seen)))
    return root, teacher_dir, data, str(root / "bank"), meta, crops


def _replay_trainer(crops_bank, **overrides):
    root, teacher_dir, data, path, _, _ = crops_bank
    args = make_args(root, teacher_label_bank=path, **{**ARGS, **overrides})
    return DistillationTrainer(model=tiny_timm(seed=0), args=args, train_dataset=data)


def test_the_bank_records_crops_only(crops_bank):
    *_, path, meta, _ = crops_bank
    bank = load_label_bank(path)
    assert meta["label_bank_mix"] == "replay" and meta["mixing"] is None
    assert not any(bank.record(row).mixed for row in range(N * R))


def test_replayed_pixels_and_target_are_the_mix_of_two_records(crops_bank):
    _, _, data, path, _, crops = crops_bank
    trainer = _replay_trainer(crops_bank)
    collator, bank = trainer.data_collator, load_label_bank(path)
    kinds = set()
    for epoch in (0, 5):
        collator.set_epoch(epoch)
        batch = collator([trainer.train_dataset[i] for i in range(N)])
        partners, partner_records, params, _ = replay_mix_plan(
            trainer.args.seed, epoch, N, R, collator.replay_mix, 32
        )
        for i in range(N):
            own, partner, partner_record = (
                replay_record(trainer.args.seed, epoch, i, R),
                int(partners[i]),
                int(partner_records[i]),
            )
            a, b = crops[(i, own)].float(), crops[(partner, partner_record)].float()
            pixels = batch["pixel_values"][i].float()
            lam = float(params.lam[i])
            assert partner != i and bool(params.applied[i])  # mix_prob 1: every sample is mixed
            if bool(params.use_cutmix[i]):  # the partner's crop inside the box, the own crop outside
                y0, x0, y1, x1 = (math.floor(v * 32 + 0.5) for v in params.boxes[i].tolist())
                inside = torch.zeros(32, 32, dtype=torch.bool)
                inside[y0:y1, x0:x1] = True
                assert torch.equal(pixels[:, inside], b[:, inside]) and torch.equal(
                    pixels[:, ~inside], a[:, ~inside]
                )
                lam = 1 - inside.float().mean().item()
                kinds.add("cutmix")
            else:
                assert (pixels - (lam * a + (1 - lam) * b)).abs().max() <= 1.0  # uint8 rounding
                kinds.add("mixup")
            assert float(batch["mix_lam"][i]) == pytest.approx(lam, abs=1e-6)
            assert int(batch["mix_partner_labels"][i]) == data[partner]["label"]
            stored = bank.teacher_logits(torch.tensor([bank.row(i, own), bank.row(partner, partner_record)]))
            expected = lam * torch.softmax(stored[0] / T, -1) + (1 - lam) * torch.softmax(stored[1] / T, -1)
            assert torch.allclose(torch.softmax(batch["bank_logits"][i] / T, -1), expected, atol=1e-6)
    assert kinds == {"mixup", "cutmix"}


def test_a_samples_mix_does_not_depend_on_its_batch(crops_bank):
    trainer = _replay_trainer(crops_bank)
    collator = trainer.data_collator
    collator.set_epoch(2)
    alone = collator([trainer.train_dataset[7]])
    among = collator([trainer.train_dataset[i] for i in (3, 7, 11)])
    assert torch.equal(alone["pixel_values"][0], among["pixel_values"][1])
    assert torch.equal(alone["bank_logits"][0], among["bank_logits"][1])


def test_r_records_give_r_squared_pairs_and_any_weight(crops_bank):
    seed, pairs, weights = 0, set(), set()
    config = _replay_trainer(crops_bank).data_collator.replay_mix
    for epoch in range(400):
        partners, partner_records, _, lam = replay_mix_plan(seed, epoch, N, R, config, 32)
        assert (partners != range(N)).all()
        pairs.add((replay_record(seed, epoch, 0, R), int(partner_records[0])))
        weights.add(round(float(lam[0]), 6))
    assert len(pairs) == R * R
    assert len(weights) > 300  # a fresh weight nearly every epoch, not R recorded ones


def test_training_never_runs_the_teacher_and_moves_the_student(crops_bank, monkeypatch):
    from hf_distill import teacher

    calls = []
    monkeypatch.setattr(teacher.Teacher, "__call__", lambda self, pixels: calls.append(1))
    trainer = _replay_trainer(crops_bank)
    assert trainer.teacher is None
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.train()
    assert not calls
    after = trainer.student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    assert all(log["loss_kd"] > 0 for log in trainer.state.log_history if "loss_kd" in log)


def test_a_recorded_mix_bank_is_refused_for_replay_mixing_and_the_reverse(crops_bank, tmp_path):
    root, teacher_dir, data, path, _, _ = crops_bank
    with pytest.raises(
        ValueError, match="label_bank_mix='recorded'.*records crops only.*label_bank_mix='replay'"
    ):
        _replay_trainer(crops_bank, label_bank_mix="recorded")
    args = make_args(
        tmp_path, teacher_model_name_or_path=teacher_dir, **{**ARGS, "label_bank_mix": "recorded"}
    )
    generate_for_trainer(
        DistillationTrainer(model=tiny_timm(seed=0), args=args, train_dataset=data), data, tmp_path / "mixed"
    )
    with pytest.raises(
        ValueError, match=r"label_bank_mix must be one of \['recorded', 'replay'\], got 'both'"
    ):
        generate_for_trainer(
            DistillationTrainer(model=tiny_timm(seed=0), args=args, train_dataset=data),
            data,
            tmp_path / "never",
            bank_mix="both",
        )
    replay = make_args(tmp_path, teacher_label_bank=str(tmp_path / "mixed"), **ARGS)
    with pytest.raises(ValueError, match="label_bank_mix='replay'.*records mixed views"):
        DistillationTrainer(model=tiny_timm(seed=0), args=replay, train_dataset=data)


def test_replay_mixing_needs_funmatch_and_a_mix_and_gives_no_logits(crops_bank, tmp_path):
    with pytest.raises(ValueError, match="label_bank_mix.*teacher_input='funmatch'"):
        DistillationConfig(output_dir=str(tmp_path), teacher_input="same/ic", label_bank_mix="replay")
    with pytest.raises(ValueError, match="label_bank_mix.*nothing to mix"):
        DistillationConfig(
            output_dir=str(tmp_path), teacher_input="funmatch", label_bank_mix="replay", mixup_alpha=0.0
        )
    # a mix of two distributions is not a teacher's logits: a term that reads logits is refused
    with pytest.raises(ValueError, match="label_bank_mix='recorded'"):
        _replay_trainer(crops_bank, logit_standardization=True)
