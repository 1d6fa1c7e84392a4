"""Anomaly maps from teacher / student features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from torch import Tensor, nn


class AnomalyMapGenerator(nn.Module):
    """Per level sum_c (t - s)^2 of normalised features, upsampled, combined, Gaussian-blurred.

    Args:
        combine: ``"product"`` over levels (paper) or ``"sum"``.
        sigma: Gaussian blur sigma in pixels of the output; 0 disables the blur. The official IKD code has
            no blur; 4 is this project's default, the smoothing common to STFPM-style maps (RD4AD, anomalib).

    The map is always computed in float32 with autocast off, so a model run under mixed precision (CUDA AMP,
    CPU bfloat16) gives the same full-resolution float32 map as in float32 (a bf16 blur would quantise it to a
    few hundred distinct values).
    """

    def __init__(self, combine: str = "product", sigma: float = 4.0) -> None:
        super().__init__()
        if combine not in ("product", "sum"):
            raise ValueError(f"combine must be 'product' or 'sum', not {combine!r}")
        self.combine = combine
        self.sigma = sigma

    def forward(
        self, teacher_feats: Sequence[Tensor], student_feats: Sequence[Tensor], size: tuple[int, int]
    ) -> Tensor:
        """Return (B, 1, H, W) float32 maps at ``size``."""
        device_type = teacher_feats[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._maps(teacher_feats, student_feats, size)

    def _maps(self, teacher_feats: Sequence[Tensor], student_feats: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        result: Tensor | None = None
        for t, s in zip(teacher_feats, student_feats, strict=True):
            level = (t.float() - s.float()).square().sum(dim=1, keepdim=True)
            level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            if result is None:
                result = level
            elif self.combine == "product":
                result = result * level
            else:
                result = result + level
        assert result is not None, "no feature levels"
        if self.sigma > 0:
            # Kernel of +-4 sigma, no larger than reflect padding allows on small maps.
            k = min(2 * int(4.0 * self.sigma + 0.5) + 1, 2 * min(size) - 1)
            result = gaussian_blur2d(result, (k, k), (self.sigma, self.sigma))
        return result
