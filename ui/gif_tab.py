"""The Export GIF tab: a GIF of image | heatmap | overlay | ground truth panels."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import gradio as gr
import numpy as np

from ikd_core import service

from . import state as S
from .state import (
    checked_display,
    err,
    file_list,
    load_and_predict,
    md,
    predictor_for,
    test_set,
    workspace,
)

#: This tab's components of the current build (handlers that update several outputs address them here).
C = SimpleNamespace()


# ------------------------------------------------------------------------------------------ Export GIF
def export_gif(
    ckpt: str,
    n: float,
    fps: float,
    width: float,
    threshold: float,
    alpha: float,
    cmap: str,
    files: Any,
    request: gr.Request = None,
) -> tuple[Any, Any, str]:  # type: ignore[assignment]
    """A GIF of the images in the Inspect tab, or else of ``n`` test images of the active model's data. The maps
    come from the prediction cache or the model; the frames are drawn on the CPU."""
    from ikd_core.gif import make_gif, pick_samples

    with S.TRIMMER.request():
        try:
            n = int(service.number(n, "number of images", 1, S.MAX_GIF_IMAGES, integer=True))
            fps = float(service.number(fps, "frames per second", 0.1, 30.0))
            width = int(service.number(width, "frame width", 64, 1600, integer=True))
            threshold, alpha, cmap = checked_display(threshold, alpha, cmap)
            ws = workspace(request)
            path, predictor = predictor_for(ckpt, ws)
            images, masks = file_list(files)[:n], None
            what = f"{len(images)} of your images"
            if not images:
                samples, _ = test_set(path, predictor.metadata)
                if not samples:
                    raise gr.Error("this model's data has no test set here: upload images in the Inspect tab first")
                picked = pick_samples(samples, n, seed=0)
                images, masks = [s.path for s in picked], [s.mask_path for s in picked]
                what = f"{len(images)} test images of {md(predictor.metadata.get('category'))}"
            done = load_and_predict(path, images)
            loaded, preds = [img for img, _, _ in done], [pred for _, _, pred in done]
            out = ws.exports / f"{path.stem}-{uuid.uuid4().hex[:8]}.gif"
            out.parent.mkdir(parents=True, exist_ok=True)
            service.prune_files(out.parent, keep=S.MAX_KEPT_EXPORTS - 1)
            make_gif(
                None,
                [np.asarray(im) for im in loaded],
                out,
                masks=masks,
                fps=fps,
                size=width,
                norm_threshold=threshold,
                alpha=alpha,
                cmap=cmap,
                predictions=preds,
            )
        except Exception as exc:  # noqa: BLE001
            raise err(exc) from exc
    return str(out), str(out), f"{len(images)} frames ({what}), {fps:g} fps, {width} px wide"


def build() -> SimpleNamespace:
    """Create this tab's components (inside ``gr.Tab``); they are also kept in :data:`C`."""
    gr.Markdown(
        "A GIF of test images of the active model's data: image | heatmap | overlay | ground "
        "truth, with score and verdict (threshold, opacity and colormap from the Inspect tab)."
    )
    with gr.Row():
        gif_n = gr.Slider(1, 32, value=8, step=1, label="Number of test images", elem_id="ikd-gif-n")
        gif_fps = gr.Slider(0.5, 10, value=2, step=0.5, label="Frames per second")
        gif_width = gr.Slider(128, 1600, value=768, step=32, label="Frame width (px)")
    gif_btn = gr.Button("Make GIF", variant="primary", elem_id="ikd-gif")
    gif_info = gr.Markdown(elem_id="ikd-gif-info")
    with gr.Row():
        gif_preview = gr.Image(type="filepath", label="Preview", interactive=False, elem_id="ikd-gif-preview")
        gif_file = gr.File(label="Download", interactive=False, elem_id="ikd-gif-file")
    C.__dict__.update(
        {
            "gif_n": gif_n,
            "gif_fps": gif_fps,
            "gif_width": gif_width,
            "gif_btn": gif_btn,
            "gif_info": gif_info,
            "gif_preview": gif_preview,
            "gif_file": gif_file,
        }
    )
    return C
