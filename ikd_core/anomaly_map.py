"""Anomaly maps from teacher / student features.

Per level, d_l(p) = sum_c (t_l(p) - s_l(p))^2 of the normalised features, upsampled to the image size. Optionally
each level is first mapped onto a common scale fitted on held-out good images, as EfficientAD does:
d_l <- 0.1 * (d_l - q_l(0.9)) / (q_l(0.995) - q_l(0.9)), so that every level's 0.9 quantile goes to 0 and its 0.995
quantile to 0.1. The levels are then combined (product, the paper's, or sum) and Gaussian-blurred.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from torch import Tensor, nn

COMBINES = ("product", "sum")
#: Quantiles of the held-out good pixels that the level normalisation maps to 0 and 0.1 (EfficientAD).
LEVEL_QUANTILES = (0.9, 0.995)


class AnomalyMapGenerator(nn.Module):
    """Per level sum_c (t - s)^2 of normalised features, upsampled, (normalised,) combined, Gaussian-blurred.

    Args:
        combine: ``"product"`` over levels (paper) or ``"sum"``.
        sigma: Gaussian blur sigma in pixels of the output; 0 disables the blur. The official IKD code has
            no blur; 4 is this project's default, the smoothing common to STFPM-style maps (RD4AD, anomalib).
        num_levels: the number of feature levels (sizes the level normalisation buffers).

    The level normalisation is off until :meth:`set_level_normalization` sets its quantiles (buffers, so they
    travel with exports). The map is always computed in float32 with autocast off, so a model run under mixed
    precision (CUDA AMP, CPU bfloat16) gives the same full-resolution float32 map as in float32 (a bf16 blur would
    quantise it to a few hundred distinct values).
    """

    level_lo: Tensor
    level_hi: Tensor

    def __init__(self, combine: str = "product", sigma: float = 4.0, num_levels: int = 0) -> None:
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"combine must be 'product' or 'sum', not {combine!r}")
        self.combine = combine
        self.sigma = sigma
        self.level_norm = False
        self.register_buffer("level_lo", torch.zeros(num_levels))
        self.register_buffer("level_hi", torch.ones(num_levels))

    def set_level_normalization(self, lo: Sequence[float], hi: Sequence[float]) -> None:
        """Turn the level normalisation on with each level's held-out quantiles (``lo`` -> 0, ``hi`` -> 0.1)."""
        lo_t = torch.as_tensor(list(lo), dtype=torch.float32, device=self.level_lo.device)
        hi_t = torch.as_tensor(list(hi), dtype=torch.float32, device=self.level_lo.device)
        self.level_lo = lo_t
        self.level_hi = torch.maximum(hi_t, lo_t + 1e-12)
        self.level_norm = True

    def forward(
        self, teacher_feats: Sequence[Tensor], student_feats: Sequence[Tensor], size: tuple[int, int]
    ) -> Tensor:
        """Return (B, 1, H, W) float32 maps at ``size``."""
        device_type = teacher_feats[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            levels = self.level_maps(teacher_feats, student_feats, size)
            if self.level_norm:
                lo = self.level_lo.view(1, -1, 1, 1)
                levels = 0.1 * (levels - lo) / (self.level_hi.view(1, -1, 1, 1) - lo)
            return self._combine_and_blur(levels, size)

    def level_maps(
        self, teacher_feats: Sequence[Tensor], student_feats: Sequence[Tensor], size: tuple[int, int]
    ) -> Tensor:
        """Raw per-level maps (B, L, H, W) at ``size``, before normalisation, combination and blur (float32)."""
        levels = []
        for t, s in zip(teacher_feats, student_feats, strict=True):
            level = (t.float() - s.float()).square().sum(dim=1, keepdim=True)
            levels.append(F.interpolate(level, size=size, mode="bilinear", align_corners=False))
        if not levels:
            raise ValueError("no feature levels")
        return torch.cat(levels, dim=1)

    def _combine_and_blur(self, levels: Tensor, size: tuple[int, int]) -> Tensor:
        return self.blur(self.combine_levels(levels), size)

    def combine_levels(self, levels: Tensor) -> Tensor:
        """(B, L, H, W) level maps -> (B, 1, H, W): their product or sum."""
        return levels.prod(dim=1, keepdim=True) if self.combine == "product" else levels.sum(dim=1, keepdim=True)

    def blur(self, result: Tensor, size: tuple[int, int]) -> Tensor:
        """The Gaussian blur of (B, C, H, W) maps at ``size`` (none when ``sigma`` is 0), in float32 with autocast
        off whatever the caller's context (the segmentation head's maps are blurred outside :meth:`forward`)."""
        result = result.float()
        if self.sigma > 0:
            # Kernel of +-4 sigma, no larger than reflect padding allows on small maps.
            k = min(2 * int(4.0 * self.sigma + 0.5) + 1, 2 * min(size) - 1)
            with torch.autocast(device_type=result.device.type, enabled=False):
                result = gaussian_blur2d(result, (k, k), (self.sigma, self.sigma))
        return result
