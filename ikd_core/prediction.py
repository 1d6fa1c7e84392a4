"""The result of scoring one image; numpy only, so the torch-free runtime shares it with :mod:`ikd_core.predict`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def normalize_scores(values: np.ndarray, threshold: float, lo: float) -> np.ndarray:
    """``clip(0.5 * (values - lo) / (threshold - lo), 0, 1)`` (numpy form of ``visualize.normalize_map``)."""
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    denom = max(float(threshold) - float(lo), 1e-12)
    return np.clip(0.5 * (arr - float(lo)) / denom, 0.0, 1.0).astype(arr.dtype, copy=False)


@dataclass
class Prediction:
    """Result for one image. ``anomaly_map`` is at the image's own resolution (H, W)."""

    anomaly_map: np.ndarray
    score: float  # max of the map at model resolution (raw units)
    threshold: float  # raw units
    lo: float

    @property
    def norm_map(self) -> np.ndarray:
        """Map normalised with the held-out statistics: 0.5 is the fitted threshold."""
        return normalize_scores(self.anomaly_map, self.threshold, self.lo)

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
