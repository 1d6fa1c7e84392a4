"""IKD loss: exact fast CSL, AHSM margins and hard sets, ablation switches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ikd_core.loss import (
    AdaptiveMargin,
    IKDLoss,
    context_similarity_loss,
    context_similarity_loss_naive,
    csl_gram,
    csl_pairs,
)

# Our loss picks the n x n arrangement for n <= 2C and the C x C Grams above; both are checked on both sides.
FORMS = {"auto": context_similarity_loss, "gram": csl_gram, "pairs": csl_pairs}


def _pair(n: int, c: int, eps: float | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = F.normalize(torch.randn(n, c, generator=g), dim=1)
    if eps is None:
        s = F.normalize(torch.randn(n, c, generator=g), dim=1)
    else:
        s = F.normalize(t + eps * torch.randn(n, c, generator=g), dim=1)
    return t, s


@pytest.mark.parametrize("n", [3000, 150])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("eps", [None, 1e-1, 1e-2, 1e-3, 1e-4])
def test_csl_equals_naive_gram_float32(eps: float | None, form: str, n: int) -> None:
    t, s = _pair(n, 96, eps)
    ref = context_similarity_loss_naive(t.double(), s.double()).item()
    fast = FORMS[form](t, s).item()
    assert ref > 0
    assert abs(fast - ref) / ref < 1e-4


@pytest.mark.parametrize("n", [500, 40])
@pytest.mark.parametrize("form", FORMS)
def test_csl_gradient_matches_naive(form: str, n: int) -> None:
    t, s = _pair(n, 32, 1e-2)
    s1 = s.double().clone().requires_grad_(True)
    s2 = s.double().clone().requires_grad_(True)
    FORMS[form](t.double(), s1).backward()
    context_similarity_loss_naive(t.double(), s2).backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-8, atol=1e-12)


def test_csl_picks_the_cheaper_exact_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """n x n while n <= 2C on one process; C x C Grams for bigger hard sets and whenever ranks are reduced."""
    import ikd_core.loss as loss_mod

    used = []
    monkeypatch.setattr(loss_mod, "csl_pairs", lambda t, s: used.append("pairs") or csl_pairs(t, s))
    monkeypatch.setattr(loss_mod, "csl_gram", lambda t, s, r=None: used.append("gram") or csl_gram(t, s))
    for n in (10, 64, 65, 1000):
        loss_mod.context_similarity_loss(*_pair(n, 32, None))
    loss_mod.context_similarity_loss(*_pair(10, 32, None), all_reduce=lambda x: x)  # a (1-rank) reduction
    assert used == ["pairs", "pairs", "gram", "gram", "gram"]


@pytest.mark.parametrize("n", [2000, 100])
def test_csl_bf16_inputs_accumulate_in_float32(n: int) -> None:
    t, s = _pair(n, 64, None)
    ref = context_similarity_loss_naive(t.bfloat16().double(), s.bfloat16().double()).item()
    out = context_similarity_loss(t.bfloat16(), s.bfloat16())
    assert out.dtype == torch.float32
    assert abs(out.item() - ref) / ref < 1e-4


def test_margin_update_rule() -> None:
    m = AdaptiveMargin(alpha=0.01, beta=2.0)
    d = torch.rand(1000, dtype=torch.float64)
    first = 0.99 * (d.mean() + 2 * d.std())
    assert m.update(d).item() == pytest.approx(first.item(), rel=1e-6)
    d2 = torch.rand(1000, dtype=torch.float64) * 3
    second = 0.01 * first + 0.99 * (d2.mean() + 2 * d2.std())
    assert m.update(d2).item() == pytest.approx(second.item(), rel=1e-6)


def _feats(b: int, c: int, h: int, eps: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = F.normalize(torch.randn(b, c, h, h, generator=g), dim=1)
    s = F.normalize(t + eps * torch.randn(b, c, h, h, generator=g), dim=1)
    return t, s


def test_pixel_loss_is_mean_over_hard_set_and_csl_over_hard_pairs() -> None:
    t, s = _feats(2, 16, 8, 0.5, 1)
    loss = IKDLoss(1, gamma=1.0)
    total, pixel, csl = loss.level_loss(t, s, 0)
    tf = t.permute(0, 2, 3, 1).reshape(-1, 16)
    sf = s.permute(0, 2, 3, 1).reshape(-1, 16)
    d = (tf - sf).square().sum(1)
    margin = 0.99 * (d.mean() + 2 * d.std())
    hard = d >= margin
    assert 0 < hard.sum() < d.numel()
    assert pixel.item() == pytest.approx(d[hard].mean().item(), rel=1e-5)
    naive = context_similarity_loss_naive(tf[hard].double(), sf[hard].double()).item()
    assert csl.item() == pytest.approx(naive, rel=1e-4)
    assert total.item() == pytest.approx(pixel.item() + csl.item(), rel=1e-6)


def test_empty_hard_set_uses_all_positions() -> None:
    t, s = _feats(1, 8, 4, 0.3, 2)
    loss = IKDLoss(1)
    loss.margins[0].margin.fill_(1e9)  # the updated margin stays above every d
    _, pixel, _ = loss.level_loss(t, s, 0)
    assert pixel.item() == pytest.approx((t - s).square().sum(1).mean().item(), rel=1e-5)


def test_ablation_switches() -> None:
    t, s = _feats(2, 8, 6, 0.3, 3)
    no_ahsm = IKDLoss(1, hard_mining=False, gamma=0.0)
    assert no_ahsm([t], [s]).item() == pytest.approx((t - s).square().sum(1).mean().item(), rel=1e-5)
    _, _, csl = IKDLoss(1, gamma=0.0).level_loss(t, s, 0)
    assert csl.item() == 0.0


def test_level_weights_weighted_mean() -> None:
    a = _feats(2, 8, 6, 0.2, 4)
    b = _feats(2, 8, 6, 0.6, 5)
    loss = IKDLoss(2, level_weights=(1.0, 2.0), hard_mining=False)
    la = IKDLoss(1, hard_mining=False)([a[0]], [a[1]]).item()
    lb = IKDLoss(1, hard_mining=False)([b[0]], [b[1]]).item()
    assert loss([a[0], b[0]], [a[1], b[1]]).item() == pytest.approx((la + 2 * lb) / 3, rel=1e-5)


def test_margins_are_per_level() -> None:
    a = _feats(2, 8, 6, 0.1, 6)
    b = _feats(2, 8, 6, 0.9, 7)
    loss = IKDLoss(2)
    loss([a[0], b[0]], [a[1], b[1]])
    m0, m1 = (m.margin.item() for m in loss.margins)
    assert m0 > 0 and m1 > 0 and m1 > 2 * m0
