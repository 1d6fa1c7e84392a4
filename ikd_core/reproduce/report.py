"""Reporting of ``python -m ikd_core benchmark``: the markdown tables, the JSON and the ROC / PRO plots.

* ``<out>/<name>.md``: Image-Level AUC, Pixel-Level AUC, Pixel F1 Score and AU-PRO (FPR <= 0.3) tables
  (values in %), the paper's numbers beside ours for MVTec AD, training times, machine and versions;
* ``<out>/<name>.json``: the same numbers (metrics as fractions in [0, 1]);
* ``<out>/<name>/<category>_roc.png`` (image + pixel ROC) and ``_pro.png`` (PRO curve).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..data.mvtec import MVTEC_CATEGORIES
from ..data.synthetic import DEMO_CATEGORIES
from ..evaluation import Curves
from ..machine import machine_lines
from ..recipes import method_parts
from ..visualize import figure_to_png, plot_pro, plot_roc

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



def save_curves(curves: Curves, out_dir: Path, category: str, title: str) -> dict[str, str]:
    """ROC (image and pixel) and PRO plots of one category, as PNG files; their paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = curves.metrics
    paths: dict[str, str] = {}
    fpr, tpr = curves.image_roc
    fig = plot_roc(fpr, tpr, metrics.get("image_auroc", math.nan), title=f"ROC: {title}")
    ax = fig.axes[0]
    ax.lines[-1].set_label(f"image AUROC = {pct(metrics.get('image_auroc'))}")
    pfpr, ptpr = curves.pixel_roc
    ax.plot(pfpr, ptpr, linewidth=2, label=f"pixel AUROC = {pct(metrics.get('pixel_auroc'))}")
    ax.legend(loc="lower right")
    roc = out_dir / f"{category}_roc.png"
    roc.write_bytes(figure_to_png(fig))
    paths["roc"] = str(roc)

    f, p = curves.pro
    pro = out_dir / f"{category}_pro.png"
    pro.write_bytes(figure_to_png(plot_pro(f, p, metrics.get("au_pro", math.nan), title=f"PRO: {title}")))
    paths["pro"] = str(pro)
    return paths


def pct(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    return f"{100.0 * float(v):.2f}"


def num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    return f"{float(v):.2f}"


def duration(s: float | None) -> str:
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
    """The markdown report: header, one table per metric, the per-category table, failures and notes."""
    lines = [f"# IKD benchmark: {summary['name']}", "", *header_lines(summary, results), "",
             f"Values in %. Avg = mean over the categories of the row that have a result. {DASH} = not run, failed "
             "or not reported.", ""]
    for metric, title in TABLES.items():
        lines += metric_table(summary, results, metric, title)
    if summary["data"] == "mvtec":
        lines += ["Paper: Cao et al., Informative knowledge distillation for image anomaly segmentation, "
                  "Knowledge-Based Systems 248 (2022) 108846, HRNet-32 teacher (Tables 1 and 2).", ""]
    lines += category_table(summary, results)
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


def header_lines(summary: dict[str, Any], results: Sequence[CategoryResult]) -> list[str]:
    """The demo warning (demo data) and the bullet lines: command, data, model, machine, date, status."""
    data = summary["data"]
    ok = [r.category for r in results if r.status == "ok"]
    lines = []
    if data == "demo":
        lines += [f"> **{DEMO_LABEL}.** These numbers are for the procedurally generated demo set; they are "
                  "not comparable with MVTec AD results or the paper.", ""]
    return lines + [
        f"- Command: `{summary['command']}`",
        *([f"- Invoked as: `{summary['invoked']}`"] if summary.get("invoked") else []),
        f"- Data: {'MVTec AD' if data == 'mvtec' else 'synthetic demo data (not MVTec AD)'}, root "
        f"`{summary['data_root']}`; categories run: {', '.join(summary['categories'])}",
        model_line(summary, results),
        *machine_lines(summary["machine"]),
        f"- Date: {summary['finished'] or summary['started']} (UTC); total wall time "
        f"{duration(summary['wall_seconds'])}",
        f"- Status: {len(ok)} of {len(results)} categories succeeded"
        + (f"; failed: {', '.join(r.category for r in results if r.status != 'ok')}" if len(ok) < len(results)
           else ""),
    ]


def metric_table(summary: dict[str, Any], results: Sequence[CategoryResult], metric: str, title: str) -> list[str]:
    """One metric's table: our row and, for MVTec AD, the paper's, with the notes below it."""
    data, columns = summary["data"], summary["columns"]
    by_cat = {r.category: r for r in results}
    header = "| Method | Avg | " + " | ".join(column_title(c) for c in columns) + " |"
    align = "|:---|" + "---:|" * (len(columns) + 1)
    lines = [f"## {title}", "", header, align]
    cells = [pct(by_cat[c].metrics.get(metric)) if c in by_cat and by_cat[c].status == "ok" else DASH
             for c in columns]
    lines.append(f"| Ours ({summary['config']['backbone']}) | {pct(summary['average'].get(metric))} | "
                 + " | ".join(cells) + " |")
    if data == "mvtec":
        pr = summary["paper"].get(metric)
        if pr is None:
            lines.append(f"| {PAPER_ROW} | {DASH} | " + " | ".join(DASH for _ in columns) + " |")
        else:
            pcells = [num(pr["cells"].get(c)) for c in columns]
            lines.append(f"| {PAPER_ROW} | {num(pr['avg'])} | " + " | ".join(pcells) + " |")
    lines.append("")
    if data == "mvtec" and metric in ("image_auroc", "pixel_f1_max"):
        lines += ["The paper reports no " + ("image-level AUROC" if metric == "image_auroc" else "pixel F1")
                  + " for MVTec AD.", ""]
    if data == "mvtec" and summary["paper"].get(metric) is not None:
        over = summary["paper"][metric]["avg_over"]
        if len(over) < len(MVTEC_ORDER):
            lines += [f"Paper Avg is its mean over the same {len(over)} categories as ours "
                      f"(the paper's 15-category mean: {num(paper_results()['mean'][metric])}).", ""]
    return lines


def category_table(summary: dict[str, Any], results: Sequence[CategoryResult]) -> list[str]:
    """Training and evaluation per category: status, times, sizes, links to the curves and the GIF."""
    lines = ["## Training and evaluation per category", "",
             "| Category | Status | Trained here | Train time | Images/s | Epochs | Image size | Eval time | "
             "Test images | Curves | GIF |",
             "|:---|:---|:---|---:|---:|---:|---:|---:|---:|:---|:---|"]
    for r in results:
        curves = (" ".join(f"[{k}]({_rel(v, summary['out'])})" for k, v in r.curves.items()) or DASH)
        gif = f"[gif]({_rel(r.gif, summary['out'])})" if r.gif else DASH
        trained = DASH if r.status != "ok" else ("yes" if r.trained else "no (checkpoint)")
        lines.append(
            f"| {r.category} | {r.status} | {trained} | {duration(r.train_seconds)} | "
            f"{num(r.images_per_sec)} | {DASH if r.epochs_completed is None else format(r.epochs_completed, 'g')} | "
            f"{r.image_size or DASH} | {duration(r.eval_seconds)} | {r.n_test or DASH} | {curves} | {gif} |"
        )
    total_train = sum(r.train_seconds or 0.0 for r in results if r.trained)
    return lines + ["", f"Training time of the categories trained in this run: {duration(total_train)}. For a "
                    "reused checkpoint, train time, images/s and epochs are the ones recorded in it.", ""]


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
    parts += method_parts(s)
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


def write_outputs(summary: dict[str, Any], results: Sequence[CategoryResult], md: Path, js: Path) -> None:
    """Averages and paper rows into ``summary``, then the markdown report ``md`` and the JSON ``js``."""
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

