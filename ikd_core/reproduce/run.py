"""Running ``python -m ikd_core benchmark``: train (or reuse a checkpoint) and evaluate each category, then write
its curves and GIF; the report is rewritten after every category (:mod:`ikd_core.reproduce.report`).

``python -m ikd_core benchmark --data-root DIR [--data mvtec|demo] [--categories all|a,b] ...`` writes the
report, its JSON and the curves under ``--out``, and ``<assets>/<category>.gif``: test images with heatmaps and
overlays.

A category that fails is marked failed with its message; the others go on. Results are rewritten
after every category, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import save_checkpoint
from ..data.sources import DataSpec, build_datasets, default_checkpoint_name
from ..data.synthetic import DEMO_CATEGORIES
from ..device import select_device
from ..errors import IKDError
from ..evaluation import compute_curves, evaluate_model
from ..gif import make_gif, pick_samples
from ..loading import load_model
from ..machine import machine_info
from ..predict import Predictor
from ..recipes import METHOD_KEYS
from ..train import TrainConfig, train
from .report import (
    DEMO_LABEL,
    MVTEC_ORDER,
    CategoryResult,
    duration,
    pct,
    save_curves,
    table_columns,
    write_outputs,
)

GIF_FRAMES = 8
GIF_FPS = 2.0
GIF_MAX_WIDTH = 1024
#: Training settings recorded in a checkpoint that the report's Model line shows.
SETTINGS_KEYS = ("backbone", "image_size", "epochs", "batch_size", "lr", "seed", "max_minutes", "hard_mining", "gamma",
                 *METHOD_KEYS)


def parse_categories(categories: str | Sequence[str] | None, data: str) -> list[str]:
    """``all`` / None -> every category of ``data``; else the comma-separated list (order kept)."""
    known = MVTEC_ORDER if data == "mvtec" else DEMO_CATEGORIES
    if categories is None or categories == "all" or (not isinstance(categories, str) and list(categories) == ["all"]):
        return list(known)
    items = categories.split(",") if isinstance(categories, str) else list(categories)
    out: list[str] = []
    for c in (c.strip() for c in items):
        if c and c not in out:
            out.append(c)
    if not out:
        raise IKDError("--categories is empty")
    if data == "demo":
        unknown = [c for c in out if c not in DEMO_CATEGORIES]
        if unknown:
            raise IKDError(f"unknown demo categories {unknown}; choose from {', '.join(DEMO_CATEGORIES)}")
    return out


def canonical_command(**kw: Any) -> str:
    """The full ``python -m ikd_core benchmark`` command with every option explicit (reproducible)."""
    parts = ["python", "-m", "ikd_core", "benchmark", "--data-root", str(kw["data_root"]), "--data", kw["data"],
             "--categories", kw["categories"], "--backbone", kw["backbone"], "--epochs", str(kw["epochs"]),
             "--image-size", str(kw["image_size"]), "--batch-size", str(kw["batch_size"]), "--lr", f"{kw['lr']:g}",
             "--name", kw["name"], "--out", str(kw["out"]), "--assets", str(kw["assets"]),
             "--pretrained-dir", str(kw["pretrained_dir"])]
    if kw.get("retrain"):
        parts.append("--retrain")
    if kw.get("device", "auto") != "auto":
        parts += ["--device", kw["device"]]
    if kw.get("teacher_weights"):
        parts += ["--teacher-weights", str(kw["teacher_weights"])]
    return shlex.join(parts)



def run_category(
    category: str,
    spec: DataSpec,
    cfg: TrainConfig,
    checkpoint: Path,
    retrain: bool,
    curves_dir: Path,
    assets: Path,
    device: torch.device,
    on_progress: Any = None,
) -> CategoryResult:
    """Train (or load) one category, evaluate it, write its curves and GIF. Raises on failure."""
    r = CategoryResult(category, checkpoint=str(checkpoint))
    t0 = time.perf_counter()
    if checkpoint.is_file() and not retrain:
        model, meta = load_model(checkpoint, device)
        r.trained = False
        r.notes.append("existing checkpoint evaluated (training skipped; give --retrain to train again)")
        image_size = int(meta["image_size"])
        if image_size != cfg.image_size:
            r.notes.append(f"checkpoint image size {image_size} px used instead of {cfg.image_size} px")
        _, test_ds = build_datasets(spec, image_size)
    else:
        train_ds, test_ds = build_datasets(spec, cfg.image_size)
        # Evaluated below (once): the checkpoint's metrics are filled in afterwards.
        result = train(train_ds, None, cfg, out_path=checkpoint, category=category, data_info=spec.to_dict(),
                       callback=on_progress, device=device)
        if result.cancelled:
            raise IKDError("training was cancelled")
        model, meta = result.model, result.metadata
        r.trained = True
        image_size = cfg.image_size
    if test_ds is None:
        raise IKDError(f"{category}: no test set to evaluate on")
    r.image_size = image_size
    r.train_seconds = meta.get("train_seconds")
    r.images_per_sec = meta.get("images_per_sec")
    r.epochs_completed = meta.get("epochs_completed")
    r.teacher = (meta.get("teacher") or {}).get("source")
    recorded = meta.get("train_config") or {}
    r.settings = {k: recorded[k] for k in SETTINGS_KEYS if k in recorded}
    if meta.get("stopped_early"):
        r.notes.append(f"training stopped early after {r.epochs_completed} epochs")

    t_eval = time.perf_counter()
    evaluation = evaluate_model(model, test_ds, device)
    r.metrics = evaluation.metrics
    r.eval_seconds = round(time.perf_counter() - t_eval, 2)
    r.n_test = int(evaluation.outputs["labels"].numel())
    if not r.metrics:
        raise IKDError(f"{category}: the test set has no labelled images")
    if r.trained:
        meta = {**meta, "metrics": r.metrics}
        save_checkpoint(checkpoint, model.trainable_state_dict(), meta)

    title = f"{category} ({meta.get('backbone', cfg.backbone)})"
    r.curves = save_curves(compute_curves(evaluation.outputs, r.metrics), curves_dir, category, title)

    predictor = Predictor(model, meta)
    picked = pick_samples(test_ds.samples, GIF_FRAMES, seed=0)
    gif = make_gif(predictor, [s.path for s in picked], assets / f"{category}.gif",
                   masks=[s.mask_path for s in picked], fps=GIF_FPS, size=_gif_width(picked[0].path))
    r.gif, r.gif_frames = str(gif), len(picked)
    r.total_seconds = round(time.perf_counter() - t0, 2)
    return r


def _gif_width(image_path: str) -> int | None:
    """Frame width: panels (image | heatmap | overlay | ground truth) at native size, at most GIF_MAX_WIDTH
    (MVTec AD images are up to 1024 px, which would make 4096 px wide frames)."""
    from PIL import Image

    with Image.open(image_path) as im:
        width = im.width
    return GIF_MAX_WIDTH if 4 * width > GIF_MAX_WIDTH else None



# --------------------------------------------------------------------------- entry point
def run_benchmark(
    data_root: str | os.PathLike[str] | None = None,
    data: str = "mvtec",
    categories: str | Sequence[str] | None = "all",
    backbone: str = "hrnet_w32",
    epochs: int = 50,
    image_size: int = 256,
    batch_size: int = 2,
    lr: float = 5e-5,
    name: str | None = None,
    retrain: bool = False,
    out: str | os.PathLike[str] = "results",
    assets: str | os.PathLike[str] = "assets",
    pretrained_dir: str | os.PathLike[str] = "pretrained",
    device: str = "auto",
    teacher_weights: str | None = None,
    seed: int = 0,
    progress: bool = True,
    invoked: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the JSON payload (also written to ``<out>/<name>.json``)."""
    from tqdm import tqdm

    if data not in ("mvtec", "demo"):
        raise IKDError(f"--data must be mvtec or demo, not {data!r}")
    cats = parse_categories(categories, data)
    root = Path(data_root) if data_root else Path("data/mvtec" if data == "mvtec" else "data/demo")
    if data == "mvtec" and not root.is_dir():
        raise IKDError(f"MVTec AD not found under {root}; get it with `python -m ikd_core download --data-root {root}`")
    name = name or f"{data}-{backbone}-{image_size}px-{epochs}ep"
    if not name or any(ch in name for ch in "/\\") or name.startswith("."):
        raise IKDError(f"invalid --name {name!r}: use a plain file name")
    out, assets, pretrained_dir = Path(out), Path(assets), Path(pretrained_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{name}.md", out / f"{name}.json"
    dev = select_device(device)
    cfg = TrainConfig(backbone=backbone, image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr,
                      device=str(dev), teacher_weights=teacher_weights, seed=seed)
    cat_arg = "all" if categories in (None, "all") else ",".join(cats)
    command = canonical_command(data_root=root, data=data, categories=cat_arg, backbone=backbone, epochs=epochs,
                                image_size=image_size, batch_size=batch_size, lr=lr, name=name, out=out,
                                assets=assets, pretrained_dir=pretrained_dir, retrain=retrain, device=device,
                                teacher_weights=teacher_weights)
    summary = new_summary(name, data, root, cats, cfg, retrain, out, assets, pretrained_dir, dev, command, invoked)
    t_start = time.perf_counter()
    results: list[CategoryResult] = []
    bar = tqdm(cats, unit="category", desc="benchmark", disable=not progress, file=sys.stderr)
    for i, cat in enumerate(bar, start=1):
        bar.set_postfix_str(cat)
        ckpt = pretrained_dir / default_checkpoint_name(cat, backbone)
        r = _guarded_category(cat, DataSpec(data, cat, str(root)), cfg, ckpt, retrain, out / name, assets, dev,
                              _progress_callback(bar, cat))
        results.append(r)
        summary["wall_seconds"] = round(time.perf_counter() - t_start, 2)
        write_outputs(summary, results, md, js)
        if progress:
            tqdm.write(progress_line(i, len(cats), r), file=sys.stderr)
    bar.close()
    summary["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    write_outputs(summary, results, md, js)
    payload = json.loads(js.read_text(encoding="utf-8"))
    payload["report"], payload["json"] = str(md), str(js)
    return payload


def new_summary(name: str, data: str, root: Path, cats: list[str], cfg: TrainConfig, retrain: bool, out: Path,
                assets: Path, pretrained_dir: Path, dev: torch.device, command: str,
                invoked: str | None) -> dict[str, Any]:
    """The run's description for the report and the JSON, before any category has run."""
    return {
        "name": name,
        "data": data,
        "label": DEMO_LABEL if data == "demo" else "MVTec AD",
        "data_root": str(root),
        "categories": cats,
        "columns": table_columns(data, cats),
        "config": cfg.to_dict(),
        "retrain": retrain,
        "out": str(out),
        "assets": str(assets),
        "pretrained_dir": str(pretrained_dir),
        "device": str(dev),
        "command": command,
        "invoked": invoked,
        "machine": machine_info(),
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "finished": None,
        "wall_seconds": 0.0,
    }


def _progress_callback(bar: Any, cat: str) -> Any:
    """Training progress of category ``cat`` shown in the progress bar's postfix."""

    def on_progress(p: Any) -> None:
        if p.phase == "train" and p.step == p.steps_per_epoch:
            bar.set_postfix_str(f"{cat} epoch {p.epoch}/{p.epochs} loss {p.loss:.4f}, "
                                f"category ETA {duration(p.eta_s)}")
        elif p.phase != "train":
            bar.set_postfix_str(f"{cat} {p.phase}")

    return on_progress


def _guarded_category(cat: str, spec: DataSpec, cfg: TrainConfig, ckpt: Path, retrain: bool, curves_dir: Path,
                      assets: Path, dev: torch.device, on_progress: Any) -> CategoryResult:
    """:func:`run_category`, with a failure turned into a failed result (the other categories go on)."""
    t0 = time.perf_counter()
    try:
        return run_category(cat, spec, cfg, ckpt, retrain, curves_dir, assets, dev, on_progress)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one category's failure must not stop the others
        msg = str(exc).splitlines()[0] if str(exc) else ""
        if os.environ.get("IKD_DEBUG"):
            traceback.print_exc()
        return CategoryResult(cat, status="failed", error=f"{type(exc).__name__}: {msg}", checkpoint=str(ckpt),
                              total_seconds=round(time.perf_counter() - t0, 2))


def progress_line(i: int, n: int, r: CategoryResult) -> str:
    """The line printed after category ``i`` of ``n``: its metrics and times, or its failure."""
    if r.status != "ok":
        return f"[{i}/{n}] {r.category}: FAILED {r.error}"
    m = r.metrics
    return (f"[{i}/{n}] {r.category}: image AUROC {pct(m.get('image_auroc'))}, pixel AUROC "
            f"{pct(m.get('pixel_auroc'))}, F1 {pct(m.get('pixel_f1_max'))}, AU-PRO {pct(m.get('au_pro'))}"
            f" ({'trained' if r.trained else 'checkpoint'}, train {duration(r.train_seconds)}, "
            f"total {duration(r.total_seconds)})")
