"""Image scores from anomaly maps: the max (paper) or the mean of the k highest pixels. Works on torch tensors and
numpy arrays without importing torch, so the torch code and the torch-free runtime share one definition."""

from __future__ import annotations

from typing import Any

import numpy as np


def top_k_for(height: int, width: int, image_size: int, k: int) -> int:
    """The number of pixels the image score averages on an (height, width) map, for ``k`` at model resolution
    (``image_size`` squared): scaled with the map's area, so a map at native resolution (tiles) covers the same
    fraction of the image. At least 1."""
    if k <= 1:
        return 1
    return max(1, round(k * height * width / float(image_size * image_size)))


def image_scores(maps: Any, k: int = 1) -> Any:
    """Image scores of a (N, H, W) batch of maps, a torch tensor or a numpy array (same type back, shape (N,)).

    Args:
        maps: the raw anomaly maps.
        k: 1 = the max of each map (paper); k > 1 = the mean of its k highest pixels (robust to one hot pixel).
    """
    flat = maps.reshape(maps.shape[0], -1)
    k = min(max(1, int(k)), flat.shape[1])
    if k == 1:
        return flat.max(1).values if hasattr(flat, "topk") else flat.max(1)
    if hasattr(flat, "topk"):  # torch
        return flat.topk(k, dim=1).values.mean(1)
    return np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(1)


def image_score(amap: Any, k: int = 1) -> float:
    """The score of one (H, W) map (see :func:`image_scores`)."""
    return float(image_scores(amap[None], k)[0])
