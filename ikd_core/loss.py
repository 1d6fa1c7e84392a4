"""IKD loss: adaptive hard sample mining (AHSM) + pixel loss + context similarity loss (CSL).

Per level, with t and s the channel-L2-normalised teacher and student features:

* d(p) = |t(p) - s(p)|^2 for every position p of the batch;
* AHSM margin m <- a*m + (1-a)*(mean(d) + b*std(d)) (one margin per level, starts at 0);
  hard set H = {p : d(p) >= m}, all positions when H is empty;
* pixel loss L_ps = mean of d over H;
* context similarity loss L_cs = mean over (i, j) in H x H of (t_i.t_j - s_i.s_j)^2, computed exactly
  from C x C Gram matrices, or from the |H| x |H| one while |H| <= 2C where that is cheaper
  (see :func:`context_similarity_loss`).

Level loss = L_ps + gamma * L_cs; the total is the weighted mean over levels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

AllReduce = Callable[[Tensor], Tensor]
"""Sums a tensor over data-parallel ranks (autograd-aware); identity on one process."""


def _identity(x: Tensor) -> Tensor:
    return x


PAIRS_MAX_RATIO = 2
"""The n x n arrangement is used up to n = PAIRS_MAX_RATIO * C: below, it is the cheaper one (O(n^2 C) against
O(n C^2); measured crossover on CPU near n = 2C), and its matrices stay within (2C)^2 entries."""


def _float_pd(t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """P = T + S and D = T - S in float32 (float64 inputs stay float64)."""
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    t, s = t.to(dtype), s.to(dtype)
    return t + s, t - s


def csl_gram(t: Tensor, s: Tensor, all_reduce: AllReduce = _identity) -> Tensor:
    """Exact CSL from C x C Grams: ``(<P^T P, D^T D> + <(P^T D)^T, P^T D>) / 2 / n^2``; O(n C^2) time, O(C^2)
    memory. ``all_reduce`` sums the Grams and n over ranks, so the loss is the one of the global batch."""
    p, d = _float_pd(t, s)
    n = all_reduce(torch.tensor(float(t.shape[0]), dtype=p.dtype, device=p.device))
    pp = all_reduce(p.T @ p)
    dd = all_reduce(d.T @ d)
    pd = all_reduce(p.T @ d)
    total = 0.5 * ((pp * dd).sum() + (pd.T * pd).sum())
    return total.clamp_min(0.0) / n.clamp_min(1.0).square()


def csl_pairs(t: Tensor, s: Tensor) -> Tensor:
    """Exact CSL from the n x n matrix ``(P D^T + D P^T) / 2`` (= T T^T - S S^T); O(n^2 C) time, one process."""
    p, d = _float_pd(t, s)
    m = p @ d.T
    return (0.5 * (m + m.T)).square().sum() / max(t.shape[0], 1) ** 2


def context_similarity_loss(t: Tensor, s: Tensor, all_reduce: AllReduce = _identity) -> Tensor:
    """Exact CSL = ||T T^T - S S^T||_F^2 / n^2 for row-feature matrices T, S of shape (n, C).

    With P = T + S and D = T - S, T T^T - S S^T = (P D^T + D P^T) / 2, so

        ||T T^T - S S^T||_F^2 = (<P^T P, D^T D> + <(P^T D)^T, P^T D>) / 2      (C x C: :func:`csl_gram`)
                              = ||(P D^T + D P^T) / 2||_F^2                     (n x n: :func:`csl_pairs`)

    Both are ||T^T T||^2 + ||S^T S||^2 - 2 ||T^T S||^2 rearranged so that every term is of the order of
    ||D||^2: no catastrophic cancellation when the student is close to the teacher. The cheaper one is used:
    the n x n form while n <= 2C on one process (small hard sets), the C x C Grams otherwise and always
    across ranks, so time is O(n C min(n, C)) and memory O(C^2) at any n; |H| x |H| Grams of big hard sets
    are never formed. Accumulates in float32 (float64 inputs stay float64).
    """
    if all_reduce is _identity and t.shape[0] <= PAIRS_MAX_RATIO * t.shape[1]:
        return csl_pairs(t, s)
    return csl_gram(t, s, all_reduce)


def context_similarity_loss_naive(t: Tensor, s: Tensor) -> Tensor:
    """Reference CSL from the |H| x |H| Gram matrices (O(n^2) memory); for tests and benchmarks."""
    return (t @ t.T - s @ s.T).square().mean()


class AdaptiveMargin(nn.Module):
    """AHSM margin of one feature level: m <- a*m + (1-a)*(mean(d) + b*std(d))."""

    margin: Tensor

    def __init__(self, alpha: float = 0.01, beta: float = 2.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.register_buffer("margin", torch.zeros(()))

    @torch.no_grad()
    def update(self, d: Tensor, all_reduce: AllReduce = _identity) -> Tensor:
        """Update the margin with the statistics of ``d`` (all ranks) and return it."""
        d = d.detach().double()
        stats = all_reduce(torch.stack([d.new_tensor(float(d.numel())), d.sum(), d.square().sum()]))
        n, total, total_sq = stats[0], stats[1], stats[2]
        mean = total / n
        # Unbiased std, as torch.std, from the (global) sums.
        var = (total_sq - n * mean.square()) / (n - 1).clamp_min(1.0)
        target = mean + self.beta * var.clamp_min(0.0).sqrt()
        self.margin.copy_(self.alpha * self.margin + (1.0 - self.alpha) * target.to(self.margin.dtype))
        return self.margin


class LevelWeightedLoss(nn.Module):
    """Base of the distillation losses: one weight per feature level, total = weighted mean of the level losses."""

    level_weights: Tensor

    def __init__(self, num_levels: int, level_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        weights = list(level_weights) if level_weights is not None else [1.0] * num_levels
        if len(weights) != num_levels:
            raise ValueError(f"expected {num_levels} level weights, got {len(weights)}")
        self.register_buffer("level_weights", torch.tensor(weights, dtype=torch.float32))

    def weighted_mean(self, losses: Tensor) -> Tensor:
        """sum_l w_l L_l / sum_l w_l of the per-level losses (L,)."""
        w = self.level_weights.to(losses.device)
        return (losses * w).sum() / w.sum()

    def level_total(self, t: Tensor, s: Tensor, level: int, all_reduce: AllReduce) -> Tensor:
        """The loss of one level (scalar, float32)."""
        raise NotImplementedError

    def forward(
        self,
        teacher_feats: Sequence[Tensor],
        student_feats: Sequence[Tensor],
        all_reduce: AllReduce = _identity,
    ) -> Tensor:
        """Total loss: the weighted mean over levels of :meth:`level_total` (float32).

        Args:
            teacher_feats: teacher features per level, (B, C_k, H_k, W_k).
            student_feats: student features of the same shapes.
            all_reduce: sums a tensor over data-parallel ranks (autograd-aware; identity on one process).

        Returns:
            Scalar loss.
        """
        pairs = enumerate(zip(teacher_feats, student_feats, strict=True))
        return self.weighted_mean(torch.stack([self.level_total(t, s, i, all_reduce) for i, (t, s) in pairs]))


class IKDLoss(LevelWeightedLoss):
    """Weighted IKD loss over feature levels.

    Args:
        num_levels: number of feature levels.
        level_weights: one weight per level (paper, HRNet: 1 and 2); default all ones.
        gamma: CSL weight (paper: 1); 0 switches CSL off.
        hard_mining: AHSM on (paper) or off (all positions are used).
        alpha, beta: AHSM momentum and std multiplier (paper: 0.01, 2).
    """

    def __init__(
        self,
        num_levels: int,
        level_weights: Sequence[float] | None = None,
        gamma: float = 1.0,
        hard_mining: bool = True,
        alpha: float = 0.01,
        beta: float = 2.0,
    ) -> None:
        super().__init__(num_levels, level_weights)
        self.gamma = gamma
        self.hard_mining = hard_mining
        self.margins = nn.ModuleList(AdaptiveMargin(alpha, beta) for _ in range(num_levels))

    def level_loss(
        self, t: Tensor, s: Tensor, level: int, all_reduce: AllReduce = _identity
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Loss of one level from normalised features (B, C, H, W): (total, pixel, csl)."""
        t = rearrange(t.float(), "b c h w -> (b h w) c")
        s = rearrange(s.float(), "b c h w -> (b h w) c")
        d = (t - s).square().sum(dim=1)
        if self.hard_mining:
            margin = self.margins[level].update(d, all_reduce)
            hard = d >= margin
            # "If H is empty use all positions", decided on the global batch.
            if all_reduce(hard.sum().float()) == 0:
                hard = torch.ones_like(hard)
            t, s, d = t[hard], s[hard], d[hard]
        n = all_reduce(torch.tensor(float(d.numel()), device=d.device)).clamp_min(1.0)
        pixel = all_reduce(d.sum()) / n
        csl = context_similarity_loss(t, s, all_reduce) if self.gamma else pixel.new_zeros(())
        return pixel + self.gamma * csl, pixel, csl

    def level_total(self, t: Tensor, s: Tensor, level: int, all_reduce: AllReduce = _identity) -> Tensor:
        """L_ps + gamma * L_cs of one level."""
        return self.level_loss(t, s, level, all_reduce)[0]


class CosineDistillationLoss(LevelWeightedLoss):
    """RD4AD loss: per level, the mean over positions p of 1 - cos(t(p), s(p)) (cosine along channels); the
    total is the weighted mean over levels (float32).

    Raw or normalised features give the same loss (cosine is scale-invariant). On L2-normalised features,
    1 - cos(t, s) = |t - s|^2 / 2 = d / 2, so the loss is half IKD's pixel loss without hard mining. This is the
    per-position loss of the RD4AD paper (Eq. 2); the official code takes one cosine per image over the flattened
    (C*H*W) map instead. With unit weights it is RD4AD's sum over levels divided by the number of levels.

    Args:
        num_levels: number of feature levels.
        level_weights: one weight per level; default all ones.
        eps: lower bound of the feature norms.
    """

    def __init__(self, num_levels: int, level_weights: Sequence[float] | None = None, eps: float = 1e-8) -> None:
        super().__init__(num_levels, level_weights)
        self.eps = eps

    def level_loss(self, t: Tensor, s: Tensor, all_reduce: AllReduce = _identity) -> Tensor:
        """Mean of 1 - cos over the positions of one level (B, C, H, W), over all ranks."""
        t = torch.nn.functional.normalize(t.float(), dim=1, eps=self.eps)
        s = torch.nn.functional.normalize(s.float(), dim=1, eps=self.eps)
        dist = 1.0 - (t * s).sum(dim=1)
        n = all_reduce(torch.tensor(float(dist.numel()), device=dist.device)).clamp_min(1.0)
        return all_reduce(dist.sum()) / n

    def level_total(self, t: Tensor, s: Tensor, level: int, all_reduce: AllReduce = _identity) -> Tensor:
        """mean_p (1 - cos(t(p), s(p))) of one level."""
        return self.level_loss(t, s, all_reduce)
