"""Evaluation: a model's maps over a data set, the metrics and the curves of a labelled test set.

Training, the command line, the benchmark, the app and the GPU check all evaluate through :func:`evaluate_model`
(or :func:`evaluate_outputs` on maps they already have), so every figure the project shows is computed one way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .device import full_precision
from .metrics import evaluate, image_roc_curve, pixel_roc_curve, pro_curve
from .scoring import image_scores

EVAL_BATCH_SIZE = 8


@dataclass
class Curves:
    """ROC and PRO curves of a labelled test set (empty arrays where undefined).

    Attributes:
        image_roc: ``(fpr, tpr)`` of the image scores.
        pixel_roc: ``(fpr, tpr)`` of the pixels (empty without masks).
        pro: ``(fpr, per-region overlap)`` up to the AU-PRO limit (empty without masks).
        metrics: the metrics of the same outputs.
    """

    image_roc: tuple[Any, Any]
    pixel_roc: tuple[Any, Any]
    pro: tuple[Any, Any]
    metrics: dict[str, float]


@dataclass
class Evaluation:
    """What :func:`evaluate_model` measured.

    Attributes:
        outputs: :func:`predict_maps`'s ``maps`` (N, H, W), ``scores`` (N,), ``labels`` (N,), ``masks`` (N, H, W)
            and, for a model that scores another map, ``score_maps`` (N, H, W).
        metrics: ``image_auroc``, ``pixel_auroc``, ``pixel_f1_max``, ``au_pro`` (NaN where undefined); empty when
            no image is labelled.
        curves: the curves, when asked for.
    """

    outputs: dict[str, Tensor]
    metrics: dict[str, float]
    curves: Curves | None = None


@torch.no_grad()
def predict_maps(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, Tensor]:
    """Run a model over a loader, in float32 with autocast off whatever the caller's context (the threshold fit,
    the metrics and the predictors must all see the same maps; mixed precision is for training steps).

    Args:
        model: maps a normalised (B, 3, S, S) batch to (B, C, S, S) maps in eval mode: the anomaly map, and in the
            last channel the map the image score is taken on (the same when C is 1).
        loader: items with ``image``, ``label`` and ``mask``, in order.
        device: where the model is.

    Returns:
        ``maps`` (N, H, W), ``scores`` (N,) (the max of each score map, or the mean of its ``model.score_topk``
        highest pixels), ``labels`` (N,), ``masks`` (N, H, W), and ``score_maps`` (N, H, W) where the model scores
        another map than ``maps``; on the CPU.
    """
    model.eval()
    maps, score_maps, labels, masks = [], [], [], []
    for batch in loader:
        with full_precision(device):
            m = model(batch["image"].to(device, non_blocking=True)).float().cpu()
        maps.append(m[:, 0])
        if m.shape[1] > 1:
            score_maps.append(m[:, -1])
        labels.append(torch.as_tensor(batch["label"]))
        masks.append(batch["mask"][:, 0])
    out = {"maps": torch.cat(maps), "labels": torch.cat(labels), "masks": torch.cat(masks)}
    if score_maps:
        out["score_maps"] = torch.cat(score_maps)
    out["scores"] = image_scores(out.get("score_maps", out["maps"]), getattr(model, "score_topk", 1))
    return out


def _labelled(res: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Scores, labels, maps and masks of the labelled images (label -1 = unknown), or None when there are none."""
    known = res["labels"] >= 0
    if not bool(known.any()):
        return None
    return res["scores"][known], res["labels"][known], res["maps"][known], res["masks"][known]


def compute_metrics(res: dict[str, Tensor]) -> dict[str, float]:
    """Metrics of :func:`predict_maps` outputs; unlabelled images are left out, pixel metrics are NaN without
    defect masks, and the result is empty without any labelled image."""
    known = _labelled(res)
    if known is None:
        return {}
    scores, labels, maps, masks = known
    has_masks = bool(masks.sum() > 0)
    return evaluate(scores, labels, maps if has_masks else None, masks if has_masks else None)


def compute_curves(res: dict[str, Tensor], metrics: dict[str, float] | None = None) -> Curves:
    """ROC and PRO curves of :func:`predict_maps` outputs (labelled images only)."""
    metrics = compute_metrics(res) if metrics is None else metrics
    known = _labelled(res)
    empty = (np.zeros(0), np.zeros(0))
    if known is None:
        return Curves(empty, empty, empty, metrics)
    scores, labels, maps, masks = known
    fpr, tpr, _ = image_roc_curve(scores, labels)
    if bool(masks.sum() > 0):
        pfpr, ptpr, _ = pixel_roc_curve(maps, masks)
        pixel_roc = (pfpr, ptpr)
        pro = pro_curve(maps, masks)
    else:
        pixel_roc = pro = ([], [])
    return Curves((fpr, tpr), pixel_roc, pro, metrics)


def evaluate_outputs(res: dict[str, Tensor], curves: bool = False) -> Evaluation:
    """:class:`Evaluation` of maps already computed by :func:`predict_maps`."""
    metrics = compute_metrics(res)
    return Evaluation(res, metrics, compute_curves(res, metrics) if curves else None)


def evaluate_model(model: nn.Module, dataset: Dataset, device: torch.device, curves: bool = False,
                   batch_size: int = EVAL_BATCH_SIZE, num_workers: int = 0) -> Evaluation:
    """Evaluate a model on a labelled data set.

    Args:
        model: an :class:`~ikd_core.torch_model.IKDModel` (or any module with its eval-mode interface).
        dataset: items with ``image``, ``label`` (-1 = unknown) and ``mask``, at the model's input size.
        device: where the model is.
        curves: also compute the ROC and PRO curves.
        batch_size: images per forward pass.
        num_workers: data loader workers.

    Returns:
        The :class:`Evaluation`: outputs, metrics and (optionally) curves.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return evaluate_outputs(predict_maps(model, loader, device), curves=curves)
