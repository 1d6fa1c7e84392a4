"""The Inspect tab: heatmaps, overlays, scores and verdicts of the user's images."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import numpy as np

from ikd_core import service
from ikd_core.visualize import COLORMAPS

from . import state as S
from .state import (
    checked_display,
    err,
    file_list,
    load_and_predict,
    predictor_for,
    say,
    test_set,
    verdict_text,
    workspace,
)

#: This tab's components of the current build (handlers that update several outputs address them here).
C = SimpleNamespace()


N_OUTPUTS = 12


def _empty() -> tuple[Any, ...]:
    """Outputs when there is nothing to show: everything cleared (never a stale result of another model)."""
    return (None, None, None, gr.Image(value=None, visible=False), None, "", [], [], None, "", None, None)


def ratio_text(relative: float, threshold: float) -> str:
    """The unclipped score as a multiple of the threshold in use, e.g. ``2.4 × threshold``."""
    if threshold <= 0:
        return "threshold 0: every image is anomalous"
    return f"**{relative / threshold:.2f} × threshold**"


def write_results(rows: list[dict[str, Any]], folder: Path) -> tuple[str, str]:
    """The batch's results as CSV and JSON files (file, score, ratio, verdict, threshold, model)."""
    import csv
    import io
    import json
    import uuid

    folder.mkdir(parents=True, exist_ok=True)
    service.prune_files(folder, keep=2 * S.MAX_KEPT_EXPORTS - 2)
    stem = f"results-{uuid.uuid4().hex[:8]}"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    csv_path.write_text(buf.getvalue(), encoding="utf-8")
    json_path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return str(csv_path), str(json_path)


def inspect_images(
    files: Any,
    ckpt: str,
    threshold: float,
    alpha: float,
    cmap: str,
    index: int | None,
    tile: bool = False,
    request: gr.Request = None,  # type: ignore[assignment]
) -> tuple[Any, ...]:
    """Score the images with the active model ``ckpt`` (``tile``: large images in tiles at their resolution, against
    the threshold fitted on held-out tiles); details of image ``index`` (original, heatmap, overlay,
    ground truth, unclipped score, verdict, predicted mask, score as a multiple of the threshold), a gallery of all
    overlays, a table of all scores and the same results as CSV and JSON files."""
    from ikd_core.data.transforms import load_mask
    from ikd_core.predict import render

    paths = file_list(files)
    if not paths or not ckpt:
        return _empty()
    with S.TRIMMER.request():
        try:
            threshold, alpha, cmap = checked_display(threshold, alpha, cmap)
            if len(paths) > S.MAX_INSPECT_IMAGES:
                gr.Warning(f"{len(paths)} images uploaded; showing the first {S.MAX_INSPECT_IMAGES}")
                paths = paths[: S.MAX_INSPECT_IMAGES]
            ws = workspace(request)
            ckpt_path, predictor = predictor_for(ckpt, ws)
            images, preds = [], []
            if tile and not predictor.tile_calibrated:
                raise gr.Error("this model has no threshold fitted on tiles (it was trained before tiling was "
                               "calibrated): train it again to inspect in tiles")
            for img, note, pred in load_and_predict(ckpt_path, paths, bool(tile)):
                if note:
                    gr.Info(say(note))
                images.append(img)
                preds.append(pred)
            rows, gallery, records = [], [], []
            for p, img, pred in zip(paths, images, preds, strict=True):
                bad = pred.is_anomalous(threshold)
                score = round(pred.relative_score, 4)
                rows.append([Path(p).name, score, verdict_text(bad)])
                records.append({"file": Path(p).name, "score": score,
                                "times_threshold": round(pred.relative_score / threshold, 4) if threshold > 0 else None,
                                "verdict": verdict_text(bad), "threshold": threshold, "model": ckpt_path.name})
                over = render(img, pred, threshold, alpha, cmap)["overlay"]
                gallery.append((over, f"{Path(p).name}: {score:.3f} {verdict_text(bad)}"))
            i = min(max(int(service.number(index or 0, "index", 0, 10**6, integer=True)), 0), len(paths) - 1)
            pics = render(images[i], preds[i], threshold, alpha, cmap)
            _, sample_index = test_set(ckpt_path, predictor.metadata)
            sample = sample_index.lookup(paths[i])
            gt = None
            if sample is not None and sample.mask_path:
                gt = load_mask(sample.mask_path).astype(np.uint8) * 255
            score = round(preds[i].relative_score, 4)
            verdict = verdict_text(preds[i].is_anomalous(threshold))
            csv_file, json_file = write_results(records, ws.exports)
        except Exception as exc:  # noqa: BLE001 - shown to the user, the server keeps serving
            raise err(exc) from exc
    gt_update = gr.Image(value=gt, visible=gt is not None)
    return (pics["image"], pics["heatmap"], pics["overlay"], gt_update, score, verdict, rows, gallery, pics["mask"],
            ratio_text(preds[i].relative_score, threshold), csv_file, json_file)


def build() -> SimpleNamespace:
    """Create this tab's components (inside ``gr.Tab``); they are also kept in :data:`C`."""
    active_md = gr.Markdown("**Active model:** loading ...", elem_id="ikd-active")
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            insp_files = gr.File(
                label="Images (one or many)", file_count="multiple", file_types=["image"], elem_id="ikd-inspect-files"
            )
            snapshot = gr.Image(
                sources=["webcam", "clipboard", "upload"],
                type="filepath",
                label="Or: a camera snapshot, a pasted or dropped image",
                height=200,
                elem_id="ikd-snapshot",
            )
            examples = gr.Gallery(
                label="Examples: test images of the active model (click one)",
                columns=4,
                height=200,
                allow_preview=False,
                object_fit="cover",
                fit_columns=False,
                elem_id="ikd-examples",
            )
            threshold = gr.Slider(
                0.0, 1.0, value=0.5, step=0.01, label="Threshold (0.5 = fitted)", elem_id="ikd-threshold"
            )
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", elem_id="ikd-opacity")
            cmap = gr.Dropdown(COLORMAPS, value="jet", label="Colormap", elem_id="ikd-cmap")
            tile = gr.Checkbox(
                False,
                label="Tile large images (model-size tiles at the image's resolution; threshold fitted on tiles)",
                elem_id="ikd-tile",
            )
        with gr.Column(scale=2):
            with gr.Row():
                out_image = gr.Image(
                    type="numpy", format="png", label="Image", interactive=False, elem_id="ikd-original"
                )
                out_heat = gr.Image(
                    type="numpy", format="png", label="Heatmap", interactive=False, elem_id="ikd-heatmap"
                )
                out_overlay = gr.Image(
                    type="numpy",
                    format="png",
                    label="Overlay + predicted outline",
                    interactive=False,
                    elem_id="ikd-overlay",
                )
                out_gt = gr.Image(
                    type="numpy", format="png", label="Ground truth", interactive=False, visible=False, elem_id="ikd-gt"
                )
                out_mask = gr.Image(
                    type="numpy", format="png", label="Predicted defect mask", interactive=False, elem_id="ikd-mask"
                )
            with gr.Row():
                out_score = gr.Number(
                    None,
                    label="Score (0.5 = fitted threshold; not clipped)",
                    precision=4,
                    interactive=False,
                    placeholder="no image yet",
                    elem_id="ikd-score",
                )
                out_verdict = gr.Textbox(label="Verdict", interactive=False, elem_id="ikd-verdict")
                out_ratio = gr.Markdown(elem_id="ikd-ratio")
            results = gr.Gallery(
                label="All images (click one for details)",
                columns=8,
                height=180,
                allow_preview=False,
                format="png",
                object_fit="contain",
                fit_columns=False,
                elem_id="ikd-results",
            )
            table = gr.Dataframe(
                headers=["image", "score", "verdict"], label="Scores", interactive=False, elem_id="ikd-table"
            )
            with gr.Row():
                out_csv = gr.File(label="Results (CSV)", interactive=False, elem_id="ikd-results-csv")
                out_json = gr.File(label="Results (JSON)", interactive=False, elem_id="ikd-results-json")
    insp_index = gr.State(0)
    example_paths = gr.State([])
    C.__dict__.update(
        {
            "active_md": active_md,
            "insp_files": insp_files,
            "examples": examples,
            "threshold": threshold,
            "opacity": opacity,
            "cmap": cmap,
            "tile": tile,
            "out_image": out_image,
            "out_heat": out_heat,
            "out_overlay": out_overlay,
            "out_gt": out_gt,
            "out_score": out_score,
            "out_verdict": out_verdict,
            "out_mask": out_mask,
            "out_ratio": out_ratio,
            "out_csv": out_csv,
            "out_json": out_json,
            "snapshot": snapshot,
            "results": results,
            "table": table,
            "insp_index": insp_index,
            "example_paths": example_paths,
        }
    )
    return C
