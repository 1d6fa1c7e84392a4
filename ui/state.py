"""The app's settings and shared state, read from the environment (``app.py`` reloads this module for each launch,
so tests can start the app with other folders), and the helpers every tab uses. No Gradio component lives here."""

from __future__ import annotations

import html
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from ikd_core import service
from ikd_core.backbones import BACKBONES
from ikd_core.data.mvtec import Sample
from ikd_core.data.sources import build_datasets, default_checkpoint_name
from ikd_core.data.synthetic import DEMO_CATEGORIES, ensure_demo_dataset
from ikd_core.errors import IKDError
from ikd_core.fileio import file_digest
from ikd_core.visualize import COLORMAPS

from . import gpu

log = logging.getLogger("ikd_studio")

REPO = Path(__file__).resolve().parents[1]
PATHS = service.StudioPaths.from_env()
DEMO_CATEGORY = "demo_texture"
DEFAULT_BACKBONE = "efficientnet_lite0"
READY_CHECKPOINTS = [default_checkpoint_name(c, DEFAULT_BACKBONE) for c in DEMO_CATEGORIES]
#: Public mode (``SPACE_ID`` set, or ``IKD_PUBLIC=1``): no server paths, per-visitor workspaces, tighter limits.
POLICY = service.AccessPolicy.from_env(PATHS)
PUBLIC = POLICY.public
ALLOW_SERVER_PATHS = POLICY.server_paths


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


#: Images scored per Inspect request, and the largest side they are decoded at.
MAX_INSPECT_IMAGES = _env_int("IKD_MAX_INSPECT_IMAGES", 8 if PUBLIC else 64)
#: Inspect requests handled at once (their images then take turns at :data:`IMAGE_GATE`, two at a time).
INSPECT_CONCURRENCY = _env_int("IKD_INSPECT_CONCURRENCY", 16)
INSPECT_MAX_SIDE = _env_int("IKD_INSPECT_MAX_SIDE", 1024 if PUBLIC else service.MAX_INSPECT_SIDE)
#: Larger images (by their header) are refused before decoding: 16 MP in public mode, else the engine's limit.
MAX_IMAGE_PIXELS = _env_int("IKD_MAX_IMAGE_PIXELS", 16_000_000 if PUBLIC else 0) or None
MAX_GIF_IMAGES = 32
#: A training run's time limit in public mode (minutes); one run at a time (the queue shows the others' places).
MAX_TRAIN_MINUTES = float(os.environ.get("IKD_MAX_TRAIN_MINUTES") or (10 if PUBLIC else 0)) or None
MAX_KEPT_EXPORTS = 16  # exported GIFs kept on disk per workspace (older ones are deleted)
MAX_FILE_SIZE = os.environ.get("IKD_MAX_FILE_SIZE", "100mb" if PUBLIC else "1gb")
#: Every visitor's own folders (public mode; one shared workspace otherwise), removed with the session or after
#: ``IKD_WORKSPACE_TTL_S`` idle seconds; quotas ``IKD_WORKSPACE_MB`` and ``IKD_WORKSPACE_CHECKPOINTS``.
WORKSPACES = service.WorkspaceManager(
    PATHS.work,
    PATHS.pretrained,
    PUBLIC,
    service.Quota.from_env(),
    ttl_s=float(os.environ.get("IKD_WORKSPACE_TTL_S") or 7200),
)
#: Each image of an Inspect or GIF request takes a turn here, in arrival order, so one visitor's large request
#: cannot hold back another's single image.
IMAGE_GATE = service.FairGate(2)
#: Gradio's temporary files (uploads, rendered results): every FREQUENCY seconds, those older than AGE seconds
#: are deleted ("FREQUENCY,AGE"; all of them when the server stops).
DELETE_CACHE = tuple(int(v) for v in os.environ.get("IKD_DELETE_CACHE", "3600,86400").split(",", 1))

SRC_DEMO, SRC_MVTEC, SRC_FOLDER, SRC_UPLOAD = "Demo", "MVTec AD", "Folder on server", "Upload good images"
SOURCES = [SRC_DEMO, SRC_MVTEC, SRC_FOLDER, SRC_UPLOAD] if ALLOW_SERVER_PATHS else [SRC_DEMO, SRC_MVTEC, SRC_UPLOAD]
BACKBONE_CHOICES = [
    ("efficientnet_lite0 (default, works offline)", "efficientnet_lite0"),
    ("hrnet_w32 (as in the paper)", "hrnet_w32"),
    ("resnet18", "resnet18"),
    ("wide_resnet50_2", "wide_resnet50_2"),
    ("hrnet_w18", "hrnet_w18"),
    ("hrnet_w48", "hrnet_w48"),
]
assert {v for _, v in BACKBONE_CHOICES} <= set(BACKBONES)


JOBS = service.JobRegistry()
#: Maps of inspected images, by checkpoint and file (bounded in bytes: ``IKD_PREDICTION_CACHE_MB``, default 256).
PREDICTIONS = service.PredictionCache(int(os.environ.get("IKD_PREDICTION_CACHE_MB", "256")) * 1024**2)
#: Inspect and GIF requests; when the last one of a burst ends, freed memory goes back to the OS.
TRIMMER = service.Trimmer()
_DATA_LOCK = threading.Lock()
_TEST_SETS: dict[str, tuple[list[Sample], service.SampleIndex]] = {}


SCRUB_ROOTS = [PATHS.pretrained, PATHS.data, PATHS.work, REPO]


def err(exc: Exception) -> gr.Error:
    """A user-facing error for the browser / API client: the engine's message, with no server path in it."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, IKDError):
        return gr.Error(say(exc))
    log.exception("unexpected error")
    return gr.Error(say(f"{type(exc).__name__}: {exc}"))


def say(text: object) -> str:
    """A message for a toast or an error: no server path, and HTML-escaped (it may carry names from files)."""
    return html.escape(service.public_message(str(text), SCRUB_ROOTS), quote=False)


def md(text: object) -> str:
    """A user- or file-supplied string, inert in Markdown and HTML."""
    return service.escape_markdown(text)


def workspace(request: gr.Request | None, create: bool = True) -> service.Workspace:
    """The caller's workspace, found on the server by the caller's session (one shared one in private mode)."""
    ws = WORKSPACES.get(getattr(request, "session_hash", None), create=create)
    if ws is None:
        raise gr.Error("no workspace for this session (it has expired): reload the page")
    return ws


def checkpoint_dirs(ws: service.Workspace) -> list[Path]:
    """Where the caller's checkpoints are: their own first, then the shipped (read-only in public mode) ones."""
    return [ws.pretrained] if ws.pretrained == PATHS.pretrained else [ws.pretrained, PATHS.pretrained]


def checkpoint_infos(ws: service.Workspace) -> list[service.CheckpointInfo]:
    seen: set[str] = set()
    out = []
    for d in checkpoint_dirs(ws):
        for info in service.list_checkpoints(d):
            if info.name not in seen:
                seen.add(info.name)
                out.append(info)
    return out


def checkpoint_names(ws: service.Workspace) -> list[str]:
    return [i.name for i in checkpoint_infos(ws)]


def initial_checkpoint(ws: service.Workspace) -> str | None:
    return service.default_checkpoint(checkpoint_infos(ws), READY_CHECKPOINTS)


def resolve(name: str | None, ws: service.Workspace) -> Path:
    """A checkpoint of the caller's by name: in their workspace, else among the shipped ones."""
    err: IKDError | None = None
    for d in checkpoint_dirs(ws):
        try:
            return service.resolve_checkpoint(name or "", d)
        except IKDError as exc:
            err = err or exc
    assert err is not None
    raise err


def predictor_for(name: str | None, ws: service.Workspace) -> tuple[Path, Any]:
    """The checkpoint's path and its CPU predictor (metadata, test set; the GPU copy lives in the GPU calls)."""
    path = resolve(name, ws)
    return path, gpu.PREDICTORS.get(path, "cpu")


def ensure_demo_data() -> Path:
    """Generate the offline demo set on first use (a few seconds)."""
    with _DATA_LOCK:
        return ensure_demo_dataset(PATHS.demo_root)


def test_set(ckpt_path: Path, meta: dict[str, Any]) -> tuple[list[Sample], service.SampleIndex]:
    """Test samples of the data a checkpoint was trained on, from the operator's data or what this server recorded
    when it trained it (never a path from the checkpoint's metadata); empty when there is none here."""
    spec = POLICY.test_spec(meta, file_digest(ckpt_path))
    if spec is None or (spec.kind == "folder" and not spec.test_dir):
        return [], service.SampleIndex([])
    key = json.dumps(spec.to_dict(), sort_keys=True)
    if key in _TEST_SETS:
        return _TEST_SETS[key]
    if spec.kind == "demo":
        ensure_demo_data()
    try:
        _, test_ds = build_datasets(spec, int(meta.get("image_size", 256)))
    except IKDError as exc:
        log.info("no test set for %s: %s", spec.category, exc)
        return [], service.SampleIndex([])
    samples = list(test_ds.samples) if test_ds is not None else []  # type: ignore[union-attr]
    _TEST_SETS[key] = (samples, service.SampleIndex(samples))
    return _TEST_SETS[key]


def example_images(ckpt_path: Path, meta: dict[str, Any], n: int = 12) -> list[str]:
    from ikd_core.gif import pick_samples

    samples, _ = test_set(ckpt_path, meta)
    return [s.path for s in pick_samples(samples, n, seed=0)]


def example_gallery(paths: list[str]) -> list[tuple[str, str]]:
    """Example thumbnails with captions: the defect type (the test sub-folder) and the file name."""
    return [(p, f"{Path(p).parent.name}/{Path(p).name}") for p in paths or []]


def _keys(ckpt_path: Path, paths: list[str], tile: bool = False) -> list[tuple[Any, ...]]:
    ckpt_key = service.PredictorCache.key(ckpt_path, "cpu")
    # by content: the same image uploaded again (a new temporary file) is found too
    return [(*ckpt_key, file_digest(image), INSPECT_MAX_SIDE, tile) for image in paths]


def decode(path: str) -> tuple[Any, str | None]:
    """An uploaded image decoded at most :data:`INSPECT_MAX_SIDE` px a side (refused above
    :data:`MAX_IMAGE_PIXELS`, from its header)."""
    return service.load_inspect_image(path, max_side=INSPECT_MAX_SIDE, max_pixels=MAX_IMAGE_PIXELS)


def load_and_predict(ckpt_path: Path, paths: list[str], tile: bool = False) -> list[tuple[Any, str | None, Any]]:
    """(image, note, prediction) of each image file. Predictions come from the server-side cache where present.

    On the CPU each image is decoded and scored in one turn of :data:`IMAGE_GATE`, taken in arrival order, so a
    visitor's one-image request waits for at most one image of each other request, never for whole requests. On
    ZeroGPU the images are decoded first and the missing maps come from one GPU call.
    """
    keys = _keys(ckpt_path, paths, tile)
    out: list[tuple[Any, str | None, Any]] = []
    for path, key in zip(paths, keys, strict=True):
        if gpu.ZERO_GPU:
            img, note = decode(path)
            out.append((img, note, PREDICTIONS.get(key)))
            continue
        with IMAGE_GATE.turn():
            img, note = decode(path)
            pred = PREDICTIONS.get(key)
            if pred is None:
                pred = gpu.predict_on_device(str(ckpt_path), [np.asarray(img)], tile)[0]
                PREDICTIONS.put(key, pred)
        out.append((img, note, pred))
    missing = [i for i, (_, _, pred) in enumerate(out) if pred is None]
    if missing:
        new = gpu.predict_on_device(str(ckpt_path), [np.asarray(out[i][0]) for i in missing], tile)
        for i, pred in zip(missing, new, strict=True):
            PREDICTIONS.put(keys[i], pred)
            out[i] = (out[i][0], out[i][1], pred)
    return out


def file_list(files: Any) -> list[str]:
    if files is None:
        return []
    if isinstance(files, (str, Path)):
        return [str(files)]
    return [str(getattr(f, "name", f)) for f in files if f]


def verdict_text(anomalous: bool) -> str:
    return "anomalous" if anomalous else "normal"


def checked_display(threshold: Any, alpha: Any, cmap: Any) -> tuple[float, float, str]:
    """Display settings from a request, checked here (an API client bypasses the widgets: a raw NaN passes them)."""
    if cmap not in COLORMAPS:
        raise gr.Error(f"unknown colormap; choose one of {', '.join(COLORMAPS)}")
    return (
        float(service.number(threshold, "threshold", 0.0, 1.0)),
        float(service.number(alpha, "overlay opacity", 0.0, 1.0)),
        str(cmap),
    )


def warm_up() -> None:
    """Prepare what the first visitor needs (demo data, the ready model, its test set) before the
    server opens, so the first upload gets its heatmap at once (a few seconds, once)."""
    try:
        copied = service.seed_checkpoints(REPO / service.SHIPPED_PRETRAINED, PATHS.pretrained)
        if copied:
            log.info("copied the shipped checkpoints into %s: %s", PATHS.pretrained, ", ".join(copied))
        ensure_demo_data()
        name = initial_checkpoint(WORKSPACES.shared)
        if name:
            path, predictor = predictor_for(name, WORKSPACES.shared)
            example_images(path, predictor.metadata)
    except Exception:  # noqa: BLE001 - a failed warm-up only means the first request does the work
        log.exception("warm-up failed")
