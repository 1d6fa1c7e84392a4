"""IKD Studio: a Gradio 6 web app for unsupervised image anomaly segmentation with Informative Knowledge
Distillation.

Tabs: **Model** (train on the demo set, MVTec AD, a folder or uploaded good images; load / upload
checkpoints), **Inspect** (heatmaps, overlays, scores and verdicts for your images) and **Export GIF**.

``demo`` is importable without side effects (nothing is trained, generated or loaded at import, except on ZeroGPU,
where the ready model is loaded on the CPU at import as ZeroGPU expects). ``python app.py`` prepares the demo data
and the ready checkpoint, then serves; the address comes from ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``
(default 127.0.0.1:7860).

Settings (environment): ``IKD_STORAGE`` (one folder for everything written, e.g. ``/data`` on a Space with
persistent storage; the shipped checkpoints are copied there on first start) or the single folders
``IKD_PRETRAINED_DIR``, ``IKD_DATA_DIR`` and ``IKD_WORK_DIR`` (see ``ikd_core.service``); ``IKD_MAX_FILE_SIZE``
(default ``1gb``) limits each upload; ``IKD_DELETE_CACHE`` (``FREQUENCY,AGE`` in seconds, default ``3600,86400``)
sweeps Gradio's temporary files; ``IKD_ALLOW_SERVER_PATHS=0`` hides server folders; ``IKD_PUBLIC`` (default: on
when ``SPACE_ID`` is set) turns on public mode (per-visitor workspaces and quotas, no server paths; README "Public
mode" lists its settings); ``IKD_GPU_MAX_DURATION``
(default 120, below 300) is the longest ZeroGPU call; ``IKD_PREDICTION_CACHE_MB`` (default 256) bounds the cached
maps that re-rendering uses.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch

from ikd_core import service
from ikd_core.backbones import BACKBONES
from ikd_core.checkpoint import max_image_size, sidecar_path
from ikd_core.data.mvtec import MVTEC_CATEGORIES, Sample, check_category_name, list_categories
from ikd_core.data.sources import DataSpec, build_datasets, default_checkpoint_name
from ikd_core.data.synthetic import DEMO_CATEGORIES, ensure_demo_dataset
from ikd_core.errors import IKDError
from ikd_core.visualize import COLORMAPS

log = logging.getLogger("ikd_studio")

REPO = Path(__file__).resolve().parent
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
MAX_INSPECT_IMAGES = _env_int("IKD_MAX_INSPECT_IMAGES", 16 if PUBLIC else 64)
INSPECT_MAX_SIDE = _env_int("IKD_INSPECT_MAX_SIDE", 1024 if PUBLIC else service.MAX_INSPECT_SIDE)
#: Larger images (by their header) are refused before decoding: 40 MP in public mode, else the engine's limit.
MAX_IMAGE_PIXELS = _env_int("IKD_MAX_IMAGE_PIXELS", 40_000_000 if PUBLIC else 0) or None
MAX_GIF_IMAGES = 32
#: A training run's time limit in public mode (minutes); one run at a time (the queue shows the others' places).
MAX_TRAIN_MINUTES = float(os.environ.get("IKD_MAX_TRAIN_MINUTES") or (10 if PUBLIC else 0)) or None
MAX_KEPT_EXPORTS = 16  # exported GIFs kept on disk per workspace (older ones are deleted)
MAX_FILE_SIZE = os.environ.get("IKD_MAX_FILE_SIZE", "100mb" if PUBLIC else "1gb")
#: Every visitor's own folders (public mode; one shared workspace otherwise), removed with the session or after
#: ``IKD_WORKSPACE_TTL_S`` idle seconds; quotas ``IKD_WORKSPACE_MB`` and ``IKD_WORKSPACE_CHECKPOINTS``.
WORKSPACES = service.WorkspaceManager(PATHS.work, PATHS.pretrained, PUBLIC, service.Quota.from_env(),
                                      ttl_s=float(os.environ.get("IKD_WORKSPACE_TTL_S") or 7200))
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


# ------------------------------------------------------------------------------------------ device / ZeroGPU
# On a ZeroGPU Space a GPU exists only inside functions decorated with ``spaces.GPU``, which run in a worker
# process: their arguments and every value they return or yield are pickled. So models are loaded on the CPU in
# the server process (before the worker forks), only forward passes (and training) run in the decorated
# functions below, and re-rendering (threshold, opacity, colormap, GIF frames) uses maps cached in the server
# process. Outside ZeroGPU ``spaces.GPU`` returns the function as it is.
try:
    import spaces  # type: ignore[import-not-found]
    from spaces.config import Config as _SpacesConfig  # type: ignore[import-not-found]

    ZERO_GPU = bool(_SpacesConfig.zero_gpu)
except ImportError:  # not on Hugging Face: plain CPU / CUDA
    spaces = None
    ZERO_GPU = False

#: Longest GPU call asked for, in seconds (ZeroGPU refuses more than its maximum; shorter calls queue sooner).
GPU_MAX_DURATION = int(os.environ.get("IKD_GPU_MAX_DURATION", "120"))
if not 10 <= GPU_MAX_DURATION < 300:
    raise SystemExit("IKD_GPU_MAX_DURATION must be 10-299 seconds")
INFER_DURATION = min(30, GPU_MAX_DURATION)  # up to 64 images through the model
TRAIN_DURATION = GPU_MAX_DURATION
#: Seconds of a ZeroGPU training call kept for data loading, model building, the threshold fit, evaluation and
#: saving; the rest is the training time limit there.
TRAIN_RESERVE_S = 45
GPU_FUNCTIONS: dict[str, int] = {}  # name -> duration of every GPU-decorated function (tests check them)


def gpu(duration: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``spaces.GPU(duration=...)`` where the ``spaces`` package is installed; the duration must fit the ceiling."""
    if not 0 < duration <= GPU_MAX_DURATION:
        raise ValueError(f"GPU duration {duration} s is above the ceiling of {GPU_MAX_DURATION} s")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        GPU_FUNCTIONS[fn.__name__] = duration
        return spaces.GPU(duration=duration)(fn) if spaces is not None else fn

    return deco


def has_gpu() -> bool:
    """Whether forward passes will run on a GPU (on ZeroGPU: inside the decorated functions)."""
    return ZERO_GPU or torch.cuda.is_available()


def compute_device() -> str:
    """The device of forward passes. Call it only inside a :func:`gpu` function: on ZeroGPU CUDA exists there."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------------ shared state
PREDICTORS = service.PredictorCache(maxsize=3)
JOBS = service.JobRegistry()
#: Maps of inspected images, by checkpoint and file (bounded in bytes: ``IKD_PREDICTION_CACHE_MB``, default 256).
PREDICTIONS = service.PredictionCache(int(os.environ.get("IKD_PREDICTION_CACHE_MB", "256")) * 1024**2)
_DATA_LOCK = threading.Lock()
_TEST_SETS: dict[str, tuple[list[Sample], service.SampleIndex]] = {}


_SCRUB_ROOTS = [PATHS.pretrained, PATHS.data, PATHS.work, REPO]


def _err(exc: Exception) -> gr.Error:
    """A user-facing error for the browser / API client: the engine's message, with no server path in it."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, IKDError):
        return gr.Error(_say(exc))
    log.exception("unexpected error")
    return gr.Error(_say(f"{type(exc).__name__}: {exc}"))


def _say(text: object) -> str:
    """A message for a toast or an error: no server path, and HTML-escaped (it may carry names from files)."""
    return html.escape(service.public_message(str(text), _SCRUB_ROOTS), quote=False)


def _md(text: object) -> str:
    """A user- or file-supplied string, inert in Markdown and HTML."""
    return service.escape_markdown(text)


def _ws(request: gr.Request | None, create: bool = True) -> service.Workspace:
    """The caller's workspace, found on the server by the caller's session (one shared one in private mode)."""
    ws = WORKSPACES.get(getattr(request, "session_hash", None), create=create)
    if ws is None:
        raise gr.Error("no workspace for this session (it has expired): reload the page")
    return ws


def _dirs(ws: service.Workspace) -> list[Path]:
    """Where the caller's checkpoints are: their own first, then the shipped (read-only in public mode) ones."""
    return [ws.pretrained] if ws.pretrained == PATHS.pretrained else [ws.pretrained, PATHS.pretrained]


def _infos(ws: service.Workspace) -> list[service.CheckpointInfo]:
    seen: set[str] = set()
    out = []
    for d in _dirs(ws):
        for info in service.list_checkpoints(d):
            if info.name not in seen:
                seen.add(info.name)
                out.append(info)
    return out


def checkpoint_names(ws: service.Workspace) -> list[str]:
    return [i.name for i in _infos(ws)]


def initial_checkpoint(ws: service.Workspace) -> str | None:
    return service.default_checkpoint(_infos(ws), READY_CHECKPOINTS)


def resolve(name: str | None, ws: service.Workspace) -> Path:
    """A checkpoint of the caller's by name: in their workspace, else among the shipped ones."""
    err: IKDError | None = None
    for d in _dirs(ws):
        try:
            return service.resolve_checkpoint(name or "", d)
        except IKDError as exc:
            err = err or exc
    assert err is not None
    raise err


def _predictor(name: str | None, ws: service.Workspace) -> tuple[Path, Any]:
    """The checkpoint's path and its CPU predictor (metadata, test set; the GPU copy lives in the GPU calls)."""
    path = resolve(name, ws)
    return path, PREDICTORS.get(path, "cpu")


def ensure_demo_data() -> Path:
    """Generate the offline demo set on first use (a few seconds)."""
    with _DATA_LOCK:
        return ensure_demo_dataset(PATHS.demo_root)


def test_set(ckpt_path: Path, meta: dict[str, Any]) -> tuple[list[Sample], service.SampleIndex]:
    """Test samples of the data a checkpoint was trained on, from the operator's data or what this server recorded
    when it trained it (never a path from the checkpoint's metadata); empty when there is none here."""
    spec = POLICY.test_spec(meta, service.file_digest(ckpt_path))
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


# ------------------------------------------------------------------------------------------ Inspect
@gpu(duration=INFER_DURATION)
def predict_on_device(ckpt_path: str, images: list[np.ndarray]) -> list[Any]:
    """The forward passes of Inspect and GIF export: one image per pass (so a result never depends on the other
    images and equals ``Predictor.predict([image])``). Takes and returns plain picklable values (uint8 arrays in,
    :class:`~ikd_core.predict.Prediction` out)."""
    predictor = PREDICTORS.get(ckpt_path, compute_device())
    return [predictor.predict([img])[0] for img in images]


def predictions_for(ckpt_path: Path, paths: list[str], loaded: list[Any] | None = None) -> list[Any]:
    """Predictions of image files, from the server-side cache where present; the rest in one GPU call.
    ``loaded``: the images already decoded by :func:`ikd_core.service.load_inspect_image`."""
    ckpt_key = service.PredictorCache.key(ckpt_path, "cpu")
    # by content: the same image uploaded again (a new temporary file) is found too
    keys = [(*ckpt_key, service.file_digest(image), INSPECT_MAX_SIDE) for image in paths]
    preds = [PREDICTIONS.get(k) for k in keys]
    missing = [i for i, p in enumerate(preds) if p is None]
    if missing:
        images = [np.asarray(loaded[i] if loaded is not None else load_image_capped(paths[i])[0]) for i in missing]
        if ZERO_GPU:  # one GPU call for all of them
            new = predict_on_device(str(ckpt_path), images)
        else:  # one turn per image, so no request holds back another visitor's single image
            new = []
            for img in images:
                with IMAGE_GATE.turn():
                    new += predict_on_device(str(ckpt_path), [img])
        for i, pred in zip(missing, new, strict=True):
            PREDICTIONS.put(keys[i], pred)
            preds[i] = pred
    return preds


def load_image_capped(path: str) -> tuple[Any, str | None]:
    """An uploaded image decoded at most :data:`INSPECT_MAX_SIDE` px a side (one image at a time per turn)."""
    with IMAGE_GATE.turn():
        return service.load_inspect_image(path, max_side=INSPECT_MAX_SIDE, max_pixels=MAX_IMAGE_PIXELS)


def _file_list(files: Any) -> list[str]:
    if files is None:
        return []
    if isinstance(files, (str, Path)):
        return [str(files)]
    return [str(getattr(f, "name", f)) for f in files if f]


def verdict_text(anomalous: bool) -> str:
    return "anomalous" if anomalous else "normal"


def _checked(threshold: Any, alpha: Any, cmap: Any) -> tuple[float, float, str]:
    """Display settings from a request, checked here (an API client bypasses the widgets: a raw NaN passes them)."""
    if cmap not in COLORMAPS:
        raise gr.Error(f"unknown colormap; choose one of {', '.join(COLORMAPS)}")
    return (float(service.number(threshold, "threshold", 0.0, 1.0)),
            float(service.number(alpha, "overlay opacity", 0.0, 1.0)), str(cmap))


def inspect_images(
    files: Any, ckpt: str, threshold: float, alpha: float, cmap: str, index: int | None,
    request: gr.Request = None,  # type: ignore[assignment]
) -> tuple[Any, ...]:
    """Score the images; details (original, heatmap, overlay, ground truth, score, verdict) of image
    ``index``, a gallery of all overlays and a table of all scores."""
    from ikd_core.data.transforms import load_mask
    from ikd_core.predict import render

    paths = _file_list(files)
    if not paths:
        return None, None, None, gr.Image(value=None, visible=False), None, "", [], []
    try:
        threshold, alpha, cmap = _checked(threshold, alpha, cmap)
        if len(paths) > MAX_INSPECT_IMAGES:
            gr.Warning(f"{len(paths)} images uploaded; showing the first {MAX_INSPECT_IMAGES}")
            paths = paths[:MAX_INSPECT_IMAGES]
        ws = _ws(request)
        ckpt_path, predictor = _predictor(ckpt, ws)
        images = []
        for p in paths:
            img, note = load_image_capped(p)
            if note:
                gr.Info(_say(note))
            images.append(img)
        preds = predictions_for(ckpt_path, paths, images)
        rows, gallery = [], []
        for p, img, pred in zip(paths, images, preds, strict=True):
            bad = pred.is_anomalous(threshold)
            rows.append([Path(p).name, round(pred.norm_score, 4), verdict_text(bad)])
            over = render(img, pred, threshold, alpha, cmap)["overlay"]
            gallery.append((over, f"{Path(p).name}: {pred.norm_score:.3f} {verdict_text(bad)}"))
        i = min(max(int(service.number(index or 0, "index", 0, 10**6, integer=True)), 0), len(paths) - 1)
        pics = render(images[i], preds[i], threshold, alpha, cmap)
        _, sample_index = test_set(ckpt_path, predictor.metadata)
        sample = sample_index.lookup(paths[i])
        gt = None
        if sample is not None and sample.mask_path:
            gt = (load_mask(sample.mask_path).astype(np.uint8) * 255)
        score = round(preds[i].norm_score, 4)
        verdict = verdict_text(preds[i].is_anomalous(threshold))
    except Exception as exc:  # noqa: BLE001 - shown to the user, the server keeps serving
        raise _err(exc) from exc
    gt_update = gr.Image(value=gt, visible=gt is not None)
    return pics["image"], pics["heatmap"], pics["overlay"], gt_update, score, verdict, rows, gallery


# ------------------------------------------------------------------------------------------ Model: checkpoints
def describe_checkpoint(name: str | None, ws: service.Workspace) -> str:
    if not name:
        return ("No checkpoint yet: train one below (the demo takes a few minutes) or upload a "
                "`.safetensors` checkpoint.")
    try:
        path = resolve(name, ws)
    except IKDError as exc:
        return f"**{_md(name)}**: {_md(service.public_message(str(exc), _SCRUB_ROOTS))}"
    return service.checkpoint_info(path).describe()


def active_label(name: str | None, ws: service.Workspace) -> str:
    if not name:
        return "**Active model:** none (train or load one in the Model tab)"
    info = service.checkpoint_info(resolve(name, ws))
    if not info.ok:
        return f"**Active model:** {_md(name)} (unusable)"
    return (f"**Active model:** {_md(name)} ({_md(info.category)}, {_md(info.backbone)}, "
            f"{_md(info.image_size)} px)")


def on_checkpoint_change(name: str | None, request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
    """Checkpoint chosen: load it (so errors show now), show its metadata and example test images."""
    ws = _ws(request)
    examples: list[str] = []
    if name:
        try:
            path, predictor = _predictor(name, ws)
            examples = example_images(path, predictor.metadata)
        except IKDError as exc:
            gr.Warning(_say(exc))
    try:
        label = active_label(name, ws)
    except IKDError as exc:
        label = f"**Active model:** none ({_md(name)}: {_md(service.public_message(str(exc), _SCRUB_ROOTS))})"
    return describe_checkpoint(name, ws), label, examples, examples


def refresh_checkpoints(current: str | None, request: gr.Request = None) -> Any:  # type: ignore[assignment]
    ws = _ws(request)
    names = checkpoint_names(ws)
    value = current if current in names else initial_checkpoint(ws)
    return gr.Dropdown(choices=names, value=value)


def import_checkpoint(files: Any, current: str | None, request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
    """Validate an uploaded ``.safetensors`` (+ optional ``.json``) and make it the active checkpoint (in public
    mode it goes into the visitor's own workspace, within its quota)."""
    paths = [Path(p) for p in _file_list(files)]
    if not paths:
        return gr.skip(), gr.skip(), None
    ckpts = [p for p in paths if p.suffix.lower() == ".safetensors"]
    sides = [p for p in paths if p.suffix.lower() == ".json"]
    others = [p for p in paths if p not in ckpts and p not in sides]
    if others or len(ckpts) != 1 or len(sides) > 1:
        names = ", ".join(html.escape(p.name) for p in paths)
        raise gr.Error(
            f"upload one .safetensors checkpoint (and optionally its .json metadata); got: {names}. "
            ".pt/.ckpt/.pth files are pickles and are never loaded."
        )
    try:
        ws = _ws(request)
        ws.check_quota(extra_bytes=sum(p.stat().st_size for p in paths), extra_checkpoints=1)
        name = Path(ckpts[0].name).name
        if ws.pretrained != PATHS.pretrained and (PATHS.pretrained / name).exists():
            name = f"{Path(name).stem}-uploaded{service.CHECKPOINT_SUFFIX}"  # never shadows a shipped one
        info = service.import_checkpoint(ckpts[0], ws.pretrained, sidecar=sides[0] if sides else None,
                                         original_name=name, device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise _err(exc) from exc
    gr.Info(_say(f"checkpoint {info.name} added and active"))
    return gr.Dropdown(choices=checkpoint_names(ws), value=info.name), info.describe(), None


def download_checkpoint(name: str | None, request: gr.Request = None) -> list[str]:  # type: ignore[assignment]
    """The active checkpoint and its ``.json`` metadata as files to download (to upload them again later)."""
    try:
        path = resolve(name, _ws(request))
    except Exception as exc:  # noqa: BLE001
        raise _err(exc) from exc
    side = sidecar_path(path)
    return [str(path)] + ([str(side)] if side.is_file() else [])


# ------------------------------------------------------------------------------------------ Model: data sources
def category_choices(source: str, data_root: str) -> list[str]:
    if source == SRC_DEMO:
        return list(DEMO_CATEGORIES)
    if source == SRC_MVTEC:
        found = list_categories(POLICY.mvtec_root(data_root))
        return found or list(MVTEC_CATEGORIES)
    return []


def mvtec_panel_text(root: Path, category: str | None) -> str:
    missing = f"Category {_md(category)} is missing. " if category else ""
    if PUBLIC:
        return (f"### MVTec AD is not installed on this server\n{missing}The operator of this deployment provides "
                "it (in its data folder); train on the demo set or on your own images meanwhile.")
    return (
        f"### MVTec AD not found under {_md(root)}\n{missing}"
        "Download it here (about 4.9 GB, with progress)"
        + (", or give the path of an already downloaded archive (`mvtec_anomaly_detection.tar.xz` / `.zip`) "
           "or of an extracted MVTec AD folder" if ALLOW_SERVER_PATHS else "")
        + ". MVTec AD is licensed CC BY-NC-SA 4.0 (see mvtec.com)."
    )


def on_source_change(source: str, data_root: str, category: str | None) -> tuple[Any, ...]:
    choices = category_choices(source, data_root)
    value = category if category in choices else (choices[0] if choices else None)
    is_mvtec = source == SRC_MVTEC
    root = POLICY.mvtec_root(data_root)
    missing = is_mvtec and service.mvtec_missing(root, value)
    return (
        gr.Dropdown(choices=choices, value=value, visible=source in (SRC_DEMO, SRC_MVTEC)),
        gr.Textbox(visible=is_mvtec and ALLOW_SERVER_PATHS),
        gr.Textbox(visible=source == SRC_FOLDER),
        gr.Textbox(visible=source == SRC_FOLDER),
        gr.File(visible=source == SRC_UPLOAD),
        gr.Textbox(visible=source in (SRC_FOLDER, SRC_UPLOAD)),
        gr.Group(visible=missing),
        mvtec_panel_text(root, value) if missing else "",
    )


def spec_from_ui(source: str, category: str | None, data_root: str, folder: str, test_folder: str,
                 uploads: Any, name: str, ws: service.Workspace) -> DataSpec:
    """The DataSpec the Model tab describes (uploads are extracted into a fresh folder of the workspace). Folders
    come from :data:`POLICY`: the operator's, or in private mode ones the user names."""
    if source == SRC_DEMO:
        if category and category not in DEMO_CATEGORIES:
            raise gr.Error(f"unknown demo category; choose one of {', '.join(DEMO_CATEGORIES)}")
        return DataSpec("demo", category or DEMO_CATEGORY, str(PATHS.demo_root))
    if source == SRC_MVTEC:
        root = POLICY.mvtec_root(data_root)
        if not category:
            raise gr.Error("choose an MVTec AD category")
        check_category_name(category)
        if service.mvtec_missing(root, category):
            raise gr.Error(_say(f"MVTec AD category {category!r} not found"
                                + (" on this server" if PUBLIC else f" under {root}: download it with the panel "
                                   "above or give the folder where it is")))
        return DataSpec("mvtec", category, str(root))
    if source == SRC_FOLDER:
        good = POLICY.server_folder(folder, "folder of good images")
        cat = service.sanitize_name((name or "").strip() or good.name, "custom")
        test = str(POLICY.server_folder(test_folder, "test folder")) if (test_folder or "").strip() else None
        return DataSpec("folder", cat, good_dir=str(good), test_dir=test)
    if source == SRC_UPLOAD:
        files = _file_list(uploads)
        ws.check_quota(extra_bytes=sum(os.path.getsize(f) for f in files if os.path.isfile(f)))
        return service.uploaded_data_spec(files, ws.root, category=(name or "").strip() or None)
    raise gr.Error("unknown data source")


def _download_worker(root: str, archive: str | None, state: dict[str, Any]) -> None:
    from ikd_core.data.download import download_mvtec

    def progress(done: int, total: int) -> None:
        state["done"], state["total"] = done, total

    try:
        download_mvtec(root, archive=archive, progress=progress)
    except Exception as exc:  # noqa: BLE001
        state["error"] = str(exc) if isinstance(exc, IKDError) else f"{type(exc).__name__}: {exc}"
    finally:
        state["finished"] = True


def get_mvtec(root: str, archive_or_folder: str, category: str | None) -> Iterator[tuple[Any, ...]]:
    """Download MVTec AD (or extract a local archive, or adopt an extracted folder) with progress. Downloads and
    extractions replace category folders, so they only go inside the data folder (private mode only)."""
    try:
        src = (archive_or_folder or "").strip()
        if src and POLICY.server_paths and Path(src).expanduser().is_dir():  # read-only use of an extracted copy
            folder = POLICY.server_folder(src, "MVTec AD folder")
            cats = list_categories(folder)
            if not cats:
                raise gr.Error(_say(f"{folder.name} holds no MVTec AD categories (folders with train/good)"))
            yield (f"Using MVTec AD in {_md(folder)} ({len(cats)} categories).", str(folder),
                   gr.Dropdown(choices=cats, value=category if category in cats else cats[0]), gr.Group(visible=False))
            return
        dest = POLICY.mvtec_destination(root)
        archive = str(POLICY.server_folder(src, "archive")) if src else None
    except Exception as exc:  # noqa: BLE001
        raise _err(exc) from exc
    state: dict[str, Any] = {"done": 0, "total": 0, "finished": False}
    threading.Thread(target=_download_worker, args=(str(dest), archive, state), daemon=True).start()
    verb = "Extracting" if archive else "Downloading"
    while not state["finished"]:
        time.sleep(1.0)
        done, total = state["done"], state["total"]
        if archive or not done:
            msg = f"{verb} MVTec AD into {_md(dest)} ..."
        elif total:
            msg = f"Downloading: {done / 1e9:.2f} / {total / 1e9:.2f} GB ({100 * done / total:.0f}%)"
        else:
            msg = f"Downloading: {done / 1e9:.2f} GB"
        yield msg, gr.skip(), gr.skip(), gr.skip()
    if "error" in state:
        raise gr.Error(_say(state["error"]))
    cats = list_categories(dest)
    yield (f"MVTec AD ready under {_md(dest)} ({len(cats)} categories).", str(dest),
           gr.Dropdown(choices=cats, value=category if category in cats else (cats[0] if cats else None)),
           gr.Group(visible=False))


# ------------------------------------------------------------------------------------------ Model: training
def _hms(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_text(p: Any, status: str, stopping: bool = False) -> str:
    """Markdown for a training run's progress ``p`` (:class:`ikd_core.train.Progress`, or ``None`` before the
    first step)."""
    if stopping:
        status = "stopping at the next step"
    if p is not None:
        frac = p.fraction
        bar = (f'<div class="ikd-bar"><div style="width:{100 * frac:.1f}%"></div></div>'
               f"\n\n**{100 * frac:.0f}%** · ")
        line = (f"epoch {p.epoch}/{p.epochs} · step {p.step}/{p.steps_per_epoch} · loss {p.loss:.4f} · "
                f"{p.images_per_sec:.1f} images/s · elapsed {_hms(p.elapsed_s)} · ETA {_hms(p.eta_s)}")
        phase = {"fit": "fitting the threshold on held-out good images", "evaluate": "evaluating on the test set",
                 "validate": "validating", "done": "saving"}.get(p.phase)
        if phase and status in ("", p.phase):
            status = phase
        return f"{bar}{line}" + (f"  \n_{status}_" if status else "")
    return f"_{status or 'starting'}_"


def _loss_figure(losses: list[tuple[int, float]]) -> Any:
    from ikd_core.visualize import plot_loss_curve

    if not losses:
        return None
    steps, values = zip(*losses, strict=True)
    return plot_loss_curve(np.array(steps), np.array(values))


def _curve_figures(curves: service.Curves | None) -> tuple[Any, Any, Any]:
    from ikd_core.visualize import plot_pro, plot_roc

    if curves is None:
        return None, None, None
    m = curves.metrics
    figs = []
    for (x, y), key, title in ((curves.image_roc, "image_auroc", "Image ROC"),
                               (curves.pixel_roc, "pixel_auroc", "Pixel ROC")):
        figs.append(plot_roc(x, y, m.get(key, float("nan")), title=title) if len(x) else None)
    fx, fy = curves.pro
    figs.append(plot_pro(fx, fy, m.get("au_pro", float("nan"))) if len(fx) else None)
    return figs[0], figs[1], figs[2]


def metrics_markdown(metrics: dict[str, float], title: str) -> str:
    from ikd_core.metrics import format_metrics_table

    if not metrics:
        return f"**{title}**: no labelled test set, so no metrics (the threshold was fitted on held-out good images)."
    return format_metrics_table(metrics, title=title)


@gpu(duration=TRAIN_DURATION)
def train_on_device(spec: dict[str, Any], config: dict[str, Any], out_path: str,
                    stop_file: str) -> Iterator[service.TrainingUpdate]:
    """The training run itself, on the GPU where there is one. Plain values in (the data spec and config as dicts),
    picklable :class:`~ikd_core.service.TrainingUpdate` values out. On ZeroGPU the run is limited to the call's
    duration less :data:`TRAIN_RESERVE_S`; Stop reaches it through ``stop_file``."""
    from ikd_core.train import TrainConfig

    dev = compute_device()
    cfg = TrainConfig(**{**config, "device": dev})
    if ZERO_GPU:
        budget = (TRAIN_DURATION - TRAIN_RESERVE_S) / 60
        cfg.max_minutes = budget if cfg.max_minutes is None else min(cfg.max_minutes, budget)
    job = service.TrainingJob(DataSpec.from_dict(spec), cfg, out_path, device=torch.device(dev), stop_file=stop_file,
                              release_reservation=True)  # the name is free again only once the run has ended
    yield from service.stream_training(job)


def train_model(
    source: str, category: str | None, data_root: str, folder: str, test_folder: str, uploads: Any, name: str,
    backbone: str, image_size: float, epochs: float, batch_size: float, lr: float, request: gr.Request,
) -> Iterator[dict[Any, Any]]:
    """Check the inputs, run :func:`train_on_device` and stream its progress, the loss curve, then metrics, curves
    and the new checkpoint (saved in ``pretrained/`` and made active)."""
    from ikd_core.train import TrainConfig

    spec = None
    try:
        ws = _ws(request)
        if backbone not in BACKBONES:
            raise gr.Error("unknown backbone")
        cfg = TrainConfig(
            backbone=backbone,
            image_size=int(service.number(image_size, "image size", 32, max_image_size(), integer=True)),
            epochs=int(service.number(epochs, "epochs", 1, 100_000, integer=True)),
            batch_size=int(service.number(batch_size, "batch size", 1, 4096, integer=True)),
            lr=float(service.number(lr, "learning rate", 1e-8, 10.0)),
            max_minutes=MAX_TRAIN_MINUTES,
        )
        ws.check_quota(extra_checkpoints=1)
        spec = spec_from_ui(source, category, data_root or "", folder or "", test_folder or "", uploads, name or "",
                            ws)
        # every data problem (missing or empty folders, unsafe names, masks, non-images) is reported now,
        # before a job starts or a checkpoint name is taken
        service.check_training_data(spec, cfg.image_size)
        # the name is reserved at once: an upload meanwhile gets another one, never this one
        out = service.reserve_checkpoint_path(ws.pretrained, default_checkpoint_name(spec.category, backbone))
    except Exception as exc:  # noqa: BLE001
        if source == SRC_UPLOAD:
            service.discard_upload(spec, ws.root if spec is not None else PATHS.work)
        raise _err(exc) from exc
    stop = service.StopFile(ws.jobs)
    JOBS.put(ws.id, stop)
    title = (f"{_md(spec.category)} ({backbone}, {cfg.image_size} px, {cfg.epochs} epochs"
             + (f", at most {cfg.max_minutes:g} min" if cfg.max_minutes else "") + ")")
    yield {progress_md: f"_starting: {title}_", metrics_md: "", loss_plot: None, roc_img_plot: None,
           roc_pix_plot: None, pro_plot: None, stop_btn: gr.Button(interactive=True)}
    losses: list[tuple[int, float]] = []
    status, last, end = "", None, None
    try:
        with contextlib.closing(train_on_device(spec.to_dict(), cfg.to_dict(), str(out), str(stop.path))) as run:
            for up in run:
                losses += up.losses
                if up.kind == "end":
                    end = up
                    break
                if up.kind == "status":
                    status = up.message
                else:
                    status, last = "", up.progress
                update: dict[Any, Any] = {progress_md: progress_text(last, status, stop.path.exists())}
                if up.losses:
                    update[loss_plot] = _loss_figure(losses)
                yield update
    finally:
        if end is None:
            stop.set()  # the client went away: end the run, nothing is saved
        JOBS.discard(ws.id, stop)
        stop.clear()
        if source == SRC_UPLOAD:  # the extracted images are only needed while training
            service.discard_upload(spec, ws.root)
    done_state = {stop_btn: gr.Button(interactive=False)}
    if end is None or end.state == "failed":
        error = end.error if end is not None else "training ended unexpectedly"
        yield {**done_state, progress_md: f"**Training failed:** {_md(error or 'training failed')}"}
        raise gr.Error(_say(error or "training failed"))
    if end.state == "cancelled":
        yield {**done_state, progress_md: "**Stopped.** Nothing was saved; the active model is unchanged."}
        return
    ckpt_path = Path(end.checkpoint or out)
    ckpt = ckpt_path.name
    if spec.kind != "demo" and source != SRC_UPLOAD:  # so its test set is found again (never from metadata)
        POLICY.known.record(service.file_digest(ckpt_path), spec)
    roc_i, roc_p, pro = _curve_figures(end.curves)
    meta = end.metadata
    gr.Info(_say(f"checkpoint {ckpt} saved and active"))
    yield {
        **done_state,
        progress_md: (f"**Done** in {_hms(end.seconds)}: {meta.get('epochs_completed')} epochs, "
                      f"{meta.get('images_per_sec')} images/s on {meta.get('device')}. "
                      f"Checkpoint `{ckpt}` saved and active."),
        loss_plot: _loss_figure(losses),
        metrics_md: metrics_markdown(end.metrics, title),
        roc_img_plot: roc_i,
        roc_pix_plot: roc_p,
        pro_plot: pro,
        ckpt_dd: gr.Dropdown(choices=checkpoint_names(ws), value=ckpt),
        ckpt_info: describe_checkpoint(ckpt, ws),
    }


def stop_training(request: gr.Request) -> None:
    """Stop the caller's own training run: the job is looked up by the caller's workspace on the server, so no
    request can stop another visitor's run (the run itself reports the end, so nothing is returned)."""
    ws = WORKSPACES.get(getattr(request, "session_hash", None), create=False) if PUBLIC else WORKSPACES.shared
    if ws is not None and JOBS.stop(ws.id):
        gr.Info("stopping at the next step; nothing will be saved")


# ------------------------------------------------------------------------------------------ Export GIF
def export_gif(ckpt: str, n: float, fps: float, width: float, threshold: float, alpha: float, cmap: str,
               files: Any, request: gr.Request = None) -> tuple[Any, Any, str]:  # type: ignore[assignment]
    """A GIF of the images in the Inspect tab, or else of ``n`` test images of the active model's data. The maps
    come from the prediction cache or the model; the frames are drawn on the CPU."""
    from ikd_core.gif import make_gif, pick_samples

    try:
        n = int(service.number(n, "number of images", 1, MAX_GIF_IMAGES, integer=True))
        fps = float(service.number(fps, "frames per second", 0.1, 30.0))
        width = int(service.number(width, "frame width", 64, 1600, integer=True))
        threshold, alpha, cmap = _checked(threshold, alpha, cmap)
        ws = _ws(request)
        path, predictor = _predictor(ckpt, ws)
        images, masks = _file_list(files)[:n], None
        what = f"{len(images)} of your images"
        if not images:
            samples, _ = test_set(path, predictor.metadata)
            if not samples:
                raise gr.Error("this model's data has no test set here: upload images in the Inspect tab first")
            picked = pick_samples(samples, n, seed=0)
            images, masks = [s.path for s in picked], [s.mask_path for s in picked]
            what = f"{len(images)} test images of {_md(predictor.metadata.get('category'))}"
        loaded = [load_image_capped(p)[0] for p in images]
        preds = predictions_for(path, images, loaded)
        out = ws.exports / f"{path.stem}-{uuid.uuid4().hex[:8]}.gif"
        out.parent.mkdir(parents=True, exist_ok=True)
        service.prune_files(out.parent, keep=MAX_KEPT_EXPORTS - 1)
        make_gif(None, [np.asarray(im) for im in loaded], out, masks=masks, fps=fps, size=width,
                 norm_threshold=threshold, alpha=alpha, cmap=cmap, predictions=preds)
    except Exception as exc:  # noqa: BLE001
        raise _err(exc) from exc
    return str(out), str(out), f"{len(images)} frames ({what}), {fps:g} fps, {width} px wide"


# ------------------------------------------------------------------------------------------ page load
def on_load(request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
    """First page load: demo data, the visitor's workspace and the ready checkpoint, so an upload gives a heatmap
    at once."""
    try:
        ensure_demo_data()
    except IKDError as exc:
        gr.Warning(_say(f"demo data unavailable: {exc}"))
    ws = _ws(request)
    names = checkpoint_names(ws)
    value = initial_checkpoint(ws)
    info, label, gallery, paths = on_checkpoint_change(value, request)
    return gr.Dropdown(choices=names, value=value), info, label, gallery, paths


def on_unload(request: gr.Request) -> None:
    """The visitor closed the page: stop their training run and remove their workspace (public mode)."""
    ws = WORKSPACES.get(getattr(request, "session_hash", None), create=False) if PUBLIC else None
    if ws is not None:
        JOBS.stop(ws.id)
        WORKSPACES.close(request.session_hash)


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
            path, predictor = _predictor(name, WORKSPACES.shared)
            example_images(path, predictor.metadata)
    except Exception:  # noqa: BLE001 - a failed warm-up only means the first request does the work
        log.exception("warm-up failed")


# ------------------------------------------------------------------------------------------ UI
CSS = """
.ikd-bar { height: 10px; background: var(--neutral-200); border-radius: 5px; overflow: hidden; }
.ikd-bar > div { height: 100%; background: var(--color-accent); transition: width .4s; }
#ikd-verdict textarea { font-weight: 700; font-size: 1.1em; }
"""
THEME = gr.themes.Default(primary_hue="orange", secondary_hue="blue",
                          font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "Consolas", "monospace"])

if ZERO_GPU:
    _gpu_note = (f"ZeroGPU (a GPU is lent for each request; a training run is limited to "
                 f"{(TRAIN_DURATION - TRAIN_RESERVE_S) / 60:g} min)")
elif torch.cuda.is_available():
    _gpu_note = "CUDA GPU"
else:
    _gpu_note = "CPU (training is slow: keep images small and epochs few)"
_cpu = not has_gpu()

with gr.Blocks(title="IKD Studio", delete_cache=DELETE_CACHE) as demo:
    gr.Markdown(
        "# IKD Studio\nUnsupervised anomaly segmentation with **Informative Knowledge Distillation**: a student "
        "learns to mimic a frozen ImageNet teacher on good images only; where they disagree, something is "
        f"wrong. Running on: {_gpu_note}."
    )
    with gr.Tabs(selected="inspect"):
        # ---------------------------------------------------------------- Model
        with gr.Tab("Model", id="model"):
            gr.Markdown("## Active model")
            with gr.Row():
                ckpt_dd = gr.Dropdown(choices=checkpoint_names(WORKSPACES.shared),
                                      value=initial_checkpoint(WORKSPACES.shared),
                                      label="Checkpoint" + (" (the shipped ones and yours)" if PUBLIC else
                                                            " (in pretrained/)"),
                                      allow_custom_value=True, scale=3, elem_id="ikd-ckpt")
                refresh_btn = gr.Button("Refresh list", scale=0, min_width=120)
                download_btn = gr.Button("Download", scale=0, min_width=120, elem_id="ikd-ckpt-download")
            with gr.Row():
                ckpt_upload = gr.File(label="Upload a checkpoint: .safetensors (+ optional .json)",
                                      file_count="multiple", file_types=[".safetensors", ".json"], scale=1,
                                      elem_id="ikd-ckpt-upload")
                ckpt_info = gr.Markdown(elem_id="ikd-ckpt-info")
            ckpt_files = gr.File(label="Checkpoint files (.safetensors + .json: upload them again later)",
                                 file_count="multiple", interactive=False, visible=False, elem_id="ikd-ckpt-files")
            gr.Markdown("## Train a new model")
            source = gr.Radio(SOURCES, value=SRC_DEMO, label="Data source", elem_id="ikd-source")
            with gr.Row():
                category = gr.Dropdown(list(DEMO_CATEGORIES), value=DEMO_CATEGORY, label="Category",
                                       allow_custom_value=True, elem_id="ikd-category")  # checked by the engine
                data_root = gr.Textbox(str(PATHS.mvtec_root) if ALLOW_SERVER_PATHS else "",
                                       label="MVTec AD folder (data root)", visible=False,
                                       interactive=ALLOW_SERVER_PATHS)
                folder = gr.Textbox(label="Folder of good images (on the server)", visible=False,
                                    placeholder="/path/to/good")
                test_folder = gr.Textbox(label="Test folder (optional: good/ + <defect>/ sub-folders)",
                                         visible=False)
                data_name = gr.Textbox(label="Name (for the checkpoint)", visible=False, placeholder="custom",
                                       elem_id="ikd-data-name")
            train_upload = gr.File(label="Good images: several image files or one .zip", file_count="multiple",
                                   file_types=["image", ".zip"], visible=False, elem_id="ikd-train-upload")
            with gr.Group(visible=False) as mvtec_panel:
                mvtec_md = gr.Markdown()
                with gr.Row():
                    mvtec_src = gr.Textbox(label="Path of a downloaded archive or extracted folder (optional)",
                                           scale=3, visible=ALLOW_SERVER_PATHS)
                    mvtec_btn = gr.Button("Download / use", scale=1, visible=not PUBLIC)
                mvtec_progress = gr.Markdown()
            with gr.Row():
                backbone = gr.Dropdown(BACKBONE_CHOICES, value=DEFAULT_BACKBONE, label="Backbone (teacher)",
                                       scale=2, elem_id="ikd-backbone")
                image_size = gr.Slider(64, 512, value=128 if _cpu else 256, step=32, label="Image size (px)",
                                       elem_id="ikd-image-size")
                epochs = gr.Number(value=10 if _cpu else 50, precision=0, minimum=1, maximum=1000, label="Epochs",
                                   elem_id="ikd-epochs")
                batch_size = gr.Number(value=8, precision=0, minimum=1, maximum=256, label="Batch size",
                                       elem_id="ikd-batch")
                lr = gr.Number(value=1e-3, minimum=0, label="Learning rate", elem_id="ikd-lr")
            with gr.Row():
                train_btn = gr.Button("Train", variant="primary", elem_id="ikd-train")
                stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="ikd-stop")
            progress_md = gr.Markdown(elem_id="ikd-progress")
            metrics_md = gr.Markdown(elem_id="ikd-metrics")
            with gr.Row():
                loss_plot = gr.Plot(label="Training loss", format="png")
                roc_img_plot = gr.Plot(label="Image ROC", format="png")
            with gr.Row():
                roc_pix_plot = gr.Plot(label="Pixel ROC", format="png")
                pro_plot = gr.Plot(label="PRO curve", format="png")

        # ---------------------------------------------------------------- Inspect
        with gr.Tab("Inspect", id="inspect"):
            active_md = gr.Markdown("**Active model:** loading ...", elem_id="ikd-active")
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    insp_files = gr.File(label="Images (one or many)", file_count="multiple", file_types=["image"],
                                         elem_id="ikd-inspect-files")
                    examples = gr.Gallery(label="Examples: test images of the active model (click one)",
                                          columns=4, height=200, allow_preview=False, object_fit="cover",
                                          fit_columns=False, elem_id="ikd-examples")
                    threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="Threshold (0.5 = fitted)",
                                          elem_id="ikd-threshold")
                    opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity",
                                        elem_id="ikd-opacity")
                    cmap = gr.Dropdown(COLORMAPS, value="jet", label="Colormap", elem_id="ikd-cmap")
                with gr.Column(scale=2):
                    with gr.Row():
                        out_image = gr.Image(type="numpy", format="png", label="Image", interactive=False,
                                             elem_id="ikd-original")
                        out_heat = gr.Image(type="numpy", format="png", label="Heatmap", interactive=False,
                                            elem_id="ikd-heatmap")
                        out_overlay = gr.Image(type="numpy", format="png", label="Overlay + predicted outline",
                                               interactive=False, elem_id="ikd-overlay")
                        out_gt = gr.Image(type="numpy", format="png", label="Ground truth", interactive=False,
                                          visible=False, elem_id="ikd-gt")
                    with gr.Row():
                        out_score = gr.Number(None, label="Score (normalised; threshold 0.5 = fitted)", precision=4,
                                              interactive=False, elem_id="ikd-score")
                        out_verdict = gr.Textbox(label="Verdict", interactive=False, elem_id="ikd-verdict")
                    results = gr.Gallery(label="All images (click one for details)", columns=8, height=180,
                                         allow_preview=False, format="png", object_fit="contain",
                                         fit_columns=False, elem_id="ikd-results")
                    table = gr.Dataframe(headers=["image", "score", "verdict"], label="Scores",
                                         interactive=False, elem_id="ikd-table")
            insp_index = gr.State(0)
            example_paths = gr.State([])

        # ---------------------------------------------------------------- Export GIF
        with gr.Tab("Export GIF", id="gif"):
            gr.Markdown("A GIF of test images of the active model's data: image | heatmap | overlay | ground "
                        "truth, with score and verdict (threshold, opacity and colormap from the Inspect tab).")
            with gr.Row():
                gif_n = gr.Slider(1, 32, value=8, step=1, label="Number of test images", elem_id="ikd-gif-n")
                gif_fps = gr.Slider(0.5, 10, value=2, step=0.5, label="Frames per second")
                gif_width = gr.Slider(128, 1600, value=768, step=32, label="Frame width (px)")
            gif_btn = gr.Button("Make GIF", variant="primary", elem_id="ikd-gif")
            gif_info = gr.Markdown(elem_id="ikd-gif-info")
            with gr.Row():
                gif_preview = gr.Image(type="filepath", label="Preview", interactive=False, elem_id="ikd-gif-preview")
                gif_file = gr.File(label="Download", interactive=False, elem_id="ikd-gif-file")

    # ---------------------------------------------------------------- events
    insp_inputs = [insp_files, ckpt_dd, threshold, opacity, cmap, insp_index]
    insp_outputs = [out_image, out_heat, out_overlay, out_gt, out_score, out_verdict, table, results]
    insp_files.change(lambda: 0, None, insp_index, api_visibility="private", queue=False).then(
        inspect_images, insp_inputs, insp_outputs, api_name="inspect")
    for ctrl in (threshold, opacity, cmap):
        ctrl.change(inspect_images, insp_inputs, insp_outputs, trigger_mode="always_last", show_progress="hidden",
                    api_visibility="private")

    def _pick_result(evt: gr.SelectData) -> int:
        return int(evt.index)

    results.select(_pick_result, None, insp_index, api_visibility="private").then(
        inspect_images, insp_inputs, insp_outputs, api_visibility="private")

    def _pick_example(paths: list[str], evt: gr.SelectData) -> list[str]:
        return [paths[int(evt.index)]] if paths else []

    examples.select(_pick_example, example_paths, insp_files, api_visibility="private")

    ckpt_dd.change(on_checkpoint_change, ckpt_dd, [ckpt_info, active_md, examples, example_paths],
                   api_name="checkpoint_info")
    refresh_btn.click(refresh_checkpoints, ckpt_dd, ckpt_dd, api_name="list_checkpoints")
    ckpt_upload.upload(import_checkpoint, [ckpt_upload, ckpt_dd], [ckpt_dd, ckpt_info, ckpt_upload],
                       api_name="import_checkpoint")

    src_outputs = [category, data_root, folder, test_folder, train_upload, data_name, mvtec_panel, mvtec_md]
    source.change(on_source_change, [source, data_root, category], src_outputs, api_visibility="private")
    data_root.submit(on_source_change, [source, data_root, category], src_outputs, api_visibility="private")
    category.change(on_source_change, [source, data_root, category], src_outputs, api_visibility="private")
    mvtec_btn.click(get_mvtec, [data_root, mvtec_src, category], [mvtec_progress, data_root, category, mvtec_panel],
                    concurrency_limit=1, concurrency_id="download", api_name="get_mvtec")

    train_event = train_btn.click(
        train_model,
        [source, category, data_root, folder, test_folder, train_upload, data_name, backbone, image_size, epochs,
         batch_size, lr],
        [progress_md, metrics_md, loss_plot, roc_img_plot, roc_pix_plot, pro_plot, ckpt_dd, ckpt_info, stop_btn],
        concurrency_limit=1, concurrency_id="train", api_name="train", show_progress="full",
        show_progress_on=[progress_md],  # a queued run shows its place in the queue there
    )
    stop_btn.click(stop_training, None, None, concurrency_limit=None, api_name="stop")
    download_btn.click(download_checkpoint, ckpt_dd, ckpt_files, api_name="download_checkpoint").then(
        lambda: gr.File(visible=True), None, ckpt_files, api_visibility="private", queue=False)

    gif_btn.click(export_gif, [ckpt_dd, gif_n, gif_fps, gif_width, threshold, opacity, cmap, insp_files],
                  [gif_preview, gif_file, gif_info], concurrency_limit=1, concurrency_id="gif",
                  api_name="export_gif")

    demo.load(on_load, None, [ckpt_dd, ckpt_info, active_md, examples, example_paths], api_visibility="private")
    demo.unload(on_unload)

demo.queue(default_concurrency_limit=2)


def launch_kwargs() -> dict[str, Any]:
    """Arguments for ``demo.launch``: theme, CSS, upload limit and the folders the app may serve."""
    PATHS.work.mkdir(parents=True, exist_ok=True)
    return {
        "theme": THEME,
        "css": CSS,
        "max_file_size": MAX_FILE_SIZE,
        "allowed_paths": [str(PATHS.data.resolve()), str(PATHS.work.resolve())],
        "footer_links": ["api", "settings"],
    }


if ZERO_GPU:  # the documented ZeroGPU pattern: load models at import, on the CPU, before the GPU worker forks
    warm_up()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    warm_up()
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **launch_kwargs(),
    )
