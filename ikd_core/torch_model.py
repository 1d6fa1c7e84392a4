"""The IKD model: a frozen ImageNet teacher and a trainable student of the same architecture."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anomaly_map import AnomalyMapGenerator
from .backbones import BACKBONES, FeatureExtractor, build_student, build_teacher
from .reverse import ReverseStudent

STUDENT_KINDS = ("forward", "reverse")


def make_student(backbone: str, kind: str = "forward", teacher: FeatureExtractor | None = None) -> nn.Module:
    """A randomly initialised student.

    Args:
        backbone: the teacher's backbone.
        kind: ``forward`` (the teacher's architecture) or ``reverse`` (:class:`~ikd_core.reverse.ReverseStudent`
            for the teacher's channels and strides).
        teacher: the teacher, when built (its channels and strides); else read from an untrained copy.
    """
    if kind == "forward":
        return build_student(backbone)
    arch = teacher if teacher is not None else build_student(backbone)
    return ReverseStudent(arch.channels, strides=arch.strides)


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
        student: a ready student (default: :func:`make_student`).
        score_topk: image score = max of the map (1) or mean of its ``score_topk`` highest pixels.
        student_kind: ``forward`` (paper: a randomly initialised copy of the teacher's architecture, fed the image)
            or ``reverse`` (RD4AD: a decoder that rebuilds the teacher's levels from a one-class bottleneck of them).
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        teacher_weights: str | os.PathLike[str] | None = None,
        combine: str = "product",
        sigma: float = 4.0,
        feature_pool: bool = False,
        student: nn.Module | None = None,
        score_topk: int = 1,
        student_kind: str = "forward",
    ) -> None:
        super().__init__()
        if student_kind not in STUDENT_KINDS:
            raise ValueError(f"student_kind must be one of {', '.join(STUDENT_KINDS)}, not {student_kind!r}")
        self.backbone = backbone
        self.student_kind = student_kind
        self.teacher, self.teacher_source, self.teacher_fingerprint = build_teacher(backbone, teacher_weights)
        self.student = student if student is not None else make_student(backbone, student_kind, self.teacher)
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

    def _student_raw(self, x: Tensor, t_raw: Tensor | list[Tensor] | None = None) -> list[Tensor]:
        """The student's features before pooling and normalisation; a reverse student reads the teacher's features
        of ``x`` (``t_raw`` when already computed)."""
        if self.student_kind == "reverse":
            if t_raw is None:
                with torch.no_grad():
                    t_raw = self.teacher(x)
            return self.student(t_raw)
        return self.student(x)

    def features(self, x: Tensor, x_student: Tensor | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """Normalised teacher and student features of a normalised image batch.

        Args:
            x: the image batch the teacher sees (the target).
            x_student: what the student sees instead of ``x`` (denoising: ``x`` with synthetic anomalies); a reverse
                student sees the teacher's features of it.
        """
        t, _, s = self._features(x, x_student)
        return t, s

    def _features(self, x: Tensor, x_student: Tensor | None) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Normalised teacher features, raw student features, normalised student features."""
        with torch.no_grad():
            t_raw = self.teacher(x)
        s_raw = self._student_raw(x if x_student is None else x_student, t_raw if x_student is None else None)
        return normalize_features(self._pool(t_raw)), s_raw, normalize_features(self._pool(s_raw))

    def ood_ratio(self, x_ood: Tensor, s_raw: list[Tensor]) -> Tensor:
        """EfficientAD's penalty on out-of-distribution images, made scale-free: per level, the mean squared raw
        student output on ``x_ood`` over that on the training batch (``s_raw``), averaged over the levels.

        Without the division a student could meet the penalty by shrinking every output, which the L2
        normalisation then undoes. Batch norm runs on its running statistics for ``x_ood`` (as at inference), so
        the foreign images neither enter the batch statistics nor move the running ones.
        """
        norms = [m for m in self.student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        for m in norms:
            m.eval()
        try:
            ood = self._student_raw(x_ood)
        finally:
            for m in norms:
                m.train()
        ratios = [o.float().pow(2).mean() / f.float().pow(2).mean().clamp_min(1e-12)
                  for o, f in zip(ood, s_raw, strict=True)]
        return torch.stack(ratios).mean()

    @property
    def levels(self) -> list[int]:
        """The teacher's feature levels (timm indices)."""
        return list(self.teacher.spec.out_indices)

    def forward(
        self, x: Tensor, x_student: Tensor | None = None, x_ood: Tensor | None = None
    ) -> tuple[list[Tensor], list[Tensor]] | tuple[list[Tensor], list[Tensor], Tensor] | Tensor:
        """Training: ``(teacher, student)`` normalised features, plus :meth:`ood_ratio` when ``x_ood`` is given.
        Eval: anomaly maps (B, 1, H, W)."""
        t, s_raw, s = self._features(x, x_student)
        if self.training:
            return (t, s) if x_ood is None else (t, s, self.ood_ratio(x_ood, s_raw))
        return self.anomaly_map(t, s, size=(x.shape[-2], x.shape[-1]))
