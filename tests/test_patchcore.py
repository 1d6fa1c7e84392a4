"""PatchCore baseline (ikd_core/patchcore.py): shapes, coreset, nearest neighbours, a planted anomaly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ikd_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ikd_core.patchcore import PatchCore, greedy_coreset, locally_aware_features, nearest_distance


@pytest.fixture(scope="module")
def teacher():
    from ikd_core.backbones import build_teacher

    return build_teacher("efficientnet_lite0")[0]


def _texture(n: int, size: int, seed: int) -> torch.Tensor:
    """Normalised images of a regular stripe texture with random phase and slight noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    phase = torch.rand(n, 1, 1, generator=g) * 6.28
    base = 0.5 + 0.25 * torch.sin(xx[None] * 0.8 + phase) * torch.cos(yy[None] * 0.4)
    img = (base + 0.03 * torch.randn(n, size, size, generator=g)).clamp(0, 1)[:, None].repeat(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (img - mean) / std


def test_locally_aware_features_shape() -> None:
    feats = [torch.randn(2, 4, 16, 16), torch.randn(2, 6, 8, 8), torch.randn(2, 5, 4, 4)]
    out = locally_aware_features(feats)
    assert out.shape == (2, 15, 16, 16)
    pooled = F.avg_pool2d(feats[0], 3, 1, 1, count_include_pad=False)
    assert torch.allclose(out[:, :4], pooled)


def test_greedy_coreset_size_and_spread() -> None:
    g = torch.Generator().manual_seed(0)
    # Four tight clusters: a 4-point k-center coreset takes one point from each.
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    pts = (centres[:, None] + 0.1 * torch.randn(4, 50, 2, generator=g)).reshape(-1, 2)
    idx = greedy_coreset(pts, 4)
    assert idx.shape == (4,) and len(set(idx.tolist())) == 4
    assert sorted((idx // 50).tolist()) == [0, 1, 2, 3]
    big = torch.randn(300, 200, generator=g)
    sel = greedy_coreset(big, 30, proj_dim=16)
    assert sel.shape == (30,) and len(set(sel.tolist())) == 30
    assert torch.equal(greedy_coreset(big, 30, proj_dim=16), sel)  # deterministic
    assert greedy_coreset(big, 500).shape == (300,)


def test_chunked_nearest_distance_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    q, bank = torch.randn(333, 24, generator=g), torch.randn(517, 24, generator=g)
    brute = torch.cdist(q.double(), bank.double()).amin(1).float()
    chunked = nearest_distance(q, bank, query_chunk=50, bank_chunk=100)
    assert torch.allclose(chunked, brute, atol=1e-4)


def test_patchcore_shapes_and_planted_anomaly(teacher) -> None:
    size = 64
    model = PatchCore(teacher, coreset_ratio=0.25)
    train = _texture(8, size, seed=0)
    model.fit([train[:4], {"image": train[4:]}])
    grid = size // 4  # efficientnet_lite0's finest level: stride 4
    assert model.n_patches == 8 * grid * grid
    assert model.memory_bank.shape == (round(0.25 * model.n_patches), 24 + 40 + 112)
    assert model.fit_seconds > 0

    good = _texture(3, size, seed=7)
    bad = good.clone()
    bad[:, :, 20:34, 24:38] = 2.0  # a bright square the texture never has
    maps, scores = model.predict(torch.cat([good, bad]))
    assert maps.shape == (6, size, size) and maps.dtype == torch.float32
    assert scores.shape == (6,)
    assert scores[3:].min() > scores[:3].max()
    assert maps[3:, 20:34, 24:38].mean() > 1.3 * maps[:3, 20:34, 24:38].mean()
    peak = maps[3:].flatten(1).argmax(1)
    ys, xs = peak // size, peak % size
    assert ((ys >= 14) & (ys < 40) & (xs >= 18) & (xs < 44)).all(), "the maximum is not at the anomaly"


def test_patchcore_levels_and_errors(teacher) -> None:
    model = PatchCore(teacher, levels=(1, 2), coreset_ratio=1.0)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.maps(_texture(1, 64, 0))
    model.fit([_texture(2, 64, 0)])
    assert model.memory_bank.shape == (2 * 8 * 8, 40 + 112)  # stride-8 grid, all patches kept
    assert model.maps(_texture(1, 64, 3)).shape == (1, 64, 64)
    with pytest.raises(ValueError):
        PatchCore(teacher, coreset_ratio=0.0)
    with pytest.raises(ValueError, match="no images"):
        PatchCore(teacher).fit([])
