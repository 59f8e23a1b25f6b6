"""KD + data augmentation: mixup/CutMix/Cutout baselines, TLmixup/TLCutMix and pick (hf_distill.augment)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_distill import DistillationTrainer
from hf_distill.augment import (
    TL_PIXELS,
    AugmentingCollator,
    build_tl_pool,
    pick_sizes,
    sample_tl_pairs,
    teacher_labelled_loss,
)
from hf_distill.collators import DistillationCollator
from hf_distill.losses import kd_loss
from hf_distill.mixing import MixConfig, boxes_to_pixels, sample_mix_params

from .conftest import SMALL, make_args


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def freeze_batchnorm_statistics(model):
    """Momentum 0: train-mode forwards no longer move the running statistics that eval mode uses."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0


def rows(digits, n, offset=0):
    return [digits["train"][i] | {"sample_id": i} for i in range(offset, offset + n)]


def tl_args(tmp_path, mode="tlcutmix", **overrides):
    base = dict(augmentation_mode=mode, cutmix_alpha=1.0, alpha=0.9, temperature=4.0)
    base.update(overrides)
    return make_args(tmp_path, **base)


def trainer_for(tmp_path, digits, teacher_dir, **overrides):
    return DistillationTrainer(
        model="test_resnet",
        teacher_model=teacher_dir,
        args=tl_args(tmp_path, **overrides),
        train_dataset=digits["train"],
    )


def student_logits(trainer, pixels):
    return trainer.student_logits(trainer.model, pixels)


# ------------------------------------------------------------------------------------------- collation


@pytest.mark.parametrize("batch_size", [1, 2, 7, 9])
@pytest.mark.parametrize(
    "pick,pool_factor,keep_factor", [(False, 2.0, 1.0), (True, 2.0, 1.0), (True, 1.0, 0.5), (True, 3.0, 1.5)]
)
def test_tl_batch_shapes_and_labels_for_any_batch_size(digits, batch_size, pick, pool_factor, keep_factor):
    base = DistillationCollator(student_size=SMALL, teacher_size=48)
    collator = AugmentingCollator(
        base,
        mode="tlcutmix",
        mix_config=MixConfig(cutmix_alpha=1.0),
        pick=pick,
        pick_pool_size_factor=pool_factor,
        pick_keep_factor=keep_factor,
    )
    plain = base(rows(digits, batch_size))
    batch = collator(rows(digits, batch_size))
    pool, keep = pick_sizes(batch_size, pick, pool_factor, keep_factor)
    # Without pick: one mix per original, all kept. With pick: ceil(factor * N) each (the authors' default:
    # mix_n_run=2 runs of N, n_pick = N kept).
    expected = (
        (math.ceil(pool_factor * batch_size), math.ceil(keep_factor * batch_size))
        if pick
        else (batch_size,) * 2
    )
    assert (pool, keep) == expected
    # The originals and their labels are untouched; x' carries no labels of its own.
    assert torch.equal(batch["pixel_values"], plain["pixel_values"])
    assert torch.equal(batch["labels"], plain["labels"]) and batch["labels"].shape == (batch_size,)
    assert batch["tl_pixel_values"].shape == (pool, 3, SMALL, SMALL)
    assert batch["tl_teacher_pixel_values"].shape == (pool, 3, 48, 48)
    assert batch["tl_pixel_values"].dtype == torch.uint8
    assert int(batch["tl_keep"]) == keep
    assert not any(k.startswith("tl_label") for k in batch) and "mix_perm" not in batch
    source, partner = batch["tl_source"], batch["tl_partner"]
    assert source.shape == partner.shape == (pool,)
    assert ((source >= 0) & (source < batch_size)).all() and ((partner >= 0) & (partner < batch_size)).all()
    if batch_size > 1:
        assert (source != partner).all()


def test_pairs_use_every_image_once_per_block():
    generator = torch.Generator().manual_seed(0)
    source, partner = sample_tl_pairs(7, 14, generator)
    for block in (slice(0, 7), slice(7, 14)):
        assert sorted(source[block].tolist()) == list(range(7))
        assert sorted(partner[block].tolist()) == list(range(7))
    assert (source != partner).all()


def test_tlmixup_images_are_the_blends_of_their_pair(digits):
    base = DistillationCollator(student_size=SMALL)
    collator = AugmentingCollator(base, mode="tlmixup", mix_config=MixConfig(mixup_alpha=1.0))
    plain = base(rows(digits, 6))["pixel_values"].float()
    batch = collator(rows(digits, 6))
    lam = batch["tl_lam"][:, None, None, None]
    expected = lam * plain[batch["tl_source"]] + (1 - lam) * plain[batch["tl_partner"]]
    assert (batch["tl_pixel_values"].float() - expected).abs().max() <= 0.5 + 1e-4
    assert ((batch["tl_lam"] > 0) & (batch["tl_lam"] < 1)).all()


def test_tlcutmix_pastes_the_same_relative_box_into_both_views(digits):
    generator = torch.Generator().manual_seed(3)
    pool = build_tl_pool(4, 4, MixConfig(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem"), generator)
    student = torch.arange(4, dtype=torch.float32)[:, None, None, None].expand(4, 3, 32, 32).contiguous()
    teacher = torch.arange(4, dtype=torch.float32)[:, None, None, None].expand(4, 3, 48, 48).contiguous()
    mixed_s, mixed_t = pool.apply(student, teacher)
    for view, mixed in ((student, mixed_s), (teacher, mixed_t)):
        size = view.shape[-1]
        pix = boxes_to_pixels(pool.boxes, size, size)
        for j in range(4):
            inside = torch.zeros(size, size, dtype=torch.bool)
            y0, x0, y1, x1 = pix[j].tolist()
            inside[y0:y1, x0:x1] = True
            assert (mixed[j][:, inside] == pool.partner[j]).all()
            assert (mixed[j][:, ~inside] == pool.source[j]).all()


def test_baselines_mix_with_hard_labels_and_cutout_fills_a_box(digits):
    base = DistillationCollator(student_size=SMALL)
    plain = base(rows(digits, 7))
    for mode, config in (("mixup", MixConfig(mixup_alpha=1.0)), ("cutmix", MixConfig(cutmix_alpha=1.0))):
        batch = AugmentingCollator(base, mode=mode, mix_config=config)(rows(digits, 7))
        assert batch["mix_perm"].shape == batch["mix_lam"].shape == (7,)
        assert torch.equal(batch["labels"], plain["labels"]) and TL_PIXELS not in batch
        assert not torch.equal(batch["pixel_values"], plain["pixel_values"])
    fill = (10, 20, 30)
    batch = AugmentingCollator(base, mode="cutout", cutout_fraction=0.5, cutout_fill=fill)(rows(digits, 7))
    changed = (batch["pixel_values"] != plain["pixel_values"]).any(1)
    for c, value in enumerate(fill):
        assert (batch["pixel_values"][:, c][changed] == value).all()
    area = changed.flatten(1).float().mean(1)
    assert (area <= 0.25 + 1e-6).all() and (area > 0).any()
    assert "mix_perm" not in batch and TL_PIXELS not in batch


# ------------------------------------------------------------------------------------------- the loss


def test_loss_is_ce_kd_on_x_plus_kd_only_on_x_prime(tmp_path, digits, timm_teacher_dir):
    trainer = trainer_for(tmp_path, digits, timm_teacher_dir, mode="tlmixup", alpha=0.6, temperature=3.0)
    batch = trainer.data_collator(rows(digits, 8))
    trainer.model.eval()  # running BatchNorm statistics, so the independent recomputation matches
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)  # outside training: the loss on x alone
        tl_loss, terms = teacher_labelled_loss(trainer, trainer.model, batch)
        tl_loss, terms = teacher_labelled_loss(trainer, trainer.model, batch)
        s_x = student_logits(trainer, batch["pixel_values"])
        t_x = trainer.teacher(batch["pixel_values"])
        s_aug = student_logits(trainer, batch["tl_pixel_values"])
        t_aug = trainer.teacher(batch["tl_pixel_values"])
    expected_x = 0.4 * F.cross_entropy(s_x, batch["labels"]) + 0.6 * kd_loss(s_x, t_x, 3.0)
    torch.testing.assert_close(loss, expected_x)
    # KL on x' uses the teacher's outputs on the same x'.
    expected_kl = 9.0 * F.kl_div(
        F.log_softmax(s_aug / 3.0, -1), F.log_softmax(t_aug / 3.0, -1), log_target=True, reduction="batchmean"
    )
    torch.testing.assert_close(terms["kd_aug"], expected_kl)
    torch.testing.assert_close(tl_loss, 0.6 * expected_kl)


def test_x_prime_never_contributes_cross_entropy(tmp_path, digits, timm_teacher_dir):
    trainer = trainer_for(tmp_path, digits, timm_teacher_dir, mode="tlcutmix", alpha=0.5)
    batch = trainer.data_collator(rows(digits, 8))
    relabelled = dict(batch, labels=(batch["labels"] + 3) % 10)
    # Train mode (x' is only added while training) with BatchNorm running statistics frozen.
    freeze_batchnorm_statistics(trainer.model)
    trainer.model.train()
    calls = []
    trainer.teacher.module.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        a = trainer.compute_loss(trainer.model, batch)
        b = trainer.compute_loss(trainer.model, relabelled)
        s_x = student_logits(trainer, batch["pixel_values"])
    assert calls == [8, 8, 8, 8]  # x and x' per call: the teacher labels every x'
    ce_a = F.cross_entropy(s_x, batch["labels"])
    ce_b = F.cross_entropy(s_x, relabelled["labels"])
    # Changing every hard label changes the loss by exactly the CE difference on x.
    torch.testing.assert_close(a - b, 0.5 * (ce_a - ce_b))
    assert not torch.isclose(ce_a, ce_b)


def test_default_pick_sizes_are_the_authors(tmp_path):
    # Good-DA-in-KD scripts: batch 64, --mix_n_run 2, --n_pick 64: a pool of 128 CutMixes, 64 kept.
    assert pick_sizes(64, True) == (128, 64)
    config = make_args(tmp_path, augmentation_mode="tlcutmix", cutmix_alpha=1.0, pick=True)
    assert (config.pick_pool_size_factor, config.pick_keep_factor, config.pick_scoring) == (2.0, 1.0, "train")


def test_each_run_of_the_pool_draws_its_own_lam_and_box():
    """mix_mode='batch': the authors call cutmix() once per run, each with its own lam, box and permutation."""
    config = MixConfig(mixup_alpha=0.0, cutmix_alpha=1.0, mode="batch")
    pool = build_tl_pool(8, 24, config, torch.Generator().manual_seed(3))
    runs = [slice(0, 8), slice(8, 16), slice(16, 24)]
    for run in runs:
        assert torch.unique(pool.lam[run]).numel() == 1  # one lam and one box per run ...
        assert torch.unique(pool.boxes[run], dim=0).shape[0] == 1
        assert sorted(pool.source[run].tolist()) == list(range(8))  # ... and its own pairing of the batch
    assert len({float(pool.lam[run][0]) for run in runs}) == 3  # ... but different runs differ
    # The same draws, made by hand in the documented order: pairs for the whole pool, then one batch-mode draw
    # per run (lam from the drawn box, as CutMix corrects it).
    generator = torch.Generator().manual_seed(3)
    sample_tl_pairs(8, 24, generator)
    for run in runs:
        params = sample_mix_params(8, config, generator)
        torch.testing.assert_close(pool.lam[run], params.lam)
        torch.testing.assert_close(pool.boxes[run], params.boxes)
    # Without pick the pool is one run: one draw, as before.
    single = build_tl_pool(8, 8, config, torch.Generator().manual_seed(3))
    assert torch.unique(single.lam).numel() == 1


def kl_scores(trainer, pool, train_mode):
    """Independent pick scores: the student (in the given mode) and the teacher on the same pool, KL at tau."""
    trainer.model.train(train_mode)
    with torch.no_grad():
        log_s = F.log_softmax(student_logits(trainer, pool) / 4.0, -1)
        log_t = F.log_softmax(trainer.teacher(pool) / 4.0, -1)
    trainer.model.train()
    return (log_t.exp() * (log_t - log_s)).sum(-1)


@pytest.mark.parametrize("scoring", ["train", "eval"])
def test_pick_trains_on_the_top_of_the_pool_by_kl(tmp_path, digits, timm_teacher_dir, scoring):
    trainer = trainer_for(tmp_path, digits, timm_teacher_dir, pick=True, pick_scoring=scoring)
    batch = trainer.data_collator(rows(digits, 8))
    pool = batch["tl_pixel_values"]
    assert pool.shape[0] == 16 and int(batch["tl_keep"]) == 8
    freeze_batchnorm_statistics(trainer.model)  # so the scores recomputed below see the same network
    seen = []
    hook = trainer.model.register_forward_hook(
        lambda m, i, o: seen.append((m.training, i[0].detach().clone()))
    )
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch)
    hook.remove()
    # train: batch statistics of the pool (the authors'); eval: running statistics.
    kl = kl_scores(trainer, pool, train_mode=scoring == "train")
    best = kl.argsort(descending=True)[:8]
    # Forwards: x (train), the pool scoring pass (no grad, in the scoring mode), the picked images (train).
    assert [training for training, _ in seen] == [True, scoring == "train", True]
    picked = seen[2][1]
    expected = trainer.student_normalizer(pool[best])
    assert picked.shape[0] == 8
    matched = sorted(int(((expected - p).abs().flatten(1).amax(1) < 1e-5).nonzero()[0]) for p in picked)
    assert matched == list(range(8))


@pytest.mark.parametrize("scoring,updates", [("train", 3), ("eval", 2)])
def test_pick_scoring_pass_moves_batchnorm_statistics_only_in_train_mode(
    tmp_path, digits, timm_teacher_dir, scoring, updates
):
    trainer = trainer_for(tmp_path, digits, timm_teacher_dir, pick=True, pick_scoring=scoring)
    batch = trainer.data_collator(rows(digits, 8))
    norms = [m for m in trainer.student.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    before = int(norms[0].num_batches_tracked)
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch)
    # x, (the pool,) the kept images: the authors' train-mode scoring pass is one more update of the statistics.
    assert int(norms[0].num_batches_tracked) - before == updates


@pytest.mark.parametrize("criterion", ["student_entropy", "teacher_entropy"])
def test_pick_with_entropy_criteria_keeps_the_most_uncertain(tmp_path, digits, timm_teacher_dir, criterion):
    trainer = trainer_for(tmp_path, digits, timm_teacher_dir, pick=True, pick_criterion=criterion)
    batch = trainer.data_collator(rows(digits, 6))
    pool = batch["tl_pixel_values"]
    freeze_batchnorm_statistics(trainer.model)
    seen = []
    hook = trainer.model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch)
    hook.remove()
    with torch.no_grad():  # train-mode scoring (the default): the pool's batch statistics
        logits = student_logits(trainer, pool) if criterion == "student_entropy" else trainer.teacher(pool)
    p = F.softmax(logits / 4.0, -1)
    entropy = -(p * p.log()).sum(-1)
    top = entropy.argsort(descending=True)[:6]
    torch.testing.assert_close(seen[-1], trainer.student_normalizer(pool[top]))


# ----------------------------------------------------------------------------------- training & config

MODES = [
    dict(mode="none"),
    dict(mode="mixup"),
    dict(mode="cutmix"),
    dict(mode="cutout"),
    dict(mode="tlmixup"),
    dict(mode="tlcutmix"),
    dict(mode="tlcutmix", pick=True),
]


@pytest.mark.parametrize("overrides", MODES, ids=lambda o: "+".join(str(v) for v in o.values()))
def test_training_with_each_mode_changes_the_student(tmp_path, digits, timm_teacher_dir, overrides):
    trainer = trainer_for(tmp_path, digits, timm_teacher_dir, max_steps=2, **overrides)
    before, teacher_before = state(trainer.model), state(trainer.teacher.module)
    trainer.train()
    assert any(
        not torch.equal(v, before[k]) for k, v in state(trainer.model).items() if v.is_floating_point()
    )
    assert all(torch.equal(v, teacher_before[k]) for k, v in state(trainer.teacher.module).items())
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all(("loss_kd_aug" in e) == overrides["mode"].startswith("tl") for e in logged)


@pytest.mark.parametrize(
    "teacher_input,extra",
    [
        ("same", {"teacher_image_size": 48}),
        ("ind/rc", {}),
        ("fix/rs", {"use_teacher_cache": False}),
        ("funmatch", {}),
    ],
)
def test_tl_modes_work_with_teacher_inputs_and_extra_terms(
    tmp_path, digits, timm_teacher_dir, teacher_input, extra
):
    args = dict(teacher_input=teacher_input, pick=True, loss_types=["dkd"], loss_weights=[0.5], max_steps=2)
    trainer = trainer_for(tmp_path, digits, timm_teacher_dir, **{**args, **extra})
    batch = trainer.data_collator(rows(digits, 8))
    if "teacher_pixel_values" in batch:
        assert batch["tl_teacher_pixel_values"].shape[0] == batch["tl_pixel_values"].shape[0]
    before = state(trainer.model)
    trainer.train()
    assert any(
        not torch.equal(v, before[k]) for k, v in state(trainer.model).items() if v.is_floating_point()
    )
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all({"loss_kd_aug", "loss_dkd", "loss_ce", "loss_kd"} <= set(e) for e in logged)


def test_teacher_at_another_resolution_labels_its_own_view_of_x_prime(tmp_path, digits, timm_teacher_dir):
    trainer = trainer_for(tmp_path, digits, timm_teacher_dir, teacher_image_size=48)
    batch = trainer.data_collator(rows(digits, 6))
    seen = []
    trainer.teacher.module.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    trainer.model.train()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    assert seen == [48, 48]


@pytest.mark.parametrize(
    "overrides,field,match",
    [
        (dict(augmentation_mode="blur"), "augmentation_mode", "must be one of"),
        (dict(augmentation_mode="tlcutmix", cutmix_alpha=0.0), "cutmix_alpha", "never cut"),
        (dict(augmentation_mode="tlmixup", mixup_alpha=0.0), "mixup_alpha", "never mix"),
        (dict(augmentation_mode="mixup", teacher_input="funmatch"), "augmentation_mode", "already mixed"),
        (dict(augmentation_mode="tlcutmix", cutmix_alpha=1.0, alpha=0.0), "alpha", "KD term only"),
        (dict(augmentation_mode="cutout", cutout_fraction=1.5), "cutout_fraction", r"\(0, 1\]"),
        (dict(augmentation_mode="cutmix", cutmix_alpha=1.0, pick=True), "pick", "tlcutmix"),
        (
            dict(augmentation_mode="tlcutmix", cutmix_alpha=1.0, pick=True, pick_pool_factor=4.0),
            "pick_pool_factor",
            "replaced by pick_pool_size_factor .* pick_pool_size_factor=2.0, pick_keep_factor=0.5",
        ),
        (
            dict(augmentation_mode="tlcutmix", cutmix_alpha=1.0, pick=True, pick_keep_factor=3.0),
            "pick_keep_factor",
            "more than the pool",
        ),
        (
            dict(augmentation_mode="tlcutmix", cutmix_alpha=1.0, pick=True, pick_pool_size_factor=0.0),
            "pick_pool_size_factor",
            "> 0",
        ),
        (
            dict(augmentation_mode="tlcutmix", cutmix_alpha=1.0, pick=True, pick_scoring="frozen"),
            "pick_scoring",
            "one of",
        ),
        (
            dict(augmentation_mode="tlcutmix", cutmix_alpha=1.0, pick_criterion="loss"),
            "pick_criterion",
            "one of",
        ),
    ],
)
def test_bad_augmentation_config_names_the_field(tmp_path, overrides, field, match):
    with pytest.raises(ValueError, match=rf"DistillationConfig\.{field}: .*{match}"):
        make_args(tmp_path, **overrides)


# ---------------------------------------------------------------------------------------------- recipe


def _recipe():
    import importlib.util
    import sys
    from pathlib import Path

    if "tlcutmix_recipe" in sys.modules:
        module = sys.modules["tlcutmix_recipe"]
        return module, Path(module.__file__).parent / "configs"

    path = Path(__file__).resolve().parents[1] / "recipes" / "tlcutmix.py"
    spec = importlib.util.spec_from_file_location("tlcutmix_recipe", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module, path.parent / "configs"


@pytest.mark.parametrize("name", ["digits", "cifar100", "tinyimagenet", "imagenet_r34_r18"])
def test_recipe_configs_parse_with_the_papers_settings(name):
    from hf_distill.cli import parse_config

    recipe, configs = _recipe()
    config = parse_config(
        recipe.TLCutMixConfig, argv=["--config", str(configs / f"tlcutmix_{name}.yaml"), "--bf16", "false"]
    )
    assert (config.augmentation_mode, config.pick, config.pick_criterion) == ("tlcutmix", True, "kl")
    assert (config.alpha, config.temperature, config.cutmix_alpha) == (0.9, 4.0, 1.0)
    if name != "digits":
        assert config.dataset_name and config.lr_decay_fractions and config.optim_args == "momentum=0.9"


def test_recipe_step_decay_follows_the_fractions(tmp_path, digits, timm_teacher_dir):
    recipe, _ = _recipe()
    args = recipe.TLCutMixConfig(
        output_dir=str(tmp_path / "out"),
        image_size=SMALL,
        use_cpu=True,
        max_steps=8,
        learning_rate=0.1,
        lr_decay_fractions=[0.5, 0.75],
        lr_decay_rate=0.1,
        lr_scheduler_type="constant",
        report_to=[],
    )
    trainer = recipe.StepDecayTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=8)
    lrs = []
    for _ in range(8):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    torch.testing.assert_close(torch.tensor(lrs), torch.tensor([0.1] * 4 + [0.01] * 2 + [0.001] * 2))
    with pytest.raises(ValueError, match="lr_decay_fractions: must be increasing"):
        recipe.TLCutMixConfig(output_dir=str(tmp_path / "x"), lr_decay_fractions=[0.8, 0.5], use_cpu=True)


def test_with_a_cached_fixed_teacher_only_x_prime_runs_the_teacher(tmp_path, digits, timm_teacher_dir):
    trainer = trainer_for(
        tmp_path, digits, timm_teacher_dir, teacher_input="fix/rs", teacher_image_size=48, pick=True,
        teacher_cache_dir=str(tmp_path / "cache"), max_steps=2,
    )  # fmt: skip
    seen = []
    trainer.teacher.module.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    trainer.train()
    # Cached outputs cover x; the mixes x' (a pool of 2N) are new images, labelled live at the teacher's resolution.
    assert seen == [(32, 3, 48, 48), (32, 3, 48, 48)]
