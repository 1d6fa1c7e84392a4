"""The Model tab: the active checkpoint (choose, upload, download, delete), data sources (MVTec AD download or
archive upload) and training, whose new model is shown beside the active one until the user chooses it."""

from __future__ import annotations

import contextlib
import html
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pandas as pd

from ikd_core import service
from ikd_core.backbones import BACKBONES
from ikd_core.checkpoint import max_image_size, sidecar_path
from ikd_core.data.mvtec import MVTEC_CATEGORIES, check_category_name, list_categories
from ikd_core.data.sources import DataSpec, default_checkpoint_name
from ikd_core.data.synthetic import DEMO_CATEGORIES
from ikd_core.errors import IKDError
from ikd_core.fileio import file_digest

from . import gpu
from . import state as S
from .state import (
    checkpoint_names,
    err,
    example_images,
    file_list,
    initial_checkpoint,
    md,
    predictor_for,
    resolve,
    say,
    workspace,
)

#: This tab's components of the current build (handlers that update several outputs address them here).
C = SimpleNamespace()


# ------------------------------------------------------------------------------------------ Model: checkpoints
def describe_checkpoint(name: str | None, ws: service.Workspace) -> str:
    if not name:
        return (
            "No checkpoint yet: train one below (the demo takes a few minutes) or upload a `.safetensors` checkpoint."
        )
    try:
        path = resolve(name, ws)
    except IKDError as exc:
        return f"**{md(name)}**: {md(service.public_message(str(exc), S.SCRUB_ROOTS))}"
    return service.checkpoint_info(path).describe()


def active_label(name: str | None, ws: service.Workspace) -> str:
    if not name:
        return "**Active model:** none (train or load one in the Model tab)"
    info = service.checkpoint_info(resolve(name, ws))
    if not info.ok:
        return f"**Active model:** {md(name)} (unusable)"
    return f"**Active model:** {md(name)} ({md(info.category)}, {md(info.backbone)}, {md(info.image_size)} px)"


def on_checkpoint_change(name: str | None, request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
    """Checkpoint chosen: load it (so errors show now), show its metadata and example test images."""
    ws = workspace(request)
    examples: list[str] = []
    if name:
        try:
            path, predictor = predictor_for(name, ws)
            examples = example_images(path, predictor.metadata)
        except IKDError as exc:
            gr.Warning(say(exc))
    try:
        label = active_label(name, ws)
    except IKDError as exc:
        label = f"**Active model:** none ({md(name)}: {md(service.public_message(str(exc), S.SCRUB_ROOTS))})"
    return describe_checkpoint(name, ws), label, examples, examples


def refresh_checkpoints(current: str | None, request: gr.Request = None) -> Any:  # type: ignore[assignment]
    ws = workspace(request)
    names = checkpoint_names(ws)
    value = current if current in names else initial_checkpoint(ws)
    return gr.Dropdown(choices=names, value=value)


def import_checkpoint(files: Any, current: str | None, request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
    """Validate an uploaded ``.safetensors`` (+ optional ``.json``) and make it the active checkpoint (in public
    mode it goes into the visitor's own workspace, within its quota)."""
    paths = [Path(p) for p in file_list(files)]
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
        ws = workspace(request)
        ws.check_quota(extra_bytes=sum(p.stat().st_size for p in paths), extra_checkpoints=1)
        name = Path(ckpts[0].name).name
        if ws.pretrained != S.PATHS.pretrained and (S.PATHS.pretrained / name).exists():
            name = f"{Path(name).stem}-uploaded{service.CHECKPOINT_SUFFIX}"  # never shadows a shipped one
        info = service.import_checkpoint(
            ckpts[0], ws.pretrained, sidecar=sides[0] if sides else None, original_name=name, device="cpu"
        )
    except Exception as exc:  # noqa: BLE001
        raise err(exc) from exc
    gr.Info(say(f"checkpoint {info.name} added and active"))
    return gr.Dropdown(choices=checkpoint_names(ws), value=info.name), info.describe(), None


def download_checkpoint(name: str | None, request: gr.Request = None) -> list[str]:  # type: ignore[assignment]
    """The active checkpoint and its ``.json`` metadata as files to download (to upload them again later)."""
    try:
        path = resolve(name, workspace(request))
    except Exception as exc:  # noqa: BLE001
        raise err(exc) from exc
    side = sidecar_path(path)
    return [str(path)] + ([str(side)] if side.is_file() else [])


def delete_checkpoint(name: str | None, request: gr.Request = None) -> tuple[Any, Any]:  # type: ignore[assignment]
    """Delete one of the caller's own checkpoints (trained or uploaded, in their workspace) and its metadata. The
    shipped ones (public mode) are never deleted: checked here, on the server, since API clients bypass the UI."""
    if not name:
        return gr.skip(), gr.skip()  # the confirmation was declined
    ws = workspace(request)
    try:
        name = service.check_checkpoint_name(name)
        own = ws.pretrained / name
        if ws.pretrained != S.PATHS.pretrained and not own.is_file() and (S.PATHS.pretrained / name).is_file():
            raise gr.Error(say(f"{name} is shipped with this app and cannot be deleted"))
        path = service.resolve_checkpoint(name, ws.pretrained)  # never a path outside the caller's folder
        sidecar_path(path).unlink(missing_ok=True)
        path.unlink()
    except Exception as exc:  # noqa: BLE001
        raise err(exc) from exc
    gr.Info(say(f"checkpoint {name} deleted"))
    value = initial_checkpoint(ws)
    return gr.Dropdown(choices=checkpoint_names(ws), value=value), describe_checkpoint(value, ws)


def use_new_model(name: str | None, request: gr.Request = None) -> tuple[Any, Any, Any]:  # type: ignore[assignment]
    """Make the model just trained the active one (the user's choice after comparing)."""
    ws = workspace(request)
    try:
        resolve(name, ws)
    except Exception as exc:  # noqa: BLE001
        raise err(exc) from exc
    gr.Info(say(f"{name} is now the active model"))
    return gr.Dropdown(choices=checkpoint_names(ws), value=name), gr.Button(visible=False), ""


# ------------------------------------------------------------------------------------------ Model: data sources
def category_choices(source: str, data_root: str) -> list[str]:
    if source == S.SRC_DEMO:
        return list(DEMO_CATEGORIES)
    if source == S.SRC_MVTEC:
        found = list_categories(S.POLICY.mvtec_root(data_root))
        return found or list(MVTEC_CATEGORIES)
    return []


def mvtec_panel_text(root: Path, category: str | None) -> str:
    missing = f"Category {md(category)} is missing. " if category else ""
    if S.PUBLIC:
        return (
            f"### MVTec AD is not installed on this server\n{missing}The operator of this deployment provides "
            "it (in its data folder); train on the demo set or on your own images meanwhile."
        )
    return (
        f"### MVTec AD not found under {md(root)}\n{missing}"
        "Download it here (about 4.9 GB, with progress)"
        + (
            ", or give the path of an already downloaded archive (`mvtec_anomaly_detection.tar.xz` / `.zip`) "
            "or of an extracted MVTec AD folder"
            if S.ALLOW_SERVER_PATHS
            else ""
        )
        + ". MVTec AD is licensed CC BY-NC-SA 4.0 (see mvtec.com)."
    )


def on_source_change(source: str, data_root: str, category: str | None) -> tuple[Any, ...]:
    choices = category_choices(source, data_root)
    value = category if category in choices else (choices[0] if choices else None)
    is_mvtec = source == S.SRC_MVTEC
    root = S.POLICY.mvtec_root(data_root)
    missing = is_mvtec and service.mvtec_missing(root, value)
    return (
        gr.Dropdown(choices=choices, value=value, visible=source in (S.SRC_DEMO, S.SRC_MVTEC)),
        gr.Textbox(visible=is_mvtec and S.ALLOW_SERVER_PATHS),
        gr.Textbox(visible=source == S.SRC_FOLDER),
        gr.Textbox(visible=source == S.SRC_FOLDER),
        gr.File(visible=source == S.SRC_UPLOAD),
        gr.Textbox(visible=source in (S.SRC_FOLDER, S.SRC_UPLOAD)),
        gr.Group(visible=missing),
        mvtec_panel_text(root, value) if missing else "",
    )


def spec_from_ui(
    source: str,
    category: str | None,
    data_root: str,
    folder: str,
    test_folder: str,
    uploads: Any,
    name: str,
    ws: service.Workspace,
) -> DataSpec:
    """The DataSpec the Model tab describes (uploads are extracted into a fresh folder of the workspace). Folders
    come from :data:`S.POLICY`: the operator's, or in private mode ones the user names."""
    if source == S.SRC_DEMO:
        if category and category not in DEMO_CATEGORIES:
            raise gr.Error(f"unknown demo category; choose one of {', '.join(DEMO_CATEGORIES)}")
        return DataSpec("demo", category or S.DEMO_CATEGORY, str(S.PATHS.demo_root))
    if source == S.SRC_MVTEC:
        root = S.POLICY.mvtec_root(data_root)
        if not category:
            raise gr.Error("choose an MVTec AD category")
        check_category_name(category)
        if service.mvtec_missing(root, category):
            raise gr.Error(
                say(
                    f"MVTec AD category {category!r} not found"
                    + (
                        " on this server"
                        if S.PUBLIC
                        else f" under {root}: download it with the panel above or give the folder where it is"
                    )
                )
            )
        return DataSpec("mvtec", category, str(root))
    if source == S.SRC_FOLDER:
        good = S.POLICY.server_folder(folder, "folder of good images")
        cat = service.sanitize_name((name or "").strip() or good.name, "custom")
        test = str(S.POLICY.server_folder(test_folder, "test folder")) if (test_folder or "").strip() else None
        return DataSpec("folder", cat, good_dir=str(good), test_dir=test)
    if source == S.SRC_UPLOAD:
        files = file_list(uploads)
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
        if src and S.POLICY.server_paths and Path(src).expanduser().is_dir():  # read-only use of an extracted copy
            folder = S.POLICY.server_folder(src, "MVTec AD folder")
            cats = list_categories(folder)
            if not cats:
                raise gr.Error(say(f"{folder.name} holds no MVTec AD categories (folders with train/good)"))
            yield (
                f"Using MVTec AD in {md(folder)} ({len(cats)} categories).",
                str(folder),
                gr.Dropdown(choices=cats, value=category if category in cats else cats[0]),
                gr.Group(visible=False),
            )
            return
        dest = S.POLICY.mvtec_destination(root)
        archive = str(S.POLICY.server_folder(src, "archive")) if src else None
    except Exception as exc:  # noqa: BLE001
        raise err(exc) from exc
    state: dict[str, Any] = {"done": 0, "total": 0, "finished": False}
    threading.Thread(target=_download_worker, args=(str(dest), archive, state), daemon=True).start()
    verb = "Extracting" if archive else "Downloading"
    while not state["finished"]:
        time.sleep(1.0)
        done, total = state["done"], state["total"]
        if archive or not done:
            msg = f"{verb} MVTec AD into {md(dest)} ..."
        elif total:
            msg = f"Downloading: {done / 1e9:.2f} / {total / 1e9:.2f} GB ({100 * done / total:.0f}%)"
        else:
            msg = f"Downloading: {done / 1e9:.2f} GB"
        yield msg, gr.skip(), gr.skip(), gr.skip()
    if "error" in state:
        raise gr.Error(say(state["error"]))
    cats = list_categories(dest)
    yield (
        f"MVTec AD ready under {md(dest)} ({len(cats)} categories).",
        str(dest),
        gr.Dropdown(choices=cats, value=category if category in cats else (cats[0] if cats else None)),
        gr.Group(visible=False),
    )


MVTEC_ARCHIVE_SUFFIXES = (".tar.xz", ".txz", ".tar.gz", ".tgz", ".tar.bz2", ".tar", ".zip")


def upload_mvtec(
    archive: Any,
    root: str,
    category: str | None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's progress tracker is injected this way
) -> tuple[Any, ...]:
    """Extract an uploaded MVTec AD archive (the full set, or one category's archive such as ``bottle.tar.xz``)
    into the operator's MVTec AD folder and list the categories found. Every member is checked before anything
    is extracted (:func:`~ikd_core.data.download.safe_extract`) and categories move in only once complete, so a bad
    archive changes nothing. Refused in public mode (as the download is)."""
    from ikd_core.data.download import install_archive

    files = file_list(archive)
    if not files:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    if S.PUBLIC:
        raise gr.Error("uploading MVTec AD is not available on this public deployment; the operator provides it")
    src = Path(files[0])
    if len(files) != 1 or not src.name.lower().endswith(MVTEC_ARCHIVE_SUFFIXES):
        raise gr.Error(
            say(f"{src.name} is not an MVTec AD archive: upload one .tar.xz, .tar.gz, .tar or .zip file "
                "(the full set or one category's archive)")
        )
    try:
        dest = S.POLICY.mvtec_destination(root)
        progress(0.0, desc="Checking the archive")
        found = install_archive(
            src, dest, progress=lambda done, total: progress((done, total), desc="Extracting", unit="files")
        )
    except Exception as exc:  # noqa: BLE001
        raise err(exc) from exc
    finally:
        Path(src).unlink(missing_ok=True)  # the uploaded copy (up to GBs) is not needed any more
    cats = list_categories(dest)
    value = category if category in found else (found[0] if found else (cats[0] if cats else None))
    return (
        f"Extracted {len(found)} categor{'y' if len(found) == 1 else 'ies'} ({', '.join(md(c) for c in found)}); "
        f"MVTec AD under {md(dest)} now has {len(cats)}.",
        str(dest),
        gr.Dropdown(choices=cats, value=value),
        gr.Group(visible=False),
    )


# ------------------------------------------------------------------------------------------ Model: training
def _hms(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_text(p: Any, status: str, stopping: bool | None = None) -> str:
    """Markdown for a training run's progress ``p`` (:class:`ikd_core.train.Progress`, or ``None`` before the
    first step). ``stopping``: None (running), True (stop and keep), False (stop and discard).

    The bar is Markdown, not ``gr.Progress``: Gradio draws ``gr.Progress`` in the status tracker that covers the
    event's outputs while it runs, which would hide the streamed loss curve and text under a pending overlay; and
    a queued run's place in the queue already shows on this component (``show_progress_on``)."""
    if stopping is not None:
        status = "stopping at the next step; " + (
            "the model trained so far will be kept" if stopping else "nothing will be saved"
        )
    if p is not None:
        frac = p.fraction
        bar = f'<div class="ikd-bar"><div style="width:{100 * frac:.1f}%"></div></div>\n\n**{100 * frac:.0f}%** · '
        epochs = f"{p.epoch}/{p.epochs}" if p.epochs else f"{p.epoch} (until the time limit)"
        line = (
            f"epoch {epochs} · step {p.step}/{p.steps_per_epoch} · loss {p.loss:.4f} · "
            f"{p.images_per_sec:.1f} images/s · elapsed {_hms(p.elapsed_s)} · ETA {_hms(p.eta_s)}"
        )
        phase = {
            "fit": "fitting the threshold on held-out good images",
            "evaluate": "evaluating on the test set",
            "validate": "validating",
            "done": "saving",
        }.get(p.phase)
        if phase and status in ("", p.phase):
            status = phase
        return f"{bar}{line}" + (f"  \n_{status}_" if status else "")
    return f"_{status or 'starting'}_"


def loss_frame(losses: list[tuple[int, float]]) -> pd.DataFrame:
    """The loss curve for the interactive ``gr.LinePlot``: one row per training step."""
    return pd.DataFrame(losses, columns=["step", "loss"])


def _curve_figures(curves: service.Curves | None) -> tuple[Any, Any, Any]:
    from ikd_core.visualize import plot_pro, plot_roc

    if curves is None:
        return None, None, None
    m = curves.metrics
    figs = []
    for (x, y), key, title in (
        (curves.image_roc, "image_auroc", "Image ROC"),
        (curves.pixel_roc, "pixel_auroc", "Pixel ROC"),
    ):
        figs.append(plot_roc(x, y, m.get(key, float("nan")), title=title) if len(x) else None)
    fx, fy = curves.pro
    figs.append(plot_pro(fx, fy, m.get("au_pro", float("nan"))) if len(fx) else None)
    return figs[0], figs[1], figs[2]


def metrics_markdown(metrics: dict[str, float], title: str) -> str:
    from ikd_core.metrics import format_metrics_table

    if not metrics:
        return f"**{title}**: no labelled test set, so no metrics (the threshold was fitted on held-out good images)."
    return format_metrics_table(metrics, title=title)


def train_defaults(has_gpu: bool) -> dict[str, Any]:
    """The training form's defaults: the paper's setting on a GPU (hrnet_w32, 256 px, batch 2, AdamW 5e-5,
    50 epochs), the README's CPU recipe otherwise (efficientnet_lite0, 256 px, batch 8, lr 1e-2, 60 epochs, at
    most 10 minutes). In public mode the operator's time limit caps every run."""
    if has_gpu:
        d: dict[str, Any] = {"backbone": "hrnet_w32", "image_size": 256, "epochs": 50, "batch_size": 2,
                             "lr": 5e-5, "max_minutes": 0}
    else:
        d = {"backbone": "efficientnet_lite0", "image_size": 256, "epochs": 60, "batch_size": 8, "lr": 1e-2,
             "max_minutes": 10}
    if S.MAX_TRAIN_MINUTES:
        d["max_minutes"] = min(d["max_minutes"] or S.MAX_TRAIN_MINUTES, S.MAX_TRAIN_MINUTES)
    return d


def run_limits(epochs: Any, max_minutes: Any) -> tuple[int | None, float | None]:
    """(epochs, minutes) from the form: an empty or 0 field means "no limit" of that kind; at least one is needed.
    In public mode the operator's limit caps the time."""
    n = None if epochs in (None, "", 0) else int(service.number(epochs, "epochs", 1, 100_000, integer=True))
    m = None if max_minutes in (None, "", 0) else float(service.number(max_minutes, "time limit", 0.05, 100_000))
    if S.MAX_TRAIN_MINUTES:
        m = min(m or S.MAX_TRAIN_MINUTES, S.MAX_TRAIN_MINUTES)
    if n is None and m is None:
        raise gr.Error("set a number of epochs or a time limit (an empty epochs field trains until the time limit)")
    return n, m


def metrics_on_test_set(ckpt_path: Path, spec: DataSpec) -> dict[str, float]:
    """Metrics of a checkpoint on ``spec``'s test set, computed as training computes them
    (:func:`~ikd_core.evaluation.evaluate_model` at the checkpoint's own image size), so two models are compared on
    the same images."""
    from ikd_core.data.sources import build_datasets
    from ikd_core.evaluation import evaluate_model

    device = "cpu" if gpu.ZERO_GPU else gpu.compute_device()  # on ZeroGPU the GPU exists only in GPU calls
    predictor = gpu.PREDICTORS.get(ckpt_path, device)
    _, test_ds = build_datasets(spec, predictor.image_size)
    if test_ds is None or not len(test_ds):  # type: ignore[arg-type]
        return {}
    return evaluate_model(predictor.model, test_ds, predictor.device).metrics


def comparison_markdown(
    new: str, new_meta: dict[str, Any], new_metrics: dict[str, float], active: str | None,
    active_metrics: dict[str, float] | None, made_active: bool,
) -> str:
    """The new model beside the active one: both models' metrics on the new run's test set."""
    from ikd_core.metrics import METRIC_LABELS

    note = f"  \n_{md(new_meta['note'])}_" if new_meta.get("note") else ""
    if made_active or not active:
        return f"**New model** **{md(new)}** is active (there was no active model).{note}"
    head = f"### New model vs active model\n**{md(new)}** (new) beside **{md(active)}** (active), on the same test set."
    if not new_metrics:
        return (f"{head}\n\nNo labelled test set, so no metrics: compare them on your own images in Inspect, "
                f"then choose.{note}")
    keys = [k for k in new_metrics if k in METRIC_LABELS] or list(new_metrics)

    def cell(metrics: dict[str, float] | None, key: str) -> str:
        v = (metrics or {}).get(key)
        return "n/a" if v is None or not math.isfinite(float(v)) else f"{float(v):.4f}"

    rows = [f"| {METRIC_LABELS.get(k, k)} | {cell(new_metrics, k)} | {cell(active_metrics, k)} |" for k in keys]
    table = "\n".join(["| Metric | New | Active |", "|:--|--:|--:|", *rows])
    verdict = ""
    a, b = new_metrics.get("image_auroc"), (active_metrics or {}).get("image_auroc")
    if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
        verdict = ("\n\n**The new model is worse on image AUROC**: keep the active one unless you have a reason."
                   if a < b else "\n\nThe new model is at least as good on image AUROC.")
    return (f"{head}{note}\n\n{table}{verdict}\n\nThe active model stays until you choose **Use the new model**.")


def train_model(
    source: str,
    category: str | None,
    data_root: str,
    folder: str,
    test_folder: str,
    uploads: Any,
    name: str,
    backbone: str,
    image_size: float,
    epochs: float | None,
    batch_size: float,
    lr: float,
    max_minutes: float | None,
    active: str | None,
    request: gr.Request,
) -> Iterator[dict[Any, Any]]:
    """Check the inputs, run :func:`gpu.train_on_device` and stream its progress and loss curve; then metrics,
    curves and the new checkpoint (saved in the caller's ``pretrained/``). The new checkpoint becomes active only
    when there was no usable active model; otherwise both are shown with their metrics on the same test set and
    the user chooses (``use_new_model``)."""
    from ikd_core.train import TrainConfig

    spec = None
    try:
        ws = workspace(request)
        if backbone not in BACKBONES:
            raise gr.Error("unknown backbone")
        n_epochs, minutes = run_limits(epochs, max_minutes)
        cfg = TrainConfig(
            backbone=backbone,
            image_size=int(service.number(image_size, "image size", 32, max_image_size(), integer=True)),
            epochs=n_epochs,
            batch_size=int(service.number(batch_size, "batch size", 1, 4096, integer=True)),
            lr=float(service.number(lr, "learning rate", 1e-8, 10.0)),
            max_minutes=minutes,
        )
        ws.check_quota(extra_checkpoints=1)
        spec = spec_from_ui(source, category, data_root or "", folder or "", test_folder or "", uploads, name or "", ws)
        # every data problem (missing or empty folders, unsafe names, masks, non-images) is reported now,
        # before a job starts or a checkpoint name is taken
        service.check_training_data(spec, cfg.image_size)
        # the name is reserved at once: an upload meanwhile gets another one, never this one
        out = service.reserve_checkpoint_path(
            ws.pretrained,
            # never the name of a shipped checkpoint: the visitor's own would hide it from their list
            service.unique_path(S.PATHS.pretrained, default_checkpoint_name(spec.category, backbone)).name
            if ws.pretrained != S.PATHS.pretrained
            else default_checkpoint_name(spec.category, backbone),
        )
    except Exception as exc:  # noqa: BLE001
        if source == S.SRC_UPLOAD:
            service.discard_upload(spec, ws.root if spec is not None else S.PATHS.work)
        raise err(exc) from exc
    try:
        yield from _train_and_report(spec, cfg, out, ws, active, record=source != S.SRC_UPLOAD)
    finally:
        if source == S.SRC_UPLOAD:  # the extracted images are only needed while training
            service.discard_upload(spec, ws.root)


def _train_and_report(
    spec: DataSpec, cfg: Any, out: Path, ws: service.Workspace, active: str | None, record: bool
) -> Iterator[dict[Any, Any]]:
    """The run of :func:`train_model` once its inputs are checked: stream it, then show the new model.
    ``record``: remember the data of the new checkpoint (so its test set is found again; never for uploads)."""
    backbone = cfg.backbone
    # Stop goes through a file, not Gradio's ``cancels``: on ZeroGPU the run lives in a GPU worker process that
    # only a file reaches, and the run must end cleanly (keeping or discarding the partial model as asked).
    stop = service.StopFile(ws.jobs)
    S.JOBS.put(ws.id, stop)
    limits = ", ".join(
        ([f"{cfg.epochs} epochs"] if cfg.epochs else []) + ([f"at most {cfg.max_minutes:g} min"] if cfg.max_minutes
                                                            else [])
    )
    title = f"{md(spec.category)} ({backbone}, {cfg.image_size} px, {limits})"
    running = {C.stop_btn: gr.Button(interactive=True), C.stop_discard_btn: gr.Button(interactive=True)}
    yield {
        C.progress_md: f"_starting: {title}_",
        C.metrics_md: "",
        C.compare_md: "",
        C.loss_plot: None,
        C.roc_img_plot: None,
        C.roc_pix_plot: None,
        C.pro_plot: None,
        C.use_new_btn: gr.Button(visible=False),
        C.new_ckpt: "",
        **running,
    }
    losses: list[tuple[int, float]] = []
    status, last, end = "", None, None
    try:
        with contextlib.closing(gpu.train_on_device(spec.to_dict(), cfg.to_dict(), str(out), str(stop.path))) as run:
            for up in run:
                losses += up.losses
                if up.kind == "end":
                    end = up
                    break
                if up.kind == "status":
                    status = up.message
                else:
                    status, last = "", up.progress
                update: dict[Any, Any] = {C.progress_md: progress_text(last, status, service.StopFile.read_keep(
                    stop.path))}
                if up.losses:
                    update[C.loss_plot] = loss_frame(losses)
                yield update
    finally:
        if end is None:
            stop.set()  # the client went away: end the run, nothing is saved
        S.JOBS.discard(ws.id, stop)
        stop.clear()
    done_state = {C.stop_btn: gr.Button(interactive=False), C.stop_discard_btn: gr.Button(interactive=False)}
    if end is None or end.state == "failed":
        error = end.error if end is not None else "training ended unexpectedly"
        yield {**done_state, C.progress_md: f"**Training failed:** {md(error or 'training failed')}"}
        raise gr.Error(say(error or "training failed"))
    if end.state == "cancelled":
        yield {**done_state, C.progress_md: "**Stopped.** Nothing was saved; the active model is unchanged."}
        return
    ckpt_path = Path(end.checkpoint or out)
    ckpt = ckpt_path.name
    if spec.kind != "demo" and record:  # so its test set is found again (never from metadata)
        S.POLICY.known.record(file_digest(ckpt_path), spec)
    meta = end.metadata
    active_path = None
    if active and active != ckpt:
        with contextlib.suppress(IKDError):
            active_path = resolve(active, ws)
            if not service.checkpoint_info(active_path).ok:
                active_path = None
    active_metrics = None
    if active_path is not None and end.metrics:
        yield {C.progress_md: f"_evaluating the active model {md(active)} on the same test set_"}
        try:
            active_metrics = metrics_on_test_set(active_path, spec)
        except Exception as exc:  # noqa: BLE001 - the new model is saved either way
            S.log.warning("could not evaluate %s on the new test set: %s", active, exc)
    made_active = active_path is None
    roc_i, roc_p, pro = _curve_figures(end.curves)
    head = (f"**Stopped early** (kept, as asked) after {_hms(end.seconds)}" if meta.get("stopped_by_user")
            else f"**Done** in {_hms(end.seconds)}")
    where = "saved and active" if made_active else f"saved; the active model is still **{md(active)}**"
    gr.Info(say(f"checkpoint {ckpt} " + ("saved and active" if made_active else "saved: compare it, then choose")))
    yield {
        **done_state,
        C.progress_md: (
            f"{head}: {meta.get('epochs_completed')} epochs, {meta.get('images_per_sec')} images/s on "
            f"{meta.get('device')}. Checkpoint `{ckpt}` {where}."
        ),
        C.loss_plot: loss_frame(losses),
        C.metrics_md: metrics_markdown(end.metrics, title),
        C.compare_md: comparison_markdown(ckpt, meta, end.metrics, active, active_metrics, made_active),
        C.roc_img_plot: roc_i,
        C.roc_pix_plot: roc_p,
        C.pro_plot: pro,
        C.ckpt_dd: gr.Dropdown(choices=checkpoint_names(ws), value=ckpt if made_active else active),
        C.ckpt_info: describe_checkpoint(ckpt if made_active else active, ws),
        C.use_new_btn: gr.Button(visible=not made_active),
        C.new_ckpt: "" if made_active else ckpt,
    }


def stop_training(request: gr.Request, keep: bool = False) -> None:
    """Stop the caller's own training run: the job is looked up by the caller's workspace on the server, so no
    request can stop another visitor's run (the run itself reports the end, so nothing is returned)."""
    ws = S.WORKSPACES.get(getattr(request, "session_hash", None), create=False) if S.PUBLIC else S.WORKSPACES.shared
    if ws is not None and S.JOBS.stop(ws.id, keep=keep):
        gr.Info("stopping at the next step; " + ("the model trained so far is kept" if keep else "nothing is saved"))


def stop_and_keep(request: gr.Request) -> None:
    """Stop the caller's run at the next step and keep the model trained so far (marked stopped early)."""
    stop_training(request, keep=True)


def stop_and_discard(request: gr.Request) -> None:
    """Stop the caller's run at the next step and save nothing (the ``/stop`` API, as before)."""
    stop_training(request, keep=False)


def build() -> SimpleNamespace:
    """Create this tab's components (inside ``gr.Tab``); they are also kept in :data:`C`."""
    gr.Markdown("## Active model")
    with gr.Row():
        ckpt_dd = gr.Dropdown(
            choices=checkpoint_names(S.WORKSPACES.shared),
            value=initial_checkpoint(S.WORKSPACES.shared),
            label="Checkpoint" + (" (the shipped ones and yours)" if S.PUBLIC else " (in pretrained/)"),
            allow_custom_value=True,
            scale=3,
            elem_id="ikd-ckpt",
        )
        refresh_btn = gr.Button("Refresh list", scale=0, min_width=120)
        download_btn = gr.Button("Download", scale=0, min_width=120, elem_id="ikd-ckpt-download")
        delete_btn = gr.Button("Delete", variant="stop", scale=0, min_width=120, elem_id="ikd-ckpt-delete")
    with gr.Row():
        ckpt_upload = gr.File(
            label="Upload a checkpoint: .safetensors (+ optional .json)",
            file_count="multiple",
            file_types=[".safetensors", ".json"],
            scale=1,
            elem_id="ikd-ckpt-upload",
        )
        ckpt_info = gr.Markdown(elem_id="ikd-ckpt-info")
    ckpt_files = gr.File(
        label="Checkpoint files (.safetensors + .json: upload them again later)",
        file_count="multiple",
        interactive=False,
        visible=False,
        elem_id="ikd-ckpt-files",
    )
    gr.Markdown("## Train a new model")
    source = gr.Radio(S.SOURCES, value=S.SRC_DEMO, label="Data source", elem_id="ikd-source")
    with gr.Row():
        category = gr.Dropdown(
            list(DEMO_CATEGORIES),
            value=S.DEMO_CATEGORY,
            label="Category",
            allow_custom_value=True,
            elem_id="ikd-category",
        )  # checked by the engine
        data_root = gr.Textbox(
            str(S.PATHS.mvtec_root) if S.ALLOW_SERVER_PATHS else "",
            label="MVTec AD folder (data root)",
            visible=False,
            interactive=S.ALLOW_SERVER_PATHS,
        )
        folder = gr.Textbox(label="Folder of good images (on the server)", visible=False, placeholder="/path/to/good")
        test_folder = gr.Textbox(label="Test folder (optional: good/ + <defect>/ sub-folders)", visible=False)
        data_name = gr.Textbox(
            label="Name (for the checkpoint)", visible=False, placeholder="custom", elem_id="ikd-data-name"
        )
    train_upload = gr.File(
        label="Good images: several image files or one .zip",
        file_count="multiple",
        file_types=["image", ".zip"],
        visible=False,
        elem_id="ikd-train-upload",
    )
    with gr.Group(visible=False) as mvtec_panel:
        mvtec_md = gr.Markdown()
        with gr.Row():
            mvtec_src = gr.Textbox(
                label="Path of a downloaded archive or extracted folder (optional)",
                scale=3,
                visible=S.ALLOW_SERVER_PATHS,
            )
            mvtec_btn = gr.Button("Download / use", scale=1, visible=not S.PUBLIC)
        mvtec_upload = gr.File(
            label=f"Or upload an MVTec AD archive: one category's (e.g. bottle.tar.xz) or the full set (up to "
            f"{S.MAX_FILE_SIZE} here: IKD_MAX_FILE_SIZE)",
            file_types=[".xz", ".gz", ".tgz", ".txz", ".bz2", ".tar", ".zip"],
            visible=not S.PUBLIC,
            elem_id="ikd-mvtec-upload",
        )
        mvtec_progress = gr.Markdown(elem_id="ikd-mvtec-progress")
    d = train_defaults(gpu.has_gpu())
    gr.Markdown(
        "Defaults: " + ("the paper's setting (hrnet_w32, 256 px, batch 2, lr 5e-5, 50 epochs)" if gpu.has_gpu()
                        else "the CPU recipe (efficientnet_lite0, 256 px, batch 8, lr 1e-2, 60 epochs, 10 min)")
        + ". Leave Epochs empty (or 0) to train until the time limit."
    )
    with gr.Row():
        backbone = gr.Dropdown(
            S.BACKBONE_CHOICES, value=d["backbone"], label="Backbone (teacher)", scale=2, elem_id="ikd-backbone"
        )
        image_size = gr.Slider(
            64, 512, value=d["image_size"], step=32, label="Image size (px)", elem_id="ikd-image-size"
        )
        epochs = gr.Number(
            value=d["epochs"], precision=0, minimum=0, maximum=100_000, label="Epochs (empty: until the time limit)",
            elem_id="ikd-epochs",
        )
        max_minutes = gr.Number(
            value=d["max_minutes"],
            minimum=0,
            maximum=S.MAX_TRAIN_MINUTES or 100_000,
            label="Time limit (minutes, 0: none)" + (f"; at most {S.MAX_TRAIN_MINUTES:g} here" if S.MAX_TRAIN_MINUTES
                                                      else ""),
            elem_id="ikd-max-minutes",
        )
        batch_size = gr.Number(
            value=d["batch_size"], precision=0, minimum=1, maximum=256, label="Batch size", elem_id="ikd-batch"
        )
        lr = gr.Number(value=d["lr"], minimum=0, label="Learning rate", elem_id="ikd-lr")
    with gr.Row():
        train_btn = gr.Button("Train", variant="primary", elem_id="ikd-train")
        stop_btn = gr.Button("Stop and keep", variant="stop", interactive=False, elem_id="ikd-stop")
        stop_discard_btn = gr.Button(
            "Stop and discard", variant="secondary", interactive=False, elem_id="ikd-stop-discard"
        )
    progress_md = gr.Markdown(elem_id="ikd-progress")
    with gr.Row():
        compare_md = gr.Markdown(elem_id="ikd-compare")
    with gr.Row():
        use_new_btn = gr.Button("Use the new model", variant="primary", visible=False, elem_id="ikd-use-new")
        new_ckpt = gr.Textbox(visible=False, label="New checkpoint", elem_id="ikd-new-ckpt")
    metrics_md = gr.Markdown(elem_id="ikd-metrics")
    with gr.Row():
        loss_plot = gr.LinePlot(
            x="step", y="loss", label="Training loss", x_title="step", y_title="loss", elem_id="ikd-loss"
        )
        roc_img_plot = gr.Plot(label="Image ROC", format="png")
    with gr.Row():
        roc_pix_plot = gr.Plot(label="Pixel ROC", format="png")
        pro_plot = gr.Plot(label="PRO curve", format="png")
    C.__dict__.update(
        {
            "ckpt_dd": ckpt_dd,
            "refresh_btn": refresh_btn,
            "download_btn": download_btn,
            "delete_btn": delete_btn,
            "mvtec_upload": mvtec_upload,
            "max_minutes": max_minutes,
            "stop_discard_btn": stop_discard_btn,
            "compare_md": compare_md,
            "use_new_btn": use_new_btn,
            "new_ckpt": new_ckpt,
            "ckpt_upload": ckpt_upload,
            "ckpt_info": ckpt_info,
            "ckpt_files": ckpt_files,
            "source": source,
            "category": category,
            "data_root": data_root,
            "folder": folder,
            "test_folder": test_folder,
            "data_name": data_name,
            "train_upload": train_upload,
            "mvtec_md": mvtec_md,
            "mvtec_src": mvtec_src,
            "mvtec_btn": mvtec_btn,
            "mvtec_progress": mvtec_progress,
            "backbone": backbone,
            "image_size": image_size,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "train_btn": train_btn,
            "stop_btn": stop_btn,
            "progress_md": progress_md,
            "metrics_md": metrics_md,
            "loss_plot": loss_plot,
            "roc_img_plot": roc_img_plot,
            "roc_pix_plot": roc_pix_plot,
            "pro_plot": pro_plot,
            "mvtec_panel": mvtec_panel,
        }
    )
    return C
