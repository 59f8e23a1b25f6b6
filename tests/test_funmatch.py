"""FunMatch: fixed-teacher cache, teacher ensembles, optimizers by name, the recipe and the paper configs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from hf_distill import DistillationConfig, DistillationTrainer, kd_loss
from hf_distill.augment import pick_scores
from hf_distill.cli import parse_config
from hf_distill.collators import ViewParams, render_view, sample_box, sample_generator, to_rgb
from hf_distill.teacher import (
    MEMBER_LOGITS,
    average_tempered_probabilities,
    reduce_ensemble,
    select_teacher_rows,
)
from hf_distill.teacher_cache import TeacherCache, topk_compress, topk_expand
from hf_distill.terms import kd_function

from .conftest import make_args, save_in_hub_layout, tiny_timm

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
sys.path.insert(0, str(ROOT / "recipes"))


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def record_input_sizes(module) -> list[int]:
    sizes: list[int] = []
    module.register_forward_pre_hook(lambda _m, args: sizes.append(int(args[0].shape[-1])))
    return sizes


# -------------------------------------------------------------------------------------------- cache
def test_warm_cache_runs_zero_teacher_forwards(tmp_path, digits, timm_teacher_dir):
    args = make_args(tmp_path, teacher_input="fix/cc", teacher_cache_dir=str(tmp_path / "cache"))
    cold = DistillationTrainer(
        model=tiny_timm(seed=3), teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    assert not cold.teacher_cache.hit and cold.teacher.calls > 0
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1

    warm = DistillationTrainer(
        model=tiny_timm(seed=3), teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    assert warm.teacher_cache.hit
    before = params(warm.model)
    warm.train()
    assert warm.teacher.calls == 0  # neither while building nor while training
    assert any(not torch.equal(before[k], v) for k, v in warm.model.state_dict().items())
    assert "teacher_pixel_values" not in warm.data_collator(
        [dict(r, sample_id=i) for i, r in enumerate(digits["train"].select(range(2)))]
    )

    # the cached logits are the teacher's on the fixed central crop
    image = to_rgb(digits["train"][5]["image"])
    box = sample_box("cc", *image.size, sample_generator(0, 0, 0, 0), crop_fraction=args.crop_fraction)
    view = render_view(image, ViewParams(box), 32)[None]
    expected = warm.teacher(view)
    torch.testing.assert_close(warm.teacher_cache.lookup(torch.tensor([5])), expected, rtol=1e-4, atol=1e-4)


def test_cache_key_follows_the_teacher_weights_and_the_mode(tmp_path, digits):
    cache = tmp_path / "cache"
    first = save_in_hub_layout(tiny_timm(seed=1), tmp_path / "t1")
    other = save_in_hub_layout(tiny_timm(seed=2), tmp_path / "t2")
    for teacher, mode in ((first, "fix/cc"), (other, "fix/cc"), (first, "fix/rs")):
        args = make_args(tmp_path, teacher_input=mode, teacher_cache_dir=str(cache))
        trainer = DistillationTrainer(
            model=tiny_timm(seed=3), teacher_model=teacher, args=args, train_dataset=digits["train"]
        )
        assert not trainer.teacher_cache.hit
    assert len(list(cache.glob("*.safetensors"))) == 3


def test_topk_cache_keeps_the_tempered_topk_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(5, 12) * 3
    temperature, k = 2.0, 4
    values, indices, tail = topk_compress(logits, k, temperature)
    rebuilt = topk_expand(values, indices, tail, 12)
    p = torch.softmax(logits / temperature, -1)
    q = torch.softmax(rebuilt / temperature, -1)
    torch.testing.assert_close(
        q.gather(-1, indices.long()), p.gather(-1, indices.long()), rtol=1e-5, atol=1e-6
    )
    tail_mass = 1 - p.gather(-1, indices.long()).sum(-1)
    mask = torch.ones_like(p, dtype=torch.bool).scatter_(-1, indices.long(), False)
    torch.testing.assert_close(
        q[mask].view(5, 8), (tail_mass / 8)[:, None].expand(5, 8), rtol=1e-5, atol=1e-6
    )

    cache = TeacherCache(
        torch.tensor([7, 3, 9, 0, 1]), 12, topk_values=values, topk_indices=indices, tail=tail
    )
    torch.testing.assert_close(cache.lookup(torch.tensor([9, 7])), rebuilt[[2, 0]])
    with pytest.raises(KeyError, match="not in the teacher cache"):
        cache.lookup(torch.tensor([4]))


def test_fix_ic_ens_caches_the_average_over_inception_crops(tmp_path, digits, timm_teacher_dir):
    args = make_args(
        tmp_path,
        teacher_input="fix/ic_ens",
        ic_ens_crops=3,
        temperature=2.0,
        teacher_cache_dir=str(tmp_path / "c"),
    )
    trainer = DistillationTrainer(
        model=tiny_timm(seed=3), teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    image = to_rgb(digits["train"][2]["image"])
    probs = []
    for k in range(3):
        rng = sample_generator(0, 0, 2, 16 + k)
        box = sample_box("ic", *image.size, rng, tuple(args.crop_scale), tuple(args.crop_ratio))
        flip = bool(rng.random() < args.hflip)
        probs.append(
            torch.softmax(trainer.teacher(render_view(image, ViewParams(box, flip), 32)[None]) / 2.0, -1)
        )
    cached = torch.softmax(trainer.teacher_cache.lookup(torch.tensor([2])) / 2.0, -1)
    torch.testing.assert_close(cached, torch.stack(probs).mean(0), rtol=1e-4, atol=1e-5)
    calls = trainer.teacher.calls
    trainer.train()
    assert trainer.teacher.calls == calls


def test_fix_ic_ens_without_cache_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="use_teacher_cache"):
        make_args(tmp_path, teacher_input="fix/ic_ens", use_teacher_cache=False)


# ---------------------------------------------------------------------------------------- ensembles
def test_ensemble_average_math():
    torch.manual_seed(0)
    z1, z2, student = torch.randn(4, 10), torch.randn(4, 10) * 2, torch.randn(4, 10)
    tau = 3.0
    ensemble = average_tempered_probabilities([z1, z2], tau)
    mean = (torch.softmax(z1 / tau, -1) + torch.softmax(z2 / tau, -1)) / 2
    torch.testing.assert_close(torch.softmax(ensemble / tau, -1), mean)
    manual = tau**2 * (mean * (mean.log() - torch.log_softmax(student / tau, -1))).sum(-1).mean()
    torch.testing.assert_close(kd_loss(student, ensemble, tau), manual)


def kl_sum_reference(student, members, tau):
    """big_vision's ensemble loss, written out: sum over teachers of tau^2 * mean_b KL(p_k || p_s)."""
    log_s = torch.log_softmax(student.double() / tau, -1)
    total = 0.0
    for z in members:
        p = torch.softmax(z.double() / tau, -1)
        total = total + (p * (p.log() - log_s)).sum(-1).mean() * tau**2
    return total.float()


def test_the_three_ensemble_reductions_against_their_formulas(tmp_path):
    torch.manual_seed(0)
    z1, z2, student = torch.randn(5, 10), torch.randn(5, 10) * 2, torch.randn(5, 10)
    tau = 2.0
    log_s = torch.log_softmax(student / tau, -1)

    def kd(reduction):
        args = make_args(tmp_path, temperature=tau, teacher_ensemble_reduction=reduction)
        return kd_function(args)(student, reduce_ensemble([z1, z2], reduction, tau), tau)

    # logit_mean (the paper's "logit average"): KD against softmax((z1 + z2) / 2 / tau).
    p_mean_logits = torch.softmax((z1 + z2) / 2 / tau, -1)
    torch.testing.assert_close(
        kd("logit_mean"), tau**2 * (p_mean_logits * (p_mean_logits.log() - log_s)).sum(-1).mean()
    )
    # probability_mean: KD against the mean of the tempered probabilities.
    p_mean = (torch.softmax(z1 / tau, -1) + torch.softmax(z2 / tau, -1)) / 2
    torch.testing.assert_close(
        kd("probability_mean"), tau**2 * (p_mean * (p_mean.log() - log_s)).sum(-1).mean()
    )
    # kl_sum (big_vision): one KL per member, summed; its output still reads as the probability mean.
    torch.testing.assert_close(kd("kl_sum"), kl_sum_reference(student, [z1, z2], tau))
    summed = reduce_ensemble([z1, z2], "kl_sum", tau)
    torch.testing.assert_close(torch.softmax(summed / tau, -1), p_mean)
    # Its gradient is K times probability_mean's (KL is linear in the target).
    grads = {}
    for reduction in ("probability_mean", "kl_sum"):
        s = student.clone().requires_grad_(True)
        args = make_args(tmp_path, temperature=tau, teacher_ensemble_reduction=reduction)
        kd_function(args)(s, reduce_ensemble([z1, z2], reduction, tau), tau).backward()
        grads[reduction] = s.grad
    torch.testing.assert_close(grads["kl_sum"], 2 * grads["probability_mean"])
    # pick: scores that read the teacher are summed over the members too; rows keep their members.
    rows = select_teacher_rows(summed, torch.tensor([3, 0]))
    torch.testing.assert_close(getattr(rows, MEMBER_LOGITS), torch.stack([z1, z2])[:, [3, 0]])
    scores = pick_scores(student, summed, "kl", tau)
    log_p = [torch.log_softmax(z / tau, -1) for z in (z1, z2)]
    torch.testing.assert_close(scores, sum((lp.exp() * (lp - log_s)).sum(-1) for lp in log_p))


def test_default_ensemble_reduction_is_the_papers_logit_mean(tmp_path):
    assert make_args(tmp_path).teacher_ensemble_reduction == "logit_mean"
    with pytest.raises(ValueError, match="teacher_ensemble_reduction: must be one of"):
        make_args(tmp_path, teacher_ensemble_reduction="median")


@pytest.mark.parametrize("reduction", ["logit_mean", "probability_mean", "kl_sum"])
def test_ensemble_members_get_their_own_resolution(tmp_path, digits, reduction):
    small = save_in_hub_layout(tiny_timm(seed=1), tmp_path / "t32")
    large = save_in_hub_layout(tiny_timm(seed=2), tmp_path / "t48", size=48)
    args = make_args(
        tmp_path,
        teacher_input="funmatch",
        crop="ic",
        teacher_image_size=None,
        temperature=2.0,
        mixup_alpha=1.0,
        teacher_ensemble_reduction=reduction,
    )
    trainer = DistillationTrainer(
        model=tiny_timm(seed=3),
        teacher_model=[small, large],
        args=args,
        train_dataset=digits["train"],
        eval_dataset=digits["test"],
    )
    assert trainer.teacher.image_sizes == (32, 48) and trainer.teacher.reduction == reduction
    seen = [record_input_sizes(member.module) for member in trainer.teacher.members]
    batch = trainer.data_collator(
        [dict(r, sample_id=i) for i, r in enumerate(digits["train"].select(range(4)))]
    )
    assert batch["teacher_pixel_values_48"].shape[-1] == 48
    logits = trainer.teacher_logits(batch)
    z = [
        m(v)
        for m, v in zip(trainer.teacher.members, (batch["pixel_values"], batch["teacher_pixel_values_48"]))
    ]
    student = torch.randn(4, 10)
    if reduction == "logit_mean":
        torch.testing.assert_close(logits, (z[0] + z[1]) / 2)
        torch.testing.assert_close(trainer.kd(student, logits, 2.0), kd_loss(student, (z[0] + z[1]) / 2, 2.0))
    else:
        expected = (torch.softmax(z[0] / 2.0, -1) + torch.softmax(z[1] / 2.0, -1)) / 2
        torch.testing.assert_close(torch.softmax(logits / 2.0, -1), expected)
    if reduction == "kl_sum":  # the trainer's one KD function sums one KL per member
        torch.testing.assert_close(trainer.kd(student, logits, 2.0), kl_sum_reference(student, z, 2.0))
    trainer.train()
    assert set(seen[0]) == {32} and set(seen[1]) == {48}


@pytest.mark.parametrize("pick", [False, True])
def test_kl_sum_reaches_tl_mix_images(tmp_path, digits, pick):
    """TL-mix's x' (and the picked part of its pool) get the per-member KL sum too."""
    from hf_distill.augment import TL_PIXELS, teacher_labelled_loss

    members = [save_in_hub_layout(tiny_timm(seed=s), tmp_path / f"t{s}") for s in (1, 2)]
    args = make_args(
        tmp_path, teacher_ensemble_reduction="kl_sum", augmentation_mode="tlcutmix", cutmix_alpha=1.0,
        temperature=2.0, alpha=0.9, pick=pick,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=tiny_timm(seed=3), teacher_model=members, args=args, train_dataset=digits["train"]
    )
    batch = trainer.data_collator(
        [dict(r, sample_id=i) for i, r in enumerate(digits["train"].select(range(4)))]
    )
    trainer.model.train()
    with torch.no_grad():
        _, terms = teacher_labelled_loss(trainer, trainer.model, batch)
        pixels = batch[TL_PIXELS]
        z = [m(pixels) for m in trainer.teacher.members]
        if pick:  # a pool of 2N = 8 scored in train mode by the summed per-member KL, the top N = 4 kept
            assert pixels.shape[0] == 8
            pool_logits = trainer.student_logits(trainer.model, pixels)
            log_s = torch.log_softmax(pool_logits / 2.0, -1)
            kl = sum(
                (torch.softmax(m / 2.0, -1) * (torch.log_softmax(m / 2.0, -1) - log_s)).sum(-1) for m in z
            )
            top = kl.argsort(descending=True)[:4]
            pixels, z = pixels[top], [m[top] for m in z]
        student = trainer.student_logits(trainer.model, pixels)
    torch.testing.assert_close(terms["kd_aug"], kl_sum_reference(student, z, 2.0))


def test_ensemble_contract_follows_the_reduction(tmp_path):
    from hf_distill.composition import refusals
    from hf_distill.teacher import LiveTeacher

    ensemble = dict(teacher_model_name_or_path=["a", "b"], teacher_image_sizes=[32, 48])
    for reduction, logits in (("logit_mean", True), ("probability_mean", False), ("kl_sum", False)):
        args = make_args(
            tmp_path, teacher_ensemble_reduction=reduction, logit_standardization=True, **ensemble
        )
        provides = LiveTeacher.provisions(args, ensemble=True)
        assert provides.logits is logits and (provides.temperature is None) is logits
        # Standardising needs real logits: only the logit mean has them.
        assert bool(refusals(args, provides)) is not logits
    # kl_sum needs every member's outputs on each step: the fixed-teacher cache stores one per sample.
    from hf_distill.teacher_cache import CachedTeacher

    args = make_args(tmp_path, teacher_ensemble_reduction="kl_sum", teacher_input="fix/rs", **ensemble)
    reasons = refusals(args, CachedTeacher.provisions(args, ensemble=True))
    assert any("kl_sum" in r and "computed before training" in r for r in reasons)


def test_funmatch_gets_the_papers_kd_setting_unless_told_otherwise(tmp_path, caplog):
    """Beyer et al. distil with the KL alone at T=1: asking for FunMatch without a temperature or alpha gets
    exactly that; other modes keep the Hinton-KD defaults; given values are kept."""
    import logging

    with caplog.at_level(logging.INFO, logger="hf_distill.terms"):
        funmatch = make_args(tmp_path, teacher_input="funmatch")
    assert (funmatch.temperature, funmatch.alpha) == (1.0, 1.0)
    assert "temperature not set: 1.0" in caplog.text and "alpha not set: 1.0" in caplog.text
    plain = make_args(tmp_path, teacher_input="same")
    assert (plain.temperature, plain.alpha) == (4.0, 0.9)
    told = make_args(tmp_path, teacher_input="funmatch", temperature=2.0, alpha=0.5)
    assert (told.temperature, told.alpha) == (2.0, 0.5)
    # The resolved values are what the card's hyper-parameter table reports.
    from hf_distill.release import training_config

    settings = training_config(funmatch)
    assert (settings["temperature"], settings["alpha"]) == (1.0, 1.0)


def test_ensemble_sizes_must_match_the_teacher_list(tmp_path):
    with pytest.raises(ValueError, match="teacher_image_sizes"):
        make_args(tmp_path, teacher_model_name_or_path=["a", "b"], teacher_image_sizes=[224])


def test_student_and_teacher_at_different_resolutions_with_mixing(tmp_path, digits, timm_teacher_dir):
    args = make_args(tmp_path, image_size=24, teacher_image_size=40, teacher_input="funmatch", crop="ic")
    trainer = DistillationTrainer(
        model=tiny_timm(seed=3), teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    teacher_sizes, student_sizes = (
        record_input_sizes(trainer.teacher.module),
        record_input_sizes(trainer.model),
    )
    trainer.train()
    assert set(teacher_sizes) == {40} and set(student_sizes) == {24}


# -------------------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("name, cls", [("shampoo", "Shampoo"), ("soap", "SOAP")])
def test_optimizer_by_name_steps_the_student(tmp_path, digits, timm_teacher_dir, name, cls):
    args = make_args(tmp_path, optimizer_name=name, learning_rate=1e-3)
    trainer = DistillationTrainer(
        model=tiny_timm(seed=3), teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    before = params(trainer.model)
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert type(optimizer).__name__ == cls
    changed = [
        k
        for k, v in trainer.model.state_dict().items()
        if v.is_floating_point() and not torch.equal(before[k], v)
    ]
    assert any("weight" in k for k in changed)
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())


def test_unknown_optimizer_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="optimizer_name"):
        make_args(tmp_path, optimizer_name="lamb2")


# -------------------------------------------------------------------------------------------- recipe
# One mode in the fast suite, every mode of the paper under `make test-all` (each evaluates 540 digits).
@pytest.mark.parametrize(
    "mode",
    [
        "funmatch",
        *(
            pytest.param(m, marks=pytest.mark.slow)
            for m in ("fix/rs", "fix/cc", "fix/ic_ens", "ind/rc", "ind/ic", "same/rc", "same/ic")
        ),
    ],
)
def test_every_mode_runs_through_the_recipe(tmp_path, timm_teacher_dir, mode):
    import funmatch

    metrics = funmatch.main(
        [
            "--student_model_name_or_path", "test_resnet",
            "--teacher_model_name_or_path", timm_teacher_dir,
            "--teacher_input", mode,
            "--ic_ens_crops", "2",
            "--max_train_samples", "64",
            "--max_steps", "2",
            "--per_device_train_batch_size", "32",
            "--teacher_cache_dir", str(tmp_path / "cache"),
            "--output_dir", str(tmp_path / "out"),
            "--report_to", "none",
            "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_unlabelled_distillation_data_from_another_dataset(tmp_path, timm_teacher_dir):
    import funmatch

    args = parse_config(
        default_config=CONFIGS / "funmatch_digits.yaml",
        argv=[
            "--student_model_name_or_path", "test_resnet",
            "--teacher_model_name_or_path", timm_teacher_dir,
            "--distill_dataset_name", "sklearn/digits",
            "--distill_split", "test",
            "--max_train_samples", "48",
            "--max_steps", "2",
            "--logging_steps", "1",
            "--output_dir", str(tmp_path / "out"),
            "--report_to", "none",
        ],
    )  # fmt: skip
    trainer = funmatch.build_trainer(args)
    assert trainer.train_dataset.column_names == ["image", "sample_id"]
    assert "labels" not in trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    trainer.train()
    assert trainer.state.log_history[0].get("loss_kd") is not None


# ------------------------------------------------------------------------------------ paper configs
PAPER_CONFIGS = sorted(p.name for p in CONFIGS.glob("funmatch_*.yaml") if "digits" not in p.name)


def test_paper_configs_exist():
    assert {
        "funmatch_imagenet_bit.yaml",
        "funmatch_imagenet_ensemble.yaml",
        "funmatch_mobilenetv3.yaml",
    } <= set(PAPER_CONFIGS)
    assert {
        "funmatch_flowers102.yaml",
        "funmatch_pets.yaml",
        "funmatch_food101.yaml",
        "funmatch_sun397.yaml",
    } <= set(PAPER_CONFIGS)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_builds_the_trainer_on_tiny_stand_ins(tmp_path, digits, name):
    args = parse_config(
        default_config=CONFIGS / name,
        argv=[
            "--output_dir",
            str(tmp_path / "out"),
            "--use_cpu",
            "true",
            "--bf16",
            "false",
            "--report_to",
            "none",
        ],
    )
    assert args.teacher_model_name_or_path and args.student_model_name_or_path and args.dataset_name
    teachers = args.teacher_model_name_or_path
    is_ensemble = isinstance(teachers, list) and len(teachers) > 1
    # Real Hub ids cannot be loaded here: swap the models for tiny local ones and the images for digits.
    stand_ins = [
        save_in_hub_layout(tiny_timm(seed=i + 1), tmp_path / f"t{i}")
        for i in range(len(teachers) if is_ensemble else 1)
    ]
    args.image_size, args.teacher_image_size = 32, 32
    if args.teacher_image_sizes:
        args.teacher_image_sizes = [32, 48][: len(args.teacher_image_sizes)]
    args.ic_ens_crops = min(args.ic_ens_crops, 2)
    args.teacher_cache_dir = str(tmp_path / "cache")
    args.max_steps, args.per_device_train_batch_size, args.dataloader_num_workers = 1, 8, 0
    trainer = DistillationTrainer(
        model=tiny_timm(seed=9),
        teacher_model=stand_ins if is_ensemble else stand_ins[0],
        args=args,
        train_dataset=digits["train"].select(range(16)),
        eval_dataset=digits["test"].select(range(8)),
    )
    assert trainer.data_collator.teacher_input == args.teacher_input
    if is_ensemble:
        assert trainer.teacher.image_sizes == (32, 48)
    trainer.train()
    assert trainer.state.global_step == 1


def test_digits_config_is_the_default_and_valid():
    args = parse_config(default_config=CONFIGS / "funmatch_digits.yaml", argv=[])
    assert isinstance(args, DistillationConfig)
    assert args.teacher_input == "funmatch" and args.hflip == 0.0 and args.alpha == 1.0
