"""Run an exported IKD model with onnxruntime + numpy + Pillow: no torch, no timm.

    python -m ikd_core.runtime model.onnx image.png [more.png ...] [--save-maps maps.npz] [--json]

:class:`OnnxPredictor` has the :class:`~ikd_core.predict.Predictor` interface (``predict(images) ->
list[Prediction]``, ``metadata``, ``image_size``, ``threshold``, ``lo``), so callers can swap it in.
This module must stay importable without torch: it only imports ``ikd_core`` modules that do not import it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .data.transforms import image_to_array, load_image, normalize_array
from .errors import IKDError
from .prediction import Prediction

ImageInput = str | os.PathLike[str] | bytes | Image.Image | np.ndarray

#: ``metadata_props`` keys written by :mod:`ikd_core.export`; ``ikd`` holds the checkpoint's full metadata (JSON).
META_JSON_KEY = "ikd"
EXPORT_FORMAT = "ikd-studio-onnx/1"
INPUT_NAME, OUTPUT_NAME = "image", "anomaly_map"


class RuntimeModelError(IKDError):
    """An exported model that cannot be run (missing runtime, not an IKD export, bad metadata)."""


def default_threads() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None) -> Any:
    """onnxruntime options: ``threads`` intra-op threads, one inter-op thread, full graph optimisation. The
    threads spin between the ops of a run (waking a sleeping thread for each of ~100 small ops costs ~15 % at
    batch 1) and stop spinning when the run ends (``session.force_spinning_stop``): spinning after it would take
    the cores from whatever runs next (torch training, rendering, another request)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or default_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    so.add_session_config_entry("session.force_spinning_stop", "1")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def parse_metadata(props: dict[str, str], name: str) -> dict[str, Any]:
    """The checkpoint metadata embedded in an export's ``metadata_props``; raises RuntimeModelError."""
    if props.get("format") != EXPORT_FORMAT or META_JSON_KEY not in props:
        raise RuntimeModelError(f"{name} is not an IKD Studio export (no {EXPORT_FORMAT} metadata); "
                                "make one with: python -m ikd_core export --checkpoint CK --out FILE.onnx")
    try:
        meta = json.loads(props[META_JSON_KEY])
        norm = meta["score_normalization"]
        float(norm["threshold"]), float(norm["lo"]), int(meta["image_size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RuntimeModelError(f"{name}: embedded metadata is malformed ({exc})") from exc
    return meta


def resize_bilinear(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of the last two axes, half-pixel centres, no antialiasing (as torch's
    ``F.interpolate(mode="bilinear", align_corners=False)``)."""

    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(a.dtype)

    if a.shape[-2:] == (height, width):
        return a.copy()
    y0, y1, wy = taps(a.shape[-2], height)
    x0, x1, wx = taps(a.shape[-1], width)
    rows = a[..., y0, :] * (1 - wy)[:, None] + a[..., y1, :] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


def tiled_map(x: np.ndarray, size: int, maps: Callable[[np.ndarray], np.ndarray],
              chunk: int = 16) -> np.ndarray:
    """Map of a normalised (3, H, W) image from overlapping ``size`` tiles (stride size / 2), averaged."""
    _, h, w = x.shape
    if h < size or w < size:
        x = resize_bilinear(x, max(h, size), max(w, size))
    _, hh, ww = x.shape
    stride = size // 2
    ys = sorted(set(range(0, hh - size + 1, stride)) | {hh - size})
    xs = sorted(set(range(0, ww - size + 1, stride)) | {ww - size})
    acc = np.zeros((hh, ww), np.float32)
    cnt = np.zeros((hh, ww), np.float32)
    tiles = [(y, x0) for y in ys for x0 in xs]
    for i in range(0, len(tiles), chunk):
        part = tiles[i : i + chunk]
        out = maps(np.stack([x[:, y : y + size, x0 : x0 + size] for y, x0 in part]))
        for (y, x0), m in zip(part, out, strict=True):
            acc[y : y + size, x0 : x0 + size] += m
            cnt[y : y + size, x0 : x0 + size] += 1
    full = acc / cnt
    return resize_bilinear(full, h, w) if (hh, ww) != (h, w) else full


def predict_images(maps: Callable[[np.ndarray], np.ndarray], images: Sequence[Image.Image], size: int,
                   threshold: float, lo: float, batch_size: int = 16) -> list[Prediction]:
    """Whole-image predictions with numpy alone: ``maps`` turns a normalised (B, 3, size, size) batch into
    (B, size, size) maps, which are resized (bilinear) to each image's resolution; score = max at model size."""
    results: list[Prediction] = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        out = maps(np.stack([image_to_array(im, size) for im in chunk]))
        for img, m in zip(chunk, out, strict=True):
            same = m.shape == (img.height, img.width)  # no resampling (and no view of the whole batch)
            full = m.copy() if same else resize_bilinear(m, img.height, img.width)
            results.append(Prediction(full, float(m.max()), threshold, lo))
    return results


def predict_tiles(maps: Callable[[np.ndarray], np.ndarray], images: Sequence[Image.Image], size: int,
                  threshold: float, lo: float) -> list[Prediction]:
    """Predictions at each image's own resolution from overlapping ``size`` px tiles (:func:`tiled_map`)."""
    results = []
    for img in images:
        full = tiled_map(normalize_array(img), size, maps)
        results.append(Prediction(full, float(full.max()), threshold, lo))
    return results


def score_norm(metadata: dict[str, Any], tiled: bool) -> tuple[float, float]:
    """(threshold, lo) for whole images, or for tiles when ``tiled`` and the model was calibrated on tiles."""
    tn = metadata.get("tile_normalization")
    norm = tn if tiled and isinstance(tn, dict) else metadata["score_normalization"]
    return float(norm["threshold"]), float(norm["lo"])


class OnnxEngine:
    """An onnxruntime session of an IKD export: normalised (B, 3, S, S) float32 -> maps (B, S, S)."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None,
                 providers: Sequence[str] | None = None, micro_batch: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeModelError("onnxruntime is not installed (pip install onnxruntime)") from exc
        path = Path(path)
        if not path.is_file():
            raise RuntimeModelError(f"exported model not found: {path}")
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads),
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RuntimeModelError(f"{path.name} cannot be loaded by onnxruntime: {msg}") from exc
        self.path = path
        self.metadata = parse_metadata(dict(self.session.get_modelmeta().custom_metadata_map), path.name)
        self.micro_batch = max(1, int(micro_batch))

    def maps(self, batch: np.ndarray) -> np.ndarray:
        """Anomaly maps (B, S, S) float32 of a normalised image batch, run ``micro_batch`` images at a time
        (on CPU, small batches keep the activations in cache: larger ones are slower per image)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outs = [self.session.run([OUTPUT_NAME], {INPUT_NAME: batch[i : i + self.micro_batch]})[0]
                for i in range(0, len(batch), self.micro_batch)]
        return np.concatenate(outs)[:, 0]


class OnnxPredictor:
    """Predictor for an exported ``.onnx`` file (same interface as :class:`ikd_core.predict.Predictor`)."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], tile: bool = False, threads: int | None = None,
                 providers: Sequence[str] | None = None, micro_batch: int = 1) -> None:
        self.engine = OnnxEngine(path, threads=threads, providers=providers, micro_batch=micro_batch)
        self.metadata = self.engine.metadata
        self.image_size = int(self.metadata["image_size"])
        norm = self.metadata["score_normalization"]
        self.threshold = float(norm["threshold"])
        self.lo = float(norm["lo"])
        self.tile = tile

    def maps(self, batch: np.ndarray) -> np.ndarray:
        """Raw maps (B, S, S) at model resolution of a normalised (B, 3, S, S) batch."""
        return self.engine.maps(batch)

    def predict(self, images: Sequence[ImageInput] | ImageInput, batch_size: int = 16) -> list[Prediction]:
        """Anomaly maps (at each image's resolution), raw scores and thresholds."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        pils = [load_image(im) for im in images]
        if self.tile:
            return predict_tiles(self.maps, pils, self.image_size, *score_norm(self.metadata, tiled=True))
        return predict_images(self.maps, pils, self.image_size, self.threshold, self.lo,
                              min(batch_size, self.engine.micro_batch))  # one image read, run, resized at a time


def main(argv: Sequence[str] | None = None) -> int:
    """Score images with an exported model; one line per image. User errors print one line and return 2."""
    p = argparse.ArgumentParser(prog="python -m ikd_core.runtime",
                                description="Score images with an exported IKD model (onnxruntime, no torch).")
    p.add_argument("model", help="an .onnx file made by: python -m ikd_core export")
    p.add_argument("images", nargs="+")
    p.add_argument("--threshold", type=float, default=0.5, help="normalised threshold (0.5 = fitted)")
    p.add_argument("--tile", action="store_true", help="tile large images at native resolution")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all usable cores)")
    p.add_argument("--save-maps", metavar="NPZ", help="save the maps (image resolution) and scores to an .npz")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    args = p.parse_args(argv)
    try:
        predictor = OnnxPredictor(args.model, tile=args.tile, threads=args.threads)
        preds = predictor.predict(list(args.images))
    except IKDError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    for path, pred in zip(args.images, preds, strict=True):
        verdict = "anomalous" if pred.is_anomalous(args.threshold) else "normal"
        if args.json:
            print(json.dumps({"image": path, "score": pred.score, "norm_score": pred.norm_score,
                              "verdict": verdict}))
        else:
            print(f"{path}\tscore {pred.norm_score:.3f}\t{verdict}")
    if args.save_maps:
        np.savez(args.save_maps, scores=np.asarray([q.score for q in preds]),
                 **{f"map_{i}": q.anomaly_map for i, q in enumerate(preds)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
