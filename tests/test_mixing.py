"""Tests for hf_distill.mixing: sample-once / apply-anywhere Mixup, CutMix, Cutout and pick scores."""

from __future__ import annotations

import math

import pytest
import torch
from timm.data.mixup import mixup_target as timm_mixup_target

from hf_distill.mixing import (
    MIX_MODES,
    SELECTION_CRITERIA,
    MixConfig,
    MixParams,
    apply_cutout,
    apply_mix,
    boxes_to_pixels,
    cutout,
    mix_targets,
    per_sample_scores,
    sample_cutout_boxes,
    sample_mix_params,
    select_by_criterion,
    tl_mix,
)

# ----------------------------------------------------------------------------------------------
# helpers (independent re-statements of the documented conventions)
# ----------------------------------------------------------------------------------------------


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pixel_box(box, height: int, width: int) -> tuple[int, int, int, int]:
    """Documented rounding: floor(v * size + 0.5), clamped to [0, size]."""
    y0, x0, y1, x1 = (float(v) for v in box)

    def r(v: float, n: int) -> int:
        return min(max(math.floor(v * n + 0.5), 0), n)

    return r(y0, height), r(x0, width), r(y1, height), r(x1, width)


def box_mask(box, height: int, width: int) -> torch.Tensor:
    y0, x0, y1, x1 = pixel_box(box, height, width)
    m = torch.zeros(height, width, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def coded(batch: int, channels: int, height: int, width: int, dtype=torch.float64) -> torch.Tensor:
    """Every pixel value is unique and encodes (sample, channel, row, column)."""
    i = torch.arange(batch).view(-1, 1, 1, 1)
    c = torch.arange(channels).view(1, -1, 1, 1)
    r = torch.arange(height).view(1, 1, -1, 1)
    q = torch.arange(width).view(1, 1, 1, -1)
    return (i * 100000 + c * 10000 + r * width + q).to(dtype)


def per_sample_constant(batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    return (
        (torch.arange(batch, dtype=torch.float64) + 1.0)
        .view(-1, 1, 1, 1)
        .expand(batch, channels, height, width)
        .clone()
    )


def expected_cutmix(params: MixParams, x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    h, w = x.shape[-2:]
    for i in range(x.shape[0]):
        if bool(params.use_cutmix[i]):
            m = box_mask(params.boxes[i], h, w)
            out[i][:, m] = x[int(params.perm[i])][:, m]
    return out


def rounding_bound(height: int, width: int) -> float:
    # Each of the four edges moves by at most half a pixel.
    return 1.0 / height + 1.0 / width + 1.0 / (height * width)


BOTH = dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)


# ----------------------------------------------------------------------------------------------
# mixup / cutmix application
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MIX_MODES)
def test_mixup_matches_formula_on_two_resolutions(mode):
    b = 6
    params = sample_mix_params(b, MixConfig(mixup_alpha=0.7, cutmix_alpha=0.0, mode=mode), gen(0))
    assert not params.use_cutmix.any() and params.applied.all()
    assert ((params.lam > 0) & (params.lam < 1)).all()
    small, big = coded(b, 3, 32, 32, torch.float32), coded(b, 3, 64, 64, torch.float32)
    out_small, out_big = apply_mix(params, small, big)
    for x, out in ((small, out_small), (big, out_big)):
        assert out.dtype == x.dtype and out.shape == x.shape
        for i in range(b):
            lam = float(params.lam[i])
            j = b - 1 - i
            expected = lam * x[i].double() + (1.0 - lam) * x[j].double()
            torch.testing.assert_close(out[i].double(), expected, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("mode", MIX_MODES)
def test_cutmix_pastes_same_relative_box_in_both_views(mode):
    b = 5
    params = sample_mix_params(b, MixConfig(mixup_alpha=0.0, cutmix_alpha=1.0, mode=mode), gen(1))
    non_middle = torch.arange(b) != b // 2
    assert torch.equal(params.use_cutmix, non_middle)
    small, big = coded(b, 3, 32, 32), coded(b, 3, 64, 64)
    out_small, out_big = apply_mix(params, small, big)
    assert torch.equal(out_small, expected_cutmix(params, small))
    assert torch.equal(out_big, expected_cutmix(params, big))
    for i in range(b):
        if not non_middle[i]:
            assert torch.equal(out_small[i], small[i]) and torch.equal(out_big[i], big[i])
            continue
        # fraction of pixels taken from the partner, measured on the outputs
        f_small = (out_small[i] != small[i]).all(0).double().mean().item()
        f_big = (out_big[i] != big[i]).all(0).double().mean().item()
        cut = 1.0 - float(params.lam[i])
        assert abs(f_small - cut) <= rounding_bound(32, 32)
        assert abs(f_big - cut) <= rounding_bound(64, 64)


def test_grid_aligned_boxes_cover_identical_region_at_every_resolution():
    b = 4
    boxes = (
        torch.tensor([[4, 8, 20, 30], [0, 0, 32, 16], [10, 10, 11, 11], [1, 2, 3, 32]], dtype=torch.float32)
        / 32.0
    )
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    params = MixParams(
        perm=torch.tensor([3, 2, 1, 0]),
        lam=1.0 - area,
        use_cutmix=torch.ones(b, dtype=torch.bool),
        boxes=boxes,
        applied=torch.ones(b, dtype=torch.bool),
    )
    v32, v64, v96 = (per_sample_constant(b, 3, s, s) for s in (32, 64, 96))
    o32, o64, o96 = apply_mix(params, v32, v64, v96)
    m32 = (o32 != v32).all(1)
    m64 = (o64 != v64).all(1)
    m96 = (o96 != v96).all(1)
    assert torch.equal(m64, m32.repeat_interleave(2, -2).repeat_interleave(2, -1))
    assert torch.equal(m96, m32.repeat_interleave(3, -2).repeat_interleave(3, -1))
    for m, size in ((m32, 32), (m64, 64), (m96, 96)):
        torch.testing.assert_close(1.0 - m.double().mean((1, 2)), params.lam.double())
        torch.testing.assert_close(params.lam_at_resolution(size, size), params.lam)
    # pasted pixels carry the partner's value
    for i in range(b):
        assert (o64[i][:, m64[i]] == float(3 - i + 1)).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corrected_lam_equals_cut_area(seed):
    b = 8
    params = sample_mix_params(
        b, MixConfig(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", correct_lam=True), gen(seed)
    )
    bx = params.boxes.double()
    assert ((bx >= 0) & (bx <= 1)).all()
    assert (bx[:, 2] >= bx[:, 0]).all() and (bx[:, 3] >= bx[:, 1]).all()
    rel_area = (bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])
    torch.testing.assert_close(params.lam.double(), 1.0 - rel_area, rtol=0, atol=1e-6)
    for h, w in ((32, 32), (64, 64), (224, 224), (30, 50)):
        x = per_sample_constant(b, 1, h, w)
        (out,) = apply_mix(params, x)
        frac = (out != x).double().mean((1, 2, 3))
        lam_pix = params.lam_at_resolution(h, w).double()
        torch.testing.assert_close(lam_pix, 1.0 - frac, rtol=0, atol=1e-6)
        assert ((params.lam.double() - (1.0 - frac)).abs() <= rounding_bound(h, w)).all()


def test_uncorrected_lam_keeps_beta_draw_with_same_boxes():
    cfg = dict(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem")
    fixed = sample_mix_params(64, MixConfig(**cfg, correct_lam=True), gen(5))
    raw = sample_mix_params(64, MixConfig(**cfg, correct_lam=False), gen(5))
    assert torch.equal(fixed.boxes, raw.boxes)
    # clipping only shrinks the box, so the corrected lam is never smaller
    assert (fixed.lam >= raw.lam - 1e-6).all()
    bx = raw.boxes
    interior = (bx[:, 0] > 0) & (bx[:, 1] > 0) & (bx[:, 2] < 1) & (bx[:, 3] < 1)
    clipped = ~interior
    assert interior.any() and clipped.any()
    torch.testing.assert_close(fixed.lam[interior], raw.lam[interior], rtol=0, atol=1e-5)
    assert (fixed.lam[clipped] > raw.lam[clipped] + 1e-6).any()


def test_cutmix_minmax_box_sizes_and_lam():
    lo, hi = 0.25, 0.5
    for correct in (True, False):
        params = sample_mix_params(
            32,
            MixConfig(
                mixup_alpha=0.0, cutmix_alpha=0.0, cutmix_minmax=(lo, hi), mode="elem", correct_lam=correct
            ),
            gen(11),
        )
        assert params.use_cutmix.all()
        bx = params.boxes.double()
        hs, ws = bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]
        assert ((hs >= lo - 1e-6) & (hs <= hi + 1e-6) & (ws >= lo - 1e-6) & (ws <= hi + 1e-6)).all()
        assert ((bx >= 0) & (bx <= 1)).all()
        torch.testing.assert_close(params.lam.double(), 1.0 - hs * ws, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# sampling: determinism, modes, probabilities
# ----------------------------------------------------------------------------------------------


def _fields(p: MixParams):
    return (p.perm, p.lam, p.use_cutmix, p.boxes, p.applied)


@pytest.mark.parametrize("mode", MIX_MODES)
def test_same_seed_same_params_other_seed_differs(mode):
    cfg = MixConfig(**BOTH, prob=0.9, mode=mode)
    a = sample_mix_params(8, cfg, gen(123))
    b = sample_mix_params(8, cfg, gen(123))
    c = sample_mix_params(8, cfg, gen(124))
    assert all(torch.equal(u, v) for u, v in zip(_fields(a), _fields(b)))
    assert not torch.equal(a.lam, c.lam)
    x = torch.rand(8, 3, 16, 16, generator=gen(0))
    assert torch.equal(apply_mix(a, x)[0], apply_mix(b, x)[0])
    # the generator advances: a second draw from the same generator differs
    g = gen(7)
    first, second = sample_mix_params(8, cfg, g), sample_mix_params(8, cfg, g)
    assert not torch.equal(first.lam, second.lam)


@pytest.mark.parametrize("mode", MIX_MODES)
@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 5, 7, 8])
def test_modes_and_odd_batch_sizes(mode, batch_size):
    for seed in range(4):
        p = sample_mix_params(batch_size, MixConfig(**BOTH, prob=1.0, mode=mode), gen(seed))
        b = batch_size
        assert (
            p.perm.dtype == torch.long and p.use_cutmix.dtype == torch.bool and p.applied.dtype == torch.bool
        )
        assert p.lam.shape == (b,) and p.boxes.shape == (b, 4)
        assert torch.equal(p.perm, torch.arange(b).flip(0))
        mirror = torch.arange(b).flip(0)
        if b % 2 == 1:
            m = b // 2
            assert float(p.lam[m]) == 1.0 and not p.applied[m] and not p.use_cutmix[m]
            assert torch.equal(p.boxes[m], torch.zeros(4))
        others = p.perm != torch.arange(b)
        assert p.applied[others].all()
        assert ((p.lam[others] > 0) & (p.lam[others] < 1)).all()
        assert torch.equal(p.boxes[~p.use_cutmix], torch.zeros(int((~p.use_cutmix).sum()), 4))
        if mode == "pair":
            for f in _fields(p)[1:]:
                assert torch.equal(f, f[mirror])
        if mode == "batch" and others.any():
            for f in _fields(p)[1:]:
                assert (f[others] == f[others][:1]).all()
        if mode == "elem" and int(others.sum()) >= 4:
            assert len(set(p.lam[others].tolist())) == int(others.sum())

        x = coded(b, 2, 12, 10)
        (out,) = apply_mix(p, x)
        if b % 2 == 1:
            assert torch.equal(out[b // 2], x[b // 2])
        targets = mix_targets(p, torch.arange(b) % 3, 3)
        torch.testing.assert_close(targets.sum(1), torch.ones(b))


def test_batch_mode_single_decision_across_seeds():
    kinds = set()
    for seed in range(20):
        p = sample_mix_params(6, MixConfig(**BOTH, mode="batch"), gen(seed))
        assert p.use_cutmix.all() or not p.use_cutmix.any()
        kinds.add(bool(p.use_cutmix[0]))
    assert kinds == {True, False}


def test_switch_prob_extremes():
    cfg = dict(mixup_alpha=1.0, cutmix_alpha=1.0, mode="elem")
    p_cut = sample_mix_params(16, MixConfig(**cfg, switch_prob=1.0), gen(0))
    p_mix = sample_mix_params(16, MixConfig(**cfg, switch_prob=0.0), gen(0))
    assert p_cut.use_cutmix.all() and p_cut.applied.all()
    assert not p_mix.use_cutmix.any() and p_mix.applied.all()
    assert torch.equal(p_mix.use_mixup, p_mix.applied)


@pytest.mark.parametrize(
    "cfg", [MixConfig(**BOTH, prob=0.0, mode="elem"), MixConfig(mixup_alpha=0.0, cutmix_alpha=0.0)]
)
def test_disabled_mixing_is_identity(cfg):
    p = sample_mix_params(6, cfg, gen(0))
    assert not p.applied.any() and not p.use_cutmix.any()
    assert torch.equal(p.lam, torch.ones(6))
    x = torch.rand(6, 3, 8, 8, generator=gen(1))
    (out,) = apply_mix(p, x)
    assert torch.equal(out, x) and out is not x
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(mix_targets(p, y, 5), torch.nn.functional.one_hot(y, 5).float())


def test_partial_prob_skips_some_samples():
    p = sample_mix_params(64, MixConfig(**BOTH, prob=0.5, mode="elem"), gen(3))
    assert p.applied.any() and (~p.applied).any()
    assert (p.lam[~p.applied] == 1.0).all() and not p.use_cutmix[~p.applied].any()
    x = coded(64, 1, 8, 8)
    (out,) = apply_mix(p, x)
    assert torch.equal(out[~p.applied], x[~p.applied])
    assert all(not torch.equal(out[i], x[i]) for i in torch.nonzero(p.applied).flatten().tolist())


def test_identity_params_and_to():
    p = MixParams.identity(5)
    assert torch.equal(p.perm, torch.arange(5).flip(0)) and not p.applied.any()
    q = p.to("cpu")
    assert all(torch.equal(u, v) for u, v in zip(_fields(p), _fields(q)))


# ----------------------------------------------------------------------------------------------
# dtypes, inputs untouched, errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cutmix", [False, True])
def test_uint8_stays_uint8(cutmix):
    b = 6
    cfg = MixConfig(mixup_alpha=0.0 if cutmix else 1.0, cutmix_alpha=1.0 if cutmix else 0.0, mode="elem")
    p = sample_mix_params(b, cfg, gen(2))
    views = [torch.randint(0, 256, (b, 3, s, s), generator=gen(s), dtype=torch.uint8) for s in (32, 64)]
    outs = apply_mix(p, *views)
    for x, out in zip(views, outs):
        assert out.dtype == torch.uint8
        if cutmix:
            assert torch.equal(out, expected_cutmix(p, x))
        else:
            lam = p.lam.double().view(-1, 1, 1, 1)
            exact = lam * x.double() + (1 - lam) * x.flip(0).double()
            assert ((out.double() - exact).abs() <= 0.5 + 1e-4).all()


def test_half_precision_and_extra_dims():
    p = sample_mix_params(4, MixConfig(mixup_alpha=1.0, mode="elem"), gen(0))
    x = torch.rand(4, 3, 8, 8, generator=gen(1)).to(torch.bfloat16)
    (out,) = apply_mix(p, x)
    assert out.dtype == torch.bfloat16
    lam = p.lam.view(-1, 1, 1, 1)
    torch.testing.assert_close(
        out.float(), lam * x.float() + (1 - lam) * x.flip(0).float(), rtol=1e-2, atol=1e-2
    )
    # (B, T, C, H, W) videos mix like images
    v = coded(4, 2, 6, 6).unsqueeze(1).expand(4, 3, 2, 6, 6).clone()
    (ov,) = apply_mix(p, v)
    for t in range(3):
        torch.testing.assert_close(ov[:, t], apply_mix(p, v[:, t])[0])


def test_inputs_not_modified():
    p = sample_mix_params(4, MixConfig(**BOTH, mode="elem"), gen(0))
    xs = [torch.rand(4, 3, 16, 16, generator=gen(1)), torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)]
    before = [x.clone() for x in xs]
    apply_mix(p, *xs)
    apply_cutout(sample_cutout_boxes(4, 0.5, gen(0)), *xs)
    assert all(torch.equal(a, b) for a, b in zip(xs, before))


def test_tl_mix_is_apply_mix():
    p = sample_mix_params(4, MixConfig(**BOTH, mode="pair"), gen(9))
    s, t = torch.rand(4, 3, 32, 32, generator=gen(1)), torch.rand(4, 3, 64, 64, generator=gen(2))
    for a, b in zip(tl_mix(p, s, t), apply_mix(p, s, t)):
        assert torch.equal(a, b)


def test_apply_errors():
    p = sample_mix_params(4, MixConfig(), gen(0))
    with pytest.raises(ValueError, match="batch size 3"):
        apply_mix(p, torch.zeros(3, 3, 8, 8))
    with pytest.raises(ValueError, match="at least one"):
        apply_mix(p)
    with pytest.raises(ValueError, match=r"\(B, \.\.\., H, W\)"):
        apply_mix(p, torch.zeros(4, 8))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mixup_alpha=-1.0), r"mixup_alpha must be .*>= 0"),
        (dict(cutmix_alpha=-0.5), r"cutmix_alpha must be .*>= 0"),
        (dict(mixup_alpha=float("nan")), r"mixup_alpha"),
        (dict(prob=1.5), r"prob .*\[0, 1\]"),
        (dict(prob=-0.1), r"prob .*\[0, 1\]"),
        (dict(switch_prob=2.0), r"switch_prob .*\[0, 1\]"),
        (dict(cutmix_minmax=(0.5, 0.2)), r"cutmix_minmax .*0 < min < max <= 1"),
        (dict(cutmix_minmax=(0.0, 0.5)), r"cutmix_minmax"),
        (dict(cutmix_minmax=(0.2, 1.5)), r"cutmix_minmax"),
        (dict(cutmix_minmax=(0.3,)), r"cutmix_minmax"),
        (dict(mode="foo"), r"mode must be one of .*'batch'.*'pair'.*'elem'"),
        (dict(label_smoothing=1.0), r"label_smoothing .*\[0, 1\)"),
        (dict(label_smoothing=-0.1), r"label_smoothing"),
    ],
)
def test_config_validation(kwargs, match):
    cfg = MixConfig(**kwargs)
    with pytest.raises(ValueError, match=match):
        cfg.validate()
    with pytest.raises(ValueError, match=match):
        sample_mix_params(4, cfg, gen(0))


def test_valid_config_passes_and_bad_batch_size():
    MixConfig(**BOTH, cutmix_minmax=(0.2, 0.8), prob=0.0, mode="pair", label_smoothing=0.0).validate()
    with pytest.raises(ValueError, match="batch_size"):
        sample_mix_params(-1, MixConfig(), gen(0))


# ----------------------------------------------------------------------------------------------
# targets
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MIX_MODES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mix_targets_formula(mode, smoothing):
    b, c = 7, 5
    p = sample_mix_params(b, MixConfig(**BOTH, mode=mode), gen(4))
    y = torch.randint(0, c, (b,), generator=gen(8))
    t = mix_targets(p, y, c, label_smoothing=smoothing)
    assert t.shape == (b, c) and t.dtype == torch.float32
    off = smoothing / c
    on = 1.0 - smoothing + off
    for i in range(b):
        lam = float(p.lam[i])
        j = int(p.perm[i])
        for k in range(c):
            expected = lam * (on if k == int(y[i]) else off) + (1 - lam) * (on if k == int(y[j]) else off)
            assert t[i, k].item() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(t.sum(1), torch.ones(b))
    # same as timm's target mixing, which pairs i with B-1-i
    torch.testing.assert_close(t, timm_mixup_target(y, c, p.lam.unsqueeze(1), smoothing))


def test_mix_targets_dense_labels_and_errors():
    b, c = 4, 3
    p = sample_mix_params(b, MixConfig(mixup_alpha=1.0, mode="elem"), gen(0))
    soft = torch.softmax(torch.randn(b, c, generator=gen(1)), 1)
    t = mix_targets(p, soft, c, label_smoothing=0.3)
    ys = soft * 0.7 + 0.3 / c
    lam = p.lam.view(-1, 1)
    torch.testing.assert_close(t, lam * ys + (1 - lam) * ys.flip(0))
    torch.testing.assert_close(t.sum(1), torch.ones(b))
    with pytest.raises(ValueError, match="labels must lie in"):
        mix_targets(p, torch.tensor([0, 1, 2, 3]), c)
    with pytest.raises(ValueError, match="batch size"):
        mix_targets(p, torch.tensor([0, 1]), c)
    with pytest.raises(ValueError, match="label_smoothing"):
        mix_targets(p, torch.tensor([0, 1, 2, 0]), c, label_smoothing=1.0)


# ----------------------------------------------------------------------------------------------
# cutout
# ----------------------------------------------------------------------------------------------


def test_cutout_boxes_geometry():
    frac = 0.4
    boxes = sample_cutout_boxes(256, frac, gen(0)).double()
    assert boxes.shape == (256, 4) and ((boxes >= 0) & (boxes <= 1)).all()
    hs, ws = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert ((hs <= frac + 1e-6) & (ws <= frac + 1e-6) & (hs > 0) & (ws > 0)).all()
    inner_y = (boxes[:, 0] > 0) & (boxes[:, 2] < 1)
    inner_x = (boxes[:, 1] > 0) & (boxes[:, 3] < 1)
    assert inner_y.any() and (~inner_y).any()
    torch.testing.assert_close(hs[inner_y], torch.full_like(hs[inner_y], frac), rtol=0, atol=1e-6)
    torch.testing.assert_close(ws[inner_x], torch.full_like(ws[inner_x], frac), rtol=0, atol=1e-6)
    # same seed, same boxes; a rectangular size is honoured per axis
    assert torch.equal(sample_cutout_boxes(8, frac, gen(3)), sample_cutout_boxes(8, frac, gen(3)))
    rect = sample_cutout_boxes(64, (0.2, 0.6), gen(1)).double()
    assert ((rect[:, 2] - rect[:, 0] <= 0.2 + 1e-6) & (rect[:, 3] - rect[:, 1] <= 0.6 + 1e-6)).all()
    with pytest.raises(ValueError, match="size_fraction"):
        sample_cutout_boxes(4, 1.5, gen(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_cutout_zeroes_exactly_the_box(dtype):
    b = 6
    boxes = sample_cutout_boxes(b, 0.5, gen(2))
    views = [(torch.arange(b).view(-1, 1, 1, 1) + 1).expand(b, 3, s, s).to(dtype).clone() for s in (32, 64)]
    outs = apply_cutout(boxes, *views)
    for x, out in zip(views, outs):
        h, w = x.shape[-2:]
        assert out.dtype == dtype
        for i in range(b):
            m = box_mask(boxes[i], h, w)
            assert (out[i][:, m] == 0).all()
            assert torch.equal(out[i][:, ~m], x[i][:, ~m])
            assert (out[i] == 0).all(0).sum().item() == int(m.sum())
            assert abs(
                m.double().mean().item() - float((boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1]))
            ) <= rounding_bound(h, w)


def test_cutout_fill_per_channel_and_convenience():
    b = 3
    x = torch.ones(b, 3, 16, 16)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [0.25, 0.25, 1.0, 1.0]])
    (out,) = apply_cutout(boxes, x, fill=(0.1, 0.2, 0.3))
    assert torch.equal(out[1], x[1])
    for i in (0, 2):
        m = box_mask(boxes[i], 16, 16)
        for ch, v in enumerate((0.1, 0.2, 0.3)):
            assert torch.allclose(out[i, ch][m], torch.tensor(v))
            assert (out[i, ch][~m] == 1).all()
    y = torch.rand(b, 3, 20, 20, generator=gen(0))
    (a,) = cutout(y, size_fraction=0.3, generator=gen(5))
    (ref,) = apply_cutout(sample_cutout_boxes(b, 0.3, gen(5)), y)
    assert torch.equal(a, ref)


def test_boxes_to_pixels_rounding_and_clamp():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.49 / 10, 0.51 / 10, 0.5, 0.75], [0.0, 0.0, 0.0, 0.0]])
    pix = boxes_to_pixels(boxes, 10, 20)
    for row, box in zip(pix.tolist(), boxes):
        assert tuple(row) == pixel_box(box, 10, 20)
    # exact halves (dyadic fractions) always round up, never to even
    halves = torch.tensor([[0.125, 0.625, 0.375, 0.875]])
    assert boxes_to_pixels(halves, 4, 4).tolist() == [[1, 3, 2, 4]]
    assert tuple(boxes_to_pixels(halves, 4, 4)[0].tolist()) == pixel_box(halves[0], 4, 4)


# ----------------------------------------------------------------------------------------------
# pick: per-sample scores and top-k selection
# ----------------------------------------------------------------------------------------------


def brute_scores(s_logits, t_logits, criterion, temperature):
    out = []
    for s_row, t_row in zip(s_logits.double().tolist(), t_logits.double().tolist()):

        def probs(row):
            zs = [v / temperature for v in row]
            mx = max(zs)
            ex = [math.exp(z - mx) for z in zs]
            tot = sum(ex)
            return [e / tot for e in ex]

        ps, pt = probs(s_row), probs(t_row)
        if criterion == "kl":
            v = sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps) if a > 0)
        elif criterion == "student_entropy":
            v = -sum(a * math.log(a) for a in ps if a > 0)
        elif criterion == "teacher_entropy":
            v = -sum(a * math.log(a) for a in pt if a > 0)
        else:
            v = -sum(a * math.log(b) for a, b in zip(pt, ps))
        out.append(v)
    return out


def brute_topk(scores, k):
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


@pytest.mark.parametrize("criterion", SELECTION_CRITERIA)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_select_matches_brute_force(criterion, temperature):
    b, c = 9, 6
    s = torch.randn(b, c, generator=gen(0)) * 3
    t = torch.randn(b, c, generator=gen(1)) * 3
    scores = per_sample_scores(s, t, criterion, temperature)
    expected = brute_scores(s, t, criterion, temperature)
    torch.testing.assert_close(
        scores.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-5
    )
    for k in range(b + 1):
        idx = select_by_criterion(s, t, k, criterion, temperature)
        assert idx.dtype == torch.long and idx.shape == (k,)
        assert idx.tolist() == brute_topk(expected, k)


@pytest.mark.parametrize("criterion", SELECTION_CRITERIA)
def test_select_ties_broken_by_index(criterion):
    base_s = torch.randn(3, 4, generator=gen(2))
    base_t = torch.randn(3, 4, generator=gen(3))
    order = torch.tensor([2, 0, 1, 0, 2, 1, 2])  # duplicated rows -> exactly equal scores
    s, t = base_s[order], base_t[order]
    expected = brute_scores(s, t, criterion, 2.0)
    scores = per_sample_scores(s, t, criterion, 2.0)
    for a in range(len(order)):
        for b in range(len(order)):
            if order[a] == order[b]:
                assert scores[a] == scores[b]
    for k in range(len(order) + 1):
        assert select_by_criterion(s, t, k, criterion, temperature=2.0).tolist() == brute_topk(expected, k)
    # uniform logits: every score equal, selection is simply the first k indices
    flat = torch.zeros(5, 4)
    assert select_by_criterion(flat, flat, 3, criterion).tolist() == [0, 1, 2]
    # many ties in a large batch
    many = torch.randint(0, 3, (3000,), generator=gen(4))
    s, t = base_s[many], base_t[many]
    expected = brute_scores(s, t, criterion, 1.0)
    assert select_by_criterion(s, t, 2000, criterion).tolist() == brute_topk(expected, 2000)


def test_scores_fp32_without_grad_and_errors():
    s = torch.randn(4, 5, generator=gen(0)).to(torch.bfloat16).requires_grad_()
    t = torch.randn(4, 5, generator=gen(1)).to(torch.float16)
    for criterion in SELECTION_CRITERIA:
        sc = per_sample_scores(s, t, criterion)
        assert sc.dtype == torch.float32 and not sc.requires_grad and sc.shape == (4,)
    assert per_sample_scores(s, None, "student_entropy").shape == (4,)
    assert per_sample_scores(None, t, "teacher_entropy").shape == (4,)
    with pytest.raises(ValueError, match="k must be"):
        select_by_criterion(s, t, 5)
    with pytest.raises(ValueError, match="k must be"):
        select_by_criterion(s, t, -1)
    with pytest.raises(ValueError, match="criterion must be one of"):
        select_by_criterion(s, t, 1, criterion="margin")
    with pytest.raises(ValueError, match="temperature"):
        per_sample_scores(s, t, "kl", temperature=0.0)
    with pytest.raises(ValueError, match="teacher_logits is required"):
        per_sample_scores(s, None, "kl")


# ----------------------------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------------------------


def test_device_argument_and_generator_device():
    p = sample_mix_params(4, MixConfig(**BOTH), gen(0), device="cpu")
    assert all(f.device.type == "cpu" for f in _fields(p))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cfg = MixConfig(**BOTH, mode="elem")
    p_cpu = sample_mix_params(6, cfg, gen(0))
    p_gpu = sample_mix_params(6, cfg, gen(0), device="cuda")
    assert all(f.device.type == "cuda" for f in _fields(p_gpu))
    assert all(torch.equal(a, b.cpu()) for a, b in zip(_fields(p_cpu), _fields(p_gpu)))
    x = coded(6, 3, 32, 32, torch.float32)
    # params on CPU, images on CUDA: output stays on the image's device
    (out,) = apply_mix(p_cpu, x.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), apply_mix(p_cpu, x)[0])
    y = torch.arange(6) % 4
    torch.testing.assert_close(mix_targets(p_cpu, y.cuda(), 4).cpu(), mix_targets(p_cpu, y, 4))
    boxes = sample_cutout_boxes(6, 0.5, gen(1))
    assert torch.equal(apply_cutout(boxes, x.cuda())[0].cpu(), apply_cutout(boxes, x)[0])
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    assert torch.equal(select_by_criterion(s.cuda(), t.cuda(), 3).cpu(), select_by_criterion(s, t, 3))
    g = torch.Generator(device="cuda").manual_seed(0)
    assert sample_mix_params(6, cfg, g).lam.device.type == "cuda"
