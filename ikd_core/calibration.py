"""Calibration: the threshold and colour scale fitted on held-out good images, for whole images and for tiles."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .data.transforms import load_image, normalize_array
from .device import full_precision
from .tiling import tiled_map


def fit_normalization(maps: Tensor | list[Tensor], k: float = 3.0) -> dict[str, float]:
    """Threshold and colour scale from held-out good maps.

    threshold = max(mean + k * std, max) of the image scores (max of each map), so no held-out good image is above
    it; ``lo`` = median good pixel. The normalised score 0.5 * (x - lo) / (threshold - lo) puts the threshold at 0.5.

    Args:
        maps: (N, H, W) maps, or a list of maps of different sizes (e.g. tiled at native resolution).
        k: standard deviations above the mean good score.

    Returns:
        ``threshold``, ``lo`` and the held-out score statistics (``holdout_score_mean/std/max``, ``n_holdout``).
    """
    if isinstance(maps, (list, tuple)):
        scores = torch.stack([m.max() for m in maps]).double()
        flat = torch.cat([m.flatten() for m in maps])
    else:
        scores = maps.flatten(1).amax(dim=1).double()
        flat = maps.flatten()
    mean = scores.mean().item()
    std = scores.std().item() if scores.numel() > 1 else 0.0
    if flat.numel() > 1_000_000:
        flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    lo = flat.double().median().item()
    threshold = max(mean + k * std, scores.max().item())
    if threshold <= lo:
        threshold = lo + 1e-12
    return {
        "threshold": threshold,
        "lo": lo,
        "holdout_score_mean": mean,
        "holdout_score_std": std,
        "holdout_score_max": scores.max().item(),
        "n_holdout": int(scores.numel()),
    }


@torch.no_grad()
def fit_tile_normalization(model: nn.Module, paths: list[str], image_size: int, device: torch.device,
                           k: float = 3.0) -> dict[str, float]:
    """Threshold and colour scale for tile mode.

    Args:
        model: the eval-mode model (normalised batch -> (B, 1, S, S) maps).
        paths: the held-out good images, scored in ``image_size`` tiles at native resolution as a predictor in tile
            mode scores them (:func:`~ikd_core.tiling.tiled_map`).
        image_size: the model's input size (the tile side).
        device: where the model is.
        k: as in :func:`fit_normalization`.

    Returns:
        As :func:`fit_normalization`.
    """
    model.eval()

    def maps_fn(batch: np.ndarray) -> np.ndarray:
        with full_precision(device):
            return model(torch.from_numpy(batch).to(device))[:, 0].float().cpu().numpy()

    maps = [torch.from_numpy(tiled_map(normalize_array(load_image(p)), image_size, maps_fn)) for p in paths]
    return fit_normalization(maps, k)
