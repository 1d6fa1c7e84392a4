"""Tests for ikd_core.visualize."""

from __future__ import annotations

import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from ikd_core import visualize as V


# --------------------------------------------------------------------------- maps
def test_normalize_map_values() -> None:
    m = np.array([[-1.0, 1.0, 2.0], [3.0, 5.0, 100.0]])
    out = V.normalize_map(m, threshold=3.0, lo=1.0)
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.25], [0.5, 1.0, 1.0]])
    t = V.normalize_map(torch.tensor(m, dtype=torch.float32), threshold=3.0, lo=1.0)
    assert isinstance(t, torch.Tensor) and t.shape == (2, 3)
    np.testing.assert_allclose(t.numpy(), out, atol=1e-7)
    ints = V.normalize_map(np.array([0, 2, 4]), threshold=2, lo=0)
    assert ints.dtype == np.float32 and ints.tolist() == [0.0, 0.5, 1.0]
    assert V.normalize_map(np.array([0.0, 1.0]), threshold=0.0, lo=0.0).tolist() == [
        0.0,
        1.0,
    ]


def test_apply_colormap() -> None:
    m = np.array([[0.0, 1.0], [np.nan, 2.0]])
    gray = V.apply_colormap(m, "gray")
    assert gray.dtype == np.uint8 and gray.shape == (2, 2, 3)
    assert gray[:, :, 0].tolist() == [[0, 255], [0, 255]]
    for name in V.COLORMAPS:
        assert V.apply_colormap(torch.rand(4, 5), name).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="unknown colormap"):
        V.apply_colormap(m, "no-such-map")


def test_overlay_exact_arithmetic() -> None:
    img = np.array([[[10, 11, 100], [10, 11, 100]]], dtype=np.uint8)  # (1, 2, 3)
    norm = np.array([[1.0, 0.0]])  # gray heat: 255 then 0
    out = V.overlay(img, norm, alpha=0.5, cmap="gray")
    # (10+255)/2 = 132.5 -> 132 (half to even), 133, 177.5 -> 178; 5, 5.5 -> 6, 50
    assert out.dtype == np.uint8
    assert out.tolist() == [[[132, 133, 178], [5, 6, 50]]]

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    norm = rng.random((6, 8))
    heat = V.apply_colormap(norm, "jet").astype(np.float32)
    a = np.float32(0.3)
    expected = np.rint((np.float32(1) - a) * img.astype(np.float32) + a * heat).astype(
        np.uint8
    )
    np.testing.assert_array_equal(V.overlay(img, norm, alpha=0.3), expected)
    assert np.array_equal(V.overlay(img, norm, alpha=0.0), img)


def test_overlay_resizes_map() -> None:
    img = np.zeros((8, 12, 3), dtype=np.uint8)
    out = V.overlay(img, np.ones((2, 3)), alpha=1.0, cmap="gray")
    assert out.shape == (8, 12, 3) and (out == 255).all()


def test_draw_contours_on_mask_border() -> None:
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), dtype=bool)
    mask[10:20, 8:24] = True
    out = V.draw_contours(img, mask, color=(255, 0, 0), thickness=1)
    red = (out == (255, 0, 0)).all(axis=2)
    border = mask & ~np.pad(
        mask[1:-1, 1:-1]
        & mask[:-2, 1:-1]
        & mask[2:, 1:-1]
        & mask[1:-1, :-2]
        & mask[1:-1, 2:],
        1,
    )
    np.testing.assert_array_equal(red, border)
    assert not img.any()  # input untouched
    # a half-resolution mask is scaled up to the image
    small = V.draw_contours(img, mask[::2, ::2], thickness=1)
    assert small[10, 8:24].any() and not small[14, 12:20].any()
    assert np.array_equal(V.draw_contours(img, np.zeros((32, 32), bool)), img)


def test_make_panel_layout() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    norm = rng.random((16, 20))
    pred = norm > 0.5
    row = V.make_panel(img, norm, pred)
    with_gt = V.make_panel(img, norm, pred, gt_mask=pred, score=0.7, threshold=0.5)
    assert row.dtype == np.uint8 and row.ndim == 3 and row.shape[2] == 3
    assert row.shape[1] == 3 * 80 + 2 * 2 and row.shape[0] > 64
    assert with_gt.shape[1] == 4 * 80 + 3 * 2 and with_gt.shape[0] > row.shape[0]
    np.testing.assert_array_equal(row[-64:, :80], img)  # first tile is the image
    again = V.make_panel(img, norm, pred, gt_mask=pred, score=0.7, threshold=0.5)
    np.testing.assert_array_equal(with_gt, again)


# --------------------------------------------------------------------------- GIF
def test_save_gif_frames_and_size(tmp_path: Path) -> None:
    frames = [np.full((40, 60, 3), 40 * i, dtype=np.uint8) for i in range(5)]
    frames[2] = np.full((80, 100, 3), 90, dtype=np.uint8)  # different size is resized
    path = V.save_gif(frames, tmp_path / "sub" / "demo.gif", fps=2.0, size=30)
    assert path == tmp_path / "sub" / "demo.gif"
    with Image.open(path) as im:
        assert im.n_frames == 5 and im.size == (30, 20)
        assert im.info["duration"] == 500 and im.info["loop"] == 0
    assert iio.imread(path, index=None).shape == (5, 20, 30, 3)
    assert sorted(p.name for p in path.parent.iterdir()) == ["demo.gif"]  # no temp left

    V.save_gif(frames[:3], path, fps=5.0)  # overwrite, native size
    with Image.open(path) as im:
        assert im.n_frames == 3 and im.size == (60, 40) and im.info["duration"] == 200
    with pytest.raises(ValueError):
        V.save_gif([], tmp_path / "empty.gif")


# --------------------------------------------------------------------------- plots
def test_figures_render_png() -> None:
    x = np.linspace(0, 1, 20)
    figs = [
        V.plot_roc(x, np.sqrt(x), 0.83, "image ROC"),
        V.plot_roc(np.empty(0), np.empty(0), math.nan, "empty"),
        V.plot_pro(x * 0.3, x, 0.6, fpr_limit=0.3, title="PRO"),
        V.plot_loss_curve(np.arange(100), np.exp(-np.arange(100) / 10)),
        V.plot_loss_curve(torch.arange(5), torch.tensor([3.0, 2.0, 1.5, 1.2, 1.1])),
    ]
    for fig in figs:
        png = V.figure_to_png(fig, dpi=50)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert figs[3].axes[0].get_yscale() == "log"
    assert figs[4].axes[0].get_yscale() == "linear"
