"""Demo GIFs: test images of a category with their heatmaps, overlays and ground truth."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .data.mvtec import Sample
from .data.transforms import load_image, load_mask
from .predict import Predictor
from .predictor_base import Prediction
from .visualize import _resize_image, _resize_map, make_panel, save_gif


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


#: Images are decoded at most this large a side for a GIF (at least; the frame width and the model's input size
#: raise it), and at most :data:`DEFAULT_FRAME_SIDE` when no frame width is given.
MIN_FRAME_SIDE = 256
DEFAULT_FRAME_SIDE = 1024


def _frame_cap(predictor: Predictor | None, size: int | None) -> int:
    model_side = int(getattr(predictor, "image_size", 0) or 0) if predictor is not None else 0
    return max(MIN_FRAME_SIDE, int(size) if size else DEFAULT_FRAME_SIDE, model_side)


def gif_frames(
    predictor: Predictor | None,
    images: Sequence[str | os.PathLike[str] | np.ndarray],
    masks: Sequence[str | os.PathLike[str] | None] | None = None,
    norm_threshold: float = 0.5,
    alpha: float = 0.5,
    cmap: str = "jet",
    predictions: Sequence[Prediction] | None = None,
    size: int | None = None,
) -> list[np.ndarray]:
    """One panel per image: image | heatmap | overlay with outline | ground truth (if known).

    ``predictions`` (one per image) are used as they are instead of running ``predictor`` (e.g. maps
    computed earlier, on a GPU); ``predictor`` may then be ``None``. ``size``: the frame width; each frame is
    scaled to it as soon as it is drawn.

    Memory stays small whatever the image sizes: each image (and mask) is decoded at most ``max(256, size)``
    pixels a side (1024 without ``size``; never below the model's input size), scored at that size, drawn, and
    dropped before the next one; only the frames are kept.
    """

    n = len(images)
    masks = list(masks) if masks is not None else [None] * n
    if len(masks) != n or (predictions is not None and len(predictions) != n):
        raise ValueError(f"gif_frames: {n} images but {len(masks)} masks / "
                         f"{len(predictions) if predictions is not None else n} predictions")
    if predictions is None and predictor is None:
        raise ValueError("gif_frames needs a predictor or predictions")
    cap = _frame_cap(predictor, size)
    frames = []
    for i in range(n):
        img = load_image(images[i], max_side=cap)
        pred = predictions[i] if predictions is not None else predictor.predict([img])[0]  # type: ignore[union-attr]
        rgb = np.asarray(img)
        del img
        norm = _resize_map(np.asarray(pred.norm_map, dtype=np.float32), rgb.shape[:2])
        gt = load_mask(masks[i], max_side=cap) if masks[i] else None
        panel = make_panel(
            rgb,
            norm,
            norm >= norm_threshold,
            gt_mask=gt,
            score=pred.norm_score,
            threshold=norm_threshold,
            alpha=alpha,
            cmap=cmap,
            # The frame number keeps repeated images distinct frames (GIF writers merge
            # identical consecutive frames).
            label=f"{i + 1}/{n}",
        )
        del rgb, norm, gt, pred
        if size:
            width = int(size)
            panel = _resize_image(panel, (max(1, round(panel.shape[0] * width / panel.shape[1])), width))
        frames.append(panel)
    return frames


def make_gif(
    predictor: Predictor | None,
    images: Sequence[str | os.PathLike[str] | np.ndarray],
    out: str | os.PathLike[str],
    masks: Sequence[str | os.PathLike[str] | None] | None = None,
    fps: float = 2.0,
    size: int | None = None,
    norm_threshold: float = 0.5,
    alpha: float = 0.5,
    cmap: str = "jet",
    predictions: Sequence[Prediction] | None = None,
) -> Path:
    """Write a GIF with one frame per image; ``size`` is the frame width in pixels (``predictions`` and memory use:
    see :func:`gif_frames`)."""
    frames = gif_frames(predictor, images, masks, norm_threshold, alpha, cmap, predictions, size=size)
    return save_gif(frames, Path(out), fps=fps, size=size)
