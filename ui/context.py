"""One app's shared state: its settings, the visitors' workspaces, training jobs, caches and the fair image gate,
with the operations every tab needs on them (checkpoints by name, test sets, cached predictions). Built once per
app (:func:`ui.build_app`) and passed to every tab; no Gradio component lives here."""

from __future__ import annotations

import html
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from ikd_core import service
from ikd_core.data.mvtec import Sample
from ikd_core.data.sources import build_datasets
from ikd_core.data.synthetic import ensure_demo_dataset
from ikd_core.errors import IKDError
from ikd_core.fileio import file_digest
from ikd_core.service import Settings

from . import gpu
from .common import READY_CHECKPOINTS, REPO, log

TestSet = tuple[list[Sample], service.SampleIndex]


@dataclass
class AppContext:
    """The state one app shares between its tabs and requests.

    Attributes:
        settings: The app's settings (read from the environment once).
        workspaces: Every visitor's own folders (public mode; one shared workspace otherwise).
        jobs: The running training jobs, by workspace.
        predictions: Maps of inspected images, by checkpoint and file (bounded in bytes).
        predictors: Loaded models: the process's one cache (:data:`ui.gpu.PREDICTORS`).
        image_gate: Each image of an Inspect or GIF request takes a turn here, in arrival order, so one visitor's
            large request cannot hold back another's single image.
        trimmer: Inspect and GIF requests; when the last one of a burst ends, freed memory goes back to the OS.
    """

    settings: Settings
    workspaces: service.WorkspaceManager
    jobs: service.JobRegistry = field(default_factory=service.JobRegistry)
    predictions: service.PredictionCache = field(default_factory=service.PredictionCache)
    predictors: service.PredictorCache = field(default_factory=lambda: gpu.PREDICTORS)
    image_gate: service.FairGate = field(default_factory=lambda: service.FairGate(2))
    trimmer: service.Trimmer = field(default_factory=service.Trimmer)
    _test_sets: dict[str, TestSet] = field(default_factory=dict, repr=False)
    _data_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, settings: Settings) -> AppContext:
        """The context of a new app.

        Args:
            settings: The app's settings.

        Returns:
            A context with empty caches and no workspace yet.
        """
        paths = settings.paths
        workspaces = service.WorkspaceManager(
            paths.work, paths.pretrained, settings.public, settings.quota, ttl_s=settings.workspace_ttl_s
        )
        return cls(settings, workspaces, predictions=service.PredictionCache(settings.prediction_cache_bytes))

    # ------------------------------------------------------------------ messages
    @property
    def scrub_roots(self) -> list[Path]:
        """Folders never named in a message."""
        paths = self.settings.paths
        return [paths.pretrained, paths.data, paths.work, REPO]

    def say(self, text: object) -> str:
        """A message for a toast or an error: no server path, and HTML-escaped (it may carry names from files)."""
        return html.escape(service.public_message(str(text), self.scrub_roots), quote=False)

    def public(self, text: object) -> str:
        """A message with no server path (not escaped)."""
        return service.public_message(str(text), self.scrub_roots)

    def err(self, exc: Exception) -> gr.Error:
        """A user-facing error for the browser / API client: the engine's message, with no server path in it."""
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, IKDError):
            return gr.Error(self.say(exc))
        log.exception("unexpected error")
        return gr.Error(self.say(f"{type(exc).__name__}: {exc}"))

    # ------------------------------------------------------------------ workspaces
    def workspace(self, request: gr.Request | None, create: bool = True) -> service.Workspace:
        """The caller's workspace, found on the server by the caller's session (one shared one in private mode)."""
        ws = self.workspaces.get(getattr(request, "session_hash", None), create=create)
        if ws is None:
            raise gr.Error("no workspace for this session (it has expired): reload the page")
        return ws

    def own_workspace(self, request: gr.Request | None) -> service.Workspace | None:
        """The caller's workspace if it exists (public mode), else the shared one; never creates one."""
        if not self.settings.public:
            return self.workspaces.shared
        return self.workspaces.get(getattr(request, "session_hash", None), create=False)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dirs(self, ws: service.Workspace) -> list[Path]:
        """Where the caller's checkpoints are: their own first, then the shipped (read-only in public mode) ones."""
        shipped = self.settings.paths.pretrained
        return [ws.pretrained] if ws.pretrained == shipped else [ws.pretrained, shipped]

    def checkpoint_infos(self, ws: service.Workspace) -> list[service.CheckpointInfo]:
        """The caller's checkpoints (a name found twice: their own one)."""
        seen: set[str] = set()
        out = []
        for d in self.checkpoint_dirs(ws):
            for info in service.list_checkpoints(d):
                if info.name not in seen:
                    seen.add(info.name)
                    out.append(info)
        return out

    def checkpoint_names(self, ws: service.Workspace) -> list[str]:
        """The names of the caller's checkpoints."""
        return [i.name for i in self.checkpoint_infos(ws)]

    def initial_checkpoint(self, ws: service.Workspace) -> str | None:
        """The checkpoint active on a first page load (a shipped ready one if there is one)."""
        return service.default_checkpoint(self.checkpoint_infos(ws), READY_CHECKPOINTS)

    def resolve(self, name: str | None, ws: service.Workspace) -> Path:
        """A checkpoint of the caller's by name: in their workspace, else among the shipped ones."""
        first: IKDError | None = None
        for d in self.checkpoint_dirs(ws):
            try:
                return service.resolve_checkpoint(name or "", d)
            except IKDError as exc:
                first = first or exc
        assert first is not None
        raise first

    def cpu_predictor(self, path: Path) -> Any:
        """The checkpoint's CPU predictor, with the app's backend."""
        return self.predictors.get(path, "cpu", self.settings.backend)

    def predictor_for(self, name: str | None, ws: service.Workspace) -> tuple[Path, Any]:
        """The checkpoint's path and its CPU predictor (metadata, test set; the GPU copy lives in the GPU calls)."""
        path = self.resolve(name, ws)
        return path, self.cpu_predictor(path)

    # ------------------------------------------------------------------ data
    def ensure_demo_data(self) -> Path:
        """Generate the offline demo set on first use (a few seconds)."""
        with self._data_lock:
            return ensure_demo_dataset(self.settings.paths.demo_root)

    def test_set(self, ckpt_path: Path, meta: dict[str, Any]) -> TestSet:
        """Test samples of the data a checkpoint was trained on, from the operator's data or what this server
        recorded when it trained it (never a path from the checkpoint's metadata); empty when there is none here."""
        spec = self.settings.policy.test_spec(meta, file_digest(ckpt_path), ckpt_path)
        if spec is None or (spec.kind == "folder" and not spec.test_dir):
            return [], service.SampleIndex([])
        key = json.dumps(spec.to_dict(), sort_keys=True)
        if key in self._test_sets:
            return self._test_sets[key]
        if spec.kind == "demo":
            self.ensure_demo_data()
        try:
            _, test_ds = build_datasets(spec, int(meta.get("image_size", 256)))
        except IKDError as exc:
            log.info("no test set for %s: %s", spec.category, exc)
            return [], service.SampleIndex([])
        samples = list(test_ds.samples) if test_ds is not None else []  # type: ignore[union-attr]
        self._test_sets[key] = (samples, service.SampleIndex(samples))
        return self._test_sets[key]

    def example_images(self, ckpt_path: Path, meta: dict[str, Any], n: int = 12) -> list[str]:
        """Up to ``n`` test images of the checkpoint's data (the same ones each time)."""
        from ikd_core.gif import pick_samples

        samples, _ = self.test_set(ckpt_path, meta)
        return [s.path for s in pick_samples(samples, n, seed=0)]

    # ------------------------------------------------------------------ predictions
    def decode(self, path: str) -> tuple[Any, str | None]:
        """An uploaded image decoded at most ``inspect_max_side`` px a side (refused above ``max_image_pixels``,
        from its header)."""
        s = self.settings
        return service.load_inspect_image(path, max_side=s.inspect_max_side, max_pixels=s.max_image_pixels)

    def _keys(self, ckpt_path: Path, paths: list[str], tile: bool = False) -> list[tuple[Any, ...]]:
        ckpt_key = service.PredictorCache.key(ckpt_path, "cpu", self.settings.backend)
        # by content: the same image uploaded again (a new temporary file) is found too
        return [(*ckpt_key, file_digest(image), self.settings.inspect_max_side, tile) for image in paths]

    def load_and_predict(
        self, ckpt_path: Path, paths: list[str], tile: bool = False
    ) -> list[tuple[Any, str | None, Any]]:
        """(image, note, prediction) of each image file. Predictions come from the server-side cache where present.

        On the CPU each image is decoded and scored in one turn of :attr:`image_gate`, taken in arrival order, so a
        visitor's one-image request waits for at most one image of each other request, never for whole requests. On
        ZeroGPU the images are decoded first and the missing maps come from one GPU call.
        """
        keys = self._keys(ckpt_path, paths, tile)
        backend = self.settings.backend
        out: list[tuple[Any, str | None, Any]] = []
        for path, key in zip(paths, keys, strict=True):
            if gpu.ZERO_GPU:
                img, note = self.decode(path)
                out.append((img, note, self.predictions.get(key)))
                continue
            with self.image_gate.turn():
                img, note = self.decode(path)
                pred = self.predictions.get(key)
                if pred is None:
                    pred = gpu.predict_on_device(str(ckpt_path), [np.asarray(img)], tile, backend)[0]
                    self.predictions.put(key, pred)
            out.append((img, note, pred))
        missing = [i for i, (_, _, pred) in enumerate(out) if pred is None]
        if missing:
            new = gpu.predict_on_device(str(ckpt_path), [np.asarray(out[i][0]) for i in missing], tile, backend)
            for i, pred in zip(missing, new, strict=True):
                self.predictions.put(keys[i], pred)
                out[i] = (out[i][0], out[i][1], pred)
        return out

    def warm_up(self) -> None:
        """Prepare what the first visitor needs (the shipped checkpoints, demo data, the ready model, its test set)
        before the server opens, so the first upload gets its heatmap at once (a few seconds, once)."""
        paths = self.settings.paths
        try:
            copied = service.seed_checkpoints(REPO / service.SHIPPED_PRETRAINED, paths.pretrained)
            if copied:
                log.info("copied the shipped checkpoints into %s: %s", paths.pretrained, ", ".join(copied))
            self.ensure_demo_data()
            name = self.initial_checkpoint(self.workspaces.shared)
            if name:
                path, predictor = self.predictor_for(name, self.workspaces.shared)
                self.example_images(path, predictor.metadata)
        except Exception:  # noqa: BLE001 - a failed warm-up only means the first request does the work
            log.exception("warm-up failed")
