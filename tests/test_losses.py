"""Distillation losses checked against independent float64 re-implementations of each paper's formula.

Feature and relational terms follow the reduction of the methods' public code (so the weights published
with that code carry over); each reference below spells that reduction out."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

from hf_distill.losses import (
    LOSSES,
    CRDLoss,
    ModelOutputs,
    VIDLoss,
    at_loss,
    cc_loss,
    ce_loss,
    dkd_loss,
    fitnet_loss,
    fsp_loss,
    fsp_matrix,
    jsd_loss,
    kd_loss,
    kd_loss_standardized,
    mse_logits_loss,
    pkt_loss,
    reverse_kl_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    sp_loss,
    standardize_logits,
)

TEMPERATURES = [0.5, 1.0, 4.0]
RTOL, ATOL = 1e-4, 1e-6  # fp32 computation vs float64 reference


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def f64(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def assert_close(actual: torch.Tensor, expected: float, rtol: float = RTOL, atol: float = ATOL) -> None:
    assert actual.dtype == torch.float32
    assert actual.shape == ()
    np.testing.assert_allclose(actual.item(), expected, rtol=rtol, atol=atol)


# -- float64 references ----------------------------------------------------------------------


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) for one distribution, written as an explicit sum."""
    total = 0.0
    for pi, qi in zip(p, q):
        if pi > 0:
            total += pi * (math.log(pi) - math.log(qi))
    return total


def np_huber(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.where(d < 1.0, 0.5 * d**2, d - 0.5).mean())


def np_block_mean(x: np.ndarray, factor: int) -> np.ndarray:
    """Average over non-overlapping ``factor x factor`` blocks of the last two dims."""
    *lead, h, w = x.shape
    return x.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


# -- logit losses ----------------------------------------------------------------------------


@pytest.mark.parametrize("tau", TEMPERATURES)
def test_kd_loss_closed_form(tau):
    s, t = randn(5, 7, seed=1, scale=3), randn(5, 7, seed=2, scale=3)
    rows = []
    for b in range(5):
        zs = [v / tau for v in s[b].tolist()]
        zt = [v / tau for v in t[b].tolist()]
        ns, nt = sum(math.exp(v) for v in zs), sum(math.exp(v) for v in zt)
        rows.append(sum(math.exp(a) / nt * ((a - math.log(nt)) - (c - math.log(ns))) for a, c in zip(zt, zs)))
    assert_close(kd_loss(s, t, tau), tau**2 * sum(rows) / len(rows))


@pytest.mark.parametrize("tau", TEMPERATURES)
def test_kd_loss_equals_timm_logit_distillation_task(tau):
    # timm's LogitDistillationTask uses F.kl_div(..., reduction="batchmean") * tau^2, i.e. the sum over
    # classes divided by the first dimension. For (B, C) logits this is exactly our batch mean; for
    # inputs with extra leading dims kd_loss folds them into the batch while timm would not.
    from timm.task.distillation import LogitDistillationTask

    s_logits, t_logits = randn(6, 10, seed=3, scale=2), randn(6, 10, seed=4, scale=2)

    class Fixed(nn.Module):
        def __init__(self, logits: torch.Tensor) -> None:
            super().__init__()
            self.logits = nn.Parameter(logits.clone())
            self.num_classes, self.in_chans = logits.shape[1], 3
            self.pretrained_cfg = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.logits * 1.0

    task = LogitDistillationTask(
        Fixed(s_logits), Fixed(t_logits), criterion=nn.CrossEntropyLoss(), temperature=tau, verbose=False
    )
    out = task(torch.zeros(6, 3, 4, 4), torch.zeros(6, dtype=torch.long))
    torch.testing.assert_close(
        kd_loss(s_logits, t_logits, tau), out["kd_loss"].detach(), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("tau", TEMPERATURES)
def test_reverse_kl(tau):
    s, t = randn(4, 6, seed=5, scale=2), randn(4, 6, seed=6, scale=2)
    ps, pt = np_softmax(f64(s) / tau), np_softmax(f64(t) / tau)
    expected = tau**2 * np.mean([np_kl(ps[b], pt[b]) for b in range(4)])
    assert_close(reverse_kl_loss(s, t, tau), expected)


@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd(tau, beta):
    s, t = randn(4, 6, seed=7, scale=2), randn(4, 6, seed=8, scale=2)
    ps, pt = np_softmax(f64(s) / tau), np_softmax(f64(t) / tau)
    rows = []
    for b in range(4):
        m = beta * pt[b] + (1 - beta) * ps[b]
        rows.append(beta * np_kl(pt[b], m) + (1 - beta) * np_kl(ps[b], m))
    assert_close(jsd_loss(s, t, tau, beta), tau**2 * np.mean(rows))


def test_jsd_half_is_ordinary_symmetric_js():
    s, t = randn(8, 5, seed=9, scale=3), randn(8, 5, seed=10, scale=3)
    p, q = np_softmax(f64(s)), np_softmax(f64(t))
    # JS(P, Q) = H((P + Q) / 2) - (H(P) + H(Q)) / 2, with H the Shannon entropy.
    entropy = lambda x: -(x * np.log(x)).sum(-1)  # noqa: E731
    js = np.mean(entropy((p + q) / 2) - (entropy(p) + entropy(q)) / 2)
    assert_close(jsd_loss(s, t, 1.0, 0.5), js)
    torch.testing.assert_close(jsd_loss(s, t, 1.0, 0.5), jsd_loss(t, s, 1.0, 0.5))
    assert jsd_loss(s, t, 2.0, 0.5) <= 4.0 * math.log(2)


def test_jsd_limits():
    s, t = randn(4, 6, seed=11, scale=2), randn(4, 6, seed=12, scale=2)
    assert jsd_loss(s, t, 2.0, 0.0).item() == 0.0
    assert jsd_loss(s, t, 2.0, 1.0).item() == 0.0
    eps = 1e-3
    torch.testing.assert_close(jsd_loss(s, t, 2.0, eps) / eps, kd_loss(s, t, 2.0), rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(
        jsd_loss(s, t, 2.0, 1 - eps) / eps, reverse_kl_loss(s, t, 2.0), rtol=1e-2, atol=1e-4
    )
    with pytest.raises(ValueError):
        jsd_loss(s, t, 1.0, 1.5)


def test_mse_logits():
    s, t = randn(3, 4, seed=13), randn(3, 4, seed=14)
    diff = f64(s) - f64(t)
    expected = sum(diff[i, j] ** 2 for i in range(3) for j in range(4)) / 12
    assert_close(mse_logits_loss(s, t), expected)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_hard_labels_with_ignore(smoothing):
    logits = randn(5, 4, seed=15, scale=2)
    labels = torch.tensor([0, 3, -100, 1, 2])
    p = np_softmax(f64(logits))
    rows = []
    for b, y in enumerate(labels.tolist()):
        if y == -100:
            continue
        target = np.full(4, smoothing / 4)
        target[y] += 1 - smoothing
        rows.append(-sum(target[c] * math.log(p[b, c]) for c in range(4)))
    assert_close(ce_loss(logits, labels, smoothing), np.mean(rows))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ce_soft_labels(smoothing):
    logits = randn(5, 4, seed=16, scale=2)
    soft = torch.softmax(randn(5, 4, seed=17), dim=-1)
    p, q = np_softmax(f64(logits)), f64(soft) * (1 - smoothing) + smoothing / 4
    assert_close(ce_loss(logits, soft, smoothing), np.mean(-(q * np.log(p)).sum(-1)))


def test_ce_all_ignored_is_zero():
    logits = randn(3, 4, seed=18).requires_grad_()
    loss = ce_loss(logits, torch.full((3,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_standardize_logits():
    z = randn(4, 9, seed=19, scale=5) + 3
    x = f64(z)
    mean = x.sum(-1, keepdims=True) / 9
    std = np.sqrt(((x - mean) ** 2).sum(-1, keepdims=True) / 8)  # unbiased
    np.testing.assert_allclose(f64(standardize_logits(z)), (x - mean) / (std + 1e-7), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tau", TEMPERATURES)
def test_kd_loss_standardized(tau):
    s, t = randn(4, 6, seed=20, scale=2), randn(4, 6, seed=21, scale=5)

    def z(x):
        return (x - x.mean(-1, keepdims=True)) / x.std(-1, ddof=1, keepdims=True)

    ps, pt = np_softmax(z(f64(s)) / tau), np_softmax(z(f64(t)) / tau)
    expected = tau**2 * np.mean([np_kl(pt[b], ps[b]) for b in range(4)])
    assert_close(kd_loss_standardized(s, t, tau), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tau", TEMPERATURES)
def test_kd_loss_standardized_invariant_to_teacher_shift_and_scale(tau):
    s, t = randn(4, 6, seed=22), randn(4, 6, seed=23)
    base = kd_loss_standardized(s, t, tau)
    torch.testing.assert_close(kd_loss_standardized(s, t + 7.5, tau), base, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kd_loss_standardized(s, 3.0 * t - 2.0, tau), base, rtol=1e-4, atol=1e-5)


def np_dkd_terms(s: np.ndarray, t: np.ndarray, labels: list[int], tau: float) -> tuple[list, list]:
    tckd, nckd = [], []
    for b, y in enumerate(labels):
        ps, pt = np_softmax(s[b] / tau), np_softmax(t[b] / tau)
        tckd.append(np_kl(np.array([pt[y], 1 - pt[y]]), np.array([ps[y], 1 - ps[y]])))
        others = [c for c in range(s.shape[1]) if c != y]
        # non-target distribution = p restricted to the other classes, renormalised
        qs, qt = ps[others] / ps[others].sum(), pt[others] / pt[others].sum()
        nckd.append(np_kl(qt, qs))
    return tckd, nckd


@pytest.mark.parametrize("tau", TEMPERATURES)
def test_dkd_explicit_formula(tau):
    s, t = randn(6, 5, seed=24, scale=2), randn(6, 5, seed=25, scale=2)
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    tckd, nckd = np_dkd_terms(f64(s), f64(t), labels.tolist(), tau)
    for alpha, beta in [(1.0, 8.0), (1.0, 0.0), (0.0, 1.0), (0.5, 2.0)]:
        expected = tau**2 * np.mean([alpha * a + beta * b for a, b in zip(tckd, nckd)])
        assert_close(dkd_loss(s, t, labels, tau, alpha, beta), expected)


def test_dkd_ignore_index_and_soft_labels():
    s, t = randn(4, 5, seed=26, scale=2), randn(4, 5, seed=27, scale=2)
    tckd, nckd = np_dkd_terms(f64(s)[[0, 2]], f64(t)[[0, 2]], [1, 3], 2.0)  # rows 1 and 3 ignored
    expected = 4.0 * np.mean([a + 8 * b for a, b in zip(tckd, nckd)])
    assert_close(dkd_loss(s, t, torch.tensor([1, -100, 3, -100]), 2.0), expected)
    soft = torch.nn.functional.one_hot(torch.tensor([1, 0, 3, 2]), 5).float() * 0.7 + 0.06
    torch.testing.assert_close(dkd_loss(s, t, soft, 2.0), dkd_loss(s, t, torch.tensor([1, 0, 3, 2]), 2.0))
    assert dkd_loss(s, t, torch.full((4,), -100), 2.0).item() == 0.0


# -- feature losses --------------------------------------------------------------------------


def test_fitnet():
    s, t = randn(2, 3, 4, 4, seed=28), randn(2, 3, 4, 4, seed=29)
    assert_close(fitnet_loss(s, t), float(((f64(s) - f64(t)) ** 2).sum() / s.numel()))
    with pytest.raises(ValueError):
        fitnet_loss(s, t[:, :2])


def np_attention(f: np.ndarray, p: float) -> np.ndarray:
    return (np.abs(f) ** p).mean(axis=1)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_at_loss(p):
    # The authors' code: (at(x) - at(y)).pow(2).mean(), a mean over the B * H * W entries.
    s, t = randn(3, 4, 6, 6, seed=30), randn(3, 7, 6, 6, seed=31)
    a_s, a_t = np_attention(f64(s), p), np_attention(f64(t), p)
    total = 0.0
    for b in range(3):
        qs = a_s[b].ravel() / np.sqrt((a_s[b] ** 2).sum())
        qt = a_t[b].ravel() / np.sqrt((a_t[b] ** 2).sum())
        total += ((qs - qt) ** 2).sum()
    assert_close(at_loss(s, t, p), total / (3 * 36))


def test_at_loss_pools_larger_feature_map_first():
    # As the public code: the larger feature map is average-pooled, then its attention map is taken.
    s, t = randn(2, 4, 8, 8, seed=32), randn(2, 5, 4, 4, seed=33)
    a_s, a_t = np_attention(np_block_mean(f64(s), 2), 2), np_attention(f64(t), 2)
    qs = a_s.reshape(2, -1) / np.linalg.norm(a_s.reshape(2, -1), axis=1, keepdims=True)
    qt = a_t.reshape(2, -1) / np.linalg.norm(a_t.reshape(2, -1), axis=1, keepdims=True)
    expected = ((qs - qt) ** 2).mean()
    assert_close(at_loss(s, t), expected)
    torch.testing.assert_close(at_loss(t, s), at_loss(s, t))
    pooled_attention = np_block_mean(np_attention(f64(s), 2), 2)  # the other order gives another value
    qp = pooled_attention.reshape(2, -1) / np.linalg.norm(
        pooled_attention.reshape(2, -1), axis=1, keepdims=True
    )
    assert abs(((qp - qt) ** 2).mean() - expected) > 1e-4


def np_fsp(f1: np.ndarray, f2: np.ndarray) -> np.ndarray:
    b, c1, h, w = f1.shape
    g = np.zeros((b, c1, f2.shape[1]))
    for n in range(b):
        for i in range(c1):
            for j in range(f2.shape[1]):
                g[n, i, j] = (f1[n, i] * f2[n, j]).sum() / (h * w)
    return g


def test_fsp_matrix_and_loss():
    s1, s2 = randn(2, 3, 4, 4, seed=34), randn(2, 5, 8, 8, seed=35)
    t1, t2 = randn(2, 3, 2, 2, seed=36), randn(2, 5, 2, 2, seed=37)
    u1, u2 = randn(2, 2, 3, 3, seed=38), randn(2, 4, 3, 3, seed=39)
    v1, v2 = randn(2, 2, 3, 3, seed=40), randn(2, 4, 3, 3, seed=41)
    g_s = np_fsp(f64(s1), np_block_mean(f64(s2), 2))  # the 8x8 map is pooled to 4x4
    np.testing.assert_allclose(f64(fsp_matrix(s1, s2)), g_s, rtol=1e-5, atol=1e-6)
    g_t = np_fsp(f64(t1), f64(t2))
    d1 = ((g_s - g_t) ** 2).mean()
    d2 = ((np_fsp(f64(u1), f64(u2)) - np_fsp(f64(v1), f64(v2))) ** 2).mean()
    # The public code: (G_s - G_t).pow(2).mean() per pair, summed over the pairs.
    assert_close(fsp_loss([(s1, s2), (u1, u2)], [(t1, t2), (v1, v2)]), d1 + d2)
    with pytest.raises(ValueError):
        fsp_loss([(s1, s2)], [(u1, u2)])


def test_sp_loss():
    s, t = randn(5, 3, 2, 2, seed=42), randn(5, 16, seed=43)
    fs, ft = f64(s).reshape(5, -1), f64(t)

    def gram(f):
        g = np.array([[f[i] @ f[j] for j in range(5)] for i in range(5)])
        return g / np.sqrt((g**2).sum(1, keepdims=True))

    assert_close(sp_loss(s, t), ((gram(fs) - gram(ft)) ** 2).sum() / 25)


def test_pkt_loss():
    s, t = randn(6, 8, seed=44), randn(6, 3, 2, seed=45)
    eps = 1e-7

    def probs(f):
        f = f.reshape(len(f), -1)
        k = np.zeros((len(f), len(f)))
        for i in range(len(f)):
            for j in range(len(f)):
                cos = f[i] @ f[j] / (np.linalg.norm(f[i]) * np.linalg.norm(f[j]))
                k[i, j] = (cos + 1) / 2
        return k / k.sum(1, keepdims=True)

    ps, pt = probs(f64(s)), probs(f64(t))
    # The authors' code: torch.mean over all B * B entries of P_t * log((P_t + eps) / (P_s + eps)).
    expected = sum(
        pt[i, j] * math.log((pt[i, j] + eps) / (ps[i, j] + eps)) for i in range(6) for j in range(6)
    ) / (6 * 6)
    assert_close(pkt_loss(s, t), expected, atol=1e-6)


def np_rkd_distance(e: np.ndarray) -> np.ndarray:
    n = len(e)
    d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
    return d / (d.sum() / (n * (n - 1)))


def np_rkd_angle(e: np.ndarray) -> np.ndarray:
    n = len(e)
    out = np.zeros((n, n, n))
    for j in range(n):
        for i in range(n):
            for k in range(n):
                if i == j or k == j:
                    continue
                a, c = e[i] - e[j], e[k] - e[j]
                out[j, i, k] = a @ c / (np.linalg.norm(a) * np.linalg.norm(c))
    return out


def test_rkd_losses():
    s, t = randn(6, 5, seed=46, scale=2), randn(6, 9, seed=47)
    dist = np_huber(np_rkd_distance(f64(s)), np_rkd_distance(f64(t)))
    angle = np_huber(np_rkd_angle(f64(s)), np_rkd_angle(f64(t)))
    assert_close(rkd_distance_loss(s, t), dist)
    assert_close(rkd_angle_loss(s, t), angle)
    assert_close(rkd_loss(s, t), 25 * dist + 50 * angle, rtol=2e-4)
    assert_close(rkd_loss(s, t, 1.0, 2.0), dist + 2 * angle)
    # distances are normalised by their mean, so a scaled copy has zero distance loss
    assert rkd_distance_loss(3 * s, s).item() < 1e-6


@pytest.mark.parametrize("gamma,order", [(0.4, 2), (1.0, 3)])
def test_cc_loss(gamma, order):
    s, t = randn(5, 6, seed=48), randn(5, 4, seed=49)

    def corr(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        out = np.zeros((5, 5))
        for i in range(5):
            for j in range(5):
                x = e[i] @ e[j]
                out[i, j] = sum(
                    math.exp(-2 * gamma) * (2 * gamma * x) ** p / math.factorial(p) for p in range(order + 1)
                )
        return out

    assert_close(cc_loss(s, t, gamma, order), ((corr(f64(s)) - corr(f64(t))) ** 2).sum() / 25)


def test_cc_taylor_converges_to_gaussian_rbf():
    s, t = randn(5, 6, seed=50), randn(5, 4, seed=51)

    def rbf(e, gamma=0.4):
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        return np.array([[math.exp(-gamma * ((e[i] - e[j]) ** 2).sum()) for j in range(5)] for i in range(5)])

    assert_close(cc_loss(s, t, 0.4, 12), ((rbf(f64(s)) - rbf(f64(t))) ** 2).mean(), rtol=1e-3, atol=1e-7)


# -- trainable modules -----------------------------------------------------------------------


def test_vid_loss_value():
    torch.manual_seed(0)
    vid = VIDLoss(3, 4, hidden_channels=5, init_variance=5.0)
    np.testing.assert_allclose(f64(vid.variance()), 5.0, rtol=1e-6)
    with torch.no_grad():
        vid.alpha.copy_(randn(4, seed=52))
    s, t = randn(2, 3, 4, 4, seed=53), randn(2, 4, 2, 2, seed=54)
    convs = [m for m in vid.regressor if isinstance(m, nn.Conv2d)]
    x = np_block_mean(f64(s), 2).transpose(0, 2, 3, 1)  # (B, H, W, C): 1x1 conv = matmul per pixel
    for n, conv in enumerate(convs):
        x = x @ f64(conv.weight)[:, :, 0, 0].T + f64(conv.bias)
        if n < 2:
            x = np.maximum(x, 0)
    var = np.log1p(np.exp(f64(vid.alpha))) + 1e-5
    nll = 0.5 * ((x - f64(t).transpose(0, 2, 3, 1)) ** 2 / var + np.log(var))
    assert_close(vid(s, t), nll.mean())


def test_vid_parameters_change_after_one_step():
    torch.manual_seed(0)
    vid = VIDLoss(3, 4)
    before = {k: v.clone() for k, v in vid.named_parameters()}
    opt = torch.optim.SGD(vid.parameters(), lr=0.1)
    s = randn(2, 3, 4, 4, seed=55).requires_grad_()
    vid(s, randn(2, 4, 4, 4, seed=56)).backward()
    opt.step()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    for name, p in vid.named_parameters():
        assert not torch.equal(p, before[name]), name


def make_crd(**kwargs) -> CRDLoss:
    torch.manual_seed(0)
    kw = dict(student_dim=6, teacher_dim=10, num_samples=20, feat_dim=4, num_negatives=5, seed=1)
    kw.update(kwargs)
    return CRDLoss(**kw)


def np_nce(
    anchor: np.ndarray, memory: np.ndarray, ids: np.ndarray, temp: float, log_z: float, n: int
) -> float:
    k = ids.shape[1] - 1
    total = 0.0
    for b in range(len(anchor)):
        for col, i in enumerate(ids[b]):
            p = math.exp(anchor[b] @ memory[i] / temp - log_z)
            h = p / (p + k / n)
            total += math.log(h) if col == 0 else math.log(1 - h)
    return -total / len(anchor)


def test_crd_loss_value_and_fixed_normalisation_constant():
    crd = make_crd()
    s, t = randn(3, 6, seed=57), randn(3, 10, seed=58)
    ids = torch.tensor([4, 0, 17])
    negatives = torch.tensor([[1, 2, 3, 5, 6], [7, 8, 9, 10, 11], [12, 13, 14, 15, 19]])
    mem_s, mem_t = f64(crd.memory_s), f64(crd.memory_t)

    def embed(x, lin):
        v = f64(x) @ f64(lin.weight).T + f64(lin.bias)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    v_s, v_t = embed(s, crd.embed_s), embed(t, crd.embed_t)
    all_ids = np.concatenate([f64(ids)[:, None], f64(negatives)], 1).astype(int)

    def log_z(anchor, memory):  # Z = N * mean over the first batch of exp(score / T)
        scores = np.array([[anchor[b] @ memory[i] / 0.07 for i in all_ids[b]] for b in range(3)])
        return math.log(20 * np.exp(scores).mean())

    lz_s, lz_t = log_z(v_s, mem_t), log_z(v_t, mem_s)
    expected = np_nce(v_s, mem_t, all_ids, 0.07, lz_s, 20) + np_nce(v_t, mem_s, all_ids, 0.07, lz_t, 20)
    assert_close(crd(s, t, ids, negatives), expected, rtol=1e-4)
    np.testing.assert_allclose([crd.log_z_s.item(), crd.log_z_t.item()], [lz_s, lz_t], rtol=1e-5)
    # Z is estimated once: a second batch keeps it.
    crd(randn(3, 6, seed=59), randn(3, 10, seed=60), torch.tensor([1, 2, 3]))
    np.testing.assert_allclose([crd.log_z_s.item(), crd.log_z_t.item()], [lz_s, lz_t], rtol=1e-5)


def test_crd_memory_momentum_update():
    crd = make_crd(momentum=0.3)
    s, t = randn(3, 6, seed=61), randn(3, 10, seed=62)
    ids = torch.tensor([2, 9, 11])
    old_s, old_t = crd.memory_s.clone(), crd.memory_t.clone()
    with torch.no_grad():
        v_s = torch.nn.functional.normalize(crd.embed_s(s), dim=1)
        v_t = torch.nn.functional.normalize(crd.embed_t(t), dim=1)
    crd(s, t, ids)
    for old, new, v in [(old_s, crd.memory_s, v_s), (old_t, crd.memory_t, v_t)]:
        mixed = 0.3 * f64(old[ids]) + 0.7 * f64(v)
        np.testing.assert_allclose(
            f64(new[ids]), mixed / np.linalg.norm(mixed, axis=1, keepdims=True), rtol=1e-5, atol=1e-6
        )
        untouched = [i for i in range(20) if i not in ids.tolist()]
        assert torch.equal(new[untouched], old[untouched])
    # evaluation mode does not write to memory
    crd.eval()
    frozen = crd.memory_s.clone()
    crd(s, t, ids)
    assert torch.equal(crd.memory_s, frozen)


def test_crd_seeded_negatives_are_reproducible():
    a, b = make_crd(seed=7), make_crd(seed=7)
    assert torch.equal(a.sample_negatives(4), b.sample_negatives(4))
    s, t, ids = randn(3, 6, seed=63), randn(3, 10, seed=64), torch.tensor([0, 1, 2])
    torch.testing.assert_close(a(s, t, ids), b(s, t, ids), rtol=0, atol=0)
    gen = torch.Generator().manual_seed(3)
    c = make_crd(seed=None, generator=gen)
    negatives = c.sample_negatives(100)
    assert negatives.shape == (100, 5) and negatives.min() >= 0 and negatives.max() < 20


def test_crd_parameters_change_after_one_step():
    crd = make_crd()
    before = {k: v.clone() for k, v in crd.named_parameters()}
    opt = torch.optim.SGD(crd.parameters(), lr=0.5)
    s = randn(4, 6, seed=65).requires_grad_()
    t = randn(4, 10, seed=66)
    crd(s, t, torch.tensor([3, 5, 7, 9])).backward()
    opt.step()
    assert s.grad is not None and torch.isfinite(s.grad).all() and t.grad is None
    for name, p in crd.named_parameters():
        assert not torch.equal(p, before[name]), name


# CRD negatives: 20 samples, classes 0 (7 samples), 1 (6), 2 (6) and 3 (one sample, id 19).
CRD_LABELS = torch.tensor([0, 1, 2] * 6 + [0, 3])


def test_crd_exact_negatives_come_from_the_other_classes_uniformly():
    crd = make_crd(negative_sampling="exact", train_labels=CRD_LABELS, num_negatives=6000, seed=3)
    ids = torch.tensor([0, 1, 19, 5])
    negatives = crd.sample_negatives(4, ids)
    assert negatives.shape == (4, 6000)
    for row, sample in enumerate(ids.tolist()):
        others = [i for i in range(20) if CRD_LABELS[i] != CRD_LABELS[sample]]
        counts = torch.bincount(negatives[row], minlength=20)
        assert set(torch.nonzero(counts).flatten().tolist()) == set(others)  # never the own class, all others
        expected = 6000 / len(others)
        assert counts[others].min() > 0.8 * expected and counts[others].max() < 1.2 * expected
    uniform = make_crd(num_negatives=6000, seed=3).sample_negatives(1)
    assert set(uniform.flatten().tolist()) == set(range(20))  # the uniform option draws every id


def test_crd_forward_draws_exact_negatives():
    kw = dict(negative_sampling="exact", train_labels=CRD_LABELS, seed=7)
    drawn, reference, sampler = make_crd(**kw), make_crd(**kw), make_crd(**kw)
    s, t, ids = randn(3, 6, seed=67), randn(3, 10, seed=68), torch.tensor([2, 19, 6])
    negatives = sampler.sample_negatives(3, ids)
    assert all(CRD_LABELS[negatives[r]].ne(CRD_LABELS[ids[r]]).all() for r in range(3))
    torch.testing.assert_close(drawn(s, t, ids), reference(s, t, ids, negatives), rtol=0, atol=0)


def test_crd_exact_sampling_refusals():
    with pytest.raises(ValueError, match="needs the class label.*negative_sampling='uniform'"):
        make_crd(negative_sampling="exact")
    with pytest.raises(ValueError, match="unlabelled samples"):
        make_crd(negative_sampling="exact", train_labels=torch.tensor([0, 1] * 9 + [-1, 1]))
    with pytest.raises(ValueError, match="at least two classes"):
        make_crd(negative_sampling="exact", train_labels=torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match="has 3 entries"):
        make_crd(negative_sampling="exact", train_labels=[0, 1, 2])
    with pytest.raises(ValueError, match="negative_sampling must be one of"):
        make_crd(negative_sampling="relax")


def test_dkd_term_linear_warmup():
    s, t = randn(4, 5, seed=80), randn(4, 5, seed=81)
    student, teacher, batch = ModelOutputs(s), ModelOutputs(t), {"labels": LABELS}
    term = LOSSES["dkd"]
    assert inspect.signature(term).parameters["epoch"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    full = dkd_loss(s, t, LABELS, 4.0, 1.0, 8.0)
    # mdistiller: min(epoch / warmup, 1.0) * dkd_loss, warmup 20 epochs on CIFAR-100.
    for epoch in (0.0, 0.5, 5.0, 12.5, 19.99, 20.0, 37.0):
        torch.testing.assert_close(term(student, teacher, batch, epoch=epoch), full * min(epoch / 20, 1.0))
    torch.testing.assert_close(term(student, teacher, batch, epoch=None), full)  # evaluation: no factor
    torch.testing.assert_close(term(student, teacher, batch, warmup_epochs=4, epoch=1.0), full * 0.25)
    torch.testing.assert_close(term(student, teacher, batch, warmup_epochs=0, epoch=0.0), full)
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        term(student, teacher, batch, warmup_epochs=-1, epoch=1.0)


# -- dtypes, gradients and the term registry -------------------------------------------------

LABELS = torch.tensor([0, 3, 1, 2])

# name -> (fn(student, teacher), student shape, teacher shape)
PURE = {
    "kd": (lambda s, t: kd_loss(s, t, 2.0), (4, 5), (4, 5)),
    "reverse_kl": (lambda s, t: reverse_kl_loss(s, t, 2.0), (4, 5), (4, 5)),
    "jsd": (lambda s, t: jsd_loss(s, t, 2.0, 0.3), (4, 5), (4, 5)),
    "mse_logits": (mse_logits_loss, (4, 5), (4, 5)),
    "kd_standardized": (lambda s, t: kd_loss_standardized(s, t, 2.0), (4, 5), (4, 5)),
    "dkd": (lambda s, t: dkd_loss(s, t, LABELS, 2.0), (4, 5), (4, 5)),
    "ce": (lambda s, t: ce_loss(s, LABELS, 0.1) + 0 * t.float().sum(), (4, 5), (4, 5)),
    "fitnet": (fitnet_loss, (4, 3, 4, 4), (4, 3, 4, 4)),
    "at": (at_loss, (4, 3, 4, 4), (4, 6, 2, 2)),
    "fsp": (lambda s, t: fsp_loss([(s, s[:, :2])], [(t, t[:, :2])]), (4, 3, 4, 4), (4, 3, 2, 2)),
    "sp": (sp_loss, (4, 3, 2, 2), (4, 7)),
    "pkt": (pkt_loss, (4, 6), (4, 8)),
    "rkd": (rkd_loss, (4, 6), (4, 8)),
    "cc": (cc_loss, (4, 6), (4, 8)),
}
LOGIT_LOSSES = ["kd", "reverse_kl", "jsd", "mse_logits", "kd_standardized", "dkd", "ce"]


# Inputs are rounded to the low-precision dtype; the loss must then equal the fp32 computation on the
# rounded values exactly, and be within the stated tolerance of the loss on the unrounded fp32 inputs
# (bf16 keeps 8 significant bits, fp16 11).
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.bfloat16, 5e-2, 1e-2), (torch.float16, 5e-3, 1e-3)])
@pytest.mark.parametrize("name", sorted(PURE))
def test_low_precision_inputs_give_fp32_result(name, dtype, rtol, atol):
    fn, s_shape, t_shape = PURE[name]
    s, t = randn(*s_shape, seed=67, scale=2), randn(*t_shape, seed=68, scale=2)
    low = fn(s.to(dtype), t.to(dtype))
    assert low.dtype == torch.float32 and torch.isfinite(low)
    torch.testing.assert_close(low, fn(s.to(dtype).float(), t.to(dtype).float()), rtol=0, atol=0)
    torch.testing.assert_close(low, fn(s, t), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", LOGIT_LOSSES)
def test_extreme_fp16_logits_are_finite(name):
    fn = PURE[name][0]
    sign = torch.where(randn(4, 5, seed=69) > 0, 1.0, -1.0)
    s = (sign * 1e4).half().requires_grad_()
    t = (-sign * 1e4).half()
    loss = fn(s, t)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", sorted(PURE))
def test_gradient_reaches_student_not_teacher(name):
    fn, s_shape, t_shape = PURE[name]
    s = randn(*s_shape, seed=70).requires_grad_()
    t = randn(*t_shape, seed=71)
    assert not t.requires_grad
    loss = fn(s, t)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_losses_registry_adapters():
    assert {"kd", "reverse_kl", "jsd", "mse_logits", "kd_standardized", "dkd", "ce"} <= set(LOSSES)
    s, t = randn(4, 5, seed=72), randn(4, 5, seed=73)
    student, teacher = ModelOutputs(s), ModelOutputs(t)
    batch = {"labels": LABELS}
    cases = {
        "kd": ({"temperature": 3.0}, kd_loss(s, t, 3.0)),
        "reverse_kl": ({"temperature": 3.0}, reverse_kl_loss(s, t, 3.0)),
        "jsd": ({"temperature": 3.0, "beta": 0.2}, jsd_loss(s, t, 3.0, 0.2)),
        "mse_logits": ({}, mse_logits_loss(s, t)),
        "kd_standardized": ({"temperature": 3.0}, kd_loss_standardized(s, t, 3.0)),
        "dkd": ({"temperature": 3.0, "alpha": 0.5, "beta": 2.0}, dkd_loss(s, t, LABELS, 3.0, 0.5, 2.0)),
        "ce": ({"label_smoothing": 0.1}, ce_loss(s, LABELS, 0.1)),
    }
    for name, (params, expected) in cases.items():
        torch.testing.assert_close(LOSSES[name](student, teacher, batch, **params), expected)
        LOSSES[name](student, teacher, batch)  # defaults work
    torch.testing.assert_close(LOSSES["kd"](student, teacher, batch), kd_loss(s, t, 4.0))
    with pytest.raises(KeyError, match="labels"):
        LOSSES["dkd"](student, teacher, {})
