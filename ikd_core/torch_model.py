"""The IKD model: a frozen ImageNet teacher and a trainable student of the same architecture."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anomaly_map import AnomalyMapGenerator
from .backbones import BACKBONES, FeatureExtractor, build_student, build_teacher
from .reverse import ReverseStudent
from .segmentation import SCORE_MAPS, SEGMENT_MAPS, SegmentationHead, segmentation_loss

STUDENT_KINDS = ("forward", "reverse")
#: Where the segmentation head's tensors sit in a checkpoint (beside the student's).
SEGMENTER_PREFIX = "segmenter."


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
    maps (B, 1, H, W) in eval mode; (B, 2, H, W) with ``score_map="distillation"``: the anomaly map, then the map
    the image score is taken on (:attr:`map_channels`). The teacher always stays in eval mode.

    The trainable part is the student and, with ``segment``, the segmentation head:
    :meth:`trainable_state_dict` / :meth:`load_trainable_state` (the head's tensors under ``segmenter.``).

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
        segment: add DeSTSeg's segmentation head (:class:`~ikd_core.segmentation.SegmentationHead`); its sigmoid
            output, upsampled and blurred, is then the anomaly map instead of the distillation map.
        segment_map: with ``segment``: ``head`` (the head's map, DeSTSeg's) or ``fused``: the distillation map and
            the head's, each mapped by held-out quantiles (:meth:`set_fusion_normalization`: 0.9 -> 0, 0.995 -> 0.1)
            and summed, as EfficientAD fuses its two maps.
        score_map: ``map`` (the image score is taken on the anomaly map) or ``distillation`` (with the fused map
            only: on its distillation part, normalised and blurred as in the fusion; the map stays the fused one).
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
        segment: bool = False,
        segment_map: str = "head",
        score_map: str = "map",
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
        if segment_map not in SEGMENT_MAPS:
            raise ValueError(f"segment_map must be one of {', '.join(SEGMENT_MAPS)}, not {segment_map!r}")
        self.segmenter = SegmentationHead(self.teacher.channels) if segment else None
        self.segment_map = segment_map
        if score_map not in SCORE_MAPS:
            raise ValueError(f"score_map must be one of {', '.join(SCORE_MAPS)}, not {score_map!r}")
        if score_map == "distillation" and not (segment and segment_map == "fused"):
            raise ValueError("an image score from the distillation map needs the fused map (segment, segment_map "
                             "'fused'); without the head the map is the distillation map already")
        self.score_map = score_map
        # the fused map's normalisation of (distillation, head) maps; identity until fitted
        self.register_buffer("fusion_lo", torch.zeros(2))
        self.register_buffer("fusion_hi", torch.ones(2))

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The student's tensors, plus the segmentation head's under ``segmenter.`` (what a checkpoint holds)."""
        state = dict(self.student.state_dict())
        if self.segmenter is not None:
            state.update({f"{SEGMENTER_PREFIX}{k}": v for k, v in self.segmenter.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` returned (strict)."""
        head = {k[len(SEGMENTER_PREFIX):]: v for k, v in state.items() if k.startswith(SEGMENTER_PREFIX)}
        self.student.load_state_dict({k: v for k, v in state.items() if not k.startswith(SEGMENTER_PREFIX)})
        if self.segmenter is not None:
            self.segmenter.load_state_dict(head)
        elif head:
            raise ValueError(f"{len(head)} segmentation head tensors for a model without a head")

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

    def set_fusion_normalization(self, lo: list[float], hi: list[float]) -> None:
        """The held-out quantiles of the (distillation, head) maps that the fused map sends to 0 and 0.1."""
        lo_t = torch.as_tensor(list(lo), dtype=torch.float32, device=self.fusion_lo.device)
        hi_t = torch.as_tensor(list(hi), dtype=torch.float32, device=self.fusion_lo.device)
        if lo_t.shape != (2,) or hi_t.shape != (2,):
            raise ValueError("the fusion normalisation has two values (distillation map, head map) per quantile")
        self.fusion_lo = lo_t
        self.fusion_hi = torch.maximum(hi_t, lo_t + 1e-12)

    def fusion_components(self, x: Tensor) -> Tensor:
        """(B, 2, H, W) float32: the distillation map (levels combined, not blurred) and the head's probability
        upsampled, of a normalised image batch (eval mode)."""
        t, _, s = self._features(x, None)
        return self._components(t, s, (x.shape[-2], x.shape[-1]))

    def fusion_parts(self, x: Tensor) -> Tensor:
        """(B, 2, H, W) float32: :meth:`fusion_components`, each mapped by its held-out quantiles (0.9 -> 0,
        0.995 -> 0.1); the fused map is the blur of their sum (eval mode)."""
        return self._normalize_fusion(self.fusion_components(x))

    def _normalize_fusion(self, maps: Tensor) -> Tensor:
        lo = self.fusion_lo.view(1, 2, 1, 1)
        return 0.1 * (maps - lo) / (self.fusion_hi.view(1, 2, 1, 1) - lo)

    def _components(self, t: list[Tensor], s: list[Tensor], size: tuple[int, int]) -> Tensor:
        if self.segmenter is None:
            raise ValueError("this model has no segmentation head")
        with torch.autocast(device_type=t[0].device.type, enabled=False):
            t, s = [f.float() for f in t], [f.float() for f in s]
            prob = F.interpolate(torch.sigmoid(self.segmenter(t, s)), size=size, mode="bilinear", align_corners=False)
            if self.segment_map == "head":
                return prob
            return torch.cat([self.anomaly_map.combine_levels(self.anomaly_map.level_maps(t, s, size)), prob], dim=1)

    @property
    def map_channels(self) -> int:
        """Channels of the eval output: 1 (the map, scored as is) or 2 (the map, then the map the score is taken
        on)."""
        return 2 if self.score_map == "distillation" else 1

    @property
    def levels(self) -> list[int]:
        """The teacher's feature levels (timm indices)."""
        return list(self.teacher.spec.out_indices)

    def segment_loss(self, x_aug: Tensor, s_aug: list[Tensor], mask: Tensor) -> Tensor:
        """The segmentation head's loss on augmented images ``x_aug`` with anomaly ``mask``; ``s_aug`` are the
        student's normalised features of ``x_aug``, detached here so that the loss trains only the head."""
        if self.segmenter is None:
            raise ValueError("this model has no segmentation head")
        with torch.no_grad():
            t_aug = normalize_features(self._pool(self.teacher(x_aug)))
        return segmentation_loss(self.segmenter(t_aug, [f.detach() for f in s_aug]), mask)

    def forward(
        self, x: Tensor, x_student: Tensor | None = None, x_ood: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor | list[Tensor], ...] | Tensor:
        """Training: ``(teacher, student)`` normalised features, then :meth:`ood_ratio` when ``x_ood`` is given, then
        :meth:`segment_loss` when ``mask`` (the anomaly mask of ``x_student``) is given.
        Eval: anomaly maps (B, :attr:`map_channels`, H, W)."""
        t, s_raw, s = self._features(x, x_student)
        size = (x.shape[-2], x.shape[-1])
        if self.training:
            out: tuple[Tensor | list[Tensor], ...] = (t, s)
            if x_ood is not None:
                out += (self.ood_ratio(x_ood, s_raw),)
            if mask is not None:
                out += (self.segment_loss(x if x_student is None else x_student, s, mask),)
            return out
        if self.segmenter is None:
            return self.anomaly_map(t, s, size=size)
        maps = self._components(t, s, size)
        if self.segment_map == "fused":
            parts = self._normalize_fusion(maps)
            maps = parts.sum(dim=1, keepdim=True)
            if self.score_map == "distillation":
                maps = torch.cat([maps, parts[:, :1]], dim=1)
        return self.anomaly_map.blur(maps, size)
