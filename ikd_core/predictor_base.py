"""What every predictor shares, in numpy alone: the :class:`Prediction` of one image and the
:class:`MapPredictor` base, which turns images into predictions given a ``maps`` function.

The torch predictor (:class:`ikd_core.predict.Predictor`) and the onnxruntime one
(:class:`ikd_core.runtime.OnnxPredictor`) only differ in ``maps``; this module imports no torch, so the torch-free
runtime builds on it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .data.transforms import image_to_array, load_image, normalize_array
from .scoring import image_score, top_k_for
from .tiling import MapsFn, resize_bilinear, tiled_map

ImageInput = str | os.PathLike[str] | bytes | Image.Image | np.ndarray
"""What a predictor accepts as an image: a path, encoded bytes, a PIL image or an (H, W[, C]) array."""


def normalize_scores(values: np.ndarray, threshold: float, lo: float) -> np.ndarray:
    """``clip(0.5 * (values - lo) / (threshold - lo), 0, 1)`` (numpy form of ``visualize.normalize_map``)."""
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    denom = max(float(threshold) - float(lo), 1e-12)
    return np.clip(0.5 * (arr - float(lo)) / denom, 0.0, 1.0).astype(arr.dtype, copy=False)


@dataclass
class Prediction:
    """Result for one image. ``anomaly_map`` is at the image's own resolution (H, W).

    ``threshold`` and ``lo`` scale the score; the map has its own (``map_threshold``, ``map_lo``) when the score is
    taken on another map (a model with ``score_map="distillation"``), else it shares them.
    """

    anomaly_map: np.ndarray
    score: float  # image score at model resolution (raw units): the max, or the mean of the top k pixels
    threshold: float  # raw units
    lo: float
    map_threshold: float | None = None
    map_lo: float | None = None

    @property
    def norm_map(self) -> np.ndarray:
        """Map normalised with the held-out statistics: 0.5 is the fitted threshold (of the map)."""
        if self.map_threshold is None or self.map_lo is None:
            return normalize_scores(self.anomaly_map, self.threshold, self.lo)
        return normalize_scores(self.anomaly_map, self.map_threshold, self.map_lo)

    @property
    def norm_score(self) -> float:
        """Image score in normalised units, clipped to [0, 1] (0.5 = fitted threshold)."""
        return float(normalize_scores(np.float64(self.score), self.threshold, self.lo))

    @property
    def relative_score(self) -> float:
        """Unclipped 0.5 * (score - lo) / (threshold - lo): keeps the ranking of strong anomalies."""
        return 0.5 * (self.score - self.lo) / max(self.threshold - self.lo, 1e-12)

    def is_anomalous(self, norm_threshold: float = 0.5) -> bool:
        """Whether the normalised score reaches ``norm_threshold`` (0.5 = fitted threshold)."""
        return self.norm_score >= norm_threshold

    def mask(self, norm_threshold: float = 0.5) -> np.ndarray:
        """Predicted defect pixels at a threshold in normalised units (0.5 = fitted)."""
        return self.norm_map >= norm_threshold


@dataclass(frozen=True)
class Scale:
    """The fitted (threshold, lo) of the image score, and of the map where the score is taken on another map."""

    threshold: float
    lo: float
    map_threshold: float | None = None
    map_lo: float | None = None

    def prediction(self, anomaly_map: np.ndarray, score: float) -> Prediction:
        return Prediction(anomaly_map, score, self.threshold, self.lo, self.map_threshold, self.map_lo)


def score_norm(metadata: dict[str, Any], tiled: bool) -> Scale:
    """The :class:`Scale` for whole images, or for tiles when ``tiled`` and the model was calibrated on tiles."""
    tn = metadata.get("tile_normalization")
    norm = tn if tiled and isinstance(tn, dict) else metadata["score_normalization"]
    own = "map_threshold" in norm and "map_lo" in norm
    return Scale(float(norm["threshold"]), float(norm["lo"]),
                 float(norm["map_threshold"]) if own else None, float(norm["map_lo"]) if own else None)


def predict_images(maps: MapsFn, images: Sequence[Image.Image], size: int, scale: Scale,
                   batch_size: int = 16, score_topk: int = 1) -> list[Prediction]:
    """Whole-image predictions.

    Args:
        maps: the model as a :data:`~ikd_core.tiling.MapsFn`.
        images: RGB images of any size; each is resized to ``size`` (antialiased) and normalised.
        size: the model's input size.
        scale: the fitted thresholds (:func:`score_norm`).
        batch_size: images per call of ``maps``.
        score_topk: image score = max (1) or mean of the k highest pixels of the map at model size.

    Returns:
        One :class:`Prediction` per image, its map resized (bilinear) to the image's resolution; the score is taken
        on the map at model size.
    """
    results: list[Prediction] = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        out = maps(np.stack([image_to_array(im, size) for im in chunk]))
        for img, m in zip(chunk, out, strict=True):
            same = m.shape[-2:] == (img.height, img.width)  # no resampling (and no view of the whole batch)
            full = m[0].copy() if same else resize_bilinear(m[0], img.height, img.width)
            results.append(scale.prediction(full, image_score(m[-1], score_topk)))
    return results


def predict_tiles(maps: MapsFn, images: Sequence[Image.Image], size: int, scale: Scale,
                  score_topk: int = 1) -> list[Prediction]:
    """Predictions at each image's own resolution from overlapping ``size`` px tiles
    (:func:`~ikd_core.tiling.tiled_map`); the score is taken on the whole map (``score_topk`` scaled to its
    area)."""
    results = []
    for img in images:
        full = tiled_map(normalize_array(img), size, maps)
        k = top_k_for(full.shape[-2], full.shape[-1], size, score_topk)
        results.append(scale.prediction(full[0], image_score(full[-1], k)))
    return results


class MapPredictor:
    """Base of the predictors: images in, :class:`Prediction` out, through :meth:`maps`.

    Args:
        metadata: the checkpoint's metadata (``image_size``, ``score_normalization``, optional
            ``tile_normalization``).
        tile: score images in tiles at native resolution instead of resizing them to the model size.
    """

    backend = "none"
    #: Images per call of :meth:`maps` for whole images (an engine that is faster one image at a time sets 1).
    micro_batch: int | None = None

    def __init__(self, metadata: dict[str, Any], tile: bool = False) -> None:
        self.metadata = metadata
        self.image_size = int(metadata["image_size"])
        self.scale = score_norm(metadata, tiled=False)
        self.threshold, self.lo = self.scale.threshold, self.scale.lo
        self.tile = tile
        self.score_topk = int((metadata.get("train_config") or {}).get("score_topk", 1))

    def maps(self, batch: np.ndarray) -> np.ndarray:
        """Raw maps (B, C, S, S) float32 at model resolution of a normalised (B, 3, S, S) float32 batch (a
        :data:`~ikd_core.tiling.MapsFn`: channel 0 the anomaly map, the last the map the score is taken on)."""
        raise NotImplementedError

    @property
    def tile_calibrated(self) -> bool:
        """Whether the checkpoint has a threshold fitted on held-out tiles (used in tile mode)."""
        return isinstance(self.metadata.get("tile_normalization"), dict)

    def predict(self, images: Sequence[ImageInput] | ImageInput, batch_size: int = 16) -> list[Prediction]:
        """Score images.

        Args:
            images: one image or a list (see :data:`ImageInput`).
            batch_size: images per call of :meth:`maps` (capped by :attr:`micro_batch`).

        Returns:
            One :class:`Prediction` per image, with its map at the image's resolution.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        pils = [load_image(im) for im in images]
        if self.tile:
            return predict_tiles(self.maps, pils, self.image_size, score_norm(self.metadata, tiled=True),
                                 score_topk=self.score_topk)
        if self.micro_batch is not None:
            batch_size = min(batch_size, self.micro_batch)
        return predict_images(self.maps, pils, self.image_size, self.scale, batch_size, self.score_topk)
