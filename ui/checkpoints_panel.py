"""The Model tab's checkpoints panel: the active checkpoint (choose, upload, download, delete) and its description."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from ikd_core import service
from ikd_core.checkpoint import sidecar_path
from ikd_core.errors import IKDError

from .common import example_gallery, file_list, md
from .context import AppContext

if TYPE_CHECKING:
    from .inspect_tab import InspectTab


class CheckpointsPanel:
    """The active checkpoint: its dropdown is the app's "active model", read by every other tab."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------------ text
    def describe(self, name: str | None, ws: service.Workspace) -> str:
        """Markdown describing checkpoint ``name`` (or how to get one)."""
        if not name:
            return (
                "No checkpoint yet: train one below (the demo takes a few minutes) or upload a `.safetensors` "
                "checkpoint."
            )
        try:
            path = self.ctx.resolve(name, ws)
        except IKDError as exc:
            return f"**{md(name)}**: {md(self.ctx.public(exc))}"
        return service.checkpoint_info(path).describe()

    def active_label(self, name: str | None, ws: service.Workspace) -> str:
        """The "Active model" line of the Inspect tab."""
        if not name:
            return "**Active model:** none (train or load one in the Model tab)"
        info = service.checkpoint_info(self.ctx.resolve(name, ws))
        if not info.ok:
            return f"**Active model:** {md(name)} (unusable)"
        return f"**Active model:** {md(name)} ({md(info.category)}, {md(info.backbone)}, {md(info.image_size)} px)"

    def dropdown(self, ws: service.Workspace, value: str | None) -> Any:
        """The checkpoint dropdown's update: the caller's checkpoints, ``value`` chosen."""
        return gr.Dropdown(choices=self.ctx.checkpoint_names(ws), value=value)

    # ------------------------------------------------------------------ handlers
    def on_checkpoint_change(self, name: str | None, request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
        """Checkpoint chosen: load it (so errors show now), show its metadata and example test images."""
        ws = self.ctx.workspace(request)
        examples: list[str] = []
        if name:
            try:
                path, predictor = self.ctx.predictor_for(name, ws)
                examples = self.ctx.example_images(path, predictor.metadata)
            except IKDError as exc:
                gr.Warning(self.ctx.say(exc))
        try:
            label = self.active_label(name, ws)
        except IKDError as exc:
            label = f"**Active model:** none ({md(name)}: {md(self.ctx.public(exc))})"
        return self.describe(name, ws), label, examples, examples

    def on_load(self, request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
        """First page load: demo data, the visitor's workspace and the ready checkpoint, so an upload gives a
        heatmap at once."""
        try:
            self.ctx.ensure_demo_data()
        except IKDError as exc:
            gr.Warning(self.ctx.say(f"demo data unavailable: {exc}"))
        ws = self.ctx.workspace(request)
        value = self.ctx.initial_checkpoint(ws)
        info, label, gallery, paths = self.on_checkpoint_change(value, request)
        return self.dropdown(ws, value), info, label, gallery, paths

    def refresh(self, current: str | None, request: gr.Request = None) -> Any:  # type: ignore[assignment]
        """The checkpoint list again (the current one stays chosen if it still exists)."""
        ws = self.ctx.workspace(request)
        names = self.ctx.checkpoint_names(ws)
        return gr.Dropdown(choices=names, value=current if current in names else self.ctx.initial_checkpoint(ws))

    def import_checkpoint(self, files: Any, current: str | None, request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
        """Validate an uploaded ``.safetensors`` (+ optional ``.json``) and make it the active checkpoint (in public
        mode it goes into the visitor's own workspace, within its quota)."""
        paths = [Path(p) for p in file_list(files)]
        if not paths:
            return gr.skip(), gr.skip(), None
        ckpts = [p for p in paths if p.suffix.lower() == ".safetensors"]
        sides = [p for p in paths if p.suffix.lower() == ".json"]
        others = [p for p in paths if p not in ckpts and p not in sides]
        if others or len(ckpts) != 1 or len(sides) > 1:
            names = ", ".join(html.escape(p.name) for p in paths)
            raise gr.Error(
                f"upload one .safetensors checkpoint (and optionally its .json metadata); got: {names}. "
                ".pt/.ckpt/.pth files are pickles and are never loaded."
            )
        shipped = self.ctx.settings.paths.pretrained
        try:
            ws = self.ctx.workspace(request)
            ws.check_quota(extra_bytes=sum(p.stat().st_size for p in paths), extra_checkpoints=1)
            name = Path(ckpts[0].name).name
            if ws.pretrained != shipped and (shipped / name).exists():
                name = f"{Path(name).stem}-uploaded{service.CHECKPOINT_SUFFIX}"  # never shadows a shipped one
            info = service.import_checkpoint(
                ckpts[0], ws.pretrained, sidecar=sides[0] if sides else None, original_name=name, device="cpu"
            )
        except Exception as exc:  # noqa: BLE001
            raise self.ctx.err(exc) from exc
        gr.Info(self.ctx.say(f"checkpoint {info.name} added and active"))
        return self.dropdown(ws, info.name), info.describe(), None

    def download(self, name: str | None, request: gr.Request = None) -> list[str]:  # type: ignore[assignment]
        """The active checkpoint and its ``.json`` metadata as files to download (to upload them again later)."""
        try:
            path = self.ctx.resolve(name, self.ctx.workspace(request))
        except Exception as exc:  # noqa: BLE001
            raise self.ctx.err(exc) from exc
        side = sidecar_path(path)
        return [str(path)] + ([str(side)] if side.is_file() else [])

    def delete(self, name: str | None, request: gr.Request = None) -> tuple[Any, Any]:  # type: ignore[assignment]
        """Delete one of the caller's own checkpoints (trained or uploaded, in their workspace) and its metadata.
        The shipped ones (public mode) are never deleted: checked here, on the server, since API clients bypass the
        UI."""
        if not name:
            return gr.skip(), gr.skip()  # the confirmation was declined
        ws = self.ctx.workspace(request)
        shipped = self.ctx.settings.paths.pretrained
        try:
            name = service.check_checkpoint_name(name)
            own = ws.pretrained / name
            if ws.pretrained != shipped and not own.is_file() and (shipped / name).is_file():
                raise gr.Error(self.ctx.say(f"{name} is shipped with this app and cannot be deleted"))
            path = service.resolve_checkpoint(name, ws.pretrained)  # never a path outside the caller's folder
            sidecar_path(path).unlink(missing_ok=True)
            path.unlink()
        except Exception as exc:  # noqa: BLE001
            raise self.ctx.err(exc) from exc
        gr.Info(self.ctx.say(f"checkpoint {name} deleted"))
        value = self.ctx.initial_checkpoint(ws)
        return self.dropdown(ws, value), self.describe(value, ws)

    # ------------------------------------------------------------------ components and events
    def build(self) -> CheckpointsPanel:
        """Create the panel's components (inside the Model tab).

        Returns:
            This panel.
        """
        ctx = self.ctx
        shared = ctx.workspaces.shared
        gr.Markdown("## Active model")
        with gr.Row():
            self.ckpt_dd = gr.Dropdown(
                choices=ctx.checkpoint_names(shared),
                value=ctx.initial_checkpoint(shared),
                label="Checkpoint" + (" (the shipped ones and yours)" if ctx.settings.public else " (in pretrained/)"),
                allow_custom_value=True,
                scale=3,
                elem_id="ikd-ckpt",
            )
            self.refresh_btn = gr.Button("Refresh list", scale=0, min_width=120)
            self.download_btn = gr.Button("Download", scale=0, min_width=120, elem_id="ikd-ckpt-download")
            self.delete_btn = gr.Button("Delete", variant="stop", scale=0, min_width=120, elem_id="ikd-ckpt-delete")
        with gr.Row():
            self.ckpt_upload = gr.File(
                label="Upload a checkpoint: .safetensors (+ optional .json)",
                file_count="multiple",
                file_types=[".safetensors", ".json"],
                scale=1,
                elem_id="ikd-ckpt-upload",
            )
            self.ckpt_info = gr.Markdown(elem_id="ikd-ckpt-info")
        self.ckpt_files = gr.File(
            label="Checkpoint files (.safetensors + .json: upload them again later)",
            file_count="multiple",
            interactive=False,
            visible=False,
            elem_id="ikd-ckpt-files",
        )
        return self

    def wire(self, inspect: InspectTab) -> None:
        """The panel's events. Whatever is shown belongs to the active model: a model change re-inspects the images
        on screen (or clears the results when there are none), and the examples get captions."""
        self.ckpt_dd.change(
            self.on_checkpoint_change,
            self.ckpt_dd,
            [self.ckpt_info, inspect.active_md, inspect.examples, inspect.example_paths],
            api_name="checkpoint_info",
        ).then(
            example_gallery, inspect.example_paths, inspect.examples, api_visibility="private", queue=False
        ).then(inspect.inspect_images, inspect.inputs, inspect.outputs, api_visibility="private")
        self.refresh_btn.click(self.refresh, self.ckpt_dd, self.ckpt_dd, api_name="list_checkpoints")
        self.ckpt_upload.upload(
            self.import_checkpoint,
            [self.ckpt_upload, self.ckpt_dd],
            [self.ckpt_dd, self.ckpt_info, self.ckpt_upload],
            api_name="import_checkpoint",
            show_progress_on=[self.ckpt_info],  # a refused file marks the checkpoint's description, not the list
        )
        self.delete_btn.click(
            self.delete,
            self.ckpt_dd,
            [self.ckpt_dd, self.ckpt_info],
            js="(name) => (name && confirm(`Delete ${name} and its metadata?`)) ? name : null",
            api_name="delete_checkpoint",
            show_progress_on=[self.ckpt_info],
        )
        self.download_btn.click(
            self.download, self.ckpt_dd, self.ckpt_files, api_name="download_checkpoint"
        ).then(lambda: gr.File(visible=True), None, self.ckpt_files, api_visibility="private", queue=False)
