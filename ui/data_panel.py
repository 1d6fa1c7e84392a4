"""The Model tab's data panel: where training images come from (demo set, MVTec AD, a server folder, an upload), and
MVTec AD's download or archive upload."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from ikd_core import service
from ikd_core.data.mvtec import MVTEC_CATEGORIES, check_category_name, list_categories
from ikd_core.data.sources import DataSpec
from ikd_core.data.synthetic import DEMO_CATEGORIES
from ikd_core.errors import IKDError
from ikd_core.service import Settings

from .common import DEMO_CATEGORY, file_list, md
from .context import AppContext

SRC_DEMO, SRC_MVTEC, SRC_FOLDER, SRC_UPLOAD = "Demo", "MVTec AD", "Folder on server", "Upload good images"
MVTEC_ARCHIVE_SUFFIXES = (".tar.xz", ".txz", ".tar.gz", ".tgz", ".tar.bz2", ".tar", ".zip")


def sources(settings: Settings) -> list[str]:
    """The data sources offered: a server folder only where requests may name one (private mode)."""
    if settings.allow_server_paths:
        return [SRC_DEMO, SRC_MVTEC, SRC_FOLDER, SRC_UPLOAD]
    return [SRC_DEMO, SRC_MVTEC, SRC_UPLOAD]


def _download_worker(root: str, archive: str | None, state: dict[str, Any]) -> None:
    from ikd_core.data.download import download_mvtec

    def progress(done: int, total: int) -> None:
        state["done"], state["total"] = done, total

    try:
        download_mvtec(root, archive=archive, progress=progress)
    except Exception as exc:  # noqa: BLE001
        state["error"] = str(exc) if isinstance(exc, IKDError) else f"{type(exc).__name__}: {exc}"
    finally:
        state["finished"] = True


class DataPanel:
    """The training data's source and its fields; :meth:`spec` turns them into a :class:`DataSpec`."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    @property
    def inputs(self) -> list[Any]:
        """The fields that describe the training data, in the order :meth:`spec` takes them."""
        return [self.source, self.category, self.data_root, self.folder, self.test_folder, self.train_upload,
                self.data_name]

    # ------------------------------------------------------------------ sources
    def category_choices(self, source: str, data_root: str) -> list[str]:
        """The categories of a source (MVTec AD: those installed, else all of them)."""
        if source == SRC_DEMO:
            return list(DEMO_CATEGORIES)
        if source == SRC_MVTEC:
            found = list_categories(self.ctx.settings.policy.mvtec_root(data_root))
            return found or list(MVTEC_CATEGORIES)
        return []

    def mvtec_panel_text(self, root: Path, category: str | None) -> str:
        """What the MVTec AD panel says when a category is missing."""
        missing = f"Category {md(category)} is missing. " if category else ""
        if self.ctx.settings.public:
            return (
                f"### MVTec AD is not installed on this server\n{missing}The operator of this deployment provides "
                "it (in its data folder); train on the demo set or on your own images meanwhile."
            )
        return (
            f"### MVTec AD not found under {md(root)}\n{missing}"
            "Download it here (about 4.9 GB, with progress)"
            + (
                ", or give the path of an already downloaded archive (`mvtec_anomaly_detection.tar.xz` / `.zip`) "
                "or of an extracted MVTec AD folder"
                if self.ctx.settings.allow_server_paths
                else ""
            )
            + ". MVTec AD is licensed CC BY-NC-SA 4.0 (see mvtec.com)."
        )

    def on_source_change(self, source: str, data_root: str, category: str | None) -> tuple[Any, ...]:
        """Show the fields of the chosen source (and the MVTec AD panel when its category is missing)."""
        choices = self.category_choices(source, data_root)
        value = category if category in choices else (choices[0] if choices else None)
        is_mvtec = source == SRC_MVTEC
        root = self.ctx.settings.policy.mvtec_root(data_root)
        missing = is_mvtec and service.mvtec_missing(root, value)
        return (
            gr.Dropdown(choices=choices, value=value, visible=source in (SRC_DEMO, SRC_MVTEC)),
            gr.Textbox(visible=is_mvtec and self.ctx.settings.allow_server_paths),
            gr.Textbox(visible=source == SRC_FOLDER),
            gr.Textbox(visible=source == SRC_FOLDER),
            gr.File(visible=source == SRC_UPLOAD),
            gr.Textbox(visible=source in (SRC_FOLDER, SRC_UPLOAD)),
            gr.Group(visible=missing),
            self.mvtec_panel_text(root, value) if missing else "",
        )

    def spec(
        self, source: str, category: str | None, data_root: str, folder: str, test_folder: str, uploads: Any,
        name: str, ws: service.Workspace,
    ) -> DataSpec:
        """The DataSpec the panel describes (uploads are extracted into a fresh folder of the workspace). Folders
        come from the access policy: the operator's, or in private mode ones the user names.

        Args:
            source: One of :func:`sources`.
            category: Demo or MVTec AD category.
            data_root: MVTec AD folder asked for (private mode).
            folder: Folder of good images (server folder source).
            test_folder: Optional test folder (server folder source).
            uploads: Uploaded images or zip files (upload source).
            name: Name of the data (folder and upload sources).
            ws: The caller's workspace.

        Returns:
            The training data's description.
        """
        policy, public = self.ctx.settings.policy, self.ctx.settings.public
        if source == SRC_DEMO:
            if category and category not in DEMO_CATEGORIES:
                raise gr.Error(f"unknown demo category; choose one of {', '.join(DEMO_CATEGORIES)}")
            return DataSpec("demo", category or DEMO_CATEGORY, str(self.ctx.settings.paths.demo_root))
        if source == SRC_MVTEC:
            root = policy.mvtec_root(data_root)
            if not category:
                raise gr.Error("choose an MVTec AD category")
            check_category_name(category)
            if service.mvtec_missing(root, category):
                where = (" on this server" if public
                         else f" under {root}: download it with the panel above or give the folder where it is")
                raise gr.Error(self.ctx.say(f"MVTec AD category {category!r} not found{where}"))
            return DataSpec("mvtec", category, str(root))
        if source == SRC_FOLDER:
            good = policy.server_folder(folder, "folder of good images")
            cat = service.sanitize_name((name or "").strip() or good.name, "custom")
            test = str(policy.server_folder(test_folder, "test folder")) if (test_folder or "").strip() else None
            return DataSpec("folder", cat, good_dir=str(good), test_dir=test)
        if source == SRC_UPLOAD:
            files = file_list(uploads)
            ws.check_quota(extra_bytes=sum(os.path.getsize(f) for f in files if os.path.isfile(f)))
            return service.uploaded_data_spec(files, ws.root, category=(name or "").strip() or None)
        raise gr.Error("unknown data source")

    # ------------------------------------------------------------------ MVTec AD
    def _mvtec_found(self, text: str, dest: Path, category: str | None, cats: list[str]) -> tuple[Any, ...]:
        value = category if category in cats else (cats[0] if cats else None)
        return text, str(dest), gr.Dropdown(choices=cats, value=value), gr.Group(visible=False)

    def get_mvtec(self, root: str, archive_or_folder: str, category: str | None) -> Iterator[tuple[Any, ...]]:
        """Download MVTec AD (or extract a local archive, or adopt an extracted folder) with progress. Downloads and
        extractions replace category folders, so they only go inside the data folder (private mode only)."""
        policy = self.ctx.settings.policy
        try:
            src = (archive_or_folder or "").strip()
            if src and policy.server_paths and Path(src).expanduser().is_dir():  # read-only use of an extracted copy
                folder = policy.server_folder(src, "MVTec AD folder")
                cats = list_categories(folder)
                if not cats:
                    raise gr.Error(
                        self.ctx.say(f"{folder.name} holds no MVTec AD categories (folders with train/good)")
                    )
                yield self._mvtec_found(f"Using MVTec AD in {md(folder)} ({len(cats)} categories).", folder,
                                        category, cats)
                return
            dest = policy.mvtec_destination(root)
            archive = str(policy.server_folder(src, "archive")) if src else None
        except Exception as exc:  # noqa: BLE001
            raise self.ctx.err(exc) from exc
        state: dict[str, Any] = {"done": 0, "total": 0, "finished": False}
        threading.Thread(target=_download_worker, args=(str(dest), archive, state), daemon=True).start()
        verb = "Extracting" if archive else "Downloading"
        while not state["finished"]:
            time.sleep(1.0)
            done, total = state["done"], state["total"]
            if archive or not done:
                msg = f"{verb} MVTec AD into {md(dest)} ..."
            elif total:
                msg = f"Downloading: {done / 1e9:.2f} / {total / 1e9:.2f} GB ({100 * done / total:.0f}%)"
            else:
                msg = f"Downloading: {done / 1e9:.2f} GB"
            yield msg, gr.skip(), gr.skip(), gr.skip()
        if "error" in state:
            raise gr.Error(self.ctx.say(state["error"]))
        cats = list_categories(dest)
        yield self._mvtec_found(f"MVTec AD ready under {md(dest)} ({len(cats)} categories).", dest, category, cats)

    def upload_mvtec(
        self,
        archive: Any,
        root: str,
        category: str | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's progress tracker is injected this way
    ) -> tuple[Any, ...]:
        """Extract an uploaded MVTec AD archive (the full set, or one category's archive such as ``bottle.tar.xz``)
        into the operator's MVTec AD folder and list the categories found. Every member is checked before anything
        is extracted (:func:`~ikd_core.data.download.safe_extract`) and categories move in only once complete, so a
        bad archive changes nothing. Refused in public mode (as the download is)."""
        from ikd_core.data.download import install_archive

        files = file_list(archive)
        if not files:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        if self.ctx.settings.public:
            raise gr.Error("uploading MVTec AD is not available on this public deployment; the operator provides it")
        src = Path(files[0])
        if len(files) != 1 or not src.name.lower().endswith(MVTEC_ARCHIVE_SUFFIXES):
            raise gr.Error(
                self.ctx.say(f"{src.name} is not an MVTec AD archive: upload one .tar.xz, .tar.gz, .tar or .zip file "
                             "(the full set or one category's archive)")
            )
        try:
            dest = self.ctx.settings.policy.mvtec_destination(root)
            progress(0.0, desc="Checking the archive")
            found = install_archive(
                src, dest, progress=lambda done, total: progress((done, total), desc="Extracting", unit="files")
            )
        except Exception as exc:  # noqa: BLE001
            raise self.ctx.err(exc) from exc
        finally:
            Path(src).unlink(missing_ok=True)  # the uploaded copy (up to GBs) is not needed any more
        cats = list_categories(dest)
        value = category if category in found else (found[0] if found else (cats[0] if cats else None))
        return (
            f"Extracted {len(found)} categor{'y' if len(found) == 1 else 'ies'} ({', '.join(md(c) for c in found)}); "
            f"MVTec AD under {md(dest)} now has {len(cats)}.",
            str(dest),
            gr.Dropdown(choices=cats, value=value),
            gr.Group(visible=False),
        )

    # ------------------------------------------------------------------ components and events
    def build(self) -> DataPanel:
        """Create the panel's components (inside the Model tab).

        Returns:
            This panel.
        """
        s = self.ctx.settings
        self.source = gr.Radio(sources(s), value=SRC_DEMO, label="Data source", elem_id="ikd-source")
        with gr.Row():
            self.category = gr.Dropdown(
                list(DEMO_CATEGORIES), value=DEMO_CATEGORY, label="Category", allow_custom_value=True,
                elem_id="ikd-category",
            )  # checked by the engine
            self.data_root = gr.Textbox(
                str(s.paths.mvtec_root) if s.allow_server_paths else "",
                label="MVTec AD folder (data root)",
                visible=False,
                interactive=s.allow_server_paths,
            )
            self.folder = gr.Textbox(
                label="Folder of good images (on the server)", visible=False, placeholder="/path/to/good"
            )
            self.test_folder = gr.Textbox(label="Test folder (optional: good/ + <defect>/ sub-folders)", visible=False)
            self.data_name = gr.Textbox(
                label="Name (for the checkpoint)", visible=False, placeholder="custom", elem_id="ikd-data-name"
            )
        self.train_upload = gr.File(
            label="Good images: several image files or one .zip",
            file_count="multiple",
            file_types=["image", ".zip"],
            visible=False,
            elem_id="ikd-train-upload",
        )
        with gr.Group(visible=False) as self.mvtec_panel:
            self.mvtec_md = gr.Markdown()
            with gr.Row():
                self.mvtec_src = gr.Textbox(
                    label="Path of a downloaded archive or extracted folder (optional)", scale=3,
                    visible=s.allow_server_paths,
                )
                self.mvtec_btn = gr.Button("Download / use", scale=1, visible=not s.public)
            self.mvtec_upload = gr.File(
                label=f"Or upload an MVTec AD archive: one category's (e.g. bottle.tar.xz) or the full set (up to "
                f"{s.max_file_size} here: IKD_MAX_FILE_SIZE)",
                file_types=[".xz", ".gz", ".tgz", ".txz", ".bz2", ".tar", ".zip"],
                visible=not s.public,
                elem_id="ikd-mvtec-upload",
            )
            self.mvtec_progress = gr.Markdown(elem_id="ikd-mvtec-progress")
        return self

    def wire(self) -> None:
        """The panel's events: a source, folder or category change shows the right fields; MVTec AD downloads."""
        gr.on(
            triggers=[self.source.change, self.data_root.submit, self.category.change],
            fn=self.on_source_change,
            inputs=[self.source, self.data_root, self.category],
            outputs=[self.category, self.data_root, self.folder, self.test_folder, self.train_upload, self.data_name,
                     self.mvtec_panel, self.mvtec_md],
            api_visibility="private",
        )
        mvtec_outputs = [self.mvtec_progress, self.data_root, self.category, self.mvtec_panel]
        self.mvtec_btn.click(
            self.get_mvtec,
            [self.data_root, self.mvtec_src, self.category],
            mvtec_outputs,
            concurrency_limit=1,
            concurrency_id="download",
            api_name="get_mvtec",
            show_progress_on=[self.mvtec_progress],
        )
        self.mvtec_upload.upload(
            self.upload_mvtec,
            [self.mvtec_upload, self.data_root, self.category],
            mvtec_outputs,
            concurrency_limit=1,
            concurrency_id="download",
            api_name="upload_mvtec",
            show_progress_on=[self.mvtec_progress],  # the extraction's gr.Progress bar, and any error, show there
        )
