"""The Export GIF tab: a GIF of image | heatmap | overlay | ground truth panels."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from ikd_core import service

from .common import checked_display, file_list, md
from .context import AppContext

if TYPE_CHECKING:
    from .inspect_tab import InspectTab


class GifTab:
    """A GIF of the active model's results, with the Inspect tab's display settings and images."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def export_gif(
        self,
        ckpt: str,
        n: float,
        fps: float,
        width: float,
        threshold: float,
        alpha: float,
        cmap: str,
        files: Any,
        request: gr.Request = None,  # type: ignore[assignment]
    ) -> tuple[Any, Any, str]:
        """A GIF of the images in the Inspect tab, or else of ``n`` test images of the active model's data. The maps
        come from the prediction cache or the model; the frames are drawn on the CPU."""
        from ikd_core.gif import make_gif, pick_samples

        ctx, settings = self.ctx, self.ctx.settings
        with ctx.trimmer.request():
            try:
                n = int(service.number(n, "number of images", 1, settings.max_gif_images, integer=True))
                fps = float(service.number(fps, "frames per second", 0.1, 30.0))
                width = int(service.number(width, "frame width", 64, 1600, integer=True))
                threshold, alpha, cmap = checked_display(threshold, alpha, cmap)
                ws = ctx.workspace(request)
                path, predictor = ctx.predictor_for(ckpt, ws)
                images, masks = file_list(files)[:n], None
                what = f"{len(images)} of your images"
                if not images:
                    samples, _ = ctx.test_set(path, predictor.metadata)
                    if not samples:
                        raise gr.Error("this model's data has no test set here: upload images in the Inspect tab first")
                    picked = pick_samples(samples, n, seed=0)
                    images, masks = [s.path for s in picked], [s.mask_path for s in picked]
                    what = f"{len(images)} test images of {md(predictor.metadata.get('category'))}"
                done = ctx.load_and_predict(path, images)
                out = ws.exports / f"{path.stem}-{uuid.uuid4().hex[:8]}.gif"
                out.parent.mkdir(parents=True, exist_ok=True)
                service.prune_files(out.parent, keep=settings.max_kept_exports - 1)
                make_gif(None, [np.asarray(img) for img, _, _ in done], out, masks=masks, fps=fps, size=width,
                         norm_threshold=threshold, alpha=alpha, cmap=cmap, predictions=[p for _, _, p in done])
            except Exception as exc:  # noqa: BLE001
                raise ctx.err(exc) from exc
        return str(out), str(out), f"{len(images)} frames ({what}), {fps:g} fps, {width} px wide"

    def build(self) -> GifTab:
        """Create this tab's components (inside ``gr.Tab``).

        Returns:
            This tab.
        """
        gr.Markdown(
            "A GIF of test images of the active model's data: image | heatmap | overlay | ground "
            "truth, with score and verdict (threshold, opacity and colormap from the Inspect tab)."
        )
        with gr.Row():
            self.gif_n = gr.Slider(1, 32, value=8, step=1, label="Number of test images", elem_id="ikd-gif-n")
            self.gif_fps = gr.Slider(0.5, 10, value=2, step=0.5, label="Frames per second")
            self.gif_width = gr.Slider(128, 1600, value=768, step=32, label="Frame width (px)")
        self.gif_btn = gr.Button("Make GIF", variant="primary", elem_id="ikd-gif")
        self.gif_info = gr.Markdown(elem_id="ikd-gif-info")
        with gr.Row():
            self.gif_preview = gr.Image(type="filepath", label="Preview", interactive=False, elem_id="ikd-gif-preview")
            self.gif_file = gr.File(label="Download", interactive=False, elem_id="ikd-gif-file")
        return self

    def wire(self, inspect: InspectTab) -> None:
        """The tab's event: the active checkpoint, the Inspect tab's display settings and images."""
        self.gif_btn.click(
            self.export_gif,
            [inspect.ckpt_dd, self.gif_n, self.gif_fps, self.gif_width, inspect.threshold, inspect.opacity,
             inspect.cmap, inspect.insp_files],
            [self.gif_preview, self.gif_file, self.gif_info],
            concurrency_limit=1,
            concurrency_id="gif",
            api_name="export_gif",
        )


def build(ctx: AppContext) -> GifTab:
    """Create the Export GIF tab's components (inside ``gr.Tab``).

    Args:
        ctx: The app's context.

    Returns:
        The tab, holding its components.
    """
    return GifTab(ctx).build()
