"""A segmentation head on teacher x student features (the second stage of DeSTSeg, Zhang et al., CVPR 2023).

DeSTSeg trains a small segmentation network on the images with synthetic anomalies of its denoising student: its
input is, per level, the element-wise product of the L2-normalised teacher and student features of the *augmented*
image (their channel sum is the cosine similarity; the head sees every channel), upsampled to the finest level and
concatenated; its target is the synthetic anomaly mask; its loss focal + L1. At inference its sigmoid output is the
anomaly map.

DeSTSeg uses an ASPP head of 256 channels; on a CPU budget this one is narrow (``width`` channels: a 1x1
reduction, two 3x3 convolutions, the second dilated, with a residual, and a 1x1 output), about 0.1 GMAC at 256 px
for ``efficientnet_lite0``. It is trained beside the student from the first step, on the student's features
*detached* (the segmentation loss never reaches the student, as DeSTSeg's frozen student in its second stage).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

#: What a model with a head outputs: the head's map (DeSTSeg's), or its sum with the distillation map, each mapped
#: by held-out quantiles (EfficientAD's fusion of two maps).
SEGMENT_MAPS = ("head", "fused")
#: Where the image score is taken: on the anomaly map itself, or (a fused map only) on its distillation part.
SCORE_MAPS = ("map", "distillation")
#: Learning rate of the head (AdamW), whatever the student's.
SEGMENT_LR = 1e-3
#: The head's output probability before training (the output bias), a little above the share of anomalous pixels.
PRIOR = 0.05


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SegmentationHead(nn.Module):
    """Anomaly logits (B, 1, h, w) at the finest level from normalised teacher and student feature lists.

    Args:
        channels: the channels of each feature level.
        width: the head's channels.
    """

    def __init__(self, channels: Sequence[int], width: int = 32) -> None:
        super().__init__()
        self.reduce = _conv_bn_relu(int(sum(channels)), width, 1)
        self.context = nn.Sequential(_conv_bn_relu(width, width, 3), _conv_bn_relu(width, width, 3, dilation=2))
        self.out = nn.Conv2d(width, 1, 1)
        nn.init.normal_(self.out.weight, std=0.01)  # the first outputs are the prior everywhere
        nn.init.constant_(self.out.bias, -math.log((1 - PRIOR) / PRIOR))

    def forward(self, teacher_feats: Sequence[Tensor], student_feats: Sequence[Tensor]) -> Tensor:
        size = teacher_feats[0].shape[-2:]
        x = torch.cat([F.interpolate(t * s, size=size, mode="bilinear", align_corners=False)
                       for t, s in zip(teacher_feats, student_feats, strict=True)], dim=1)
        x = self.reduce(x)
        return self.out(x + self.context(x))


def segmentation_loss(logits: Tensor, mask: Tensor) -> Tensor:
    """DeSTSeg's loss: focal (gamma 2, no class weighting) + L1 of the sigmoid output, against ``mask``
    (B, 1, H, W) in [0, 1], reduced by area to the logits' size and binarised at 0.5."""
    logits = logits.float()
    target = (F.adaptive_avg_pool2d(mask.float(), logits.shape[-2:]) >= 0.5).float()
    focal = sigmoid_focal_loss(logits, target, alpha=-1, gamma=2.0, reduction="mean")
    return focal + (torch.sigmoid(logits) - target).abs().mean()
