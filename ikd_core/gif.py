"""Demo GIFs: test images of a category with their heatmaps, overlays and ground truth."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .data.mvtec import Sample
from .data.transforms import load_image, load_mask
from .predict import Prediction, Predictor
from .visualize import make_panel, save_gif


def pick_samples(samples: Sequence[Sample], n: int = 8, seed: int = 0) -> list[Sample]:
    """Up to ``n`` samples spread over defect types (round-robin, good images included), seeded."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.defect_type, []).append(s)
    for g in groups.values():
        rng.shuffle(g)  # type: ignore[arg-type]
    order = sorted(groups, key=lambda k: (k == "good", k))
    picked: list[Sample] = []
    while len(picked) < n and any(groups.values()):
        for k in order:
            if groups[k] and len(picked) < n:
                picked.append(groups[k].pop())
    return picked


def gif_frames(
    predictor: Predictor | None,
    images: Sequence[str | os.PathLike[str]],
    masks: Sequence[str | os.PathLike[str] | None] | None = None,
    norm_threshold: float = 0.5,
    alpha: float = 0.5,
    cmap: str = "jet",
    predictions: Sequence[Prediction] | None = None,
) -> list[np.ndarray]:
    """One panel per image: image | heatmap | overlay with outline | ground truth (if known).

    ``predictions`` (one per image) are used as they are instead of running ``predictor`` (e.g. maps
    computed earlier, on a GPU); ``predictor`` may then be ``None``.
    """
    masks = list(masks) if masks is not None else [None] * len(images)
    frames = []
    preds = list(predictions) if predictions is not None else predictor.predict(list(images))
    for i, (path, mask_path, pred) in enumerate(zip(images, masks, preds, strict=True), start=1):
        gt = load_mask(mask_path) if mask_path else None
        frames.append(
            make_panel(
                np.asarray(load_image(path)),
                pred.norm_map,
                pred.mask(norm_threshold),
                gt_mask=gt,
                score=pred.norm_score,
                threshold=norm_threshold,
                alpha=alpha,
                cmap=cmap,
                # The frame number keeps repeated images distinct frames (GIF writers merge
                # identical consecutive frames).
                label=f"{i}/{len(images)}",
            )
        )
    return frames


def make_gif(
    predictor: Predictor | None,
    images: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    masks: Sequence[str | os.PathLike[str] | None] | None = None,
    fps: float = 2.0,
    size: int | None = None,
    norm_threshold: float = 0.5,
    alpha: float = 0.5,
    cmap: str = "jet",
    predictions: Sequence[Prediction] | None = None,
) -> Path:
    """Write a GIF with one frame per image; ``size`` is the frame width in pixels (``predictions``: see
    :func:`gif_frames`)."""
    frames = gif_frames(predictor, images, masks, norm_threshold, alpha, cmap, predictions)
    return save_gif(frames, Path(out), fps=fps, size=size)
