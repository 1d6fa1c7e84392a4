"""Run an exported IKD model with onnxruntime + numpy + Pillow: no torch, no timm.

    python -m ikd_core.runtime model.onnx image.png [more.png ...] [--save-maps maps.npz] [--json]

:class:`OnnxPredictor` and the torch :class:`~ikd_core.predict.Predictor` share one base,
:class:`~ikd_core.predictor_base.MapPredictor` (``predict(images) -> list[Prediction]``, ``metadata``, ``image_size``,
``threshold``, ``lo``), so callers can swap them.
This module must stay importable without torch: it only imports ``ikd_core`` modules that do not import it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IKDError
from .predictor_base import MapPredictor, score_norm

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
    threads spin between the ops of a run (a run is many small ops, and waking a sleeping thread for each one
    costs noticeably at batch 1) and stop spinning when the run ends (``session.force_spinning_stop``): spinning
    after it would take the cores from whatever runs next (torch training, rendering, another request)."""
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
        score_norm(meta, tiled=False), score_norm(meta, tiled=True), int(meta["image_size"])
        topk = (meta.get("train_config") or {}).get("score_topk", 1)
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
            raise ValueError(f"score_topk {str(topk)[:40]!r} is not a whole number >= 1")
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise RuntimeModelError(f"{name}: embedded metadata is malformed ({exc})") from exc
    return meta


class OnnxEngine:
    """An onnxruntime session of an IKD export: normalised (B, 3, S, S) float32 -> maps (B, C, S, S)."""

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
        """Maps (B, C, S, S) float32 of a normalised image batch (a :data:`~ikd_core.tiling.MapsFn`), run
        ``micro_batch`` images at a time (on CPU, small batches keep the activations in cache: larger ones are slower
        per image)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outs = [self.session.run([OUTPUT_NAME], {INPUT_NAME: batch[i : i + self.micro_batch]})[0]
                for i in range(0, len(batch), self.micro_batch)]
        return np.concatenate(outs)


class OnnxPredictor(MapPredictor):
    """Predictor for an exported ``.onnx`` file (the interface of :class:`~ikd_core.predictor_base.MapPredictor`).

    Args:
        path: the ``.onnx`` file made by ``python -m ikd_core export``.
        tile: score images in tiles at native resolution.
        threads: onnxruntime intra-op threads (default: the usable cores).
        providers: onnxruntime execution providers (default CPU).
        micro_batch: images per onnxruntime run.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], tile: bool = False, threads: int | None = None,
                 providers: Sequence[str] | None = None, micro_batch: int = 1) -> None:
        self.engine = OnnxEngine(path, threads=threads, providers=providers, micro_batch=micro_batch)
        super().__init__(self.engine.metadata, tile=tile)
        self.micro_batch = self.engine.micro_batch  # one image read, run, resized at a time

    def maps(self, batch: np.ndarray) -> np.ndarray:
        """Raw maps (B, C, S, S) at model resolution of a normalised (B, 3, S, S) batch."""
        return self.engine.maps(batch)


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
