"""Tests for ikd_core.metrics with hand-built inputs and known answers."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from ikd_core import metrics as M


def _blob_masks(n: int = 4, size: int = 24, seed: int = 0) -> np.ndarray:
    """Masks with several rectangular regions per image; the last image is defect-free."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n - 1):
        for _ in range(2):
            y, x = rng.integers(0, size - 6, 2)
            h, w = rng.integers(2, 6, 2)
            masks[i, y : y + h, x : x + w] = 1
    return masks


def _dense_au_pro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """Brute-force reference: every distinct score is a threshold (cv2 labelling)."""
    region_scores = []
    for i, m in enumerate(masks):
        n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        region_scores += [maps[i][lab == k] for k in range(1, n)]
    neg = maps[masks == 0]
    fprs, pros = [], []
    for t in np.concatenate(([np.inf], np.unique(maps)[::-1])):
        fprs.append(np.mean(neg >= t))
        pros.append(np.mean([np.mean(r >= t) for r in region_scores]))
    fpr, pro = np.array(fprs), np.array(pros)
    beyond = np.nonzero(fpr > fpr_limit)[0]
    j = int(beyond[0]) if beyond.size else fpr.size  # first point beyond the limit
    f, p = fpr[:j], pro[:j]
    if f[-1] < fpr_limit:
        p_lim = p[-1] + (pro[j] - p[-1]) * (fpr_limit - f[-1]) / (fpr[j] - f[-1])
        f, p = np.append(f, fpr_limit), np.append(p, p_lim)
    return float(np.trapezoid(p, f) / fpr_limit)


# --------------------------------------------------------------------------- AUROC
def test_image_auroc_known_values() -> None:
    labels = [0, 0, 1, 1]
    assert M.image_auroc([0.1, 0.4, 0.35, 0.8], labels) == pytest.approx(0.75)
    assert M.image_auroc([0.1, 0.2, 0.3, 0.4], labels) == pytest.approx(1.0)
    assert M.image_auroc([0.4, 0.3, 0.2, 0.1], labels) == pytest.approx(0.0)
    assert M.image_auroc(
        torch.tensor([0.5, 0.5]), torch.tensor([0, 1])
    ) == pytest.approx(0.5)


def test_auroc_large_scores_not_squashed() -> None:
    # torchmetrics would sigmoid these to 1.0 in float32 and report 0.5
    assert M.image_auroc(np.array([100.0, 101.0, 102.0, 103.0]), [0, 0, 1, 1]) == 1.0


def test_degenerate_inputs_are_nan() -> None:
    assert math.isnan(M.image_auroc([0.1, 0.2], [1, 1]))
    maps = np.random.default_rng(0).random((2, 8, 8))
    zeros = np.zeros((2, 8, 8))
    assert math.isnan(M.pixel_auroc(maps, zeros))
    assert math.isnan(M.pixel_f1_max(maps, zeros))
    assert math.isnan(M.au_pro(maps, zeros))
    assert math.isnan(M.pixel_auroc(maps, np.ones((2, 8, 8))))
    fpr, tpr, thr = M.image_roc_curve([0.1, 0.2], [0, 0])
    assert fpr.size == tpr.size == thr.size == 0


def test_pixel_metrics_hand_worked() -> None:
    # positives {0.9, 0.7, 0.6}, negatives {0.8, 0.5, 0.4}: 7 of 9 pairs ordered
    maps = np.array([[[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]]])
    masks = np.array([[[1, 0, 1], [1, 0, 0]]])
    assert M.pixel_auroc(maps, masks) == pytest.approx(7 / 9)
    # threshold 0.6: TP=3, FP=1 -> P=3/4, R=1 -> F1=6/7 (the maximum)
    assert M.pixel_f1_max(maps, masks) == pytest.approx(6 / 7)
    # (N, 1, H, W) torch input gives the same answers
    assert M.pixel_f1_max(
        torch.tensor(maps)[:, None], torch.tensor(masks)[:, None]
    ) == (pytest.approx(6 / 7))


def test_perfect_and_inverted_maps() -> None:
    masks = _blob_masks()
    perfect = masks.astype(np.float32)
    assert M.pixel_auroc(perfect, masks) == pytest.approx(1.0)
    assert M.pixel_f1_max(perfect, masks) == pytest.approx(1.0)
    assert M.au_pro(perfect, masks) == pytest.approx(1.0)
    assert M.pixel_auroc(-perfect, masks) == pytest.approx(0.0)


def test_pixel_auroc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    masks = _blob_masks(seed=3)
    rng = np.random.default_rng(3)
    maps = rng.normal(size=masks.shape) + masks
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert M.pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-6)
    fpr, tpr, thr = M.pixel_roc_curve(maps, masks, max_points=50)
    assert fpr.size <= 50 and fpr[0] == 0.0 and fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(thr) <= 0)


# --------------------------------------------------------------------------- AU-PRO
def test_au_pro_one_of_two_regions_detected() -> None:
    rng = np.random.default_rng(1)
    masks = np.zeros((2, 32, 32), dtype=np.uint8)
    masks[0, 4:10, 4:10] = 1  # detected perfectly
    masks[1, 20:28, 20:30] = 1  # never detected before FPR = 1
    maps = rng.uniform(0.0, 0.5, masks.shape)
    maps[0][masks[0] == 1] = 1.0
    maps[1][masks[1] == 1] = -1.0
    fpr, pro = M.pro_curve(maps, masks)
    assert np.allclose(pro[fpr > 0], 0.5)
    assert M.au_pro(maps, masks) == pytest.approx(0.5, abs=1e-3)


def test_au_pro_uses_8_connectivity() -> None:
    masks = np.zeros((1, 16, 16), dtype=np.uint8)
    masks[0, 2, 2] = masks[0, 3, 3] = 1  # diagonal pair: one region with 8-connectivity
    masks[0, 8:12, 8:12] = 1  # second region, never detected
    maps = np.random.default_rng(2).uniform(0.0, 0.5, masks.shape)
    maps[0, 2, 2] = maps[0, 3, 3] = 1.0
    maps[0, 8:12, 8:12] = -1.0
    # 4-connectivity would give three regions and PRO = 2/3
    assert M.au_pro(maps, masks) == pytest.approx(0.5, abs=1e-3)


def test_au_pro_random_map_is_half_limit() -> None:
    rng = np.random.default_rng(4)
    masks = np.zeros((8, 64, 64), dtype=np.uint8)
    masks[:4, 10:40, 10:40] = 1
    maps = rng.random(masks.shape)
    assert M.au_pro(maps, masks, fpr_limit=0.3) == pytest.approx(0.15, abs=0.01)
    assert M.au_pro(maps, masks, fpr_limit=1.0) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_au_pro_matches_brute_force(seed: int, fpr_limit: float) -> None:
    masks = _blob_masks(seed=seed)
    rng = np.random.default_rng(seed)
    maps = cv2.GaussianBlur(rng.random(masks.shape).transpose(1, 2, 0), (5, 5), 1.0)
    maps = maps.transpose(2, 0, 1) + 0.3 * masks * rng.random(masks.shape)
    expected = _dense_au_pro(maps, masks, fpr_limit)
    # ~2100 defect-free pixels: 3000 thresholds cover every one, so the result is exact
    got = M.au_pro(
        torch.tensor(maps)[:, None], masks, fpr_limit=fpr_limit, num_thresholds=3000
    )
    assert got == pytest.approx(expected, abs=1e-9)
    # fewer thresholds: within the documented 1 / (2 * num_thresholds)
    for num_thresholds in (10, 50, 1000):
        coarse = M.au_pro(
            maps, masks, fpr_limit=fpr_limit, num_thresholds=num_thresholds
        )
        assert coarse == pytest.approx(expected, abs=1 / (2 * num_thresholds))


def test_pro_curve_shape() -> None:
    masks = _blob_masks(seed=5)
    maps = np.random.default_rng(5).random(masks.shape) + masks
    fpr, pro = M.pro_curve(maps, masks, fpr_limit=0.2, num_thresholds=100)
    assert fpr[0] == 0.0 and pro[0] == 0.0
    assert fpr[-1] == pytest.approx(0.2)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)
    assert np.all((pro >= 0) & (pro <= 1))


def test_good_images_add_no_regions() -> None:
    masks = _blob_masks(n=3, seed=6)
    maps = masks.astype(np.float64)
    good = np.zeros((2, *masks.shape[1:]))
    both = M.au_pro(np.concatenate([maps, good]), np.concatenate([masks, good]))
    assert both == pytest.approx(1.0)


# --------------------------------------------------------------------------- summary
def test_evaluate_and_table() -> None:
    masks = _blob_masks()
    maps = masks.astype(np.float32)
    labels = masks.reshape(len(masks), -1).max(1)
    scores = maps.reshape(len(maps), -1).max(1)
    result = M.evaluate(scores, labels, maps, masks)
    assert set(result) == {"image_auroc", "pixel_auroc", "pixel_f1_max", "au_pro"}
    assert all(v == pytest.approx(1.0) for v in result.values())

    no_pixels = M.evaluate(scores, labels)
    assert no_pixels["image_auroc"] == pytest.approx(1.0)
    assert math.isnan(no_pixels["pixel_auroc"]) and math.isnan(no_pixels["au_pro"])

    all_good = M.evaluate([0.1, 0.2], [0, 0], np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    assert all(math.isnan(v) for v in all_good.values())

    table = M.format_metrics_table({**result, "au_pro": math.nan}, title="bottle")
    lines = table.splitlines()
    assert lines[0] == "**bottle**"
    assert "| Image AUROC " in table and "1.0000 |" in table and "n/a |" in table
    assert len({len(line) for line in lines[2:]}) == 1  # aligned columns


def test_large_input_is_fast_enough() -> None:
    rng = np.random.default_rng(7)
    masks = np.zeros((20, 256, 256), dtype=np.uint8)
    masks[:10, 100:140, 60:120] = 1
    maps = torch.rand(20, 1, 256, 256) + torch.from_numpy(masks)[:, None] * 0.5
    result = M.evaluate(rng.random(20), masks.reshape(20, -1).max(1), maps, masks)
    assert 0.5 < result["pixel_auroc"] <= 1.0 and 0.0 < result["au_pro"] <= 1.0
