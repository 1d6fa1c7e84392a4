"""Resizing and tiling of anomaly maps in numpy alone (shared by the torch predictor, the torch-free runtime and the
tile calibration of training)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MapsFn = Callable[[np.ndarray], np.ndarray]
"""Turns a normalised float32 (N, 3, S, S) batch into (N, C, S, S) maps: channel 0 the anomaly map, channel C - 1
the map the image score is taken on (the same one when C is 1)."""


def resize_bilinear(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of the last two axes, half-pixel centres, no antialiasing (as torch's
    ``F.interpolate(mode="bilinear", align_corners=False)``).

    Args:
        a: array of shape (..., H, W).
        height: output height.
        width: output width.

    Returns:
        Array of shape (..., height, width); a copy when the size is unchanged.
    """

    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(a.dtype)

    if a.shape[-2:] == (height, width):
        return a.copy()
    y0, y1, wy = taps(a.shape[-2], height)
    x0, x1, wx = taps(a.shape[-1], width)
    rows = a[..., y0, :] * (1 - wy)[:, None] + a[..., y1, :] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


def tile_origins(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of ``size`` tiles covering a (height, width) image with stride ``size // 2``; the last row
    and column of tiles end at the border."""
    stride = size // 2
    ys = sorted(set(range(0, height - size + 1, stride)) | {height - size})
    xs = sorted(set(range(0, width - size + 1, stride)) | {width - size})
    return [(y, x) for y in ys for x in xs]


def tiled_map(x: np.ndarray, size: int, maps: MapsFn, chunk: int = 16) -> np.ndarray:
    """Anomaly map of a whole image at native resolution from overlapping tiles.

    Args:
        x: the ImageNet-normalised image, float32 (3, H, W); images smaller than a tile are upsampled first and
            their map resized back.
        size: the tile side (the model's input size); stride ``size // 2``.
        maps: the model as a :data:`MapsFn`.
        chunk: tiles per call of ``maps``.

    Returns:
        The (C, H, W) float32 maps, the mean of the tiles' maps where they overlap.
    """
    _, h, w = x.shape
    if h < size or w < size:
        x = resize_bilinear(x, max(h, size), max(w, size))
    _, hh, ww = x.shape
    acc: np.ndarray | None = None
    cnt = np.zeros((hh, ww), np.float32)
    tiles = tile_origins(hh, ww, size)
    for i in range(0, len(tiles), chunk):
        part = tiles[i : i + chunk]
        out = maps(np.stack([x[:, y : y + size, x0 : x0 + size] for y, x0 in part]))
        if acc is None:
            acc = np.zeros((out.shape[1], hh, ww), np.float32)
        for (y, x0), m in zip(part, out, strict=True):
            acc[:, y : y + size, x0 : x0 + size] += m
            cnt[y : y + size, x0 : x0 + size] += 1
    full = acc / cnt
    return resize_bilinear(full, h, w) if (hh, ww) != (h, w) else full
