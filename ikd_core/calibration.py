"""Calibration on held-out good images: the threshold and colour scale (whole images and tiles), and the per-level
map normalisation (and that of the distillation and segmentation maps before they are fused)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .anomaly_map import LEVEL_QUANTILES
from .data.transforms import load_image, normalize_array
from .device import full_precision
from .scoring import image_scores, top_k_for
from .tiling import tiled_map


def fit_normalization(maps: Tensor | list[Tensor], k: float = 3.0, score_topk: int = 1,
                      image_size: int | None = None,
                      score_maps: Tensor | list[Tensor] | None = None) -> dict[str, float]:
    """Threshold and colour scale from held-out good maps.

    threshold = max(mean + k * std, max) of the image scores (max of each map), so no held-out good image is above
    it; ``lo`` = median good pixel. The normalised score 0.5 * (x - lo) / (threshold - lo) puts the threshold at 0.5.

    Args:
        maps: (N, H, W) maps, or a list of maps of different sizes (e.g. tiled at native resolution).
        k: standard deviations above the mean good score.
        score_topk: how image scores are taken (:func:`~ikd_core.scoring.image_scores`), at model resolution.
        image_size: the model's input size, to scale ``score_topk`` on maps of another size (tiles); default: the
            maps' own size.
        score_maps: the maps the image score is taken on, where that is not ``maps`` (a model with
            ``score_map="distillation"``): ``threshold`` and ``lo`` are then theirs, and ``map_threshold`` and
            ``map_lo`` (the same rule on ``maps``) scale the map.

    Returns:
        ``threshold``, ``lo`` and the held-out score statistics (``holdout_score_mean/std/max``, ``n_holdout``);
        ``map_threshold`` and ``map_lo`` with ``score_maps``.
    """
    norm = _fit_scale(score_maps if score_maps is not None else maps, k, score_topk, image_size)
    if score_maps is not None:
        own = _fit_scale(maps, k, score_topk, image_size)
        norm.update(map_threshold=own["threshold"], map_lo=own["lo"])
    return norm


def _fit_scale(maps: Tensor | list[Tensor], k: float, score_topk: int, image_size: int | None) -> dict[str, float]:
    """:func:`fit_normalization` of one set of maps."""
    def score(m: Tensor) -> Tensor:
        size = image_size or max(m.shape[-2:])
        return image_scores(m.reshape(-1, *m.shape[-2:]), top_k_for(m.shape[-2], m.shape[-1], size, score_topk))

    if isinstance(maps, (list, tuple)):
        scores = torch.cat([score(m) for m in maps]).double()
        flat = torch.cat([m.flatten() for m in maps])
    else:
        scores = score(maps).double()
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
                           k: float = 3.0, score_topk: int = 1) -> dict[str, float]:
    """Threshold and colour scale for tile mode.

    Args:
        model: the eval-mode model (normalised batch -> (B, C, S, S) maps, as :func:`fit_normalization` reads them).
        paths: the held-out good images, scored in ``image_size`` tiles at native resolution as a predictor in tile
            mode scores them (:func:`~ikd_core.tiling.tiled_map`).
        image_size: the model's input size (the tile side).
        device: where the model is.
        k: as in :func:`fit_normalization`.
        score_topk: as in :func:`fit_normalization`.

    Returns:
        As :func:`fit_normalization`.
    """
    model.eval()

    def maps_fn(batch: np.ndarray) -> np.ndarray:
        with full_precision(device):
            return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    maps = [torch.from_numpy(tiled_map(normalize_array(load_image(p)), image_size, maps_fn)) for p in paths]
    score_maps = [m[-1] for m in maps] if maps and maps[0].shape[0] > 1 else None
    return fit_normalization([m[0] for m in maps], k, score_topk, image_size, score_maps)


@torch.no_grad()
def fit_level_normalization(model: nn.Module, loader: DataLoader, device: torch.device,
                            quantiles: tuple[float, float] = LEVEL_QUANTILES,
                            max_pixels: int = 1_000_000) -> dict[str, list[float]]:
    """Each level's quantiles of its raw map over held-out good images (EfficientAD's map normalisation).

    Args:
        model: an :class:`~ikd_core.torch_model.IKDModel`.
        loader: the held-out good images (items with ``image``).
        device: where the model is.
        quantiles: the quantiles that go to 0 and 0.1.
        max_pixels: pixels per level used for the quantiles (a seeded random subset beyond that).

    Returns:
        ``lo`` and ``hi`` (one value per level) and the ``quantiles`` they are.
    """
    def levels(x: torch.Tensor) -> torch.Tensor:
        t, s = model.features(x)
        return model.anomaly_map.level_maps(t, s, (x.shape[-2], x.shape[-1]))

    return _fit_quantiles(levels, model, loader, device, quantiles, max_pixels)


@torch.no_grad()
def fit_fusion_normalization(model: nn.Module, loader: DataLoader, device: torch.device,
                             quantiles: tuple[float, float] = LEVEL_QUANTILES,
                             max_pixels: int = 1_000_000) -> dict[str, list[float]]:
    """The quantiles of the distillation map and of the segmentation head's map over held-out good images: what
    :meth:`~ikd_core.torch_model.IKDModel.set_fusion_normalization` maps to 0 and 0.1 before the two are summed
    (EfficientAD's fusion of its two maps). Arguments and result as :func:`fit_level_normalization`, two values."""
    return _fit_quantiles(model.fusion_components, model, loader, device, quantiles, max_pixels)


def _fit_quantiles(components: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, loader: DataLoader,
                   device: torch.device, quantiles: tuple[float, float], max_pixels: int) -> dict[str, list[float]]:
    """Per channel of ``components(x)`` (B, C, H, W), its ``quantiles`` over the loader's pixels."""
    model.eval()
    maps = []
    for batch in loader:
        x = batch["image"].to(device)
        with full_precision(device):
            maps.append(components(x).cpu())
    per_level = torch.cat(maps).transpose(0, 1).flatten(1)  # (C, pixels)
    if per_level.shape[1] > max_pixels:
        keep = torch.randperm(per_level.shape[1], generator=torch.Generator().manual_seed(0))[:max_pixels]
        per_level = per_level[:, keep]
    q = torch.quantile(per_level.double(), torch.tensor(quantiles, dtype=torch.float64), dim=1)  # (2, C)
    return {"lo": q[0].tolist(), "hi": q[1].tolist(), "quantiles": list(quantiles)}
