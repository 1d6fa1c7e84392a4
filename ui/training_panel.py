"""The Model tab's training panel: the form, the streamed run (progress bar, loss curve) and the new model shown
beside the active one until the user chooses it. The use case itself is :mod:`ikd_core.service.training`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from ikd_core import service
from ikd_core.data.sources import DataSpec
from ikd_core.recipes import RECIPE_NOTES, RECIPES
from ikd_core.service import training
from ikd_core.train import Progress, TrainConfig

from . import gpu
from .checkpoints_panel import CheckpointsPanel
from .common import BACKBONE_CHOICES, md
from .context import AppContext
from .data_panel import SRC_UPLOAD, DataPanel


# ------------------------------------------------------------------------------------------ text and figures
def _hms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_text(p: Progress | None, status: str, stopping: bool | None = None) -> str:
    """Markdown for a training run's progress ``p`` (``None`` before the first step).

    The bar is Markdown, not ``gr.Progress``: Gradio draws ``gr.Progress`` in the status tracker that covers the
    event's outputs while it runs, which would hide the streamed loss curve and text under a pending overlay; and
    a queued run's place in the queue already shows on this component (``show_progress_on``).

    Args:
        p: The last progress report.
        status: The last status message.
        stopping: None (running), True (stop and keep), False (stop and discard).

    Returns:
        The progress as Markdown (with an HTML bar).
    """
    if stopping is not None:
        status = "stopping at the next step; " + (
            "the model trained so far will be kept" if stopping else "nothing will be saved"
        )
    if p is None:
        return f"_{status or 'starting'}_"
    frac = p.fraction
    bar = f'<div class="ikd-bar"><div style="width:{100 * frac:.1f}%"></div></div>\n\n**{100 * frac:.0f}%** · '
    epochs = f"{p.epoch}/{p.epochs}" if p.epochs else f"{p.epoch} (until the time limit)"
    line = (
        f"epoch {epochs} · step {p.step}/{p.steps_per_epoch} · loss {p.loss:.4f} · "
        f"{p.images_per_sec:.1f} images/s · elapsed {_hms(p.elapsed_s)} · ETA {_hms(p.eta_s)}"
    )
    phase = {
        "fit": "fitting the threshold on held-out good images",
        "evaluate": "evaluating on the test set",
        "validate": "validating",
        "done": "saving",
    }.get(p.phase)
    if phase and status in ("", p.phase):
        status = phase
    return f"{bar}{line}" + (f"  \n_{status}_" if status else "")


def loss_frame(losses: list[tuple[int, float]]) -> pd.DataFrame:
    """The loss curve for the interactive ``gr.LinePlot``: one row per training step."""
    return pd.DataFrame(losses, columns=["step", "loss"])


def curve_figures(curves: service.Curves | None) -> tuple[Any, Any, Any]:
    """Image ROC, pixel ROC and PRO figures of a run's curves (``None`` where there are none)."""
    from ikd_core.visualize import plot_pro, plot_roc

    if curves is None:
        return None, None, None
    m = curves.metrics
    figs = []
    for (x, y), key, title in (
        (curves.image_roc, "image_auroc", "Image ROC"),
        (curves.pixel_roc, "pixel_auroc", "Pixel ROC"),
    ):
        figs.append(plot_roc(x, y, m.get(key, float("nan")), title=title) if len(x) else None)
    fx, fy = curves.pro
    figs.append(plot_pro(fx, fy, m.get("au_pro", float("nan"))) if len(fx) else None)
    return figs[0], figs[1], figs[2]


def metrics_markdown(metrics: dict[str, float], title: str) -> str:
    """A run's metrics as a Markdown table (or why there are none)."""
    from ikd_core.metrics import format_metrics_table

    if not metrics:
        return f"**{title}**: no labelled test set, so no metrics (the threshold was fitted on held-out good images)."
    return format_metrics_table(metrics, title=title)


def comparison_markdown(
    new: str, new_meta: dict[str, Any], new_metrics: dict[str, float], active: str | None,
    active_metrics: dict[str, float] | None, made_active: bool,
) -> str:
    """The new model beside the active one: both models' metrics on the new run's test set.

    Args:
        new: The new checkpoint's name.
        new_meta: Its metadata.
        new_metrics: Its metrics.
        active: The active checkpoint's name.
        active_metrics: The active model's metrics on the same test set (``None``: not evaluated).
        made_active: Whether the new model became the active one (there was none).

    Returns:
        Markdown with a table of both models' metrics.
    """
    from ikd_core.metrics import METRIC_LABELS

    note = f"  \n_{md(new_meta['note'])}_" if new_meta.get("note") else ""
    if made_active or not active:
        return f"**New model** **{md(new)}** is active (there was no active model).{note}"
    head = f"### New model vs active model\n**{md(new)}** (new) beside **{md(active)}** (active), on the same test set."
    if not new_metrics:
        return (f"{head}\n\nNo labelled test set, so no metrics: compare them on your own images in Inspect, "
                f"then choose.{note}")
    keys = [k for k in new_metrics if k in METRIC_LABELS] or list(new_metrics)

    def cell(metrics: dict[str, float] | None, key: str) -> str:
        v = (metrics or {}).get(key)
        return "n/a" if v is None or not math.isfinite(float(v)) else f"{float(v):.4f}"

    rows = [f"| {METRIC_LABELS.get(k, k)} | {cell(new_metrics, k)} | {cell(active_metrics, k)} |" for k in keys]
    table = "\n".join(["| Metric | New | Active |", "|:--|--:|--:|", *rows])
    verdict = ""
    a, b = new_metrics.get("image_auroc"), (active_metrics or {}).get("image_auroc")
    if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
        verdict = ("\n\n**The new model is worse on image AUROC**: keep the active one unless you have a reason."
                   if a < b else "\n\nThe new model is at least as good on image AUROC.")
    return (f"{head}{note}\n\n{table}{verdict}\n\nThe active model stays until you choose **Use the new model**.")


def run_title(spec: DataSpec, cfg: TrainConfig) -> str:
    """A run's one-line description: data, backbone, image size and limits."""
    limits = ", ".join(
        ([f"{cfg.epochs} epochs"] if cfg.epochs else []) + ([f"at most {cfg.max_minutes:g} min"] if cfg.max_minutes
                                                            else [])
    )
    return f"{md(spec.category)} ({cfg.backbone}, {cfg.image_size} px, {limits})"


# ------------------------------------------------------------------------------------------ the panel
class TrainingPanel:
    """The training form and the run's results; the new checkpoint goes into the checkpoints panel's list."""

    def __init__(self, ctx: AppContext, checkpoints: CheckpointsPanel, data: DataPanel) -> None:
        self.ctx = ctx
        self.checkpoints = checkpoints
        self.data = data

    def train_model(
        self, source: str, category: str | None, data_root: str, folder: str, test_folder: str, uploads: Any,
        name: str, backbone: str, image_size: float, epochs: float | None, batch_size: float, lr: float,
        max_minutes: float | None, active: str | None, request: gr.Request, recipe: str | None = None,
    ) -> Iterator[dict[Any, Any]]:
        """Check the inputs, run :func:`ui.gpu.train_on_device` and stream its progress and loss curve; then
        metrics, curves and the new checkpoint (saved in the caller's ``pretrained/``). The new checkpoint becomes
        active only when there was no usable active model; otherwise both are shown with their metrics on the same
        test set and the user chooses (``use_new_model``)."""
        settings = self.ctx.settings
        spec = None
        try:
            ws = self.ctx.workspace(request)
            cfg = training.training_config(backbone, image_size, epochs, batch_size, lr, max_minutes,
                                           settings.max_train_minutes, recipe)
            ws.check_quota(extra_checkpoints=1)
            spec = self.data.spec(source, category, data_root or "", folder or "", test_folder or "", uploads,
                                  name or "", ws)
            out = training.reserve_output(spec, cfg, ws, settings.paths.pretrained)
        except Exception as exc:  # noqa: BLE001
            if source == SRC_UPLOAD:
                service.discard_upload(spec, ws.root if spec is not None else settings.paths.work)
            raise self.ctx.err(exc) from exc
        try:
            log = yield from self._run(spec, cfg, out, ws)
            yield from self._report(log, spec, cfg, out, ws, active, record=source != SRC_UPLOAD)
        finally:
            if source == SRC_UPLOAD:  # the extracted images are only needed while training
                service.discard_upload(spec, ws.root)

    def _run(
        self, spec: DataSpec, cfg: TrainConfig, out: Path, ws: service.Workspace
    ) -> Iterator[dict[Any, Any]]:
        """Stream the run: progress and loss curve. Returns (as the generator's value) the run's log."""
        # Stop goes through a file, not Gradio's ``cancels``: on ZeroGPU the run lives in a GPU worker process that
        # only a file reaches, and the run must end cleanly (keeping or discarding the partial model as asked).
        stop = service.StopFile(ws.jobs)
        self.ctx.jobs.put(ws.id, stop)
        yield {
            self.progress_md: f"_starting: {run_title(spec, cfg)}_", self.metrics_md: "", self.compare_md: "",
            self.loss_plot: None, self.roc_img_plot: None, self.roc_pix_plot: None, self.pro_plot: None,
            self.use_new_btn: gr.Button(visible=False), self.new_ckpt: "",
            self.stop_btn: gr.Button(interactive=True), self.stop_discard_btn: gr.Button(interactive=True),
        }
        log = training.RunLog()
        try:
            with contextlib.closing(
                gpu.train_on_device(spec.to_dict(), cfg.to_dict(), str(out), str(stop.path))
            ) as run:
                for up in run:
                    if log.add(up):
                        break
                    stopping = service.StopFile.read_keep(stop.path)
                    update: dict[Any, Any] = {self.progress_md: progress_text(log.last, log.status, stopping)}
                    if up.losses:
                        update[self.loss_plot] = loss_frame(log.losses)
                    yield update
        finally:
            if log.end is None:
                stop.set()  # the client went away: end the run, nothing is saved
            self.ctx.jobs.discard(ws.id, stop)
            stop.clear()
        return log

    def _report(
        self, log: training.RunLog, spec: DataSpec, cfg: TrainConfig, out: Path, ws: service.Workspace,
        active: str | None, record: bool,
    ) -> Iterator[dict[Any, Any]]:
        """The run's end: failure, stop, or the new model beside the active one (compared on the same test set).
        ``record``: remember the data of the new checkpoint (so its test set is found again; never for uploads)."""
        ctx, end = self.ctx, log.end
        done = {self.stop_btn: gr.Button(interactive=False), self.stop_discard_btn: gr.Button(interactive=False)}
        if end is None or end.state == "failed":
            error = (end.error if end is not None else "training ended unexpectedly") or "training failed"
            yield {**done, self.progress_md: f"**Training failed:** {md(error)}"}
            raise gr.Error(ctx.say(error))
        if end.state == "cancelled":
            yield {**done, self.progress_md: "**Stopped.** Nothing was saved; the active model is unchanged."}
            return
        ckpt_path = Path(end.checkpoint or out)
        ckpt = ckpt_path.name
        if record:
            training.record_data(ctx.settings.policy, ckpt_path, spec)
        active_path = training.usable_active(active, ckpt, lambda n: ctx.resolve(n, ws))
        active_metrics = None
        if active_path is not None and end.metrics:
            yield {self.progress_md: f"_evaluating the active model {md(active)} on the same test set_"}
            device = "cpu" if gpu.ZERO_GPU else gpu.compute_device()  # on ZeroGPU the GPU exists only in GPU calls
            active_metrics = training.compare_on_test_set(active_path, spec, ctx.predictors, device,
                                                          ctx.settings.backend)
        made_active, meta = active_path is None, end.metadata
        roc_i, roc_p, pro = curve_figures(end.curves)
        head = (f"**Stopped early** (kept, as asked) after {_hms(end.seconds)}" if meta.get("stopped_by_user")
                else f"**Done** in {_hms(end.seconds)}")
        where = "saved and active" if made_active else f"saved; the active model is still **{md(active)}**"
        gr.Info(ctx.say(f"checkpoint {ckpt} " + ("saved and active" if made_active else "saved: compare it, then "
                                                                                         "choose")))
        shown = ckpt if made_active else active
        yield {
            **done,
            self.progress_md: (
                f"{head}: {meta.get('epochs_completed')} epochs, {meta.get('images_per_sec')} images/s on "
                f"{meta.get('device')}. Checkpoint `{ckpt}` {where}."
            ),
            self.loss_plot: loss_frame(log.losses),
            self.metrics_md: metrics_markdown(end.metrics, run_title(spec, cfg)),
            self.compare_md: comparison_markdown(ckpt, meta, end.metrics, active, active_metrics, made_active),
            self.roc_img_plot: roc_i, self.roc_pix_plot: roc_p, self.pro_plot: pro,
            self.checkpoints.ckpt_dd: self.checkpoints.dropdown(ws, shown),
            self.checkpoints.ckpt_info: self.checkpoints.describe(shown, ws),
            self.use_new_btn: gr.Button(visible=not made_active),
            self.new_ckpt: "" if made_active else ckpt,
        }

    def stop_training(self, request: gr.Request, keep: bool = False) -> None:
        """Stop the caller's own training run: the job is looked up by the caller's workspace on the server, so no
        request can stop another visitor's run (the run itself reports the end, so nothing is returned)."""
        ws = self.ctx.own_workspace(request)
        if ws is not None and self.ctx.jobs.stop(ws.id, keep=keep):
            kept = "the model trained so far is kept" if keep else "nothing is saved"
            gr.Info(f"stopping at the next step; {kept}")

    def stop_and_keep(self, request: gr.Request) -> None:
        """Stop the caller's run at the next step and keep the model trained so far (marked stopped early)."""
        self.stop_training(request, keep=True)

    def stop_and_discard(self, request: gr.Request) -> None:
        """Stop the caller's run at the next step and save nothing (the ``/stop`` API, as before)."""
        self.stop_training(request, keep=False)

    @staticmethod
    def fill_recipe(recipe: str) -> tuple[Any, Any, Any, Any]:
        """The form fields of a chosen recipe (image size, epochs, batch size, learning rate)."""
        f = training.recipe_form(recipe if recipe in RECIPES else "cpu")
        return f["image_size"], f["epochs"], f["batch_size"], f["lr"]

    def use_new_model(self, name: str | None, request: gr.Request = None) -> tuple[Any, Any, Any]:  # type: ignore[assignment]
        """Make the model just trained the active one (the user's choice after comparing)."""
        ws = self.ctx.workspace(request)
        try:
            self.ctx.resolve(name, ws)
        except Exception as exc:  # noqa: BLE001
            raise self.ctx.err(exc) from exc
        gr.Info(self.ctx.say(f"{name} is now the active model"))
        return self.checkpoints.dropdown(ws, name), gr.Button(visible=False), ""

    # ------------------------------------------------------------------ components and events
    def _build_form(self) -> None:
        cap = self.ctx.settings.max_train_minutes
        d = training.default_form(gpu.has_gpu(), cap)
        gr.Markdown(
            "Defaults: " + ("the paper's setting (hrnet_w32, 256 px, batch 2, lr 5e-5, 50 epochs)" if gpu.has_gpu()
                            else "the CPU recipe (efficientnet_lite0, 256 px, batch 8, lr 1e-2, 60 epochs, 10 min, "
                                 "denoising student, segmentation head fused with the distillation map)")
            + ". Leave Epochs empty (or 0) to train until the time limit. A recipe fills the fields and the method:\n\n"
            + "\n".join(f"- **{name}**: {note}" for name, note in RECIPE_NOTES.items())
        )
        with gr.Row():
            self.recipe = gr.Dropdown(list(RECIPES), value=d["recipe"], label="Recipe", scale=1, elem_id="ikd-recipe")
            self.backbone = gr.Dropdown(
                BACKBONE_CHOICES, value=d["backbone"], label="Backbone (teacher)", scale=2, elem_id="ikd-backbone"
            )
            self.image_size = gr.Slider(
                64, 512, value=d["image_size"], step=32, label="Image size (px)", elem_id="ikd-image-size"
            )
            self.epochs = gr.Number(
                value=d["epochs"], precision=0, minimum=0, maximum=100_000,
                label="Epochs (empty: until the time limit)", elem_id="ikd-epochs",
            )
            self.max_minutes = gr.Number(
                value=d["max_minutes"],
                minimum=0,
                maximum=cap or 100_000,
                label="Time limit (minutes, 0: none)" + (f"; at most {cap:g} here" if cap else ""),
                elem_id="ikd-max-minutes",
            )
            self.batch_size = gr.Number(
                value=d["batch_size"], precision=0, minimum=1, maximum=256, label="Batch size", elem_id="ikd-batch"
            )
            self.lr = gr.Number(value=d["lr"], minimum=0, label="Learning rate", elem_id="ikd-lr")

    def build(self) -> TrainingPanel:
        """Create the panel's components (inside the Model tab, after the data panel).

        Returns:
            This panel.
        """
        self._build_form()
        with gr.Row():
            self.train_btn = gr.Button("Train", variant="primary", elem_id="ikd-train")
            self.stop_btn = gr.Button("Stop and keep", variant="stop", interactive=False, elem_id="ikd-stop")
            self.stop_discard_btn = gr.Button(
                "Stop and discard", variant="secondary", interactive=False, elem_id="ikd-stop-discard"
            )
        self.progress_md = gr.Markdown(elem_id="ikd-progress")
        with gr.Row():
            self.compare_md = gr.Markdown(elem_id="ikd-compare")
        with gr.Row():
            self.use_new_btn = gr.Button("Use the new model", variant="primary", visible=False, elem_id="ikd-use-new")
            self.new_ckpt = gr.Textbox(visible=False, label="New checkpoint", elem_id="ikd-new-ckpt")
        self.metrics_md = gr.Markdown(elem_id="ikd-metrics")
        with gr.Row():
            self.loss_plot = gr.LinePlot(
                x="step", y="loss", label="Training loss", x_title="step", y_title="loss", elem_id="ikd-loss"
            )
            self.roc_img_plot = gr.Plot(label="Image ROC", format="png")
        with gr.Row():
            self.roc_pix_plot = gr.Plot(label="Pixel ROC", format="png")
            self.pro_plot = gr.Plot(label="PRO curve", format="png")
        return self

    def wire(self) -> None:
        """The panel's events: train (with the data panel's fields and the active model), stop, use the new model."""
        ckpt = self.checkpoints
        self.train_btn.click(
            self.train_model,
            [*self.data.inputs, self.backbone, self.image_size, self.epochs, self.batch_size, self.lr,
             self.max_minutes, ckpt.ckpt_dd,  # the active model: the new one is shown beside it until chosen
             self.recipe],
            [self.progress_md, self.metrics_md, self.loss_plot, self.roc_img_plot, self.roc_pix_plot, self.pro_plot,
             ckpt.ckpt_dd, ckpt.ckpt_info, self.stop_btn, self.compare_md, self.new_ckpt, self.use_new_btn,
             self.stop_discard_btn],
            concurrency_limit=1,
            concurrency_id="train",
            api_name="train",
            show_progress="full",
            show_progress_on=[self.progress_md],  # a queued run shows its place in the queue there
        )
        self.recipe.change(self.fill_recipe, self.recipe, [self.image_size, self.epochs, self.batch_size, self.lr],
                           api_name=False)
        # Stop reaches the run through a stop file (see _run), not ``cancels``: a ZeroGPU worker is another
        # process. ``/stop`` discards, as it always did; ``/stop_keep`` keeps the model trained so far.
        self.stop_btn.click(self.stop_and_keep, None, None, concurrency_limit=None, api_name="stop_keep")
        self.stop_discard_btn.click(self.stop_and_discard, None, None, concurrency_limit=None, api_name="stop")
        self.use_new_btn.click(
            self.use_new_model, self.new_ckpt, [ckpt.ckpt_dd, self.use_new_btn, self.new_ckpt],
            api_name="use_new_model",
        )
