"""Inference: load a checkpoint, turn images into anomaly maps, scores and masks."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from .backbones import build_student
from .checkpoint import MIN_IMAGE_SIZE, check_state_matches, load_student_state, max_image_size, read_metadata
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor, load_image
from .errors import CheckpointError, IKDError
from .prediction import Prediction
from .runtime import predict_images, predict_tiles, score_norm
from .torch_model import IKDModel
from .train import select_device
from .visualize import apply_colormap, draw_contours, overlay

log = logging.getLogger(__name__)

#: Predictor backends: ``torch`` (eager), ``onnx`` (onnxruntime on a cached export, CPU) and ``auto`` (onnx on CPU
#: where onnxruntime is installed and the export reproduces the torch maps, else torch).
BACKENDS = ("auto", "torch", "onnx")

ImageInput = str | os.PathLike[str] | bytes | Image.Image | np.ndarray


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    teacher_weights: str | os.PathLike[str] | None = None,
) -> tuple[IKDModel, dict[str, Any]]:
    """Load a checkpoint into a fresh model. Raises :class:`CheckpointError` on any mismatch.

    The teacher is rebuilt from the source recorded at training time (or ``teacher_weights``) and
    must have the same fingerprint, since a student only makes sense against its own teacher.
    """
    path = Path(path)
    meta = read_metadata(path)
    try:
        backbone = meta["backbone"]
        image_size = int(meta["image_size"])
        tcfg = meta.get("train_config", {})
        teacher = meta.get("teacher", {})
        norm = meta["score_normalization"]
        threshold, lo = float(norm["threshold"]), float(norm["lo"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: metadata lacks {exc}") from exc
    if not isinstance(backbone, str) or not all(isinstance(d, dict) for d in (tcfg, teacher, norm)):
        raise CheckpointError(
            f"{path.name}: metadata is malformed (backbone, train_config, teacher or score_normalization)"
        )
    limit = max_image_size()  # read_metadata checked it too; the same bound, stated where the size is used
    if not MIN_IMAGE_SIZE <= image_size <= limit:
        raise CheckpointError(
            f"{path.name}: image size {image_size} in its metadata is outside {MIN_IMAGE_SIZE}-{limit} px; "
            "the file is damaged or was not made by IKD Studio"
        )
    if not (math.isfinite(threshold) and math.isfinite(lo) and threshold >= lo):
        raise CheckpointError(
            f"{path.name}: score normalisation in its metadata is invalid (threshold {threshold}, lo {lo}); "
            "the file is damaged or was not made by IKD Studio"
        )
    state = load_student_state(path)
    source = teacher_weights or teacher.get("source")
    if source is not None and not isinstance(source, (str, os.PathLike)):
        raise CheckpointError(f"{path.name}: metadata is malformed (teacher source {source!r})")
    source = os.fspath(source) if source is not None else None
    if source and source.startswith("file:"):
        raise CheckpointError(
            f"{path.name} was trained with the teacher weights file {source[5:]!r}; pass it again "
            "(--teacher-weights FILE)"
        )
    try:
        student = build_student(backbone)  # cheap: check the tensors before fetching a teacher
    except IKDError as exc:
        raise CheckpointError(f"{path.name}: {exc}") from exc
    if meta.get("levels") is not None and list(meta["levels"]) != list(student.spec.out_indices):
        raise CheckpointError(f"{path.name}: levels {meta['levels']} do not match backbone {backbone}")
    check_state_matches(state, student.state_dict(), path.name,
                        lambda: f"backbone {backbone}, image size {image_size}")
    model = IKDModel(
        backbone,
        teacher_weights=source,
        combine=tcfg.get("combine", "product"),
        sigma=float(tcfg.get("sigma", 4.0)),
        feature_pool=bool(tcfg.get("feature_pool", False)),
        student=student,
    )
    want = teacher.get("fingerprint")
    if want and want != model.teacher_fingerprint:
        raise CheckpointError(
            f"{path.name} was trained against a different {backbone} teacher ({want}) than the one "
            f"found here ({model.teacher_fingerprint}, {model.teacher_source})"
        )
    model.student.load_state_dict(state)
    model.to(select_device(str(device))).eval()
    return model, meta


class Predictor:
    """A loaded model ready for images; also used by the app and the CLI.

    ``engine``: an :class:`~ikd_core.runtime.OnnxEngine` that computes the maps instead of the torch model
    (same maps up to float rounding; see :meth:`from_checkpoint`'s ``backend``).
    """

    def __init__(self, model: IKDModel, metadata: dict[str, Any], tile: bool = False, engine: Any = None) -> None:
        self.model = model.eval()
        self.metadata = metadata
        self.image_size = int(metadata["image_size"])
        norm = metadata["score_normalization"]
        self.threshold = float(norm["threshold"])
        self.lo = float(norm["lo"])
        self.tile = tile
        self.engine = engine

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu",
                        tile: bool = False, backend: str = "torch") -> Predictor:
        """Load a checkpoint. ``backend``: ``torch`` (eager), ``onnx`` (onnxruntime on an export cached by
        checkpoint content, CPU only) or ``auto`` (``onnx`` on CPU where it works, else ``torch``)."""
        if backend not in BACKENDS:
            raise IKDError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        model, meta = load_model(path, device)
        engine = None
        if backend != "torch":
            engine = _onnx_engine(path, model, meta, required=backend == "onnx")
        return cls(model, meta, tile=tile, engine=engine)

    @property
    def backend(self) -> str:
        """``onnxruntime`` or ``torch``: what computes the maps."""
        return "onnxruntime" if self.engine is not None else "torch"

    @property
    def device(self) -> torch.device:
        return next(self.model.student.parameters()).device

    @torch.no_grad()
    def _maps(self, batch: torch.Tensor) -> torch.Tensor:
        """Torch maps (B, S, S); the onnxruntime engine is used through :mod:`ikd_core.runtime` instead."""
        return self.model(batch.to(self.device))[:, 0].float().cpu()

    def _tiled_map(self, img: Image.Image) -> tuple[np.ndarray, float]:
        return tiled_map(self._maps, img, self.image_size)

    @property
    def tile_calibrated(self) -> bool:
        """Whether the checkpoint has a threshold fitted on held-out tiles (used in tile mode)."""
        return isinstance(self.metadata.get("tile_normalization"), dict)

    def _norm(self, tiled: bool) -> tuple[float, float]:
        """(threshold, lo) for whole images, or for tiles when tiled and the checkpoint was calibrated on tiles."""
        return score_norm(self.metadata, tiled)

    def predict(self, images: Sequence[ImageInput] | ImageInput, batch_size: int = 16) -> list[Prediction]:
        """Anomaly maps (at each image's resolution), raw scores and thresholds."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        pils = [load_image(im) for im in images]
        results: list[Prediction] = []
        if self.engine is not None:
            # numpy only: a torch op between runs would wake torch's OpenMP threads, whose spin-wait takes the
            # cores from the next onnxruntime run (~2 ms an image on 2 cores). Whole images go as many at a time
            # as the engine runs (one: each is read, run and resized while it is in cache).
            if self.tile:
                return predict_tiles(self.engine.maps, pils, self.image_size, *self._norm(tiled=True))
            return predict_images(self.engine.maps, pils, self.image_size, self.threshold, self.lo,
                                  min(batch_size, self.engine.micro_batch))
        if self.tile:
            threshold, lo = self._norm(tiled=True)
            for img in pils:
                amap, score = self._tiled_map(img)
                results.append(Prediction(amap, score, threshold, lo))
            return results
        for i in range(0, len(pils), batch_size):
            chunk = pils[i : i + batch_size]
            maps = self._maps(torch.stack([image_to_tensor(im, self.image_size) for im in chunk]))
            for img, m in zip(chunk, maps, strict=True):
                score = float(m.max())
                if m.shape == (img.height, img.width):  # bilinear at the same size is the identity: skip it
                    m = m.clone()  # not a view that would keep the whole batch alive
                else:
                    m = F.interpolate(m[None, None], size=(img.height, img.width), mode="bilinear",
                                      align_corners=False)[0, 0]
                results.append(Prediction(m.numpy(), score, self.threshold, self.lo))
        return results


def tiled_map(maps_fn: Any, img: Image.Image, size: int) -> tuple[np.ndarray, float]:
    """Map of an image at native resolution from overlapping ``size`` px tiles (stride ``size // 2``), averaged where
    they overlap; ``maps_fn`` turns a normalised (N, 3, size, size) batch into (N, size, size) maps."""
    s = size
    x = TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)  # native size
    _, h, w = x.shape
    if h < s or w < s:
        x = F.interpolate(x[None], size=(max(h, s), max(w, s)), mode="bilinear")[0]
    _, hh, ww = x.shape
    stride = s // 2
    ys = sorted(set(list(range(0, hh - s + 1, stride)) + [hh - s]))
    xs = sorted(set(list(range(0, ww - s + 1, stride)) + [ww - s]))
    acc = torch.zeros(hh, ww)
    cnt = torch.zeros(hh, ww)
    tiles = [(y, x0) for y in ys for x0 in xs]
    for i in range(0, len(tiles), 16):
        chunk = tiles[i : i + 16]
        maps = maps_fn(torch.stack([x[:, y : y + s, x0 : x0 + s] for y, x0 in chunk]))
        for (y, x0), m in zip(chunk, maps, strict=True):
            acc[y : y + s, x0 : x0 + s] += m
            cnt[y : y + s, x0 : x0 + s] += 1
    full = acc / cnt
    if (hh, ww) != (h, w):
        full = F.interpolate(full[None, None], size=(h, w), mode="bilinear")[0, 0]
    return full.numpy(), float(full.max())


def _onnx_engine(path: str | os.PathLike[str], model: IKDModel, meta: dict[str, Any], required: bool) -> Any:
    """An onnxruntime engine on the cached export of ``path``; None (torch is used) where that is not
    possible and not ``required``."""
    from .runtime import OnnxEngine

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
            from .export import cached_onnx

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
