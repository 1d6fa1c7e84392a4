"""Benchmark over categories: train (or reuse a checkpoint), evaluate, write tables, curves and GIFs.

``python -m ikd_core benchmark --data-root DIR [--data mvtec|demo] [--categories all|a,b] ...`` writes

* ``<out>/<name>.md``: Image-Level AUC, Pixel-Level AUC, Pixel F1 Score and AU-PRO (FPR <= 0.3) tables
  (values in %), the paper's numbers beside ours for MVTec AD, training times, machine and versions;
* ``<out>/<name>.json``: the same numbers (metrics as fractions in [0, 1]);
* ``<out>/<name>/<category>_roc.png`` (image + pixel ROC) and ``_pro.png`` (PRO curve);
* ``<assets>/<category>.gif``: test images with heatmaps and overlays.

A category that fails is marked failed with its message; the others go on. Results are rewritten
after every category, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .checkpoint import save_checkpoint
from .data.mvtec import MVTEC_CATEGORIES
from .data.sources import DataSpec, build_datasets, default_checkpoint_name
from .data.synthetic import DEMO_CATEGORIES
from .device import select_device
from .errors import IKDError
from .evaluation import Curves, compute_curves, evaluate_model
from .gif import make_gif, pick_samples
from .loading import load_model
from .predict import Predictor
from .train import TrainConfig, train
from .visualize import figure_to_png, plot_pro, plot_roc

#: Column order of the tables (the seed README's).
MVTEC_ORDER = (
    "carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut", "metal_nut",
    "pill", "screw", "toothbrush", "transistor", "zipper",
)  # fmt: skip
METRICS = ("image_auroc", "pixel_auroc", "pixel_f1_max", "au_pro")
TABLES = {
    "image_auroc": "Image-Level AUC",
    "pixel_auroc": "Pixel-Level AUC",
    "pixel_f1_max": "Pixel F1 Score",
    "au_pro": "AU-PRO (FPR ≤ 0.3)",
}
DASH = "–"
DEMO_LABEL = "synthetic demo data — not MVTec AD"
PAPER_ROW = "IKD (paper)"
GIF_FRAMES = 8
SETTINGS_KEYS = ("backbone", "image_size", "epochs", "batch_size", "lr", "seed", "max_minutes", "hard_mining", "gamma")
GIF_FPS = 2.0
GIF_MAX_WIDTH = 1024

assert set(MVTEC_ORDER) == set(MVTEC_CATEGORIES)


def column_title(category: str) -> str:
    """``metal_nut`` -> ``Metal Nut``."""
    return category.replace("_", " ").title()


def paper_results() -> dict[str, dict[str, float]]:
    """The paper's MVTec AD numbers (%): ``{category | mean | textures_mean | objects_mean: {metric: value}}``."""
    text = (resources.files("ikd_core") / "reference" / "ikd_paper_mvtec.csv").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    out: dict[str, dict[str, float]] = {}
    for row in csv.DictReader(lines):
        cat = row.pop("category")
        out[cat] = {k: float(v) for k, v in row.items() if v not in (None, "")}
    return out


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch threads, GPU (if CUDA) and versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ikd_core": __version__,
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        info["timm"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    else:
        info["gpu"] = None
    return info


def machine_lines(info: dict[str, Any]) -> list[str]:
    """Markdown bullet lines describing ``machine_info()``."""
    gpu = f"{info['gpu']} (x{info.get('gpu_count', 1)}, CUDA {info.get('cuda')})" if info.get("gpu") else "none"
    return [
        f"- Machine: {info['cpu']}, {info['cpu_cores']} CPU cores ({info['torch_threads']} torch threads); "
        f"GPU: {gpu}; {info['platform']}",
        f"- Versions: Python {info['python']}, torch {info['torch']}, timm {info['timm']}, "
        f"ikd_core {info['ikd_core']}",
    ]


@dataclass
class CategoryResult:
    category: str
    status: str = "ok"  # ok | failed
    error: str | None = None
    trained: bool = False  # False: an existing checkpoint was evaluated
    metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float | None = None
    images_per_sec: float | None = None
    epochs_completed: int | None = None
    image_size: int | None = None
    eval_seconds: float | None = None
    total_seconds: float = 0.0
    checkpoint: str | None = None
    teacher: str | None = None
    n_test: int | None = None
    curves: dict[str, str] = field(default_factory=dict)
    gif: str | None = None
    gif_frames: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # training settings recorded in the checkpoint
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["metrics"] = {k: _json_float(v) for k, v in self.metrics.items()}
        return d


def _json_float(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


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


# --------------------------------------------------------------------------- one category
def _save_curves(curves: Curves, out_dir: Path, category: str, title: str) -> dict[str, str]:
    """ROC (image and pixel) and PRO plots of one category, as PNG files; their paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = curves.metrics
    paths: dict[str, str] = {}
    fpr, tpr = curves.image_roc
    fig = plot_roc(fpr, tpr, metrics.get("image_auroc", math.nan), title=f"ROC: {title}")
    ax = fig.axes[0]
    ax.lines[-1].set_label(f"image AUROC = {_pct(metrics.get('image_auroc'))}")
    pfpr, ptpr = curves.pixel_roc
    ax.plot(pfpr, ptpr, linewidth=2, label=f"pixel AUROC = {_pct(metrics.get('pixel_auroc'))}")
    ax.legend(loc="lower right")
    roc = out_dir / f"{category}_roc.png"
    roc.write_bytes(figure_to_png(fig))
    paths["roc"] = str(roc)

    f, p = curves.pro
    pro = out_dir / f"{category}_pro.png"
    pro.write_bytes(figure_to_png(plot_pro(f, p, metrics.get("au_pro", math.nan), title=f"PRO: {title}")))
    paths["pro"] = str(pro)
    return paths


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
        save_checkpoint(checkpoint, model.student.state_dict(), meta)

    title = f"{category} ({meta.get('backbone', cfg.backbone)})"
    r.curves = _save_curves(compute_curves(evaluation.outputs, r.metrics), curves_dir, category, title)

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


# --------------------------------------------------------------------------- report
def _pct(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    return f"{100.0 * float(v):.2f}"


def _num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    return f"{float(v):.2f}"


def _duration(s: float | None) -> str:
    if s is None:
        return DASH
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def table_columns(data: str, categories: Sequence[str]) -> list[str]:
    """Category columns: the standard order of the data set, then any other category that was run."""
    base = list(MVTEC_ORDER if data == "mvtec" else DEMO_CATEGORIES)
    return base + [c for c in categories if c not in base]


def averages(results: Sequence[CategoryResult]) -> dict[str, float]:
    """Mean of each metric over the categories that succeeded (NaN ignored)."""
    out = {}
    for k in METRICS:
        vals = [r.metrics[k] for r in results if r.status == "ok" and k in r.metrics and not math.isnan(r.metrics[k])]
        out[k] = float(np.mean(vals)) if vals else math.nan
    return out


def paper_row(metric: str, columns: Sequence[str], ours_ok: Sequence[str]) -> dict[str, Any] | None:
    """Paper values (%) per column and its average; None when the paper gives no number for ``metric``.

    The average is the paper's mean over all 15 categories when ours covers all 15, else its mean over
    the same categories ours covers (so the two Avg cells compare like with like).
    """
    paper = paper_results()
    if not any(metric in v for v in paper.values()):
        return None
    cells = {c: paper[c][metric] for c in columns if c in paper and metric in paper[c]}
    same = [c for c in ours_ok if c in cells]
    if set(same) == set(MVTEC_ORDER) and "mean" in paper:
        avg, avg_over = paper["mean"][metric], list(MVTEC_ORDER)
    elif same:
        avg, avg_over = float(np.mean([cells[c] for c in same])), same
    else:
        avg, avg_over = paper.get("mean", {}).get(metric, math.nan), list(MVTEC_ORDER)
    return {"avg": avg, "avg_over": avg_over, "cells": cells}


def build_report(summary: dict[str, Any], results: Sequence[CategoryResult]) -> str:
    data = summary["data"]
    cfg = summary["config"]
    columns = summary["columns"]
    by_cat = {r.category: r for r in results}
    ok = [r.category for r in results if r.status == "ok"]
    ours_label = f"Ours ({cfg['backbone']})"
    lines = [f"# IKD benchmark: {summary['name']}", ""]
    if data == "demo":
        lines += [f"> **{DEMO_LABEL}.** These numbers are for the procedurally generated demo set; they are "
                  "not comparable with MVTec AD results or the paper.", ""]
    lines += [
        f"- Command: `{summary['command']}`",
        *([f"- Invoked as: `{summary['invoked']}`"] if summary.get("invoked") else []),
        f"- Data: {'MVTec AD' if data == 'mvtec' else 'synthetic demo data (not MVTec AD)'}, root "
        f"`{summary['data_root']}`; categories run: {', '.join(summary['categories'])}",
        model_line(summary, results),
        *machine_lines(summary["machine"]),
        f"- Date: {summary['finished'] or summary['started']} (UTC); total wall time "
        f"{_duration(summary['wall_seconds'])}",
        f"- Status: {len(ok)} of {len(results)} categories succeeded"
        + (f"; failed: {', '.join(r.category for r in results if r.status != 'ok')}" if len(ok) < len(results)
           else ""),
        "",
        f"Values in %. Avg = mean over the categories of the row that have a result. {DASH} = not run, failed "
        "or not reported.",
        "",
    ]
    header = "| Method | Avg | " + " | ".join(column_title(c) for c in columns) + " |"
    align = "|:---|" + "---:|" * (len(columns) + 1)
    avg = summary["average"]
    for metric, title in TABLES.items():
        lines += [f"## {title}", "", header, align]
        cells = [_pct(by_cat[c].metrics.get(metric)) if c in by_cat and by_cat[c].status == "ok" else DASH
                 for c in columns]
        lines.append(f"| {ours_label} | {_pct(avg.get(metric))} | " + " | ".join(cells) + " |")
        if data == "mvtec":
            pr = summary["paper"].get(metric)
            if pr is None:
                lines.append(f"| {PAPER_ROW} | {DASH} | " + " | ".join(DASH for _ in columns) + " |")
            else:
                pcells = [_num(pr["cells"].get(c)) for c in columns]
                lines.append(f"| {PAPER_ROW} | {_num(pr['avg'])} | " + " | ".join(pcells) + " |")
        lines.append("")
        if data == "mvtec" and metric in ("image_auroc", "pixel_f1_max"):
            lines += ["The paper reports no " + ("image-level AUROC" if metric == "image_auroc" else "pixel F1")
                      + " for MVTec AD.", ""]
        if data == "mvtec" and summary["paper"].get(metric) is not None:
            over = summary["paper"][metric]["avg_over"]
            if len(over) < len(MVTEC_ORDER):
                lines += [f"Paper Avg is its mean over the same {len(over)} categories as ours "
                          f"(the paper's 15-category mean: {_num(paper_results()['mean'][metric])}).", ""]
    if data == "mvtec":
        lines += ["Paper: Cao et al., Informative knowledge distillation for image anomaly segmentation, "
                  "Knowledge-Based Systems 248 (2022) 108846, HRNet-32 teacher (Tables 1 and 2).", ""]

    lines += ["## Training and evaluation per category", "",
              "| Category | Status | Trained here | Train time | Images/s | Epochs | Image size | Eval time | "
              "Test images | Curves | GIF |",
              "|:---|:---|:---|---:|---:|---:|---:|---:|---:|:---|:---|"]
    for r in results:
        curves = (" ".join(f"[{k}]({_rel(v, summary['out'])})" for k, v in r.curves.items()) or DASH)
        gif = f"[gif]({_rel(r.gif, summary['out'])})" if r.gif else DASH
        trained = DASH if r.status != "ok" else ("yes" if r.trained else "no (checkpoint)")
        lines.append(
            f"| {r.category} | {r.status} | {trained} | {_duration(r.train_seconds)} | "
            f"{_num(r.images_per_sec)} | {DASH if r.epochs_completed is None else format(r.epochs_completed, 'g')} | "
            f"{r.image_size or DASH} | {_duration(r.eval_seconds)} | {r.n_test or DASH} | {curves} | {gif} |"
        )
    total_train = sum(r.train_seconds or 0.0 for r in results if r.trained)
    lines += ["", f"Training time of the categories trained in this run: {_duration(total_train)}. For a reused "
              "checkpoint, train time, images/s and epochs are the ones recorded in it.", ""]
    failed = [r for r in results if r.status != "ok"]
    notes = [(r.category, n) for r in results for n in r.notes]
    if failed:
        lines += ["## Failures", ""]
        for r in failed:
            lines.append(f"- **{r.category}**: {r.error}")
        lines.append("")
    if notes:
        lines += ["## Notes", ""]
        lines += [f"- {c}: {n}" for c, n in notes]
        lines.append("")
    return "\n".join(lines)


def settings_text(s: dict[str, Any]) -> str:
    """One line of training settings (``TrainConfig`` keys), as the report's Model line shows them."""
    parts = [f"backbone {s.get('backbone', DASH)}", f"image size {s.get('image_size', DASH)} px",
             f"epochs {s.get('epochs', DASH)}", f"batch size {s.get('batch_size', DASH)}",
             f"lr {s['lr']:g}" if "lr" in s else f"lr {DASH}", f"seed {s.get('seed', DASH)}"]
    if s.get("max_minutes"):
        parts.append(f"time limit {s['max_minutes']:g} min")
    if s.get("hard_mining") is False:
        parts.append("AHSM off")
    if s.get("gamma") is not None and s["gamma"] != 1.0:
        parts.append(f"gamma {s['gamma']:g}")
    return ", ".join(parts)


def model_line(summary: dict[str, Any], results: Sequence[CategoryResult]) -> str:
    """The Model line: the run's settings, or those recorded in the checkpoints it evaluated instead."""
    cfg = summary["config"]
    tail = f"; device {summary['device']}; checkpoints in `{summary['pretrained_dir']}`" + (
        " (retrained)" if summary["retrain"] else "")
    reused = [r for r in results if r.status == "ok" and not r.trained]
    if not reused:
        return f"- Model: {settings_text(cfg)}{tail}"
    groups: dict[str, list[str]] = {}
    for r in reused:
        groups.setdefault(settings_text(r.settings) if r.settings else "settings not recorded", []).append(
            r.category)
    described = "; ".join(text if len(groups) == 1 else f"{', '.join(cats)}: {text}" for text, cats in
                          groups.items())
    head = f"- Model: existing checkpoints evaluated, trained with {described}"
    if any(r.trained for r in results):
        head += f"; categories trained in this run: {settings_text(cfg)}"
    return head + tail


def _rel(path: str | None, base: str) -> str:
    if not path:
        return ""
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _write_outputs(summary: dict[str, Any], results: Sequence[CategoryResult], md: Path, js: Path) -> None:
    summary["average"] = averages(results)
    ok = [r.category for r in results if r.status == "ok"]
    summary["paper"] = {}
    if summary["data"] == "mvtec":
        for m in METRICS:
            summary["paper"][m] = paper_row(m, summary["columns"], ok)
    md.write_text(build_report(summary, results), encoding="utf-8")
    payload = {
        **{k: v for k, v in summary.items() if k not in ("average", "paper")},
        "metrics_unit": "fraction in [0, 1] (the markdown shows %)",
        "average": {k: _json_float(v) for k, v in summary["average"].items()},
        "paper_percent": summary["paper"],
        "results": [r.to_dict() for r in results],
    }
    js.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n", encoding="utf-8")


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
    curves_dir = out / name
    md, js = out / f"{name}.md", out / f"{name}.json"
    dev = select_device(device)
    cfg = TrainConfig(backbone=backbone, image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr,
                      device=str(dev), teacher_weights=teacher_weights, seed=seed)
    cat_arg = "all" if categories in (None, "all") else ",".join(cats)
    summary: dict[str, Any] = {
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
        "command": canonical_command(data_root=root, data=data, categories=cat_arg, backbone=backbone,
                                     epochs=epochs, image_size=image_size, batch_size=batch_size, lr=lr,
                                     name=name, out=out, assets=assets, pretrained_dir=pretrained_dir,
                                     retrain=retrain, device=device, teacher_weights=teacher_weights),
        "invoked": invoked,
        "machine": machine_info(),
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "finished": None,
        "wall_seconds": 0.0,
    }
    t_start = time.perf_counter()
    results: list[CategoryResult] = []
    bar = tqdm(cats, unit="category", desc="benchmark", disable=not progress, file=sys.stderr)
    for i, cat in enumerate(bar, start=1):
        bar.set_postfix_str(cat)

        def on_progress(p: Any, cat: str = cat) -> None:
            if p.phase == "train" and p.step == p.steps_per_epoch:
                bar.set_postfix_str(f"{cat} epoch {p.epoch}/{p.epochs} loss {p.loss:.4f}, "
                                    f"category ETA {_duration(p.eta_s)}")
            elif p.phase != "train":
                bar.set_postfix_str(f"{cat} {p.phase}")

        spec = DataSpec(data, cat, str(root))
        ckpt = pretrained_dir / default_checkpoint_name(cat, backbone)
        t0 = time.perf_counter()
        try:
            r = run_category(cat, spec, cfg, ckpt, retrain, curves_dir, assets, dev, on_progress)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one category's failure must not stop the others
            msg = str(exc).splitlines()[0] if str(exc) else ""
            r = CategoryResult(cat, status="failed", error=f"{type(exc).__name__}: {msg}", checkpoint=str(ckpt),
                               total_seconds=round(time.perf_counter() - t0, 2))
            if os.environ.get("IKD_DEBUG"):
                traceback.print_exc()
        results.append(r)
        summary["wall_seconds"] = round(time.perf_counter() - t_start, 2)
        _write_outputs(summary, results, md, js)
        if r.status == "ok":
            m = r.metrics
            line = (f"[{i}/{len(cats)}] {cat}: image AUROC {_pct(m.get('image_auroc'))}, pixel AUROC "
                    f"{_pct(m.get('pixel_auroc'))}, F1 {_pct(m.get('pixel_f1_max'))}, AU-PRO {_pct(m.get('au_pro'))}"
                    f" ({'trained' if r.trained else 'checkpoint'}, train {_duration(r.train_seconds)}, "
                    f"total {_duration(r.total_seconds)})")
        else:
            line = f"[{i}/{len(cats)}] {cat}: FAILED {r.error}"
        if progress:
            tqdm.write(line, file=sys.stderr)
    bar.close()
    summary["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    _write_outputs(summary, results, md, js)
    payload = json.loads(js.read_text(encoding="utf-8"))
    payload["report"], payload["json"] = str(md), str(js)
    return payload
