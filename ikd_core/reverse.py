"""Reverse-distillation student of RD4AD (Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class
Embedding", CVPR 2022).

The frozen teacher E gives L feature levels f_1 .. f_L (shallow to deep, channels c_k, strides r_k). The student is
not a copy of E fed with the image: it sees only the teacher's features, squeezed through a one-class bottleneck,
and has to rebuild them (reverse direction: deep to shallow).

* OCBE, multi-scale fusion: level k is brought to the deepest level's resolution by log2(r_L / r_k) stride-2
  3x3 conv + BN + ReLU (none when it already is, e.g. HRNet levels that share one resolution), the levels are
  concatenated and fused by a 1x1 conv + BN + ReLU into ``width`` channels;
* OCBE, one-class embedding: one bottleneck residual block (1x1 -> 3x3 with stride s -> 1x1, 1x1 strided
  shortcut) gives phi = OCE(MFF(f_1 .. f_L)). s = 2 by default, as in RD4AD: for efficientnet_lite0 / resnet18
  levels at strides 4/8/16 of a 256 px image, phi is 8x8 as RD4AD's (WideResNet50 layer 1-3 at 256 px).
  Use ``embed_stride=1`` where the deepest level is already tiny (<= 8x8, i.e. small input images), so the
  embedding does not shrink to 2x2;
* decoder D: from phi, deepest level first, stage k upsamples (bilinear, to the teacher level's size read at run
  time) then applies two 3x3 conv + BN + ReLU and a linear 1x1 head to c_k channels: s_k = D_k(phi).

Training minimises, per level, the mean over positions p of M_k(p) = 1 - cos(f_k(p), s_k(p)) (cosine along
channels, :class:`~ikd_core.loss.CosineDistillationLoss`); M_k, upsampled and combined over levels, is the
anomaly map. On L2-normalised features t, s: 1 - cos(t, s) = |t - s|^2 / 2, so IKD's map of squared distances of
normalised features is 2 M_k.

Only Conv2d, BatchNorm2d, ReLU, bilinear ``F.interpolate`` (align_corners=False), add and cat are used: the student
exports to ONNX (opset 17) with a dynamic batch axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU, "same" padding.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size.
        stride: convolution stride.

    Returns:
        The block.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def resize_to(x: Tensor, ref: Tensor) -> Tensor:
    """Bilinearly resize ``x`` to the spatial size of ``ref`` (no-op when they agree).

    Args:
        x: (B, C, H, W) tensor.
        ref: tensor whose last two dimensions give the target size.

    Returns:
        ``x`` at ``ref``'s spatial size.
    """
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def _default_width(channels: Sequence[int]) -> int:
    """2 x the deepest level's channels (RD4AD: 2048 for a 1024-channel layer 3), rounded up to 32."""
    return 32 * math.ceil(2 * max(channels) / 32)


def _stage_width(c: int, c_max: int, width: int) -> int:
    """Decoder width of a level: ``width`` scaled by c / c_max, a multiple of 8, at least 32."""
    return max(32, 8 * math.ceil(width * c / c_max / 8))


class Bottleneck(nn.Module):
    """Residual bottleneck block: 1x1 -> 3x3 (stride) -> 1x1, BN after each, strided 1x1 shortcut, ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the 3x3 conv and of the shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        mid = max(out_channels // 2, 8)
        self.reduce = conv_bn_relu(in_channels, mid, kernel_size=1)
        self.conv = conv_bn_relu(mid, mid, kernel_size=3, stride=stride)
        self.expand = nn.Sequential(nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: (B, in_channels, H, W).

        Returns:
            (B, out_channels, ceil(H / stride), ceil(W / stride)).
        """
        return self.relu(self.expand(self.conv(self.reduce(x))) + self.shortcut(x))


class OneClassBottleneck(nn.Module):
    """RD4AD's OCBE: multi-scale feature fusion, then a one-class embedding block.

    Args:
        channels: teacher channels per level, shallow to deep.
        strides: teacher strides per level (non-decreasing, each a power-of-two fraction of the deepest);
            default: each level halves the resolution of the previous one.
        width: channels of the fused features and of the embedding.
        embed_stride: stride of the embedding block (2 as in RD4AD; 1 keeps the deepest level's resolution).
    """

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[int] | None = None,
        width: int | None = None,
        embed_stride: int = 2,
    ) -> None:
        super().__init__()
        channels = list(channels)
        if not channels:
            raise ValueError("at least one feature level is needed")
        strides = list(strides) if strides is not None else [2**i for i in range(len(channels))]
        if len(strides) != len(channels):
            raise ValueError(f"expected {len(channels)} strides, got {len(strides)}")
        if embed_stride not in (1, 2):
            raise ValueError(f"embed_stride must be 1 or 2, not {embed_stride}")
        width = width if width is not None else _default_width(channels)
        deep = channels[-1]
        self.channels = channels
        self.width = width
        self.levels = nn.ModuleList()
        for c, r in zip(channels, strides, strict=True):
            ratio = strides[-1] / r
            steps = round(math.log2(ratio)) if ratio >= 1 else -1
            if steps < 0 or 2**steps != ratio:
                raise ValueError(f"strides {strides}: each must be a power-of-two fraction of the deepest one")
            blocks: list[nn.Module] = [conv_bn_relu(c if i == 0 else deep, deep, stride=2) for i in range(steps)]
            self.levels.append(nn.Sequential(*blocks))
        fused_in = sum(deep if len(level) else c for c, level in zip(channels, self.levels, strict=True))
        self.fuse = conv_bn_relu(fused_in, width, kernel_size=1)
        self.embed = Bottleneck(width, width, stride=embed_stride)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """Args:
            feats: raw teacher features, shallow to deep, (B, c_k, H_k, W_k).

        Returns:
            The one-class embedding (B, width, H_L / embed_stride, W_L / embed_stride).
        """
        ref = feats[-1]
        fused = [resize_to(level(f), ref) for level, f in zip(self.levels, feats, strict=True)]
        return self.embed(self.fuse(torch.cat(fused, dim=1)))


class ReverseDecoder(nn.Module):
    """Rebuilds every teacher level from the embedding, deepest first.

    Stage k: bilinear upsampling to the teacher level's size (read at run time), two 3x3 conv + BN + ReLU, and a
    linear 1x1 head to c_k channels (teacher features may be negative). The next stage starts from the hidden
    features, not from the head's output.

    Args:
        channels: teacher channels per level, shallow to deep.
        width: channels of the embedding; the stage of level k is ``width * c_k / max(c)`` wide (>= 32).
    """

    def __init__(self, channels: Sequence[int], width: int) -> None:
        super().__init__()
        channels = list(channels)
        c_max = max(channels)
        self.channels = channels
        stages: list[nn.Module] = []
        heads: list[nn.Module] = []
        in_ch = width
        for c in reversed(channels):
            hidden = _stage_width(c, c_max, width)
            stages.append(nn.Sequential(conv_bn_relu(in_ch, hidden), conv_bn_relu(hidden, hidden)))
            heads.append(nn.Conv2d(hidden, c, kernel_size=1))
            in_ch = hidden
        # Index k holds the stage of teacher level k (shallow to deep).
        self.stages = nn.ModuleList(reversed(stages))
        self.heads = nn.ModuleList(reversed(heads))

    def forward(self, embedding: Tensor, teacher_feats: Sequence[Tensor]) -> list[Tensor]:
        """Args:
            embedding: (B, width, h, w) one-class embedding.
            teacher_feats: the teacher features (only their spatial sizes are used).

        Returns:
            Student features, shallow to deep, each of the matching teacher level's shape.
        """
        out: list[Tensor] = [embedding] * len(self.channels)
        x = embedding
        for k in reversed(range(len(self.channels))):
            x = self.stages[k](resize_to(x, teacher_feats[k]))
            out[k] = self.heads[k](x)
        return out


class ReverseStudent(nn.Module):
    """RD4AD student: teacher features -> OCBE -> decoder -> rebuilt teacher features.

    Args:
        channels: teacher channels per level, shallow to deep (``FeatureExtractor.channels``).
        width: embedding width; default 2 x max(channels), rounded up to 32 (224 for efficientnet_lite0).
        strides: teacher strides per level (``FeatureExtractor.strides``); default: halving per level. Equal
            strides (HRNet levels upsampled to one resolution) need no strided fusion convs.
        embed_stride: stride of the one-class embedding block (2, RD4AD; 1 for tiny deepest levels).

    Example:
        >>> student = ReverseStudent([24, 40, 112], strides=[4, 8, 16])
        >>> feats = [torch.randn(2, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate([24, 40, 112])]
        >>> [tuple(s.shape) for s in student(feats)]
        [(2, 24, 64, 64), (2, 40, 32, 32), (2, 112, 16, 16)]
    """

    def __init__(
        self,
        channels: Sequence[int],
        width: int | None = None,
        strides: Sequence[int] | None = None,
        embed_stride: int = 2,
    ) -> None:
        super().__init__()
        self.channels = list(channels)
        self.bottleneck = OneClassBottleneck(self.channels, strides, width, embed_stride)
        self.width = self.bottleneck.width
        self.decoder = ReverseDecoder(self.channels, self.width)

    def forward(self, teacher_feats: Sequence[Tensor]) -> list[Tensor]:
        """Args:
            teacher_feats: raw (un-normalised) teacher features, shallow to deep, (B, c_k, H_k, W_k).

        Returns:
            Student features of the same shapes, shallow to deep.
        """
        if len(teacher_feats) != len(self.channels):
            raise ValueError(f"expected {len(self.channels)} feature levels, got {len(teacher_feats)}")
        return self.decoder(self.bottleneck(teacher_feats), teacher_feats)


def cosine_distance(teacher: Tensor, student: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-position 1 - cos(t, s) along channels, in float32 (ONNX-friendly: no ``cosine_similarity`` op).

    Args:
        teacher: (B, C, H, W) teacher features.
        student: (B, C, H, W) student features.
        eps: lower bound of the norms.

    Returns:
        (B, 1, H, W) map in [0, 2].
    """
    t = F.normalize(teacher.float(), dim=1, eps=eps)
    s = F.normalize(student.float(), dim=1, eps=eps)
    return 1.0 - (t * s).sum(dim=1, keepdim=True)
