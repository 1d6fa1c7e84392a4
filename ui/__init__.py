"""The IKD Studio web app, one module per tab: :mod:`ui.model_tab`, :mod:`ui.inspect_tab` and :mod:`ui.gif_tab` build
their components; :func:`build_demo` puts them together and wires the events between them. Settings and shared state
are in :mod:`ui.state`, GPU work in :mod:`ui.gpu`; the engine (:mod:`ikd_core`) never imports Gradio."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gradio as gr
import torch

from ikd_core.errors import IKDError

from . import gif_tab, gpu, inspect_tab, live_tab, model_tab
from . import state as S
from .state import (
    checkpoint_names,
    ensure_demo_data,
    example_gallery,
    file_list,
    initial_checkpoint,
    say,
    workspace,
)

CSS = """
.ikd-bar { height: 10px; background: var(--neutral-200); border-radius: 5px; overflow: hidden; }
.ikd-bar > div { height: 100%; background: var(--color-accent); transition: width .4s; }
#ikd-verdict textarea { font-weight: 700; font-size: 1.1em; }
"""
THEME = gr.themes.Default(
    primary_hue="orange",
    secondary_hue="blue",
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "Consolas", "monospace"],
)


def device_note() -> str:
    if gpu.ZERO_GPU:
        return (
            f"ZeroGPU (a GPU is lent for each request; a training run is limited to "
            f"{(gpu.TRAIN_DURATION - gpu.TRAIN_RESERVE_S) / 60:g} min)"
        )
    if torch.cuda.is_available():
        return "CUDA GPU"
    return "CPU (training is slow: keep images small and epochs few)"


def on_load(request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
    """First page load: demo data, the visitor's workspace and the ready checkpoint, so an upload gives a heatmap
    at once."""
    try:
        ensure_demo_data()
    except IKDError as exc:
        gr.Warning(say(f"demo data unavailable: {exc}"))
    ws = workspace(request)
    names = checkpoint_names(ws)
    value = initial_checkpoint(ws)
    info, label, gallery, paths = model_tab.on_checkpoint_change(value, request)
    return gr.Dropdown(choices=names, value=value), info, label, gallery, paths


def on_unload(request: gr.Request) -> None:
    """The visitor closed the page: stop their training run and remove their workspace (public mode)."""
    ws = S.WORKSPACES.get(getattr(request, "session_hash", None), create=False) if S.PUBLIC else None
    if ws is not None:
        S.JOBS.stop(ws.id)
        S.WORKSPACES.close(request.session_hash)


def build_demo() -> gr.Blocks:
    """The whole app (Gradio Blocks, queue set up)."""
    with gr.Blocks(title="IKD Studio", delete_cache=S.DELETE_CACHE) as demo:
        gr.Markdown(
            "# IKD Studio\nUnsupervised anomaly segmentation with **Informative Knowledge Distillation**: a student "
            "learns to mimic a frozen ImageNet teacher on good images only; where they disagree, something is "
            f"wrong. Running on: {device_note()}."
        )
        with gr.Tabs(selected="inspect"):
            with gr.Tab("Model", id="model"):
                model = model_tab.build()
            with gr.Tab("Inspect", id="inspect"):
                insp = inspect_tab.build()
            with gr.Tab("Live", id="live"):
                live = live_tab.build()
            with gr.Tab("Export GIF", id="gif"):
                gif = gif_tab.build()
        u = SimpleNamespace(**vars(model), **vars(insp), **vars(gif), **vars(live))
        insp_inputs = [u.insp_files, u.ckpt_dd, u.threshold, u.opacity, u.cmap, u.insp_index, u.tile]
        insp_outputs = [
            u.out_image,
            u.out_heat,
            u.out_overlay,
            u.out_gt,
            u.out_score,
            u.out_verdict,
            u.table,
            u.results,
            u.out_mask,
            u.out_ratio,
            u.out_csv,
            u.out_json,
        ]
        # Many inspect requests may run at once: their images take turns at the fair per-image gate (two at a
        # time), so one visitor's large request never holds a whole queue slot that another's single image needs.
        u.insp_files.change(  # the details show the newest image (an upload is added after those on screen)
            lambda files: max(0, len(file_list(files)) - 1), u.insp_files, u.insp_index, api_visibility="private",
            queue=False,
        ).then(
            inspect_tab.inspect_images,
            insp_inputs,
            insp_outputs,
            api_name="inspect",
            concurrency_limit=S.INSPECT_CONCURRENCY,
            concurrency_id="inspect",
        )
        for ctrl in (u.threshold, u.opacity, u.cmap, u.tile):
            ctrl.change(
                inspect_tab.inspect_images,
                insp_inputs,
                insp_outputs,
                trigger_mode="always_last",
                show_progress="hidden",
                api_visibility="private",
            )

        def _pick_result(evt: gr.SelectData) -> int:
            return int(evt.index)

        u.results.select(_pick_result, None, u.insp_index, api_visibility="private").then(
            inspect_tab.inspect_images, insp_inputs, insp_outputs, api_visibility="private"
        )

        def _pick_example(paths: list[str], evt: gr.SelectData) -> list[str]:
            return [paths[int(evt.index)]] if paths else []

        u.examples.select(_pick_example, u.example_paths, u.insp_files, api_visibility="private")
        # a camera snapshot, a pasted or a dropped image is inspected like an uploaded file
        u.snapshot.change(
            lambda path: [path] if path else gr.skip(), u.snapshot, u.insp_files, api_visibility="private", queue=False
        )

        # Whatever is shown belongs to the active model: a model change re-inspects the images on screen (or
        # clears the results when there are none), and the examples get captions (defect type / file).
        u.ckpt_dd.change(
            model_tab.on_checkpoint_change,
            u.ckpt_dd,
            [u.ckpt_info, u.active_md, u.examples, u.example_paths],
            api_name="checkpoint_info",
        ).then(example_gallery, u.example_paths, u.examples, api_visibility="private", queue=False).then(
            inspect_tab.inspect_images, insp_inputs, insp_outputs, api_visibility="private"
        )
        u.refresh_btn.click(model_tab.refresh_checkpoints, u.ckpt_dd, u.ckpt_dd, api_name="list_checkpoints")
        u.ckpt_upload.upload(
            model_tab.import_checkpoint,
            [u.ckpt_upload, u.ckpt_dd],
            [u.ckpt_dd, u.ckpt_info, u.ckpt_upload],
            api_name="import_checkpoint",
            show_progress_on=[u.ckpt_info],  # a refused file marks the checkpoint's description, not the list
        )

        src_outputs = [
            u.category,
            u.data_root,
            u.folder,
            u.test_folder,
            u.train_upload,
            u.data_name,
            u.mvtec_panel,
            u.mvtec_md,
        ]
        u.source.change(
            model_tab.on_source_change, [u.source, u.data_root, u.category], src_outputs, api_visibility="private"
        )
        u.data_root.submit(
            model_tab.on_source_change, [u.source, u.data_root, u.category], src_outputs, api_visibility="private"
        )
        u.category.change(
            model_tab.on_source_change, [u.source, u.data_root, u.category], src_outputs, api_visibility="private"
        )
        u.mvtec_btn.click(
            model_tab.get_mvtec,
            [u.data_root, u.mvtec_src, u.category],
            [u.mvtec_progress, u.data_root, u.category, u.mvtec_panel],
            concurrency_limit=1,
            concurrency_id="download",
            api_name="get_mvtec",
            show_progress_on=[u.mvtec_progress],
        )
        u.mvtec_upload.upload(
            model_tab.upload_mvtec,
            [u.mvtec_upload, u.data_root, u.category],
            [u.mvtec_progress, u.data_root, u.category, u.mvtec_panel],
            concurrency_limit=1,
            concurrency_id="download",
            api_name="upload_mvtec",
            show_progress_on=[u.mvtec_progress],  # the extraction's gr.Progress bar, and any error, show there
        )

        u.train_btn.click(
            model_tab.train_model,
            [
                u.source,
                u.category,
                u.data_root,
                u.folder,
                u.test_folder,
                u.train_upload,
                u.data_name,
                u.backbone,
                u.image_size,
                u.epochs,
                u.batch_size,
                u.lr,
                u.max_minutes,
                u.ckpt_dd,  # the active model: the new one is shown beside it, active only when chosen
            ],
            [
                u.progress_md,
                u.metrics_md,
                u.loss_plot,
                u.roc_img_plot,
                u.roc_pix_plot,
                u.pro_plot,
                u.ckpt_dd,
                u.ckpt_info,
                u.stop_btn,
                u.compare_md,
                u.new_ckpt,
                u.use_new_btn,
                u.stop_discard_btn,
            ],
            concurrency_limit=1,
            concurrency_id="train",
            api_name="train",
            show_progress="full",
            show_progress_on=[u.progress_md],  # a queued run shows its place in the queue there
        )
        # Stop reaches the run through a stop file (see model_tab), not ``cancels``: a ZeroGPU worker is another
        # process. ``/stop`` discards, as it always did; ``/stop_keep`` keeps the model trained so far.
        u.stop_btn.click(model_tab.stop_and_keep, None, None, concurrency_limit=None, api_name="stop_keep")
        u.stop_discard_btn.click(model_tab.stop_and_discard, None, None, concurrency_limit=None, api_name="stop")
        u.use_new_btn.click(
            model_tab.use_new_model, u.new_ckpt, [u.ckpt_dd, u.use_new_btn, u.new_ckpt], api_name="use_new_model"
        )
        u.delete_btn.click(
            model_tab.delete_checkpoint,
            u.ckpt_dd,
            [u.ckpt_dd, u.ckpt_info],
            js="(name) => (name && confirm(`Delete ${name} and its metadata?`)) ? name : null",
            api_name="delete_checkpoint",
            show_progress_on=[u.ckpt_info],
        )
        u.download_btn.click(
            model_tab.download_checkpoint, u.ckpt_dd, u.ckpt_files, api_name="download_checkpoint"
        ).then(lambda: gr.File(visible=True), None, u.ckpt_files, api_visibility="private", queue=False)

        u.gif_btn.click(
            gif_tab.export_gif,
            [u.ckpt_dd, u.gif_n, u.gif_fps, u.gif_width, u.threshold, u.opacity, u.cmap, u.insp_files],
            [u.gif_preview, u.gif_file, u.gif_info],
            concurrency_limit=1,
            concurrency_id="gif",
            api_name="export_gif",
        )

        live_tab.wire(u)

        demo.load(
            on_load, None, [u.ckpt_dd, u.ckpt_info, u.active_md, u.examples, u.example_paths], api_visibility="private"
        ).then(example_gallery, u.example_paths, u.examples, api_visibility="private", queue=False)
        demo.unload(on_unload)
    demo.queue(default_concurrency_limit=2)
    return demo


def launch_kwargs() -> dict[str, Any]:
    """Arguments for ``demo.launch``: theme, CSS, upload limit and the folders the app may serve."""
    S.PATHS.work.mkdir(parents=True, exist_ok=True)
    return {
        "theme": THEME,
        "css": CSS,
        "max_file_size": S.MAX_FILE_SIZE,
        # public mode: only the operator's data folder is served as it is; files the app returns from workspaces
        # (GIFs, results, checkpoints) reach the visitor through Gradio's cache, never by their folder's path
        "allowed_paths": [str(S.PATHS.data.resolve())] + ([] if S.PUBLIC else [str(S.PATHS.work.resolve())]),
        "footer_links": ["api", "settings"],
    }
