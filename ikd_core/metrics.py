"""Anomaly detection and segmentation metrics: AUROC, F1-max and AU-PRO.

All functions accept torch tensors or numpy arrays. Anomaly maps are ``(N, H, W)`` or
``(N, 1, H, W)`` floats, masks the same shape with values in ``{0, 1}``; image scores and
labels are ``(N,)``. Higher scores mean "more anomalous".

A metric that is undefined for the given inputs (for example only one class present)
is returned as ``float("nan")`` instead of raising.

ROC / PR curves are computed with torchmetrics on exact (unbinned) thresholds. The
scores are first min-max rescaled to ``[0, 1]`` in float64: the metrics only depend on
the ranking, and this stops torchmetrics from squashing out-of-range scores through a
sigmoid (which would create ties in float32 for large scores).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_precision_recall_curve,
    binary_roc,
)

__all__ = [
    "au_pro",
    "evaluate",
    "format_metrics_table",
    "image_auroc",
    "image_roc_curve",
    "pixel_auroc",
    "pixel_f1_max",
    "pixel_roc_curve",
    "pro_curve",
]

ArrayLike = Any  # torch.Tensor | np.ndarray | sequence of numbers

METRIC_LABELS: dict[str, str] = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "pixel_f1_max": "Pixel F1-max",
    "au_pro": "AU-PRO",
}


# --------------------------------------------------------------------------- helpers
def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_maps(x: ArrayLike) -> np.ndarray:
    """Return ``(N, H, W)`` from ``(N, H, W)``, ``(N, 1, H, W)`` or a single ``(H, W)``."""
    arr = _to_numpy(x)
    if arr.ndim == 4:
        if arr.shape[1] != 1:
            raise ValueError(f"expected (N, 1, H, W) maps, got shape {arr.shape}")
        arr = arr[:, 0]
    elif arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected (N, H, W) or (N, 1, H, W), got shape {arr.shape}")
    return arr


def _pixels(maps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    m = _as_maps(maps)
    g = _as_maps(masks)
    if m.shape != g.shape:
        raise ValueError(f"maps {m.shape} and masks {g.shape} must have the same shape")
    return m, g > 0.5


def _flat(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = _to_numpy(scores).reshape(-1)
    y = _to_numpy(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(
            f"scores {s.shape} and labels {y.shape} must have the same length"
        )
    return s, y > 0.5


def _both_classes(target: np.ndarray) -> bool:
    n_pos = int(np.count_nonzero(target))
    return 0 < n_pos < target.size


def _rescale(preds: np.ndarray) -> tuple[torch.Tensor, float, float]:
    """Min-max rescale to ``[0, 1]`` (float64); returns the tensor and (lo, span)."""
    p = preds.astype(np.float64, copy=False)
    lo, hi = float(np.min(p)), float(np.max(p))
    span = hi - lo if hi > lo else 1.0
    return torch.from_numpy((p - lo) / span), lo, span


def _auroc(preds: np.ndarray, target: np.ndarray) -> float:
    if not _both_classes(target):
        return math.nan
    p, _, _ = _rescale(preds)
    return float(
        binary_auroc(p, torch.from_numpy(target.astype(np.int64)), validate_args=False)
    )


def _roc(
    preds: np.ndarray, target: np.ndarray, max_points: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not _both_classes(target):
        empty = np.empty(0)
        return empty, empty, empty
    p, lo, span = _rescale(preds)
    fpr, tpr, thr = binary_roc(
        p, torch.from_numpy(target.astype(np.int64)), validate_args=False
    )
    fpr, tpr = fpr.numpy().astype(np.float64), tpr.numpy().astype(np.float64)
    thr = thr.numpy().astype(np.float64) * span + lo
    if max_points is not None and fpr.size > max_points:
        keep = np.unique(
            np.linspace(0, fpr.size - 1, max_points).round().astype(np.int64)
        )
        fpr, tpr, thr = fpr[keep], tpr[keep], thr[keep]
    return fpr, tpr, thr


# --------------------------------------------------------------------------- image level
def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of image scores vs. labels (1 = anomalous)."""
    return _auroc(*_flat(scores, labels))


def image_roc_curve(
    scores: ArrayLike, labels: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image-level ROC curve ``(fpr, tpr, thresholds)``; empty arrays if one class only."""
    return _roc(*_flat(scores, labels), max_points=None)


# --------------------------------------------------------------------------- pixel level
def pixel_auroc(maps: ArrayLike, masks: ArrayLike) -> float:
    """Pixel-wise AUROC of anomaly maps vs. ground-truth masks (exact, all thresholds)."""
    m, g = _pixels(maps, masks)
    return _auroc(m.reshape(-1), g.reshape(-1))


def pixel_roc_curve(
    maps: ArrayLike, masks: ArrayLike, max_points: int | None = 2000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-level ROC curve ``(fpr, tpr, thresholds)``, evenly subsampled to at most
    ``max_points`` points for plotting (``None`` keeps all). Empty if one class only."""
    m, g = _pixels(maps, masks)
    return _roc(m.reshape(-1), g.reshape(-1), max_points=max_points)


def pixel_f1_max(maps: ArrayLike, masks: ArrayLike) -> float:
    """Maximum pixel-wise F1 score over all thresholds of the precision-recall curve."""
    m, g = _pixels(maps, masks)
    target = g.reshape(-1)
    if not _both_classes(target):
        return math.nan
    p, _, _ = _rescale(m.reshape(-1))
    precision, recall, _ = binary_precision_recall_curve(
        p, torch.from_numpy(target.astype(np.int64)), validate_args=False
    )
    precision, recall = precision.double(), recall.double()
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-12), 0.0)
    return float(f1.max())


# --------------------------------------------------------------------------- AU-PRO
def _label_regions(gt: np.ndarray) -> tuple[np.ndarray, int]:
    """Label 8-connected defect regions of every image with globally unique ids."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # full 3x3 in-plane neighbourhood, no links between images
    labels, n_regions = ndimage.label(gt, structure=structure)
    return labels, int(n_regions)


def _truncate_curve(
    fpr: np.ndarray, pro: np.ndarray, fpr_limit: float
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the curve for ``fpr <= fpr_limit`` and interpolate a point exactly at the limit."""
    inside = fpr <= fpr_limit
    f, p = fpr[inside], pro[inside]
    if f.size and f[-1] == fpr_limit:
        return f, p
    nxt = int(np.argmax(~inside)) if not inside.all() else None
    if nxt is None or nxt == 0:
        return f, p
    f0, f1, p0, p1 = fpr[nxt - 1], fpr[nxt], pro[nxt - 1], pro[nxt]
    p_lim = p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0)
    return np.append(f, fpr_limit), np.append(p, p_lim)


def pro_curve(
    maps: ArrayLike,
    masks: ArrayLike,
    fpr_limit: float = 0.3,
    num_thresholds: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap curve ``(fpr, pro)`` as in MVTec AD (Bergmann et al.).

    Regions are the 8-connected components of each ground-truth mask. At a threshold
    ``t`` the PRO is the mean over all regions (of all images) of the fraction of the
    region's pixels with score ``>= t``, and the FPR is the fraction of all defect-free
    pixels (of all images) with score ``>= t``.

    Thresholds are ``num_thresholds`` quantiles ``t`` of the defect-free scores, spaced
    evenly in FPR over ``[0, fpr_limit]``, each also taken just above itself (the PRO
    reached before the FPR steps at ``t``), plus ``+inf`` (the origin). The returned
    curve starts at ``(0, 0)``, is non-decreasing in both coordinates and ends exactly
    at ``fpr_limit`` (linear interpolation). It equals the curve over every distinct
    score when ``num_thresholds >= fpr_limit * n_defect_free_pixels``; otherwise the
    normalised area differs by at most ``1 / (2 * num_thresholds)`` (5e-4 by default).

    Returns empty arrays when there is no defect region or no defect-free pixel.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    m, g = _pixels(maps, masks)
    labels, n_regions = _label_regions(g)
    neg = m[~g].astype(np.float64)
    if n_regions == 0 or neg.size == 0:
        empty = np.empty(0)
        return empty, empty

    # Thresholds: FPR quantiles t of the defect-free scores, each also just above itself
    # (nextafter(t)), which captures the top of the vertical PRO step before the FPR
    # step at t, plus +inf for the origin.
    neg_desc = np.sort(neg)[::-1]
    k_max = min(neg.size - 1, math.ceil(fpr_limit * neg.size))
    ks = np.linspace(0, k_max, max(2, num_thresholds)).round().astype(np.int64)
    quantiles = np.unique(neg_desc[ks])
    thr_asc = np.unique(
        np.concatenate((quantiles, np.nextafter(quantiles, np.inf), [np.inf]))
    )
    n_thr = thr_asc.size

    # PRO(t) = mean_r |{i in r: s_i >= t}| / |r| = sum_i w_i [s_i >= t] with
    # w_i = 1 / (R |r(i)|), so both curves are (weighted) counts of scores >= t.
    # bins = number of thresholds <= score, so a score is >= thr_asc[j] iff j < bins;
    # histogram + reverse cumsum costs O(P log T) time and O(P + T) memory.
    def count_at_least(
        scores: np.ndarray, weights: np.ndarray | None = None
    ) -> np.ndarray:
        bins = np.searchsorted(thr_asc, scores, side="right")
        hist = np.bincount(bins, weights=weights, minlength=n_thr + 1)
        return np.cumsum(hist[::-1])[::-1][1:]  # [j] = sum(hist[j + 1:])

    pos = labels > 0
    region_ids = labels[pos] - 1
    region_sizes = np.bincount(region_ids, minlength=n_regions)
    weights = 1.0 / (n_regions * region_sizes[region_ids])

    fpr = (count_at_least(neg) / neg.size)[::-1]
    pro = np.clip(count_at_least(m[pos].astype(np.float64), weights)[::-1], 0.0, 1.0)
    return _truncate_curve(fpr, pro, fpr_limit)


def au_pro(
    maps: ArrayLike,
    masks: ArrayLike,
    fpr_limit: float = 0.3,
    num_thresholds: int = 1000,
) -> float:
    """Area under the PRO curve for ``FPR <= fpr_limit``, divided by ``fpr_limit``.

    A perfect detector scores 1.0 and random scores about ``fpr_limit / 2`` before
    normalisation, i.e. ~0.15 for the default limit. See :func:`pro_curve` for the
    threshold approximation (within 5e-4 of the exact dense value by default). Returns nan if there
    is no defect region or no defect-free pixel.
    """
    fpr, pro = pro_curve(
        maps, masks, fpr_limit=fpr_limit, num_thresholds=num_thresholds
    )
    if fpr.size == 0:
        return math.nan
    return float(np.trapezoid(pro, fpr) / fpr_limit)


# --------------------------------------------------------------------------- summary
def evaluate(
    scores: ArrayLike,
    labels: ArrayLike,
    maps: ArrayLike | None = None,
    masks: ArrayLike | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """Compute all metrics; keys ``image_auroc``, ``pixel_auroc``, ``pixel_f1_max``,
    ``au_pro``. Pixel metrics are nan without maps/masks or without any defect pixel."""
    result = {"image_auroc": image_auroc(scores, labels)}
    if maps is None or masks is None:
        result.update(pixel_auroc=math.nan, pixel_f1_max=math.nan, au_pro=math.nan)
        return result
    result["pixel_auroc"] = pixel_auroc(maps, masks)
    result["pixel_f1_max"] = pixel_f1_max(maps, masks)
    result["au_pro"] = au_pro(maps, masks, fpr_limit=fpr_limit)
    return result


def format_metrics_table(metrics: dict[str, float], title: str | None = None) -> str:
    """Render metrics as an aligned markdown table (nan shown as ``n/a``)."""
    rows = []
    for key, value in metrics.items():
        name = METRIC_LABELS.get(key, key)
        try:
            number = float(value)
        except (TypeError, ValueError):
            rows.append((name, str(value)))
            continue
        rows.append((name, "n/a" if math.isnan(number) else f"{number:.4f}"))
    w_name = max([len("Metric")] + [len(r[0]) for r in rows])
    w_val = max([len("Value")] + [len(r[1]) for r in rows])
    lines = [] if title is None else [f"**{title}**", ""]
    lines.append(f"| {'Metric':<{w_name}} | {'Value':>{w_val}} |")
    lines.append(f"|:{'-' * (w_name + 1)}|{'-' * (w_val + 1)}:|")
    lines.extend(f"| {n:<{w_name}} | {v:>{w_val}} |" for n, v in rows)
    return "\n".join(lines)
