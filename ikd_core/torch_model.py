"""The IKD model: a frozen ImageNet teacher and a trainable student of the same architecture."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anomaly_map import AnomalyMapGenerator
from .backbones import BACKBONES, FeatureExtractor, build_student, build_teacher


def normalize_features(feats: list[Tensor]) -> list[Tensor]:
    """L2-normalise each position's feature vector along channels."""
    return [F.normalize(f, p=2, dim=1) for f in feats]


class IKDModel(nn.Module):
    """Teacher / student pair.

    ``forward`` returns normalised (teacher, student) feature lists in training mode and anomaly
    maps (B, 1, H, W) in eval mode. The teacher always stays in eval mode.

    Args:
        backbone: a key of :data:`~ikd_core.backbones.BACKBONES`.
        teacher_weights: a local weights file (default: the hub when online, else packaged weights).
        combine: how the levels' maps are fused (``product``, the paper's, or ``sum``).
        sigma: Gaussian blur of the map.
        feature_pool: 3x3 average pooling of both feature sets.
        student: a ready student (default: a randomly initialised copy of the teacher's architecture).
        score_topk: image score = max of the map (1) or mean of its ``score_topk`` highest pixels.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        teacher_weights: str | os.PathLike[str] | None = None,
        combine: str = "product",
        sigma: float = 4.0,
        feature_pool: bool = False,
        student: FeatureExtractor | None = None,
        score_topk: int = 1,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.teacher, self.teacher_source, self.teacher_fingerprint = build_teacher(backbone, teacher_weights)
        self.student = student if student is not None else build_student(backbone)
        self.feature_pool = feature_pool
        self.anomaly_map = AnomalyMapGenerator(combine=combine, sigma=sigma, num_levels=len(self.teacher.channels))
        self.score_topk = int(score_topk)  # image score: max (1) or mean of the top k pixels at model resolution

    @property
    def default_level_weights(self) -> tuple[float, ...]:
        return BACKBONES[self.backbone].level_weights

    def train(self, mode: bool = True) -> IKDModel:
        super().train(mode)
        self.teacher.eval()
        return self

    def _pool(self, feats: list[Tensor]) -> list[Tensor]:
        if not self.feature_pool:
            return feats
        return [F.avg_pool2d(f, kernel_size=3, stride=1, padding=1) for f in feats]

    def features(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Normalised teacher and student features of a normalised image batch."""
        with torch.no_grad():
            t = self._pool(self.teacher(x))
        s = self._pool(self.student(x))
        return normalize_features(t), normalize_features(s)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]] | Tensor:
        t, s = self.features(x)
        if self.training:
            return t, s
        return self.anomaly_map(t, s, size=(x.shape[-2], x.shape[-1]))
