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
    load_image_capped,
    predictions_for,
    predictor_for,
    say,
    test_set,
    verdict_text,
    workspace,
)

#: This tab's components of the current build (handlers that update several outputs address them here).
C = SimpleNamespace()


def inspect_images(
    files: Any,
    ckpt: str,
    threshold: float,
    alpha: float,
    cmap: str,
    index: int | None,
    request: gr.Request = None,  # type: ignore[assignment]
) -> tuple[Any, ...]:
    """Score the images; details (original, heatmap, overlay, ground truth, score, verdict) of image
    ``index``, a gallery of all overlays and a table of all scores."""
    from ikd_core.data.transforms import load_mask
    from ikd_core.predict import render

    paths = file_list(files)
    if not paths:
        return None, None, None, gr.Image(value=None, visible=False), None, "", [], []
    try:
        threshold, alpha, cmap = checked_display(threshold, alpha, cmap)
        if len(paths) > S.MAX_INSPECT_IMAGES:
            gr.Warning(f"{len(paths)} images uploaded; showing the first {S.MAX_INSPECT_IMAGES}")
            paths = paths[: S.MAX_INSPECT_IMAGES]
        ws = workspace(request)
        ckpt_path, predictor = predictor_for(ckpt, ws)
        images = []
        for p in paths:
            img, note = load_image_capped(p)
            if note:
                gr.Info(say(note))
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
            gt = load_mask(sample.mask_path).astype(np.uint8) * 255
        score = round(preds[i].norm_score, 4)
        verdict = verdict_text(preds[i].is_anomalous(threshold))
    except Exception as exc:  # noqa: BLE001 - shown to the user, the server keeps serving
        raise err(exc) from exc
    gt_update = gr.Image(value=gt, visible=gt is not None)
    return pics["image"], pics["heatmap"], pics["overlay"], gt_update, score, verdict, rows, gallery


def build() -> SimpleNamespace:
    """Create this tab's components (inside ``gr.Tab``); they are also kept in :data:`C`."""
    active_md = gr.Markdown("**Active model:** loading ...", elem_id="ikd-active")
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            insp_files = gr.File(
                label="Images (one or many)", file_count="multiple", file_types=["image"], elem_id="ikd-inspect-files"
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
            with gr.Row():
                out_score = gr.Number(
                    None,
                    label="Score (normalised; threshold 0.5 = fitted)",
                    precision=4,
                    interactive=False,
                    elem_id="ikd-score",
                )
                out_verdict = gr.Textbox(label="Verdict", interactive=False, elem_id="ikd-verdict")
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
            "out_image": out_image,
            "out_heat": out_heat,
            "out_overlay": out_overlay,
            "out_gt": out_gt,
            "out_score": out_score,
            "out_verdict": out_verdict,
            "results": results,
            "table": table,
            "insp_index": insp_index,
            "example_paths": example_paths,
        }
    )
    return C
