"""Visualisation: normalised heatmaps, overlays, defect outlines, panels, GIFs and plots.

Images are RGB ``uint8`` arrays of shape ``(H, W, 3)`` (grayscale ``(H, W)`` is accepted
and expanded); anomaly maps are ``(H, W)`` floats (numpy or torch). Plots are built on
:class:`matplotlib.figure.Figure` directly, so importing this module never touches
pyplot or the global matplotlib backend.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import cv2
import imageio.v3 as iio
import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = [
    "COLORMAPS",
    "apply_colormap",
    "draw_contours",
    "figure_to_png",
    "make_panel",
    "normalize_map",
    "overlay",
    "plot_loss_curve",
    "plot_pro",
    "plot_roc",
    "save_gif",
]

#: Colormaps that read well for anomaly heatmaps (any matplotlib name is accepted).
COLORMAPS: list[str] = ["jet", "inferno", "viridis", "magma", "turbo"]

MapT = TypeVar("MapT", np.ndarray, torch.Tensor)

_BG = (32, 32, 32)
_FG = (235, 235, 235)
_RED = (230, 60, 60)
_GREEN = (70, 200, 90)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


# --------------------------------------------------------------------------- helpers
def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_map(x: Any) -> np.ndarray:
    """A float32 ``(H, W)`` map from ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)``."""
    arr = _to_numpy(x).astype(np.float32, copy=False)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected an (H, W) map, got shape {arr.shape}")
    return arr


def _as_rgb(image: Any) -> np.ndarray:
    """A contiguous uint8 ``(H, W, 3)`` copy of an RGB or grayscale image."""
    img = _to_numpy(image)
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {img.shape}")
    return np.ascontiguousarray(img).copy()


def _resize_map(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if arr.shape == hw:
        return arr
    return cv2.resize(arr, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def _resize_mask(mask: Any, hw: tuple[int, int]) -> np.ndarray:
    m = (_as_map(mask) > 0.5).astype(np.uint8)
    if m.shape != hw:
        m = cv2.resize(m, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return m


def _resize_image(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == hw:
        return img
    shrink = hw[0] * hw[1] < img.shape[0] * img.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(img, (hw[1], hw[0]), interpolation=interp)


# --------------------------------------------------------------------------- maps
def normalize_map(anomaly_map: MapT, threshold: float, lo: float) -> MapT:
    """Map scores to ``[0, 1]`` with ``clip(0.5 * (map - lo) / (threshold - lo), 0, 1)``.

    ``lo`` (fitted on held-out good images) maps to 0 and the decision ``threshold`` to
    0.5, so the same colour means the same score on every image. Works on numpy arrays
    and torch tensors (returns the same type and shape, floating point). If
    ``threshold <= lo`` the result degenerates to a step at ``lo``.
    """
    threshold, lo = float(threshold), float(lo)
    denom = max(threshold - lo, 1e-12)
    if isinstance(anomaly_map, torch.Tensor):
        t = anomaly_map if anomaly_map.is_floating_point() else anomaly_map.float()
        return (0.5 * (t - lo) / denom).clamp(0.0, 1.0)
    arr = np.asarray(anomaly_map)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return np.clip(0.5 * (arr - lo) / denom, 0.0, 1.0).astype(arr.dtype, copy=False)


def apply_colormap(norm_map: Any, cmap: str = "jet") -> np.ndarray:
    """Colour a ``(H, W)`` map in ``[0, 1]`` with a matplotlib colormap -> uint8 ``(H, W, 3)``.

    NaNs are drawn as 0; values outside ``[0, 1]`` are clipped.
    """
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap!r}; try one of {COLORMAPS}") from None
    arr = np.clip(np.nan_to_num(_as_map(norm_map), nan=0.0), 0.0, 1.0)
    return np.ascontiguousarray(colormap(arr, bytes=True)[..., :3])


def overlay(
    image: Any, norm_map: Any, alpha: float = 0.5, cmap: str = "jet"
) -> np.ndarray:
    """Blend a coloured heatmap over an image -> uint8 ``(H, W, 3)``.

    The map is resized to the image size (bilinear, float32) before colouring. The blend
    is exact and deterministic: ``rint((1 - alpha) * image + alpha * heat)`` computed in
    float32 (``alpha`` cast to float32 first) then cast to uint8; ``np.rint`` rounds
    halves to even, like Python's ``round`` (e.g. 132.5 -> 132, 5.5 -> 6).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _as_rgb(image)
    heat = apply_colormap(_resize_map(_as_map(norm_map), img.shape[:2]), cmap)
    a = np.float32(alpha)
    blend = (np.float32(1.0) - a) * img.astype(np.float32) + a * heat.astype(np.float32)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def draw_contours(
    image: Any,
    mask: Any,
    color: tuple[int, int, int] = (255, 0, 0),
    thickness: int = 2,
) -> np.ndarray:
    """Outline the regions of a boolean ``(H, W)`` mask (inner holes included) on a copy
    of ``image``; the mask is resized (nearest) to the image size if needed."""
    img = _as_rgb(image)
    m = _resize_mask(mask, img.shape[:2])
    contours, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    if contours:
        cv2.drawContours(img, contours, -1, tuple(int(c) for c in color), thickness)
    return img


# --------------------------------------------------------------------------- panels
def _put_text(
    strip: np.ndarray, text: str, color: tuple[int, int, int], x: int = 4
) -> None:
    """Draw one line of text vertically centred in ``strip``, shrunk to fit its width."""
    h, w = strip.shape[:2]
    scale = max(0.3, 0.55 * h / 22.0)  # HERSHEY_SIMPLEX is ~22 px tall at scale 1
    thick = max(1, round(scale * 1.5))
    (tw, th), _ = cv2.getTextSize(text, _FONT, scale, thick)
    if tw > w - 2 * x:
        scale *= (w - 2 * x) / tw
        thick = max(1, round(scale * 1.5))
        (tw, th), _ = cv2.getTextSize(text, _FONT, scale, thick)
    y = (h + th) // 2
    cv2.putText(strip, text, (x, y), _FONT, scale, color, thick, cv2.LINE_AA)


def make_panel(
    image: Any,
    norm_map: Any,
    pred_mask: Any,
    gt_mask: Any | None = None,
    score: float | None = None,
    threshold: float | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    label: str | None = None,
) -> np.ndarray:
    """One row ``image | heatmap | overlay + predicted outline | ground truth`` -> uint8.

    Each tile has a title strip; a caption below gives the image score and, when a
    threshold is given, the verdict (``ANOMALY`` if ``score >= threshold`` else ``GOOD``).
    The ground-truth tile is only added when ``gt_mask`` is given.
    """
    img = _as_rgb(image)
    h, w = img.shape[:2]
    norm = _resize_map(_as_map(norm_map), (h, w))
    tiles = [
        ("image", img),
        ("anomaly map", apply_colormap(norm, cmap)),
        (
            "overlay",
            draw_contours(
                overlay(img, norm, alpha, cmap), pred_mask, thickness=max(2, w // 128)
            ),
        ),
    ]
    if gt_mask is not None:
        tiles.append(
            (
                "ground truth",
                np.repeat(_resize_mask(gt_mask, (h, w))[..., None] * 255, 3, 2),
            )
        )

    gap = max(2, w // 64)
    strip_h = max(16, round(0.1 * h))
    columns = []
    for title, tile in tiles:
        head = np.full((strip_h, w, 3), _BG, dtype=np.uint8)
        _put_text(head, title, _FG)
        columns.append(np.concatenate([head, tile], axis=0))
        columns.append(np.full((strip_h + h, gap, 3), _BG, dtype=np.uint8))
    row = np.concatenate(columns[:-1], axis=1)

    if score is None:
        return row
    caption = f"{label}  score {score:.4g}" if label else f"score {score:.4g}"
    color = _FG
    if threshold is not None:
        anomalous = score >= threshold
        caption += f"  thr {threshold:.4g}  ->  {'ANOMALY' if anomalous else 'GOOD'}"
        color = _RED if anomalous else _GREEN
    foot = np.full((strip_h, row.shape[1], 3), _BG, dtype=np.uint8)
    _put_text(foot, caption, color)
    return np.concatenate([row, foot], axis=0)


# --------------------------------------------------------------------------- GIF
def save_gif(
    frames: Sequence[Any],
    path: str | os.PathLike[str],
    fps: float = 2.0,
    size: int | None = None,
    loop: int = 0,
) -> Path:
    """Write RGB frames as an animated GIF (atomically: temp file then ``os.replace``).

    All frames are resized to one size: width ``size`` (or the first frame's width) and
    the height that keeps the first frame's aspect ratio. Each frame lasts
    ``1000 / fps`` ms (GIF stores centiseconds, so this is rounded to 10 ms); ``loop=0``
    repeats forever. Note: Pillow's GIF writer merges *identical consecutive* frames into
    one with the summed duration, so such a GIF plays the same but has fewer frames.
    """
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    rgb = [_as_rgb(f) for f in frames]
    h0, w0 = rgb[0].shape[:2]
    width = int(size) if size is not None else w0
    height = max(1, round(h0 * width / w0))
    stack = np.stack([_resize_image(f, (height, width)) for f in rgb])

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".gif", prefix=f".{path.stem}.", dir=path.parent)
    os.close(fd)
    try:
        iio.imwrite(
            tmp,
            stack,
            plugin="pillow",
            extension=".gif",
            duration=round(1000.0 / fps),
            loop=int(loop),
        )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------- plots
def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(float(value)) else f"{float(value):.3f}"


def _new_axes(title: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(4.5, 4.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def plot_roc(fpr: Any, tpr: Any, auc: float, title: str = "ROC curve") -> Figure:
    """ROC curve with the chance diagonal and the AUROC in the legend."""
    fig, ax = _new_axes(title)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.plot(_to_numpy(fpr), _to_numpy(tpr), linewidth=2, label=f"AUROC = {_fmt(auc)}")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate",
        ylabel="true positive rate",
    )
    ax.legend(loc="lower right")
    return fig


def plot_pro(
    fpr: Any, pro: Any, au_pro: float, fpr_limit: float = 0.3, title: str = "PRO curve"
) -> Figure:
    """Per-region-overlap curve up to ``fpr_limit`` with the normalised AU-PRO."""
    fig, ax = _new_axes(title)
    f, p = _to_numpy(fpr), _to_numpy(pro)
    ax.plot(f, p, linewidth=2, label=f"AU-PRO@{fpr_limit:g} = {_fmt(au_pro)}")
    if f.size:
        ax.fill_between(f, p, alpha=0.15)
    ax.set(
        xlim=(0, fpr_limit), ylim=(0, 1.01), xlabel="false positive rate", ylabel="PRO"
    )
    ax.legend(loc="lower right")
    return fig


def plot_loss_curve(steps: Any, losses: Any, title: str = "Training loss") -> Figure:
    """Loss vs. step; log y-axis when the losses are positive and span > 50x."""
    fig, ax = _new_axes(title)
    s, loss = _to_numpy(steps).ravel(), _to_numpy(losses).ravel()
    ax.plot(s, loss, linewidth=1.5)
    finite = loss[np.isfinite(loss)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 50:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss")
    return fig


def figure_to_png(fig: Figure, dpi: int | None = None) -> bytes:
    """Render a figure to PNG bytes (Agg, no pyplot)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
