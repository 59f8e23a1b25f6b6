"""Distillation losses.

Two layers:

* pure tensor functions (``kd_loss(student_logits, teacher_logits, temperature)`` …) that implement
  one paper's formula each and always compute in fp32, whatever the input dtype;
* ``LOSSES``: one plain dict name -> *term* function with the uniform signature
  ``fn(student, teacher, batch, **params) -> Tensor`` used by ``DistillationTrainer`` for the
  extra terms named in ``DistillationConfig.loss_types``. ``student``/``teacher`` are
  :class:`ModelOutputs` (logits plus optional tapped features), ``batch`` is the collated batch.
  A user adds a loss by putting a callable with that signature in ``loss_types``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch import mixed_cross_entropy


@dataclass
class ModelOutputs:
    """What one forward pass produced, as the loss terms see it."""

    logits: Tensor | None
    features: dict[str, Tensor] = field(default_factory=dict)
    # What trainable auxiliary modules (projectors, self-learning teachers, peers …) returned in this forward.
    auxiliary: dict[str, Any] = field(default_factory=dict)
    # Set by a method that holds the student for this step (SLKD's SL-T phase): no term may send it gradient.
    held: bool = False


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Hinton KD: ``tau^2 * KL(softmax(t/tau) || softmax(s/tau))``, averaged over the batch, in fp32.

    ``teacher_logits`` may also be a soft target over classes given as log-probabilities; any
    leading dimensions beyond the class dimension are flattened into the batch.
    """
    s = student_logits.float().flatten(0, -2) / temperature
    t = teacher_logits.float().flatten(0, -2) / temperature
    log_p_s = F.log_softmax(s, dim=-1)
    log_p_t = F.log_softmax(t, dim=-1)
    # kl_div(input=log q, target=log p, log_target=True) = sum p (log p - log q); stable for p -> 0.
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)
    return kl.mean() * temperature**2


# ---------------------------------------------------------------------------------------------
# Logit losses
# ---------------------------------------------------------------------------------------------


def _flat_logits(logits: Tensor) -> Tensor:
    """``logits`` in fp32 with every leading dimension folded into one batch dimension."""
    return logits.float().flatten(0, -2)


def _zero_like_graph(x: Tensor) -> Tensor:
    """A scalar 0 that is still connected to ``x``'s graph (so ``backward()`` works)."""
    return x.float().sum() * 0.0


def reverse_kl_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Reverse-KL distillation: ``tau^2 * KL(p_s || p_t)``, averaged over the batch, in fp32.

    ``p_s = softmax(s / tau)``, ``p_t = softmax(t / tau)`` and
    ``KL(p_s || p_t) = sum_c p_s[c] * (log p_s[c] - log p_t[c])``. This is Hinton KD with the
    arguments of the divergence swapped (mode-seeking instead of mean-seeking), as used for
    instance in MiniLLM (Gu et al., ICLR 2024). Leading dimensions are folded into the batch.
    """
    log_p_s = F.log_softmax(_flat_logits(student_logits) / temperature, dim=-1)
    log_p_t = F.log_softmax(_flat_logits(teacher_logits) / temperature, dim=-1)
    kl = F.kl_div(log_p_t, log_p_s, reduction="none", log_target=True).sum(-1)
    return kl.mean() * temperature**2


def jsd_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, beta: float = 0.5
) -> Tensor:
    """Generalised Jensen-Shannon divergence (GKD, Agarwal et al., ICLR 2024), batch mean, in fp32.

    With ``p_s = softmax(s / tau)``, ``p_t = softmax(t / tau)`` and the mixture
    ``m = beta * p_t + (1 - beta) * p_s``::

        JSD_beta = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)
        loss     = tau^2 * mean_batch(JSD_beta)

    ``beta = 0.5`` is the ordinary (symmetric) Jensen-Shannon divergence, bounded by ``log 2``
    before the ``tau^2`` factor. Limits: at ``beta = 0`` or ``beta = 1`` the mixture equals one
    of the two distributions and the loss is identically zero (no training signal). Near the
    ends it behaves like a scaled KL: ``JSD_beta ~ beta * KL(p_t || p_s)`` (forward KL, i.e.
    :func:`kd_loss`) as ``beta -> 0`` and ``JSD_beta ~ (1 - beta) * KL(p_s || p_t)`` (reverse KL)
    as ``beta -> 1``; so the value itself vanishes at both ends, only ``JSD_beta / beta`` resp.
    ``JSD_beta / (1 - beta)`` tend to the KLs.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    log_p_s = F.log_softmax(_flat_logits(student_logits) / temperature, dim=-1)
    log_p_t = F.log_softmax(_flat_logits(teacher_logits) / temperature, dim=-1)
    if beta in (0.0, 1.0):
        return _zero_like_graph(log_p_s)
    # log m computed in log space so that tiny probabilities do not underflow.
    log_m = torch.logaddexp(log_p_t + math.log(beta), log_p_s + math.log1p(-beta))
    kl_t = F.kl_div(log_m, log_p_t, reduction="none", log_target=True).sum(-1)
    kl_s = F.kl_div(log_m, log_p_s, reduction="none", log_target=True).sum(-1)
    return (beta * kl_t + (1.0 - beta) * kl_s).mean() * temperature**2


def mse_logits_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Logit matching by mean squared error (Ba & Caruana, NeurIPS 2014), in fp32.

    ``mean_{b,c} (s[b, c] - t[b, c])^2``: the mean runs over all elements (batch and classes).
    """
    return F.mse_loss(student_logits.float(), teacher_logits.float())


def ce_loss(
    student_logits: Tensor, labels: Tensor, label_smoothing: float = 0.0, ignore_index: int = -100
) -> Tensor:
    """Cross entropy with hard or soft targets, in fp32.

    * Integer ``labels`` (class ids, any shape matching the leading dims of the logits):
      ``mean over non-ignored rows of -log softmax(s)[y]`` with optional label smoothing
      (Szegedy et al., CVPR 2016: target ``(1 - eps) * onehot(y) + eps / C``). Rows whose label
      is ``ignore_index`` do not count; if every row is ignored the loss is 0.
    * Floating ``labels`` with the logits' shape (e.g. mixup/cutmix targets): soft cross entropy
      ``mean_batch(-sum_c q[c] log softmax(s)[c])`` with ``q = (1 - eps) * labels + eps / C``.
    """
    logits = _flat_logits(student_logits)
    num_classes = logits.shape[-1]
    if labels.is_floating_point():
        target = labels.float().flatten(0, -2)
        if target.shape != logits.shape:
            raise ValueError(
                f"soft labels of shape {tuple(labels.shape)} do not match logits {tuple(logits.shape)}"
            )
        if label_smoothing > 0:
            target = target * (1.0 - label_smoothing) + label_smoothing / num_classes
        return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    labels = labels.reshape(-1).long()
    total = F.cross_entropy(
        logits, labels, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="sum"
    )
    return total / (labels != ignore_index).sum().clamp(min=1)


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation").

    ``(z - mean(z)) / (std(z) + eps)`` over the class (last) dimension, in fp32. ``std`` is the
    unbiased (Bessel-corrected, ``C - 1``) standard deviation, the torch default that the paper's
    code uses. The result is invariant to adding a constant to ``z`` and (up to ``eps``) to
    multiplying ``z`` by a positive scalar.
    """
    z = logits.float()
    if z.shape[-1] < 2:
        raise ValueError("standardize_logits needs at least two classes")
    mean = z.mean(dim=-1, keepdim=True)
    std = z.std(dim=-1, keepdim=True)
    return (z - mean) / (std + eps)


def kd_loss_standardized(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Hinton KD on standardised logits (Sun et al., CVPR 2024), in fp32.

    ``tau^2 * KL(softmax(Z(t) / tau) || softmax(Z(s) / tau))`` with ``Z`` =
    :func:`standardize_logits`, batch mean; the same ``tau^2`` factor as :func:`kd_loss`.
    """
    return kd_loss(standardize_logits(student_logits), standardize_logits(teacher_logits), temperature)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float = 1.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    ignore_index: int = -100,
) -> Tensor:
    """Decoupled knowledge distillation (Zhao et al., CVPR 2022), in fp32.

    With ``y`` the target class and ``p = softmax(z / tau)`` for student and teacher:

    * TCKD: ``KL(b_t || b_s)`` on the binary distributions ``b = [p[y], 1 - p[y]]``;
    * NCKD: ``KL(q_t || q_s)`` with ``q = softmax over the C - 1 non-target classes of z / tau``;

    ``loss = tau^2 * mean_batch(alpha * TCKD + beta * NCKD)``. Integer ``labels`` are class ids
    (rows equal to ``ignore_index`` are left out of the mean; 0 if all are); floating ``labels``
    of the logits' shape (soft targets) use their argmax as the target class.
    """
    s = _flat_logits(student_logits) / temperature
    t = _flat_logits(teacher_logits) / temperature
    num_classes = s.shape[-1]
    if num_classes < 2:
        raise ValueError("dkd_loss needs at least two classes")
    if labels.is_floating_point():
        labels = labels.flatten(0, -2).argmax(-1)
    labels = labels.reshape(-1).long()
    valid = labels != ignore_index
    labels = labels.masked_fill(~valid, 0)  # any class id; these rows get weight 0 below
    target_mask = F.one_hot(labels, num_classes).bool()
    # Column indices of the C - 1 non-target classes of each row (static shape, no host sync).
    cols = torch.arange(num_classes - 1, device=labels.device).expand(labels.shape[0], -1)
    non_target_cols = cols + (cols >= labels[:, None]).long()

    def binary_log_probs(z: Tensor) -> Tensor:
        # [log p[y], log(1 - p[y])], both from log-sum-exps so neither underflows to -inf.
        log_norm = z.logsumexp(-1)
        log_target = z.gather(-1, labels[:, None]).squeeze(-1) - log_norm
        log_rest = z.masked_fill(target_mask, float("-inf")).logsumexp(-1) - log_norm
        return torch.stack([log_target, log_rest], dim=-1)

    def non_target_log_probs(z: Tensor) -> Tensor:
        return F.log_softmax(z.gather(-1, non_target_cols), dim=-1)

    tckd = F.kl_div(binary_log_probs(s), binary_log_probs(t), reduction="none", log_target=True).sum(-1)
    nckd = F.kl_div(non_target_log_probs(s), non_target_log_probs(t), reduction="none", log_target=True)
    per_row = alpha * tckd + beta * nckd.sum(-1)
    weights = valid.float()
    return (per_row * weights).sum() / weights.sum().clamp(min=1.0) * temperature**2


# ---------------------------------------------------------------------------------------------
# Feature losses
# ---------------------------------------------------------------------------------------------


def _pool_to_common(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the last two (spatial) dims of ``a``/``b`` to their common minimum."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[-2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def _check_4d(name: str, x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must be a (B, C, H, W) feature map, got shape {tuple(x.shape)}")


def _flat_features(x: Tensor) -> Tensor:
    """Features in fp32 flattened to ``(B, -1)``."""
    return x.float().flatten(1)


def fitnet_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """FitNets hint loss (Romero et al., ICLR 2015): ``mean (student - teacher)^2`` over all elements.

    The student features must already be projected to the teacher's shape by the caller (the
    paper's regressor lives outside this function). The mean over all elements is the reduction
    of the public code (RepDistiller's ``HintLoss``, mdistiller's ``FitNet``), whose weight with CE
    is 100. Computed in fp32.
    """
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(
            f"fitnet_loss needs equal shapes, got {tuple(student_feat.shape)} and {tuple(teacher_feat.shape)}"
        )
    return F.mse_loss(student_feat.float(), teacher_feat.float())


def _attention_map(feat: Tensor, p: float) -> Tensor:
    return feat.float().abs().pow(p).mean(dim=1)


def at_loss(student_feat: Tensor, teacher_feat: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), in fp32.

    For a ``(B, C, H, W)`` feature map the attention map is ``A = mean_c |f_c|^p`` (shape
    ``(B, H, W)``); ``Q = vec(A) / ||vec(A)||_2`` per sample. The loss is
    ``mean_{b, positions} (Q_s - Q_t)^2``, i.e. ``mean_batch ||Q_s - Q_t||_2^2 / (H * W)``: the
    reduction of the authors' code (``at_loss`` in szagoruyko/attention-transfer, also RepDistiller
    and mdistiller), so their weight ``beta = 1000`` on the sum over layer pairs carries over.
    Channel counts may differ; if spatial sizes differ the larger *feature map* is
    adaptive-average-pooled to the smaller size (per dimension) before the attention map is taken,
    as in the public code.
    """
    _check_4d("student_feat", student_feat)
    _check_4d("teacher_feat", teacher_feat)
    f_s, f_t = _pool_to_common(student_feat.float(), teacher_feat.float())
    q_s = F.normalize(_attention_map(f_s, p).flatten(1), dim=1)
    q_t = F.normalize(_attention_map(f_t, p).flatten(1), dim=1)
    return (q_s - q_t).pow(2).mean()


def fsp_matrix(f1: Tensor, f2: Tensor) -> Tensor:
    """Flow-of-solution-procedure matrix (Yim et al., CVPR 2017), in fp32.

    ``G[b, i, j] = sum_{x, y} f1[b, i, x, y] * f2[b, j, x, y] / (h * w)``, shape ``(B, C1, C2)``.
    If the two maps have different spatial sizes the larger is adaptive-average-pooled to the
    smaller (per dimension) first; ``h, w`` are the common size.
    """
    _check_4d("f1", f1)
    _check_4d("f2", f2)
    f1, f2 = _pool_to_common(f1.float(), f2.float())
    h, w = f1.shape[-2:]
    return torch.bmm(f1.flatten(2), f2.flatten(2).transpose(1, 2)) / (h * w)


def fsp_loss(
    student_pairs: Sequence[tuple[Tensor, Tensor]], teacher_pairs: Sequence[tuple[Tensor, Tensor]]
) -> Tensor:
    """FSP distillation loss (Yim et al., CVPR 2017), in fp32.

    For each pair ``i`` of feature maps, ``G_i = fsp_matrix(f1, f2)`` for student and teacher;
    the loss is ``sum_i mean_{b, c1, c2} (G_i^S - G_i^T)^2``: mean of squared differences over
    all entries of each ``(B, C1, C2)`` matrix, summed over pairs, the reduction of the public
    code (RepDistiller's ``FSP``, Knowledge-Distillation-Zoo), whose weight is 1 (the paper writes
    a batch mean of summed squared entries with equal per-pair weights, i.e. ``C1 * C2`` times
    each pair's value here). Student and teacher FSP matrices must have the same shape.
    """
    if len(student_pairs) != len(teacher_pairs) or not student_pairs:
        raise ValueError("fsp_loss needs the same, non-zero number of student and teacher pairs")
    losses = []
    for (s1, s2), (t1, t2) in zip(student_pairs, teacher_pairs):
        g_s, g_t = fsp_matrix(s1, s2), fsp_matrix(t1, t2)
        if g_s.shape != g_t.shape:
            raise ValueError(f"FSP matrix shapes differ: {tuple(g_s.shape)} vs {tuple(g_t.shape)}")
        losses.append((g_s - g_t).pow(2).mean())
    return torch.stack(losses).sum()


def sp_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019), in fp32.

    ``F`` = features flattened to ``(B, -1)``, ``G = row_l2_normalise(F F^T)`` (``B x B``);
    ``loss = ||G_s - G_t||_F^2 / B^2``, the reduction of the code the authors verified
    (RepDistiller's ``Similarity``; weight 3000 with CE there and in mdistiller). Student and
    teacher feature sizes may differ.
    """
    f_s, f_t = _flat_features(student_feat), _flat_features(teacher_feat)
    batch = f_s.shape[0]
    if f_t.shape[0] != batch:
        raise ValueError("student and teacher batch sizes differ")
    g_s = F.normalize(f_s @ f_s.t(), dim=1)
    g_t = F.normalize(f_t @ f_t.t(), dim=1)
    return (g_s - g_t).pow(2).sum() / batch**2


def pkt_loss(student_feat: Tensor, teacher_feat: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), cosine kernel, in fp32.

    Features are flattened to ``(B, -1)`` and divided by ``(||f|| + eps)``;
    ``K = (f f^T + 1) / 2`` (cosine similarity rescaled to ``[0, 1]``, diagonal included) and
    ``P[i, j] = K[i, j] / sum_j K[i, j]``. The loss is
    ``mean_{i, j} P_t[i, j] * log((P_t[i, j] + eps) / (P_s[i, j] + eps))``: the mean over all
    ``B * B`` entries, as the authors' code (passalis/probabilistic_kt ``cosine_similarity_loss``,
    also RepDistiller and mdistiller), i.e. the row-wise KL(teacher || student) averaged over rows
    and divided by ``B``; their weight with CE is 30000 (RepDistiller, mdistiller on CIFAR-100).
    """
    f_s, f_t = _flat_features(student_feat), _flat_features(teacher_feat)
    if f_s.shape[0] != f_t.shape[0]:
        raise ValueError("student and teacher batch sizes differ")

    def conditional_probs(f: Tensor) -> Tensor:
        f = f / (f.norm(dim=1, keepdim=True) + eps)
        kernel = (f @ f.t() + 1.0) / 2.0
        return kernel / kernel.sum(dim=1, keepdim=True)

    p_s, p_t = conditional_probs(f_s), conditional_probs(f_t)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def _pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix ``(B, B)`` with an exact-zero diagonal."""
    sq_norms = e.pow(2).sum(dim=1)
    sq = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (e @ e.t())).clamp(min=eps)
    off_diagonal = ~torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return torch.where(off_diagonal, sq.sqrt(), torch.zeros_like(sq))


def rkd_distance_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RKD distance-wise loss (Park et al., CVPR 2019), in fp32.

    ``psi_D(i, j) = ||e_i - e_j|| / mu`` with ``mu`` the mean distance over pairs ``i != j``;
    ``loss = mean over all B x B pairs of smooth_l1(psi_D^S, psi_D^T)`` (Huber, delta 1; the
    diagonal pairs are 0 on both sides and contribute 0, as in the authors' code). Embeddings are
    flattened to ``(B, -1)``; student and teacher dimensions may differ. Needs ``B >= 2``.
    """
    e_s, e_t = _flat_features(student_emb), _flat_features(teacher_emb)
    batch = e_s.shape[0]
    if batch < 2 or e_t.shape[0] != batch:
        raise ValueError("rkd_distance_loss needs equal batch sizes of at least 2")
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=e_s.device)
    d_s, d_t = _pairwise_distances(e_s), _pairwise_distances(e_t)
    d_s = d_s / d_s[off_diagonal].mean()
    d_t = d_t / d_t[off_diagonal].mean()
    return F.smooth_l1_loss(d_s, d_t)


def _triplet_cosines(e: Tensor, eps: float = 1e-12) -> Tensor:
    """``C[j, i, k] = cos of the angle at e_j between e_i - e_j and e_k - e_j`` (0 if degenerate)."""
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # diff[j, i] = e_i - e_j
    unit = diff * diff.pow(2).sum(dim=-1, keepdim=True).clamp(min=eps).rsqrt()
    return torch.bmm(unit, unit.transpose(1, 2))


def rkd_angle_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RKD angle-wise loss (Park et al., CVPR 2019), in fp32.

    ``psi_A(i, j, k) = <(e_i - e_j)/||e_i - e_j||, (e_k - e_j)/||e_k - e_j||>`` (cosine of the
    angle at ``e_j``); ``loss = mean over all B^3 triplets of smooth_l1(psi_A^S, psi_A^T)``
    (Huber, delta 1; degenerate triplets with ``i = j`` or ``k = j`` are 0 on both sides, as in
    the authors' code). Memory is ``O(B^2 * D + B^3)``.
    """
    e_s, e_t = _flat_features(student_emb), _flat_features(teacher_emb)
    if e_s.shape[0] != e_t.shape[0]:
        raise ValueError("student and teacher batch sizes differ")
    return F.smooth_l1_loss(_triplet_cosines(e_s), _triplet_cosines(e_t))


def rkd_loss(
    student_emb: Tensor, teacher_emb: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0
) -> Tensor:
    """Relational KD (Park et al., CVPR 2019): ``w_D * rkd_distance_loss + w_A * rkd_angle_loss``.

    The default weights 25 and 50 are the paper's; the reductions (Huber mean over the ``B^2``
    pairs and ``B^3`` triplets) are the authors' code's, used with an outer weight of 1
    (RepDistiller, mdistiller).
    """
    loss = distance_weight * rkd_distance_loss(student_emb, teacher_emb)
    return loss + angle_weight * rkd_angle_loss(student_emb, teacher_emb)


def cc_loss(student_emb: Tensor, teacher_emb: Tensor, gamma: float = 0.4, p_order: int = 2) -> Tensor:
    """Correlation congruence (Peng et al., ICCV 2019), Gaussian RBF kernel via Taylor series, in fp32.

    Embeddings are flattened to ``(B, -1)`` and L2-normalised, so that
    ``exp(-gamma ||x - y||^2) = exp(-2 gamma) * exp(2 gamma x.y)``, approximated by
    ``sum_{p=0}^{P} exp(-2 gamma) (2 gamma)^p / p! * (x.y)^p`` with ``P = p_order``. The
    correlation matrices ``C[i, j] = k(e_i, e_j)`` are ``B x B`` and
    ``loss = ||C_s - C_t||_F^2 / B^2`` (mean squared error over the ``B^2`` entries), the
    reduction of the public Gaussian-RBF implementation (Knowledge-Distillation-Zoo's ``CC``, weight
    100 with CE, ``gamma = 0.4``, ``P = 2``). The code the authors shared with RepDistiller computes
    a different quantity, so its weight (0.02) does not apply here.
    """
    e_s = F.normalize(_flat_features(student_emb), dim=1)
    e_t = F.normalize(_flat_features(teacher_emb), dim=1)
    if e_s.shape[0] != e_t.shape[0]:
        raise ValueError("student and teacher batch sizes differ")

    def correlation(e: Tensor) -> Tensor:
        sim = e @ e.t()
        out = torch.zeros_like(sim)
        for p in range(p_order + 1):
            out = out + (2.0 * gamma) ** p / math.factorial(p) * sim.pow(p)
        return math.exp(-2.0 * gamma) * out

    return F.mse_loss(correlation(e_s), correlation(e_t))


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class VIDLoss(nn.Module):
    """Variational information distillation (Ahn et al., CVPR 2019).

    The teacher feature ``t`` is modelled as Gaussian ``N(mu(s), sigma^2)`` with ``mu`` a small
    regressor of 1x1 convolutions on the student feature ``s`` (conv-ReLU-conv-ReLU-conv) and a
    learnable per-channel variance ``sigma_c^2 = softplus(alpha_c) + eps`` (initialised to
    ``init_variance``). ``forward`` returns the negative log-likelihood, up to the constant
    ``0.5 * log(2 pi)``, averaged over all elements::

        mean_{b,c,h,w} 0.5 * ((mu_c(s) - t_c)^2 / sigma_c^2 + log sigma_c^2)

    (the authors' reduction, as in RepDistiller's ``VIDLoss``; summed over layer pairs with weight 1).

    Accepts ``(B, C, H, W)`` maps (the larger spatial size is adaptive-average-pooled to the
    smaller) or ``(B, C)`` vectors. It is trainable: its parameters must be given to the
    optimiser. Computed in fp32 with autocast disabled.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        hidden_channels: int | None = None,
        init_variance: float = 5.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if init_variance <= eps:
            raise ValueError("init_variance must be larger than eps")
        hidden = hidden_channels or teacher_channels
        self.regressor = nn.Sequential(
            nn.Conv2d(student_channels, hidden, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(hidden, teacher_channels, kernel_size=1),
        )
        self.alpha = nn.Parameter(torch.full((teacher_channels,), _inverse_softplus(init_variance - eps)))
        self.eps = eps

    def variance(self) -> Tensor:
        """Per-channel predicted variance ``softplus(alpha) + eps``, shape ``(C_t,)``."""
        return F.softplus(self.alpha) + self.eps

    def forward(self, student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
        with torch.autocast(device_type=student_feat.device.type, enabled=False):
            s, t = student_feat.float(), teacher_feat.float()
            if s.dim() == 2:
                s = s[:, :, None, None]
            if t.dim() == 2:
                t = t[:, :, None, None]
            _check_4d("student_feat", s)
            _check_4d("teacher_feat", t)
            s, t = _pool_to_common(s, t)
            mean = self.regressor(s)
            var = self.variance().view(1, -1, 1, 1)
            return (0.5 * ((mean - t).pow(2) / var + var.log())).mean()


CRD_NEGATIVE_SAMPLING = ("exact", "uniform")


class CRDLoss(nn.Module):
    """Contrastive representation distillation (Tian et al., ICLR 2020).

    Student and teacher features (flattened to ``(B, -1)``) are embedded by linear layers to
    ``feat_dim`` and L2-normalised (``v_s``, ``v_t``). Two memory banks of shape
    ``(num_samples, feat_dim)`` hold an embedding per training sample for each side. For each
    sample ``y`` in the batch, ``num_negatives = K`` negative ids are drawn with replacement:

    * ``negative_sampling="exact"`` (the default of the ``crd`` term, as the authors' code's
      ``mode='exact'``): uniformly among the training samples of the *other* classes, so neither
      the positive nor a sample of its class is ever a negative. Needs ``train_labels``, the class
      of every training sample (indexed by sample id). The authors' dataset draws them without
      replacement when ``K`` is at most that count; with replacement the negatives are i.i.d.
      draws of the same distribution (the NCE noise model), at ``O(B * K)`` cost.
    * ``negative_sampling="uniform"`` (this class's default): uniformly from ``[0, num_samples)``,
      the paper's uniform noise distribution; the positive may occasionally appear among them.

    The student anchor ``v_s`` is scored against the *teacher* memory at ``[y, negatives]`` and
    vice versa::

        P(i | v) = exp(v . m_i / T) / Z,   Z = N * mean(exp(v . m_i / T))   (on the first batch)
        h(i)     = P(i | v) / (P(i | v) + K / N)
        NCE      = -mean_batch[ log h(y) + sum_negatives log(1 - h(neg)) ]

    ``loss = NCE(student anchor) + NCE(teacher anchor)``, with one ``Z`` constant per side
    estimated on the first batch and then frozen (stored in a buffer). In training mode the
    memory rows of the batch are then updated without gradient:
    ``m_y <- normalise(momentum * m_y + (1 - momentum) * v)``. Memory rows start uniform in
    ``[-b, b]`` with ``b = sqrt(3 / feat_dim)`` (unit expected norm).

    ``sample_ids`` are the dataset indices of the batch. Negative sampling uses ``generator``
    (or a CPU generator seeded with ``seed``) when given, for reproducible runs; explicit
    negatives can also be passed to :meth:`forward`. Memory banks and ``Z`` are buffers, so they
    are saved with the module's state dict. Computed in fp32 with autocast disabled.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        num_samples: int,
        feat_dim: int = 128,
        num_negatives: int = 16384,
        nce_temperature: float = 0.07,
        momentum: float = 0.5,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        negative_sampling: str = "uniform",
        train_labels: Tensor | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if num_samples < 1 or num_negatives < 1:
            raise ValueError("num_samples and num_negatives must be positive")
        if negative_sampling not in CRD_NEGATIVE_SAMPLING:
            raise ValueError(
                f"negative_sampling must be one of {list(CRD_NEGATIVE_SAMPLING)}, got {negative_sampling!r}"
            )
        self.negative_sampling = negative_sampling
        if negative_sampling == "exact":
            self._set_class_index(train_labels, num_samples)
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        self.generator = generator
        self.num_samples = num_samples
        self.num_negatives = num_negatives
        self.nce_temperature = nce_temperature
        self.momentum = momentum
        self.embed_s = nn.Linear(student_dim, feat_dim)
        self.embed_t = nn.Linear(teacher_dim, feat_dim)
        bound = math.sqrt(3.0 / feat_dim)
        for name in ("memory_s", "memory_t"):
            self.register_buffer(name, self._uniform((num_samples, feat_dim), bound))
        # log Z per side; NaN until estimated on the first batch.
        self.register_buffer("log_z_s", torch.tensor(float("nan")))
        self.register_buffer("log_z_t", torch.tensor(float("nan")))

    def _uniform(self, shape: tuple[int, int], bound: float) -> Tensor:
        device = self.generator.device if self.generator is not None else None
        u = torch.rand(shape, generator=self.generator, device=device)
        return ((2.0 * u - 1.0) * bound).cpu()

    def _set_class_index(self, train_labels: Tensor | Sequence[int] | None, num_samples: int) -> None:
        if train_labels is None:
            raise ValueError(
                "negative_sampling='exact' draws each sample's negatives from the other classes, so it needs "
                "the class label of every training sample (train_labels), and none were given (unlabelled "
                "data?); pass them, or choose negative_sampling='uniform' (loss_kwargs: {crd: "
                "{negative_sampling: uniform}}) to draw negatives uniformly from all samples"
            )
        labels = torch.as_tensor(train_labels).reshape(-1).long().cpu()
        if labels.numel() != num_samples:
            raise ValueError(
                f"train_labels has {labels.numel()} entries but the CRD memory bank has {num_samples} rows; "
                "give one label per training sample, indexed by sample id"
            )
        if bool((labels < 0).any()):
            raise ValueError(
                f"train_labels holds {int((labels < 0).sum())} unlabelled samples (label < 0); "
                "negative_sampling='exact' needs a class for every sample; use negative_sampling='uniform'"
            )
        counts = torch.bincount(labels)
        if int((num_samples - counts[labels]).min()) == 0:
            raise ValueError(
                "negative_sampling='exact' needs samples of at least two classes (every sample's negatives "
                "come from the other classes); use negative_sampling='uniform'"
            )
        # Sample ids sorted by class: the negatives of class c are every position outside its block
        # [start[c], start[c] + count[c]). Plain tensors, not buffers: derived from the dataset, so kept out
        # of checkpoints and of DDP's per-step buffer broadcast; moved to the memory's device when first used.
        self._labels = labels
        self._order = torch.argsort(labels, stable=True)
        self._class_count = counts
        self._class_start = torch.cumsum(counts, 0) - counts

    def _class_index_on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self._order.device != device:
            self._labels, self._order = self._labels.to(device), self._order.to(device)
            self._class_count, self._class_start = self._class_count.to(device), self._class_start.to(device)
        return self._labels, self._order, self._class_start, self._class_count

    def sample_negatives(self, batch_size: int, sample_ids: Tensor | None = None) -> Tensor:
        """``(batch_size, num_negatives)`` negative ids for the batch's ``sample_ids``: uniformly from the other
        classes' samples (``exact``; needs ``sample_ids``) or from ``[0, num_samples)`` (``uniform``)."""
        device = self.generator.device if self.generator is not None else self.memory_s.device
        shape = (batch_size, self.num_negatives)
        if self.negative_sampling == "uniform":
            ids = torch.randint(0, self.num_samples, shape, generator=self.generator, device=device)
            return ids.to(self.memory_s.device)
        if sample_ids is None:
            raise ValueError("negative_sampling='exact' needs the batch's sample_ids")
        labels, order, start, count = self._class_index_on(self.memory_s.device)
        cls = labels[sample_ids.reshape(-1).to(labels.device, torch.long)]
        start, count = start[cls][:, None], count[cls][:, None]
        pool = self.num_samples - count  # how many samples the other classes hold, per row
        u = torch.rand(shape, generator=self.generator, device=device, dtype=torch.float64).to(pool.device)
        j = torch.minimum((u * pool).long(), pool - 1)  # uniform in [0, pool)
        return order[j + (j >= start).long() * count]  # skip the row's own class block

    def _nce(self, anchor: Tensor, memory: Tensor, ids: Tensor, log_z: Tensor) -> Tensor:
        # scores[b, 0] is the positive, scores[b, 1:] the negatives.
        scores = torch.bmm(memory[ids], anchor.unsqueeze(2)).squeeze(2) / self.nce_temperature
        with torch.no_grad():
            estimate = scores.logsumexp(dim=(0, 1)) - math.log(scores.numel()) + math.log(self.num_samples)
            log_z.copy_(torch.where(torch.isnan(log_z), estimate, log_z))
        log_p = scores - log_z
        log_noise = math.log(self.num_negatives / self.num_samples)  # log(K * P_noise)
        log_denominator = torch.logaddexp(log_p, torch.full_like(log_p, log_noise))
        log_h_pos = log_p[:, 0] - log_denominator[:, 0]
        log_one_minus_h_neg = (log_noise - log_denominator[:, 1:]).sum(dim=1)
        return -(log_h_pos + log_one_minus_h_neg).mean()

    @torch.no_grad()
    def _update_memory(self, memory: Tensor, embedding: Tensor, sample_ids: Tensor) -> None:
        mixed = memory[sample_ids] * self.momentum + embedding.detach() * (1.0 - self.momentum)
        memory.index_copy_(0, sample_ids, F.normalize(mixed, dim=1))

    def forward(
        self,
        student_feat: Tensor,
        teacher_feat: Tensor,
        sample_ids: Tensor,
        negative_ids: Tensor | None = None,
    ) -> Tensor:
        with torch.autocast(device_type=student_feat.device.type, enabled=False):
            v_s = F.normalize(self.embed_s(_flat_features(student_feat)), dim=1)
            v_t = F.normalize(self.embed_t(_flat_features(teacher_feat)), dim=1)
            sample_ids = sample_ids.reshape(-1).to(device=self.memory_s.device, dtype=torch.long)
            if negative_ids is None:
                negative_ids = self.sample_negatives(sample_ids.shape[0], sample_ids)
            ids = torch.cat([sample_ids[:, None], negative_ids.to(sample_ids)], dim=1)
            loss = self._nce(v_s, self.memory_t, ids, self.log_z_s)
            loss = loss + self._nce(v_t, self.memory_s, ids, self.log_z_t)
            if self.training:
                self._update_memory(self.memory_s, v_s, sample_ids)
                self._update_memory(self.memory_t, v_t, sample_ids)
            return loss


# ---------------------------------------------------------------------------------------------
# Term adapters: fn(student, teacher, batch, **params) -> Tensor
# ---------------------------------------------------------------------------------------------


def _labels(batch: dict) -> Tensor:
    try:
        return batch["labels"]
    except KeyError:
        raise KeyError("this loss term needs batch['labels']") from None


def kd_term(student: ModelOutputs, teacher: ModelOutputs, batch: dict, temperature: float = 4.0) -> Tensor:
    """Hinton KD on logits, see :func:`kd_loss`."""
    return kd_loss(student.logits, teacher.logits, temperature)


def reverse_kl_term(
    student: ModelOutputs, teacher: ModelOutputs, batch: dict, temperature: float = 4.0
) -> Tensor:
    """Reverse KL on logits, see :func:`reverse_kl_loss`."""
    return reverse_kl_loss(student.logits, teacher.logits, temperature)


def jsd_term(
    student: ModelOutputs, teacher: ModelOutputs, batch: dict, temperature: float = 4.0, beta: float = 0.5
) -> Tensor:
    """Generalised Jensen-Shannon on logits, see :func:`jsd_loss`."""
    return jsd_loss(student.logits, teacher.logits, temperature, beta)


def mse_logits_term(student: ModelOutputs, teacher: ModelOutputs, batch: dict) -> Tensor:
    """MSE between logits, see :func:`mse_logits_loss`."""
    return mse_logits_loss(student.logits, teacher.logits)


def kd_standardized_term(
    student: ModelOutputs, teacher: ModelOutputs, batch: dict, temperature: float = 4.0
) -> Tensor:
    """KD on standardised logits, see :func:`kd_loss_standardized`."""
    return kd_loss_standardized(student.logits, teacher.logits, temperature)


def dkd_term(
    student: ModelOutputs,
    teacher: ModelOutputs,
    batch: dict,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    warmup_epochs: float = 20.0,
    epoch: float | None = None,
) -> Tensor:
    """Decoupled KD with the targets of ``batch["labels"]`` (:func:`dkd_loss`), times the official linear
    warm-up ``min(epoch / warmup_epochs, 1)`` (:func:`linear_warmup_factor`; 20 epochs in the authors'
    CIFAR-100 setting, 1 on ImageNet; ``warmup_epochs: 0`` turns it off). ``epoch`` is the current,
    fractional training epoch, passed by the trainer; ``None`` (evaluation, or a call outside training)
    applies no warm-up factor."""
    factor = linear_warmup_factor(epoch, warmup_epochs)
    return dkd_loss(student.logits, teacher.logits, _labels(batch), temperature, alpha, beta) * factor


def linear_warmup_factor(epoch: float | None, warmup_epochs: float) -> float:
    """``min(epoch / warmup_epochs, 1)``: a linear ramp from 0 at the start of training to 1 after
    ``warmup_epochs`` epochs. 1 when ``epoch`` is ``None`` (no training epoch: evaluation) or
    ``warmup_epochs`` is 0.

    mdistiller (DKD's official code) multiplies by ``min(e / warmup, 1)`` with its 1-based integer epoch
    ``e``, a staircase that is ``1 / warmup`` during the first epoch; with the trainer's fractional
    epoch (0 at the first step) the same formula is the continuous ramp through it, at most one epoch
    behind the staircase.
    """
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0 (0: no warm-up), got {warmup_epochs}")
    if epoch is None or warmup_epochs == 0:
        return 1.0
    return min(max(float(epoch), 0.0) / warmup_epochs, 1.0)


def ce_term(
    student: ModelOutputs, teacher: ModelOutputs, batch: dict, label_smoothing: float = 0.0
) -> Tensor:
    """Cross entropy of the student against ``batch["labels"]``, see :func:`ce_loss`."""
    return ce_loss(student.logits, _labels(batch), label_smoothing)


# Logit terms only; feature terms are registered where the feature taps that feed them exist.
LOSSES: dict[str, Callable[..., Tensor]] = {
    "kd": kd_term,
    "reverse_kl": reverse_kl_term,
    "jsd": jsd_term,
    "mse_logits": mse_logits_term,
    "kd_standardized": kd_standardized_term,
    "dkd": dkd_term,
    "ce": ce_term,
}


# ---------------------------------------------------------------------------------------------
# Feature term adapters. They read the tapped features (``ModelOutputs.features``, in the order of
# DistillationConfig.student_feature_layers / teacher_feature_layers: position i of one pairs with
# position i of the other) and, for learnable methods, what their auxiliary module returned
# (``ModelOutputs.auxiliary[<term name>]``, built by hf_distill.features). ``pairs`` / ``pair`` pick
# positions; multi-pair terms sum over pairs, as the papers sum over layers.
# ---------------------------------------------------------------------------------------------


def _pairs_of(
    student: ModelOutputs, teacher: ModelOutputs, pairs: Any, default: str
) -> list[tuple[Tensor, Tensor]]:
    s, t = list(student.features.values()), list(teacher.features.values())
    if not s or len(s) != len(t):
        raise ValueError(
            "this loss term needs tapped features: set DistillationConfig.student_feature_layers and "
            "teacher_feature_layers (one teacher layer per student layer)"
        )
    if pairs is None:
        chosen = range(len(s)) if default == "all" else [len(s) - 1]
    else:
        chosen = [pairs] if isinstance(pairs, int) else pairs
    return [(s[i], t[i]) for i in chosen]


def fitnet_term(
    student: ModelOutputs,
    teacher: ModelOutputs,
    batch: dict,
    pairs: Any = None,
    regressor: str = "conv",
    regressor_relu: bool = True,
) -> Tensor:
    """FitNet hints: :func:`fitnet_loss` between the *regressed* student features (the ``fitnet``
    auxiliary module's output) and the teacher's, summed over the used pairs (default: all).
    ``regressor`` / ``regressor_relu`` configure that module (:class:`hf_distill.features.Projector`):
    ``conv``, the paper's convolutional regressor (default), or ``1x1``."""
    projected = student.auxiliary["fitnet"]
    t = list(teacher.features.values())
    return torch.stack([fitnet_loss(projected[i], t[i]) for i in sorted(projected)]).sum()


def at_term(
    student: ModelOutputs, teacher: ModelOutputs, batch: dict, pairs: Any = None, p: float = 2.0
) -> Tensor:
    """Attention transfer, :func:`at_loss` summed over the used map pairs (default: all)."""
    return torch.stack([at_loss(s, t, p) for s, t in _pairs_of(student, teacher, pairs, "all")]).sum()


def fsp_term(student: ModelOutputs, teacher: ModelOutputs, batch: dict, pairs: Any = None) -> Tensor:
    """FSP: the FSP matrices of consecutive tapped layers (i, i+1) of the student against the teacher's,
    see :func:`fsp_loss`; needs at least two tapped layers per model with equal paired channel counts."""
    chosen = _pairs_of(student, teacher, pairs, "all")
    if len(chosen) < 2:
        raise ValueError(
            "the fsp term needs at least two tapped layers per model (FSP relates consecutive layers)"
        )
    s_pairs = [(chosen[i][0], chosen[i + 1][0]) for i in range(len(chosen) - 1)]
    t_pairs = [(chosen[i][1], chosen[i + 1][1]) for i in range(len(chosen) - 1)]
    return fsp_loss(s_pairs, t_pairs)


def sp_term(student: ModelOutputs, teacher: ModelOutputs, batch: dict, pairs: Any = None) -> Tensor:
    """Similarity preserving, :func:`sp_loss`, on the last tapped pair by default."""
    return torch.stack([sp_loss(s, t) for s, t in _pairs_of(student, teacher, pairs, "last")]).sum()


def pkt_term(student: ModelOutputs, teacher: ModelOutputs, batch: dict, pairs: Any = None) -> Tensor:
    """Probabilistic knowledge transfer, :func:`pkt_loss`, on the last tapped pair by default."""
    return torch.stack([pkt_loss(s, t) for s, t in _pairs_of(student, teacher, pairs, "last")]).sum()


def rkd_term(
    student: ModelOutputs,
    teacher: ModelOutputs,
    batch: dict,
    pairs: Any = None,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> Tensor:
    """Relational KD, :func:`rkd_loss`, on the last tapped pair by default (the paper uses the embedding:
    tap ``pre_logits``)."""
    chosen = _pairs_of(student, teacher, pairs, "last")
    return torch.stack([rkd_loss(s, t, distance_weight, angle_weight) for s, t in chosen]).sum()


def cc_term(
    student: ModelOutputs,
    teacher: ModelOutputs,
    batch: dict,
    pairs: Any = None,
    gamma: float = 0.4,
    p_order: int = 2,
) -> Tensor:
    """Correlation congruence, :func:`cc_loss`, on the last tapped pair by default."""
    chosen = _pairs_of(student, teacher, pairs, "last")
    return torch.stack([cc_loss(s, t, gamma, p_order) for s, t in chosen]).sum()


def vid_term(
    student: ModelOutputs,
    teacher: ModelOutputs,
    batch: dict,
    pairs: Any = None,
    hidden_channels: int | None = None,
    init_variance: float = 5.0,
) -> Tensor:
    """Variational information distillation: the summed :class:`VIDLoss` the ``vid`` auxiliary module
    computed (``pairs``, ``hidden_channels``, ``init_variance`` configure that module)."""
    return student.auxiliary["vid"]


def crd_term(
    student: ModelOutputs,
    teacher: ModelOutputs,
    batch: dict,
    pair: int | None = None,
    feat_dim: int = 128,
    num_negatives: int | None = None,
    nce_temperature: float = 0.07,
    momentum: float = 0.5,
    negative_sampling: str = "exact",
) -> Tensor:
    """Contrastive representation distillation: the :class:`CRDLoss` the ``crd`` auxiliary module computed
    on the last tapped pair by default (the parameters configure that module; ``num_negatives`` defaults
    to ``min(16384, len(train_dataset))``; ``negative_sampling`` is ``exact``, negatives from the other
    classes as the authors' code, or ``uniform``). Evaluation batches are not scored (0)."""
    value = student.auxiliary["crd"]
    return value if value is not None else _zero_like_graph(student.logits)


for _term in (fitnet_term, at_term, fsp_term, sp_term, pkt_term, rkd_term, cc_term, vid_term, crd_term):
    _term.needs_features = True


# ---------------------------------------------------------------------------------------------
# Online distillation
# ---------------------------------------------------------------------------------------------

PEER_PREFIX = "peer"


def dml_loss(cohort_logits: Sequence[Tensor], temperature: float = 1.0) -> list[Tensor]:
    """Deep mutual learning (Zhang et al., CVPR 2018), the mimicry part, in fp32.

    For a cohort of ``K >= 2`` networks with logits ``z_k``, network ``k`` gets
    ``1 / (K - 1) * sum_{l != k} tau^2 * KL(p_l || p_k)`` with ``p = softmax(z / tau)``; the other
    networks' predictions are targets (no gradient through them). Returns one value per network.
    """
    if len(cohort_logits) < 2:
        raise ValueError("dml_loss needs a cohort of at least two networks")
    detached = [z.detach() for z in cohort_logits]
    out = []
    for k, z in enumerate(cohort_logits):
        others = [kd_loss(z, detached[j], temperature) for j in range(len(cohort_logits)) if j != k]
        out.append(torch.stack(others).mean())
    return out


def dml_term(student: ModelOutputs, teacher: ModelOutputs, batch: dict, temperature: float = 1.0) -> Tensor:
    """DML for the whole cohort: the student plus every peer (auxiliary modules named ``peer*``).

    ``sum_k mimicry_k`` (:func:`dml_loss`) ``+ sum_{peers} CE(peer, labels)`` (mixed-label CE under batch
    mixing); the student's own CE is the trainer's ``(1 - alpha) * CE``. Each network's gradient comes only
    from its own terms, so one backward pass is the simultaneous DML update. DML usually runs at
    ``temperature: 1``.
    """
    peers = [v.logits for k, v in student.auxiliary.items() if k.startswith(PEER_PREFIX)]
    if not peers:
        raise ValueError("the dml term needs peers: set DistillationConfig.peer_model_names_or_paths")
    cohort = [student.logits, *peers]
    mimicry = torch.stack(dml_loss(cohort, temperature)).sum()
    return mimicry + torch.stack([mixed_cross_entropy(z, batch) for z in peers]).sum()


dml_term.needs_teacher = False

LOSSES.update(
    {
        "fitnet": fitnet_term,
        "at": at_term,
        "fsp": fsp_term,
        "sp": sp_term,
        "pkt": pkt_term,
        "rkd": rkd_term,
        "cc": cc_term,
        "vid": vid_term,
        "crd": crd_term,
        "dml": dml_term,
    }
)
