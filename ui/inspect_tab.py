"""The Inspect tab: heatmaps, overlays, scores and verdicts of the user's images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from ikd_core import service
from ikd_core.visualize import COLORMAPS

from .common import checked_display, file_list, verdict_text
from .context import AppContext

N_OUTPUTS = 12


def _empty() -> tuple[Any, ...]:
    """Outputs when there is nothing to show: everything cleared (never a stale result of another model)."""
    return (None, None, None, gr.Image(value=None, visible=False), None, "", [], [], None, "", None, None)


def ratio_text(relative: float, threshold: float) -> str:
    """The unclipped score as a multiple of the threshold in use, e.g. ``2.4 × threshold``."""
    if threshold <= 0:
        return "threshold 0: every image is anomalous"
    return f"**{relative / threshold:.2f} × threshold**"


def write_results(rows: list[dict[str, Any]], folder: Path, keep: int = 30) -> tuple[str, str]:
    """The batch's results as CSV and JSON files (file, score, ratio, verdict, threshold, model); ``keep``: older
    files of the folder kept."""
    import csv
    import io
    import json
    import uuid

    folder.mkdir(parents=True, exist_ok=True)
    service.prune_files(folder, keep=keep)
    stem = f"results-{uuid.uuid4().hex[:8]}"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    csv_path.write_text(buf.getvalue(), encoding="utf-8")
    json_path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return str(csv_path), str(json_path)



def _results(
    paths: list[str], images: list[Any], preds: list[Any], threshold: float, alpha: float, cmap: str, model: str
) -> tuple[list[list[Any]], list[tuple[Any, str]], list[dict[str, Any]]]:
    """The table rows, the gallery of overlays and the records (CSV / JSON) of a batch."""
    from ikd_core.predict import render

    rows, gallery, records = [], [], []
    for p, img, pred in zip(paths, images, preds, strict=True):
        bad = pred.is_anomalous(threshold)
        score = round(pred.relative_score, 4)
        rows.append([Path(p).name, score, verdict_text(bad)])
        records.append({"file": Path(p).name, "score": score,
                        "times_threshold": round(pred.relative_score / threshold, 4) if threshold > 0 else None,
                        "verdict": verdict_text(bad), "threshold": threshold, "model": model})
        over = render(img, pred, threshold, alpha, cmap)["overlay"]
        gallery.append((over, f"{Path(p).name}: {score:.3f} {verdict_text(bad)}"))
    return rows, gallery, records


class InspectTab:
    """The Inspect tab: the user's images scored by the active model (the checkpoints panel's dropdown)."""

    def __init__(self, ctx: AppContext, ckpt_dd: Any) -> None:
        self.ctx = ctx
        self.ckpt_dd = ckpt_dd

    def inspect_images(
        self,
        files: Any,
        ckpt: str,
        threshold: float,
        alpha: float,
        cmap: str,
        index: int | None,
        tile: bool = False,
        request: gr.Request = None,  # type: ignore[assignment]
    ) -> tuple[Any, ...]:
        """Score the images with the active model ``ckpt`` (``tile``: large images in tiles at their resolution,
        against the threshold fitted on held-out tiles); details of image ``index`` (original, heatmap, overlay,
        ground truth, unclipped score, verdict, predicted mask, score as a multiple of the threshold), a gallery of
        all overlays, a table of all scores and the same results as CSV and JSON files."""
        from ikd_core.data.transforms import load_mask
        from ikd_core.predict import render

        ctx, limit = self.ctx, self.ctx.settings.max_inspect_images
        paths = file_list(files)
        if not paths or not ckpt:
            return _empty()
        with ctx.trimmer.request():
            try:
                threshold, alpha, cmap = checked_display(threshold, alpha, cmap)
                if len(paths) > limit:
                    gr.Warning(f"{len(paths)} images uploaded; showing the first {limit}")
                    paths = paths[:limit]
                ws = ctx.workspace(request)
                ckpt_path, predictor = ctx.predictor_for(ckpt, ws)
                if tile and not predictor.tile_calibrated:
                    raise gr.Error("this model has no threshold fitted on tiles (it was trained before tiling was "
                                   "calibrated): train it again to inspect in tiles")
                images, preds = [], []
                for img, note, pred in ctx.load_and_predict(ckpt_path, paths, bool(tile)):
                    if note:
                        gr.Info(ctx.say(note))
                    images.append(img)
                    preds.append(pred)
                rows, gallery, records = _results(paths, images, preds, threshold, alpha, cmap, ckpt_path.name)
                i = min(max(int(service.number(index or 0, "index", 0, 10**6, integer=True)), 0), len(paths) - 1)
                pics = render(images[i], preds[i], threshold, alpha, cmap)
                _, sample_index = ctx.test_set(ckpt_path, predictor.metadata)
                sample = sample_index.lookup(paths[i])
                gt = None
                if sample is not None and sample.mask_path:
                    gt = load_mask(sample.mask_path).astype(np.uint8) * 255
                score = round(preds[i].relative_score, 4)
                verdict = verdict_text(preds[i].is_anomalous(threshold))
                csv_file, json_file = write_results(records, ws.exports, keep=2 * ctx.settings.max_kept_exports - 2)
            except Exception as exc:  # noqa: BLE001 - shown to the user, the server keeps serving
                raise ctx.err(exc) from exc
        gt_update = gr.Image(value=gt, visible=gt is not None)
        return (pics["image"], pics["heatmap"], pics["overlay"], gt_update, score, verdict, rows, gallery,
                pics["mask"], ratio_text(preds[i].relative_score, threshold), csv_file, json_file)

    @property
    def inputs(self) -> list[Any]:
        """The inputs of :meth:`inspect_images`."""
        return [self.insp_files, self.ckpt_dd, self.threshold, self.opacity, self.cmap, self.insp_index, self.tile]

    @property
    def outputs(self) -> list[Any]:
        """The outputs of :meth:`inspect_images`."""
        return [self.out_image, self.out_heat, self.out_overlay, self.out_gt, self.out_score, self.out_verdict,
                self.table, self.results, self.out_mask, self.out_ratio, self.out_csv, self.out_json]

    # ------------------------------------------------------------------ components and events
    def _build_inputs(self) -> None:
        self.insp_files = gr.File(
            label="Images (one or many)", file_count="multiple", file_types=["image"], elem_id="ikd-inspect-files"
        )
        self.snapshot = gr.Image(
            sources=["webcam", "clipboard", "upload"],
            type="filepath",
            label="Or: a camera snapshot, a pasted or dropped image",
            height=200,
            elem_id="ikd-snapshot",
        )
        self.examples = gr.Gallery(
            label="Examples: test images of the active model (click one)",
            columns=4,
            height=200,
            allow_preview=False,
            object_fit="cover",
            fit_columns=False,
            elem_id="ikd-examples",
        )
        self.threshold = gr.Slider(
            0.0, 1.0, value=0.5, step=0.01, label="Threshold (0.5 = fitted)", elem_id="ikd-threshold"
        )
        self.opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", elem_id="ikd-opacity")
        self.cmap = gr.Dropdown(COLORMAPS, value="jet", label="Colormap", elem_id="ikd-cmap")
        self.tile = gr.Checkbox(
            False,
            label="Tile large images (model-size tiles at the image's resolution; threshold fitted on tiles)",
            elem_id="ikd-tile",
        )

    def _build_outputs(self) -> None:
        def picture(label: str, elem_id: str, visible: bool = True) -> gr.Image:
            return gr.Image(type="numpy", format="png", label=label, interactive=False, visible=visible,
                            elem_id=elem_id)

        with gr.Row():
            self.out_image = picture("Image", "ikd-original")
            self.out_heat = picture("Heatmap", "ikd-heatmap")
            self.out_overlay = picture("Overlay + predicted outline", "ikd-overlay")
            self.out_gt = picture("Ground truth", "ikd-gt", visible=False)
            self.out_mask = picture("Predicted defect mask", "ikd-mask")
        with gr.Row():
            self.out_score = gr.Number(
                None,
                label="Score (0.5 = fitted threshold; not clipped)",
                precision=4,
                interactive=False,
                placeholder="no image yet",
                elem_id="ikd-score",
            )
            self.out_verdict = gr.Textbox(label="Verdict", interactive=False, elem_id="ikd-verdict")
            self.out_ratio = gr.Markdown(elem_id="ikd-ratio")
        self.results = gr.Gallery(
            label="All images (click one for details)",
            columns=8,
            height=180,
            allow_preview=False,
            format="png",
            object_fit="contain",
            fit_columns=False,
            elem_id="ikd-results",
        )
        self.table = gr.Dataframe(
            headers=["image", "score", "verdict"], label="Scores", interactive=False, elem_id="ikd-table"
        )
        with gr.Row():
            self.out_csv = gr.File(label="Results (CSV)", interactive=False, elem_id="ikd-results-csv")
            self.out_json = gr.File(label="Results (JSON)", interactive=False, elem_id="ikd-results-json")

    def build(self) -> InspectTab:
        """Create this tab's components (inside ``gr.Tab``).

        Returns:
            This tab.
        """
        self.active_md = gr.Markdown("**Active model:** loading ...", elem_id="ikd-active")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                self._build_inputs()
            with gr.Column(scale=2):
                self._build_outputs()
        self.insp_index = gr.State(0)
        self.example_paths = gr.State([])
        return self

    def wire(self) -> None:
        """The tab's events. Many inspect requests may run at once: their images take turns at the fair per-image
        gate (two at a time), so one visitor's large request never holds a whole queue slot that another's single
        image needs."""
        self.insp_files.change(  # the details show the newest image (an upload is added after those on screen)
            lambda files: max(0, len(file_list(files)) - 1), self.insp_files, self.insp_index,
            api_visibility="private", queue=False,
        ).then(
            self.inspect_images,
            self.inputs,
            self.outputs,
            api_name="inspect",
            concurrency_limit=self.ctx.settings.inspect_concurrency,
            concurrency_id="inspect",
        )
        gr.on(  # display settings re-render from cached maps
            triggers=[self.threshold.change, self.opacity.change, self.cmap.change, self.tile.change],
            fn=self.inspect_images,
            inputs=self.inputs,
            outputs=self.outputs,
            trigger_mode="always_last",
            show_progress="hidden",
            api_visibility="private",
        )

        def pick_result(evt: gr.SelectData) -> int:
            return int(evt.index)

        def pick_example(paths: list[str], evt: gr.SelectData) -> list[str]:
            return [paths[int(evt.index)]] if paths else []

        self.results.select(pick_result, None, self.insp_index, api_visibility="private").then(
            self.inspect_images, self.inputs, self.outputs, api_visibility="private"
        )
        self.examples.select(pick_example, self.example_paths, self.insp_files, api_visibility="private")
        # a camera snapshot, a pasted or a dropped image is inspected like an uploaded file
        self.snapshot.change(
            lambda path: [path] if path else gr.skip(), self.snapshot, self.insp_files, api_visibility="private",
            queue=False,
        )


def build(ctx: AppContext, ckpt_dd: Any) -> InspectTab:
    """Create the Inspect tab's components (inside ``gr.Tab``).

    Args:
        ctx: The app's context.
        ckpt_dd: The active checkpoint's dropdown (Model tab).

    Returns:
        The tab, holding its components.
    """
    return InspectTab(ctx, ckpt_dd).build()
