"""Mixed precision and the speed switches: autocast for both forwards, fp32 loss terms, no NaN from the KL
in fp16, the teacher in bf16 on request, channels-last and torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_distill import DistillationTrainer
from hf_distill.losses import kd_loss

from .conftest import make_args

FP16_MAX = torch.finfo(torch.float16).max


def kd_reference(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """tau^2 * mean_b sum_c p_t (log p_t - log p_s) in float64, with 0 * log 0 = 0."""
    log_p_s = torch.log_softmax(student.double() / temperature, -1)
    log_p_t = torch.log_softmax(teacher.double() / temperature, -1)
    p_t = log_p_t.exp()
    return (torch.xlogy(p_t, p_t) - p_t * log_p_s).sum(-1).mean() * temperature**2


def extreme_logits() -> tuple[torch.Tensor, torch.Tensor]:
    # Saturated fp16 logits pointing at different classes: softmax probabilities underflow to exactly 0.
    student = torch.tensor(
        [[FP16_MAX, -FP16_MAX, 0.0, 10.0], [-FP16_MAX, -FP16_MAX, FP16_MAX, 1.0], [0.0, 0.0, 0.0, 0.0]]
    ).half()
    teacher = torch.tensor(
        [[-FP16_MAX, FP16_MAX, 0.0, -10.0], [-FP16_MAX, FP16_MAX, -FP16_MAX, 3.0], [FP16_MAX, 0.0, -5.0, 0.0]]
    ).half()
    return student, teacher


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_has_no_nan_with_extreme_fp16_logits(temperature):
    student, teacher = extreme_logits()
    student.requires_grad_(True)
    loss = kd_loss(student, teacher, temperature)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    expected = kd_reference(student.detach(), teacher, temperature)
    assert loss.double().item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    # The same formula evaluated naively in fp16 breaks down (0 * log 0 and overflow): the case is real.
    p_s = F.softmax(student.detach() / temperature, -1)
    p_t = F.softmax(teacher / temperature, -1)
    naive = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    assert not torch.isfinite(naive)


def test_kd_loss_under_fp16_autocast_stays_fp32_and_finite():
    student, teacher = extreme_logits()
    head = nn.Linear(4, 4).half()
    with torch.no_grad():
        head.weight.copy_(torch.eye(4))
        head.bias.zero_()
    with torch.autocast("cpu", dtype=torch.float16):
        student_out = head(student)
        loss = kd_loss(student_out, teacher, 2.0)
    assert student_out.dtype == torch.float16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(kd_reference(student_out.float(), teacher, 2.0).item(), rel=1e-4)


def batch_of(trainer: DistillationTrainer, digits, n: int = 8) -> dict[str, torch.Tensor]:
    return trainer._prepare_inputs(
        trainer.data_collator([digits["train"][i] | {"sample_id": i} for i in range(n)])
    )


def test_bf16_autocasts_both_forwards_and_keeps_loss_terms_fp32(tmp_path, digits, timm_teacher_dir):
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path, bf16=True),
        train_dataset=digits["train"],
    )
    batch = batch_of(trainer, digits)
    trainer.model.train()
    with trainer.compute_loss_context_manager():
        loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    assert outputs["logits"].dtype == torch.bfloat16
    assert outputs["teacher_logits"].dtype == torch.bfloat16  # the teacher ran under autocast too
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(v.dtype == torch.float32 for v in trainer._term_sums.values())
    # Parameters stay fp32 (autocast, not a cast of the model); a short run trains them.
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    assert all(v.dtype == before[k].dtype for k, v in after.items())
    assert any(not torch.equal(v, before[k]) for k, v in after.items() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_teacher_runs_in_bf16_when_asked(tmp_path, digits, timm_teacher_dir):
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path, teacher_dtype="bfloat16"),
        train_dataset=digits["train"],
    )
    assert all(p.dtype == torch.bfloat16 for p in trainer.teacher.module.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    batch = batch_of(trainer, digits)
    trainer.model.train()
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    assert outputs["teacher_logits"].dtype == torch.bfloat16
    assert outputs["logits"].dtype == torch.float32
    loss.backward()
    assert loss.dtype == torch.float32
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainer.model.parameters())


def test_channels_last_converts_models_and_inputs_without_changing_the_loss(
    tmp_path, digits, timm_teacher_dir
):
    def build(channels_last: bool) -> DistillationTrainer:
        return DistillationTrainer(
            model="test_resnet",
            teacher_model=timm_teacher_dir,
            args=make_args(tmp_path / str(channels_last), channels_last=channels_last),
            train_dataset=digits["train"],
        )

    fast, plain = build(True), build(False)
    plain.model.load_state_dict(fast.model.state_dict())
    for module in (fast.model, fast.teacher.module):
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    batch = batch_of(fast, digits)
    assert batch["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    assert not batch_of(plain, digits)["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    fast.model.eval()
    plain.model.eval()
    with torch.no_grad():
        fast_loss = fast.compute_loss(fast.model, batch)
        plain_loss = plain.compute_loss(plain.model, batch_of(plain, digits))
    assert fast_loss.item() == pytest.approx(plain_loss.item(), rel=1e-5)


@pytest.mark.slow  # dynamo tracing: ~25 s on two CPU cores
def test_compiled_teacher_and_student_train_and_save_clean_weights(tmp_path, digits, timm_teacher_dir):
    args = make_args(
        tmp_path, teacher_compile=True, torch_compile=True, torch_compile_backend="eager", max_steps=2
    )
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    assert isinstance(trainer.teacher.module, torch._dynamo.eval_frame.OptimizedModule)
    reference = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path / "ref"),
        train_dataset=digits["train"],
    )
    batch = batch_of(trainer, digits)
    pixels = batch["pixel_values"]
    torch.testing.assert_close(trainer.teacher(pixels), reference.teacher(pixels))
    trainer.train()
    trainer.save_model(str(tmp_path / "student"))
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "student" / "model.safetensors"))
    assert saved and not any("_orig_mod" in key for key in saved)
