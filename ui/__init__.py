"""The IKD Studio web app, one module per tab: :mod:`ui.model_tab` (its panels :mod:`ui.checkpoints_panel`,
:mod:`ui.data_panel` and :mod:`ui.training_panel`), :mod:`ui.inspect_tab`, :mod:`ui.live_tab` and :mod:`ui.gif_tab`
each build their components and wire their events. :func:`build_app` reads nothing itself: it takes the
:class:`~ikd_core.service.Settings`, makes the app's :class:`~ui.context.AppContext` (workspaces, jobs, caches, the
image gate) and passes it to every tab. GPU work is in :mod:`ui.gpu`; helpers without state in :mod:`ui.common`.
The engine (:mod:`ikd_core`, its use cases in :mod:`ikd_core.service`) never imports Gradio."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import gradio as gr
import torch

from ikd_core.service import Settings

from . import cache_sweep, gif_tab, gpu, inspect_tab, live_tab, model_tab
from .common import example_gallery
from .context import AppContext

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
    """Where models run, for the page's header."""
    if gpu.ZERO_GPU:
        return (
            f"ZeroGPU (a GPU is lent for each request; a training run is limited to "
            f"{(gpu.TRAIN_DURATION - gpu.TRAIN_RESERVE_S) / 60:g} min)"
        )
    if torch.cuda.is_available():
        return "CUDA GPU"
    return "CPU (training is slow: keep images small and epochs few)"


@dataclass
class Tabs:
    """The app's tabs, holding their components."""

    model: model_tab.ModelTab
    inspect: inspect_tab.InspectTab
    live: live_tab.LiveTab
    gif: gif_tab.GifTab


@dataclass
class StudioApp:
    """One built app: its settings, its context, the Gradio Blocks and the tabs."""

    settings: Settings
    ctx: AppContext
    demo: gr.Blocks
    tabs: Tabs

    def launch_kwargs(self) -> dict[str, Any]:
        """Arguments for ``demo.launch`` (see :func:`launch_kwargs`)."""
        return launch_kwargs(self.settings)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server and free its port (nothing if it is not running).

        Gradio's ``Blocks.close`` sets the server's asyncio stop event from the calling thread, racing the event
        loop, which adds and removes that event's waiters as event streams open and end: "deque mutated during
        iteration" then escapes ``close`` before the port is freed (seen in CI, at a test's teardown). The event is
        set on its own loop first, so ``close`` finds it set and only shuts the server down."""
        stop_event = getattr(getattr(self.demo, "app", None), "stop_event", None)
        loop = getattr(stop_event, "_loop", None)  # asyncio binds an event to the loop of its first waiter
        if loop is not None and loop.is_running() and not stop_event.is_set():
            done = threading.Event()

            def set_on_loop() -> None:
                stop_event.set()
                done.set()

            loop.call_soon_threadsafe(set_on_loop)
            done.wait(timeout)
        self.demo.close()


def _on_unload(ctx: AppContext) -> Any:
    def on_unload(request: gr.Request) -> None:
        """The visitor closed the page: stop their training run and remove their workspace (public mode)."""
        ws = ctx.workspaces.get(getattr(request, "session_hash", None), create=False) if ctx.settings.public else None
        if ws is not None:
            ctx.jobs.stop(ws.id)
            ctx.workspaces.close(request.session_hash)

    return on_unload


def build_app(settings: Settings | None = None) -> StudioApp:
    """The whole app (Gradio Blocks, queue set up) with a fresh context.

    Args:
        settings: The app's settings (default: read from the environment now).

    Returns:
        The app; launch it with ``app.demo.launch(**app.launch_kwargs())``.
    """
    settings = settings or Settings.from_env()
    ctx = AppContext.create(settings)
    cache_sweep.install()  # Gradio's own sweep dies on the first upload that races it
    with gr.Blocks(title="IKD Studio", delete_cache=settings.delete_cache) as demo:
        gr.Markdown(
            "# IKD Studio\nUnsupervised anomaly segmentation with **Informative Knowledge Distillation**: a student "
            "learns to mimic a frozen ImageNet teacher on good images only; where they disagree, something is "
            f"wrong. Running on: {device_note()}."
        )
        with gr.Tabs(selected="inspect"):
            with gr.Tab("Model", id="model"):
                model = model_tab.build(ctx)
            with gr.Tab("Inspect", id="inspect"):
                insp = inspect_tab.build(ctx, model.checkpoints.ckpt_dd)
            with gr.Tab("Live", id="live"):
                live = live_tab.build(ctx)
            with gr.Tab("Export GIF", id="gif"):
                gif = gif_tab.build(ctx)
        insp.wire()
        model.wire(insp)
        gif.wire(insp)
        live.wire(insp)
        ckpt = model.checkpoints
        demo.load(
            ckpt.on_load, None, [ckpt.ckpt_dd, ckpt.ckpt_info, insp.active_md, insp.examples, insp.example_paths],
            api_visibility="private",
        ).then(example_gallery, insp.example_paths, insp.examples, api_visibility="private", queue=False)
        demo.unload(_on_unload(ctx))
    demo.queue(default_concurrency_limit=2)
    return StudioApp(settings, ctx, demo, Tabs(model, insp, live, gif))


def launch_kwargs(settings: Settings) -> dict[str, Any]:
    """Arguments for ``demo.launch``: theme, CSS, upload limit and the folders the app may serve.

    Args:
        settings: The app's settings.

    Returns:
        Keyword arguments of ``gr.Blocks.launch``.
    """
    paths = settings.paths
    paths.work.mkdir(parents=True, exist_ok=True)
    return {
        "theme": THEME,
        "css": CSS,
        "max_file_size": settings.max_file_size,
        # public mode: only the operator's data folder is served as it is; files the app returns from workspaces
        # (GIFs, results, checkpoints) reach the visitor through Gradio's cache, never by their folder's path
        "allowed_paths": [str(paths.data.resolve())] + ([] if settings.public else [str(paths.work.resolve())]),
        "footer_links": ["api", "settings"],
    }
