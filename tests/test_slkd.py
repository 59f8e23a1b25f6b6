"""SLKD: self-learning teachers train beside the student, inside Trainer.model, and never leak into the saved student."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_distill import DistillationTrainer
from hf_distill.losses import ModelOutputs
from hf_distill.slkd import (
    SLKD_NAME,
    SelfLearningTeachers,
    fuse_logits,
    slt_term,
    student_slt_kd_term,
)
from hf_distill.trainer import AUXILIARY_WEIGHTS_NAME

from .conftest import make_args


def build(tmp_path, digits, teacher_dir, **overrides):
    overrides.setdefault("slkd_num_teachers", 2)
    args = make_args(tmp_path, **overrides)
    return DistillationTrainer(
        model="test_resnet", teacher_model=teacher_dir, args=args, train_dataset=digits["train"]
    )


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[name], p) for name, p in module.named_parameters())


def identical(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return all(torch.equal(before[name], p) for name, p in module.named_parameters())


def kl_reference(student_logits, target_logits, tau):
    """tau^2 * mean_b sum_c p_t (log p_t - log p_s), written out independently of hf_distill.losses."""
    p_t = torch.softmax(target_logits.double() / tau, -1)
    log_p_s = torch.log_softmax(student_logits.double() / tau, -1)
    return ((p_t * (p_t.log() - log_p_s)).sum(-1).mean() * tau**2).float()


# ------------------------------------------------------------------------------------------ training
def test_slts_learn_teacher_stays_frozen_and_student_is_saved_alone(tmp_path, digits, timm_teacher_dir):
    trainer = build(tmp_path, digits, timm_teacher_dir, max_steps=3)
    slts = trainer.auxiliary_module(SLKD_NAME)
    assert isinstance(slts, SelfLearningTeachers) and len(slts.networks) == 2
    teacher = trainer.teacher.module
    # Untrained copies of the teacher's architecture, independently initialised.
    assert type(slts.networks[0]) is type(teacher)
    first, second, teacher_before = params(slts.networks[0]), params(slts.networks[1]), params(teacher)
    assert not torch.equal(first["fc.weight"], teacher_before["fc.weight"])
    assert not torch.equal(first["fc.weight"], second["fc.weight"])
    optimized = {id(p) for group in trainer.create_optimizer().param_groups for p in group["params"]}
    assert {id(p) for p in slts.parameters()} <= optimized
    assert not {id(p) for p in teacher.parameters()} & optimized

    trainer.train()
    assert changed(first, slts.networks[0]) and changed(second, slts.networks[1])
    assert identical(teacher_before, teacher)
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"loss_ce", "loss_kd", "loss_slkd_slt", "loss_slkd_kd"} <= logged
    assert "eval_loss" in trainer.evaluate(digits["test"])

    trainer.save_model()
    saved = load_file(os.path.join(trainer.args.output_dir, "model.safetensors"))
    assert set(saved) == set(trainer.student.state_dict())
    assert not os.path.exists(os.path.join(trainer.args.output_dir, AUXILIARY_WEIGHTS_NAME))


def test_configurable_architecture(tmp_path, digits, timm_teacher_dir):
    trainer = build(
        tmp_path, digits, timm_teacher_dir, slkd_num_teachers=1, slkd_architecture="test_convnext"
    )
    network = trainer.auxiliary_module(SLKD_NAME).networks[0]
    assert type(network).__name__ == "ConvNeXt"
    before = params(network)
    trainer.train()
    assert changed(before, network)


class Snapshots(TrainerCallback):
    """Parameters of the student and the SL-Ts after every optimizer step."""

    def __init__(self, trainer):
        self.trainer, self.steps = trainer, []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append((params(self.trainer.student), params(self.trainer.auxiliary_module(SLKD_NAME))))


def run_with_snapshots(tmp_path, digits, teacher_dir, **overrides):
    trainer = build(tmp_path, digits, teacher_dir, **overrides)
    initial = (params(trainer.student), params(trainer.auxiliary_module(SLKD_NAME)))
    snapshots = Snapshots(trainer)
    trainer.add_callback(snapshots)
    trainer.train()
    return trainer, [initial, *snapshots.steps]


def test_parallel_mode_updates_slts_and_student_in_every_step(tmp_path, digits, timm_teacher_dir):
    trainer, states = run_with_snapshots(tmp_path, digits, timm_teacher_dir, max_steps=2)
    for before, after_step in zip(states, states[1:]):
        student_before, slts_before = before
        student_after, slts_after = after_step
        assert any(not torch.equal(student_before[k], student_after[k]) for k in student_before)
        assert any(not torch.equal(slts_before[k], slts_after[k]) for k in slts_before)


def test_alternating_mode_alternates_slt_and_student_phases(tmp_path, digits, timm_teacher_dir):
    trainer, states = run_with_snapshots(
        tmp_path, digits, timm_teacher_dir, max_steps=4, slkd_mode="alternating", slkd_phase_steps=1
    )
    assert len(states) == 5
    for step, (before, after) in enumerate(zip(states, states[1:])):
        student_moved = any(not torch.equal(before[0][k], after[0][k]) for k in before[0])
        slts_moved = any(not torch.equal(before[1][k], after[1][k]) for k in before[1])
        # Steps 0, 2: the SL-Ts learn from the teacher, the student is held; steps 1, 3: the reverse.
        assert (student_moved, slts_moved) == ((False, True) if step % 2 == 0 else (True, False)), step


def test_alternating_phase_length(tmp_path, digits, timm_teacher_dir):
    trainer, states = run_with_snapshots(
        tmp_path, digits, timm_teacher_dir, max_steps=4, slkd_mode="alternating", slkd_phase_steps=2
    )
    moved = [
        any(not torch.equal(before[0][k], after[0][k]) for k in before[0])
        for before, after in zip(states, states[1:])
    ]
    assert moved == [False, False, True, True]


def test_resume_restores_slts_exactly(tmp_path, digits, timm_teacher_dir):
    straight = build(tmp_path / "a", digits, timm_teacher_dir, max_steps=4)
    straight.train()

    first = build(tmp_path / "b", digits, timm_teacher_dir, max_steps=4, save_strategy="steps", save_steps=2)
    first.train()
    checkpoint = os.path.join(first.args.output_dir, "checkpoint-2")
    stored = load_file(os.path.join(checkpoint, AUXILIARY_WEIGHTS_NAME))
    assert any(key.startswith(f"auxiliary.{SLKD_NAME}.networks.1.") for key in stored)
    resumed = build(
        tmp_path / "b", digits, timm_teacher_dir, max_steps=4, save_strategy="steps", save_steps=2
    )
    # A fresh build starts from other SL-T weights than the checkpoint: resuming must replace them.
    key = next(k for k in stored if k.endswith("fc.weight"))
    assert not torch.equal(resumed.model.state_dict()[key], stored[key])
    resumed.train(resume_from_checkpoint=checkpoint)
    a_state, b_state = straight.model.state_dict(), resumed.model.state_dict()
    assert set(a_state) == set(b_state)
    for name, a in a_state.items():
        if name.startswith(f"auxiliary.{SLKD_NAME}.") and a.is_floating_point():
            torch.testing.assert_close(a, b_state[name], rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------- math
def test_fused_output_math(tmp_path, digits, timm_teacher_dir):
    assert torch.equal(fuse_logits([torch.ones(2, 3)], 0.3), torch.ones(2, 3))
    z1, z2 = torch.randn(4, 10), torch.randn(4, 10)
    torch.testing.assert_close(fuse_logits([z1, z2], 0.3), 0.3 * z1 + 0.7 * z2)
    with pytest.raises(ValueError, match="one or two"):
        fuse_logits([z1, z2, z1], 0.5)

    trainer = build(tmp_path, digits, timm_teacher_dir, slkd_fusion_weight=0.3)
    slts = trainer.auxiliary_module(SLKD_NAME).eval()
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    spec = trainer.teacher.preprocess
    normalised = (pixels.float() / 255.0 - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(
        spec.std
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = [network(normalised) for network in slts.networks]
        out = slts(ModelOutputs(torch.zeros(4, 10)), ModelOutputs(None), {"pixel_values": pixels})
    for got, want in zip(out.logits, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.fused, 0.3 * expected[0] + 0.7 * expected[1], rtol=1e-4, atol=1e-5)
    # The SL-Ts see the teacher's view when the collator makes one.
    other = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        seen = slts(ModelOutputs(None), None, {"pixel_values": pixels, "teacher_pixel_values": other})
    assert not torch.allclose(seen.logits[0], out.logits[0])


def test_loss_terms_match_the_paper_formulas():
    torch.manual_seed(0)
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    z1, z2 = torch.randn(6, 10), torch.randn(6, 10)
    labels = torch.randint(0, 10, (6,))
    w, tau, alpha = 0.4, 3.0, 0.7
    student = ModelOutputs(s)
    from hf_distill.slkd import SLTOutputs

    student.auxiliary[SLKD_NAME] = SLTOutputs([z1, z2], w * z1 + (1 - w) * z2)
    batch = {"labels": labels}
    expected_slt = sum(
        (1 - alpha) * F.cross_entropy(z, labels) + alpha * kl_reference(z, t, tau) for z in (z1, z2)
    )
    torch.testing.assert_close(slt_term(student, ModelOutputs(t), batch, tau, alpha), expected_slt)
    torch.testing.assert_close(
        student_slt_kd_term(student, ModelOutputs(t), batch, tau), kl_reference(s, w * z1 + (1 - w) * z2, tau)
    )
    # Without labels the SL-Ts learn from the teacher alone.
    torch.testing.assert_close(
        slt_term(student, ModelOutputs(t), {}, tau, alpha),
        kl_reference(z1, t, tau) + kl_reference(z2, t, tau),
    )


@pytest.mark.parametrize("detach", [True, False])
def test_student_kd_towards_slts_reaches_slts_only_when_not_detached(
    tmp_path, digits, timm_teacher_dir, detach
):
    trainer = build(tmp_path, digits, timm_teacher_dir, slkd_detach=detach)
    model = trainer.model.train()
    batch = trainer.data_collator([digits["train"][i] for i in range(8)])
    teacher = ModelOutputs(trainer.teacher_logits(batch))
    student = trainer.student_outputs(model, batch, teacher)
    student_slt_kd_term(student, teacher, batch, detach=detach).backward(retain_graph=True)
    slt_grads = [p.grad for p in trainer.auxiliary_module(SLKD_NAME).parameters()]
    assert all(g is not None for g in (p.grad for p in trainer.student.parameters()))
    if detach:  # the paper: SL-Ts learn from the teacher only (Eq. 2, 5, 6)
        assert all(g is None for g in slt_grads)
    else:  # the authors' released code: the student's term also pulls the SL-Ts
        assert any(g is not None and g.abs().sum() > 0 for g in slt_grads)
    model.zero_grad(set_to_none=True)
    slt_term(student, teacher, batch).backward()
    assert all(p.grad is None for p in trainer.student.parameters())
    assert all(p.grad is None for p in trainer.teacher.module.parameters())


def authors_tech_kd_loss(
    s, t, z1, z2, labels, tau=4.0, ce_w=0.1, kd_w=0.9, process_w=1.0, ce_cs=1.0, kd_cs=1.0
):
    """The released code's total (BrilliantCheng/SLKD, mdistiller/distillers/TECH_KD.py, Tech_KD.forward_train
    with its CFG.TECH_KD defaults), written out here: loss_ce + loss_kd + loss_kd_tc + loss_kd_cs."""
    child = 0.5 * z1 + 0.5 * z2
    loss_ce = ce_w * F.cross_entropy(s, labels)
    loss_kd = kd_w * kl_reference(s, t, tau)
    loss_tc = sum(ce_w * F.cross_entropy(z, labels) + kd_w * kl_reference(z, t, tau) for z in (z1, z2))
    loss_cs = process_w * (ce_cs * F.cross_entropy(s, labels) + kd_cs * kl_reference(s, child, tau))
    return loss_ce + loss_kd + loss_tc + loss_cs


@pytest.mark.parametrize("ce_weight", [1.0, 0.0])
def test_student_loss_is_the_authors_expression(tmp_path, digits, timm_teacher_dir, ce_weight):
    """Default: the student's SL-T branch carries its own CE (CE weight 0.1 + 1.0 = 1.1 in all, as the
    released code); slkd_ce_weight=0 leaves the branch KD only."""
    trainer = build(tmp_path, digits, timm_teacher_dir, slkd_ce_weight=ce_weight)
    assert (trainer.args.temperature, trainer.args.alpha) == (4.0, 0.9)
    torch.manual_seed(0)
    s, t, z1, z2 = (torch.randn(6, 10) for _ in range(4))
    labels = torch.randint(0, 10, (6,))
    from hf_distill.slkd import SLTOutputs

    student = ModelOutputs(s)
    student.auxiliary[SLKD_NAME] = SLTOutputs([z1, z2], fuse_logits([z1, z2], 0.5))
    total, terms = trainer.distillation_loss(student, ModelOutputs(t), {"labels": labels})
    expected = authors_tech_kd_loss(s, t, z1, z2, labels, ce_cs=ce_weight)
    torch.testing.assert_close(total, expected)
    assert ("slkd_ce" in terms) == (ce_weight > 0)


def test_sequential_mode_steps_the_slts_then_the_student_on_one_batch(tmp_path, digits, timm_teacher_dir):
    """The authors' sequential trainer on one batch: SL-T 1 and SL-T 2 each take an SGD step from their own
    loss, then the student takes one from CE + KD(teacher) + (CE + KD(updated SL-Ts)), all on the same batch."""
    import copy

    lr = 0.5
    trainer = build(
        tmp_path, digits, timm_teacher_dir, slkd_mode="sequential", optim="sgd", learning_rate=lr,
        weight_decay=0.0, max_grad_norm=0.0, lr_scheduler_type="constant", warmup_steps=0,
    )  # fmt: skip
    slts = trainer.auxiliary_module(SLKD_NAME)
    ref_slts = [copy.deepcopy(n) for n in slts.networks]
    ref_student = copy.deepcopy(trainer.student)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    slts.on_step_begin(trainer.args, trainer.state, None, optimizer=trainer.optimizer)
    batch = trainer.data_collator([digits["train"][i] | {"sample_id": i} for i in range(8)])
    labels, tau, alpha = batch["labels"], 4.0, 0.9
    model = trainer.model.train()
    with torch.no_grad():
        t = trainer.teacher(batch.get("teacher_pixel_values", batch["pixel_values"]))
    slt_pixels = slts.normalizer(batch.get("teacher_pixel_values", batch["pixel_values"]))

    loss = trainer.compute_loss(model, batch)
    # The SL-Ts already moved inside the forward, before any backward.
    for net, ref in zip(slts.networks, ref_slts):
        z = ref.train()(slt_pixels)
        ref_loss = (1 - alpha) * F.cross_entropy(z, labels) + alpha * kl_reference(z, t, tau)
        grads = torch.autograd.grad(ref_loss, list(ref.parameters()))
        with torch.no_grad():
            for p, g in zip(ref.parameters(), grads):
                p -= lr * g
        for (name, a), b in zip(net.named_parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    loss.backward()
    trainer.optimizer.step()
    # The student learnt from the SL-Ts as they stood after their update (no second move of the SL-Ts).
    for net, ref in zip(slts.networks, ref_slts):
        assert all(
            torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(net.parameters(), ref.parameters())
        )
    with torch.no_grad():
        fused = 0.5 * ref_slts[0](slt_pixels) + 0.5 * ref_slts[1](slt_pixels)
    s = ref_student.train()(trainer.student_normalizer(batch["pixel_values"]))
    student_loss = (
        (1 - alpha) * F.cross_entropy(s, labels) + alpha * kl_reference(s, t, tau)
        + F.cross_entropy(s, labels) + kl_reference(s, fused, tau)
    )  # fmt: skip
    grads = torch.autograd.grad(student_loss, list(ref_student.parameters()))
    with torch.no_grad():
        for p, g in zip(ref_student.parameters(), grads):
            p -= lr * g
    for (name, a), b in zip(trainer.student.named_parameters(), ref_student.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_sequential_mode_trains_and_resumes_with_the_slt_optimizer_state(tmp_path, digits, timm_teacher_dir):
    """The SL-Ts' optimizer state lives in the trainer's optimizer, so a resumed run matches a straight one."""
    straight = build(tmp_path / "a", digits, timm_teacher_dir, max_steps=4, slkd_mode="sequential")
    straight.train()
    logged = {key for entry in straight.state.log_history for key in entry}
    assert {"loss_slkd_slt", "loss_slkd_ce", "loss_slkd_kd"} <= logged
    first = build(
        tmp_path / "b", digits, timm_teacher_dir, max_steps=4, slkd_mode="sequential",
        save_strategy="steps", save_steps=2,
    )  # fmt: skip
    first.train()
    resumed = build(
        tmp_path / "b", digits, timm_teacher_dir, max_steps=4, slkd_mode="sequential",
        save_strategy="steps", save_steps=2,
    )  # fmt: skip
    resumed.train(resume_from_checkpoint=os.path.join(first.args.output_dir, "checkpoint-2"))
    a_state, b_state = straight.model.state_dict(), resumed.model.state_dict()
    for name, a in a_state.items():
        if a.is_floating_point():
            torch.testing.assert_close(a, b_state[name], rtol=1e-5, atol=1e-6, msg=name)


# -------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"slkd_num_teachers": 3}, "slkd_num_teachers: must be 0"),
        ({"slkd_fusion_weight": 1.5}, r"slkd_fusion_weight: must be in \[0, 1\]"),
        ({"slkd_alpha": -0.1}, r"slkd_alpha: must be in \[0, 1\]"),
        ({"slkd_weight": -1.0}, "slkd_weight: must be a finite number >= 0"),
        ({"slkd_temperature": 0.0}, "slkd_temperature: must be a finite number > 0"),
        ({"slkd_mode": "stepwise"}, "slkd_mode: must be one of"),
        ({"slkd_ce_weight": -1.0}, "slkd_ce_weight: must be a finite number >= 0"),
        (
            {"slkd_mode": "sequential", "gradient_accumulation_steps": 2},
            "slkd_mode: 'sequential' .* micro-batch",
        ),
        ({"slkd_mode": "sequential", "fsdp": "full_shard"}, "slkd_mode: 'sequential' .* FSDP"),
        ({"slkd_phase_steps": 0}, "slkd_phase_steps: must be an integer >= 1"),
        ({"slkd_architecture": "no_such_net"}, "slkd_architecture: 'no_such_net' is not a timm architecture"),
    ],
)
def test_bad_config_is_refused(tmp_path, overrides, message):
    overrides.setdefault("slkd_num_teachers", 1)
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_slkd_without_teacher_is_refused(tmp_path, digits):
    args = make_args(tmp_path, slkd_num_teachers=1, alpha=0.0)
    with pytest.raises(ValueError, match="slkd_num_teachers: SLKD needs a pretrained teacher"):
        DistillationTrainer(model="test_resnet", args=args, train_dataset=digits["train"])
