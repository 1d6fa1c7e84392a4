"""Export a checkpoint to one ONNX (or OpenVINO) graph: teacher + student + anomaly map + blur.

The graph takes a normalised image batch ``image`` (B, 3, S, S), B dynamic, and returns ``anomaly_map``
(B, C, S, S): the map, and with ``score_map="distillation"`` (C = 2) the map the image score is taken on. The
checkpoint's metadata travels inside the file (ONNX ``metadata_props``; OpenVINO ``rt_info``), so
:mod:`ikd_core.runtime` needs nothing else. :mod:`ikd_core.export_cache` keeps one export per checkpoint content
for :class:`~ikd_core.predict.Predictor`'s ``auto`` backend.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .data.synthetic import DEFECT_TYPES, render_sample
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor
from .errors import IKDError
from .fileio import atomic_write_bytes, file_digest
from .loading import load_model
from .predictor_base import Scale, score_norm
from .runtime import EXPORT_FORMAT, INPUT_NAME, META_JSON_KEY, OUTPUT_NAME, OnnxEngine
from .torch_model import IKDModel

OPSET = 17
FORMATS = ("onnx", "openvino")


class ExportError(IKDError):
    """An export that cannot be made or does not reproduce the torch model."""


class _MapGraph(nn.Module):
    """The eval-mode model as a plain image -> map function (what gets traced)."""

    def __init__(self, model: IKDModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def metadata_props(meta: dict[str, Any], checkpoint_sha256: str | None = None) -> dict[str, str]:
    """String key/values embedded in the export: the full checkpoint metadata (``ikd``, JSON) plus the
    fields a runtime needs, flat."""
    norm = meta["score_normalization"]
    props = {
        "format": EXPORT_FORMAT,
        META_JSON_KEY: json.dumps(meta, sort_keys=True, allow_nan=True),
        "image_size": str(int(meta["image_size"])),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "threshold": repr(float(norm["threshold"])),
        "lo": repr(float(norm["lo"])),
        "backbone": str(meta["backbone"]),
        "teacher_fingerprint": str((meta.get("teacher") or {}).get("fingerprint", "")),
        "input": f"{INPUT_NAME}: float32 (B, 3, S, S), ImageNet-normalised RGB",
        "output": f"{OUTPUT_NAME}: float32 (B, C, S, S), raw anomaly map (channel 0) and the map the image score is "
                  "taken on (channel C - 1, the same when C = 1)",
        "ikd_core_version": __version__,
        "torch_version": torch.__version__,
    }
    if checkpoint_sha256:
        props["checkpoint_sha256"] = checkpoint_sha256
    return props


def onnx_bytes(model: IKDModel, meta: dict[str, Any], checkpoint_sha256: str | None = None,
               opset: int = OPSET) -> bytes:
    """The serialised ONNX graph of a loaded model (legacy TorchScript exporter: the fastest graph on CPU)."""
    import onnx

    size = int(meta["image_size"])
    graph = _MapGraph(model.cpu().eval()).eval()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values (sizes) baked into the graph
        torch.onnx.export(graph, (torch.zeros(2, 3, size, size),), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    onnx.helper.set_model_props(proto, metadata_props(meta, checkpoint_sha256))
    proto.doc_string = f"IKD Studio {meta['backbone']} anomaly map ({size} px)"
    return proto.SerializeToString()


def sample_batch(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    """``n`` normalised synthetic demo-texture images (good and defective) at ``size`` px."""

    rng = np.random.default_rng(seed)
    defects = [None, *DEFECT_TYPES["demo_texture"]]
    imgs = [render_sample("demo_texture", defects[i % len(defects)], size, rng)[1] for i in range(n)]
    return torch.stack([image_to_tensor(im, size) for im in imgs])


def check_parity(model: IKDModel, path: str | os.PathLike[str], scale: Scale) -> float:
    """Max |ORT map - torch map| in units of (threshold - lo) on two synthetic images, each output channel in its
    own units (the map's, the score map's); raises ExportError where a pixel differs by more than
    1e-3 (threshold - lo) + 1e-4 |torch map| (float32 rounding)."""
    engine = OnnxEngine(path, threads=torch.get_num_threads(), micro_batch=2)
    x = sample_batch(int(engine.metadata["image_size"]))
    with torch.no_grad():
        ref = model.cpu().eval()(x).numpy()
    got = engine.maps(x.numpy())
    if got.shape != ref.shape:
        raise ExportError(f"{Path(path).name}: exported maps have shape {got.shape}, the torch model's {ref.shape}")
    units = np.full(ref.shape[1], max(scale.threshold - scale.lo, 1e-12))
    if scale.map_threshold is not None and scale.map_lo is not None:
        units[0] = max(scale.map_threshold - scale.map_lo, 1e-12)
    units = units.reshape(1, -1, 1, 1)
    err = np.abs(got - ref) / units
    if not bool(np.all(err <= 1e-3 + 1e-4 * np.abs(ref) / units)):
        raise ExportError(f"{Path(path).name}: exported maps differ from the torch model by up to "
                          f"{float(err.max()):.2g} of (threshold - lo); the export is not exact")
    return float(err.max())


def export_onnx(model: IKDModel, meta: dict[str, Any], out: str | os.PathLike[str],
                checkpoint_sha256: str | None = None, check: bool = True) -> Path:
    """Write the ONNX export of a loaded model to ``out`` atomically; with ``check``, verify it against torch."""
    out = Path(out)
    data = onnx_bytes(model, meta, checkpoint_sha256)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        Path(tmp).write_bytes(data)
        if check:
            check_parity(model, tmp, score_norm(meta, tiled=False))
        atomic_write_bytes(out, data)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return out


def export_openvino(model: IKDModel, meta: dict[str, Any], out: str | os.PathLike[str],
                    checkpoint_sha256: str | None = None) -> Path:
    """Write ``out`` (.xml, with its .bin beside it) in OpenVINO IR, float32, metadata in ``rt_info['ikd']``."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise ExportError("OpenVINO is not installed (pip install openvino)") from exc
    out = Path(out).with_suffix(".xml")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, meta, Path(tmp) / "model.onnx", checkpoint_sha256)
        ov_model = ov.convert_model(str(onnx_path))
    for key, value in metadata_props(meta, checkpoint_sha256).items():
        ov_model.set_rt_info(value, ["ikd", key])
    ov.save_model(ov_model, str(out), compress_to_fp16=False)
    return out


def export_checkpoint(checkpoint: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str],
                      teacher_weights: str | os.PathLike[str] | None = None) -> Path:
    """Load a checkpoint (checked as for prediction) and export it to ``out`` in ``fmt`` (onnx / openvino)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    model, meta = load_model(checkpoint, "cpu", teacher_weights=teacher_weights)
    digest = file_digest(checkpoint)
    if fmt == "openvino":
        return export_openvino(model, meta, out, digest)
    return export_onnx(model, meta, out, digest)


