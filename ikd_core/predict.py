"""Prediction with a checkpoint: the torch :class:`Predictor` (or onnxruntime on its cached export) and the
pictures the app and the command line show (:func:`render`)."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from .data.transforms import load_image
from .errors import IKDError
from .export_cache import cached_onnx
from .loading import load_model
from .predictor_base import ImageInput, MapPredictor, Prediction
from .runtime import OnnxEngine
from .torch_model import IKDModel
from .visualize import apply_colormap, draw_contours, overlay

log = logging.getLogger(__name__)

#: Predictor backends: ``torch`` (eager), ``onnx`` (onnxruntime on a cached export, CPU) and ``auto`` (onnx on CPU
#: where onnxruntime is installed and the export reproduces the torch maps, else torch).
BACKENDS = ("auto", "torch", "onnx")


class Predictor(MapPredictor):
    """A loaded checkpoint ready for images; used by the app, the command line and the benchmarks.

    Args:
        model: the eval-mode :class:`~ikd_core.torch_model.IKDModel`.
        metadata: the checkpoint's metadata.
        tile: score images in tiles at native resolution.
        engine: an :class:`~ikd_core.runtime.OnnxEngine` that computes the maps instead of the torch model (same maps
            up to float rounding; see :meth:`from_checkpoint`'s ``backend``).
    """

    def __init__(self, model: IKDModel, metadata: dict[str, Any], tile: bool = False, engine: Any = None) -> None:
        super().__init__(metadata, tile=tile)
        self.model = model.eval()
        self.engine = engine
        # numpy only between onnxruntime runs: a torch op there would wake torch's OpenMP threads, whose spin-wait
        # takes the cores from the next run. Whole images go as many at a time as the engine runs.
        self.micro_batch = engine.micro_batch if engine is not None else None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu",
                        tile: bool = False, backend: str = "torch") -> Predictor:
        """Load a checkpoint.

        Args:
            path: the ``.safetensors`` checkpoint.
            device: where the torch model runs.
            tile: score images in tiles at native resolution.
            backend: ``torch`` (eager), ``onnx`` (onnxruntime on an export cached by checkpoint content, CPU only)
                or ``auto`` (``onnx`` on CPU where it works, else ``torch``).
        """
        if backend not in BACKENDS:
            raise IKDError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        model, meta = load_model(path, device)
        engine = None
        if backend != "torch":
            engine = _onnx_engine(path, model, meta, required=backend == "onnx")
        return cls(model, meta, tile=tile, engine=engine)

    @property
    def backend(self) -> str:  # type: ignore[override]
        """``onnxruntime`` or ``torch``: what computes the maps."""
        return "onnxruntime" if self.engine is not None else "torch"

    @property
    def device(self) -> torch.device:
        return next(self.model.student.parameters()).device

    def maps(self, batch: np.ndarray) -> np.ndarray:
        """Raw maps (B, C, S, S) float32 of a normalised (B, 3, S, S) batch, by the engine or torch eager (a
        :data:`~ikd_core.tiling.MapsFn`)."""
        if self.engine is not None:
            return self.engine.maps(batch)
        with torch.no_grad():
            return self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()


def _onnx_engine(path: str | os.PathLike[str], model: IKDModel, meta: dict[str, Any], required: bool) -> Any:
    """An onnxruntime engine on the cached export of ``path``; None (torch is used) where that is not
    possible and not ``required``."""
    why = None
    if next(model.student.parameters()).device.type != "cpu":
        why = "the onnx backend runs on CPU only"
    else:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            why = f"{exc.name} is not installed (pip install onnx onnxruntime)"
    if why is None:
        try:
            return OnnxEngine(cached_onnx(path, model, meta), threads=torch.get_num_threads())
        except IKDError as exc:
            why = str(exc).splitlines()[0]
        except Exception as exc:  # noqa: BLE001 - an exporter failure falls back to the exact torch path
            why = f"export failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if required:
        raise IKDError(f"cannot use the onnx backend: {why}")
    log.info("onnx backend unavailable, using torch: %s", why)
    return None


def render(
    image: ImageInput,
    prediction: Prediction,
    norm_threshold: float = 0.5,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> dict[str, np.ndarray]:
    """The pictures the app and CLI show: ``image``, ``heatmap``, ``overlay`` (with the predicted
    defect outline) and ``mask``, all uint8 at the image's resolution."""
    rgb = np.asarray(load_image(image), dtype=np.uint8)
    norm = prediction.norm_map
    mask = norm >= norm_threshold
    over = draw_contours(overlay(rgb, norm, alpha=alpha, cmap=cmap), mask)
    return {
        "image": rgb,
        "heatmap": apply_colormap(norm, cmap),
        "overlay": over,
        "mask": (mask * 255).astype(np.uint8),
    }
