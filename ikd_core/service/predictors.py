"""Caches of loaded predictors and of their predictions."""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..predict import Predictor


class PredictorCache:
    """A small thread-safe LRU of loaded :class:`~ikd_core.predict.Predictor`, keyed by checkpoint path,
    modification time, size, device and CPU backend (a rewritten file is reloaded).

    The app keeps one per process, so a checkpoint is loaded once whichever tab asks for it."""

    def __init__(self, maxsize: int = 3, loader: Callable[[Path, str], Any] | None = None,
                 backend: str = "torch") -> None:
        self.maxsize = maxsize
        self.backend = backend  # default of CPU predictors: "torch", "onnx" or "auto" (Predictor.from_checkpoint)
        self._items: OrderedDict[tuple[str, int, int, str, str], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int, int, str, str], threading.Lock] = {}
        self._loader = loader

    @staticmethod
    def key(path: str | os.PathLike[str], device: str = "cpu", backend: str = "") -> tuple[str, int, int, str, str]:
        """The cache key of a checkpoint file as it is now (path, mtime, size), a device and a backend."""
        p = Path(path).resolve()
        st = p.stat()
        return (str(p), st.st_mtime_ns, st.st_size, str(device), backend)

    def get(self, path: str | os.PathLike[str], device: str = "cpu", backend: str | None = None) -> Any:
        """The predictor of ``path`` on ``device`` (loaded on first use; :class:`CheckpointError` if it cannot be).
        ``backend``: of a CPU predictor (default: the cache's)."""
        backend = backend or self.backend
        try:
            key = self.key(path, device, backend)
        except OSError as exc:
            raise CheckpointError(f"checkpoint {Path(path).name} not found") from exc
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            predictor = self._load(Path(key[0]), device, backend)
            with self._lock:
                self._items[key] = predictor
                self._items.move_to_end(key)
                while len(self._items) > self.maxsize:
                    self._items.popitem(last=False)
                self._loading.pop(key, None)
            return predictor

    def _load(self, path: Path, device: str, backend: str) -> Any:
        if self._loader is not None:
            return self._loader(path, device)
        if str(device) == "cpu":
            return Predictor.from_checkpoint(path, "cpu", backend=backend)
        # A GPU copy of the CPU predictor: the checkpoint is read and checked once, on the CPU, and on ZeroGPU
        # only this move happens inside the GPU call (the CPU model was loaded before the worker forked).
        cpu = self.get(path, "cpu", backend)
        return Predictor(copy.deepcopy(cpu.model).to(device), cpu.metadata, tile=cpu.tile)

    def clear(self) -> None:
        """Forget every loaded predictor."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class PredictionCache:
    """A thread-safe LRU of predictions (anomaly maps) bounded in bytes, so re-rendering an image at another
    threshold, opacity or colormap needs no model (and, on ZeroGPU, no GPU call)."""

    def __init__(self, max_bytes: int = 256 * 1024**2) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def size_of(prediction: Any) -> int:
        return int(getattr(getattr(prediction, "anomaly_map", None), "nbytes", 0)) + 256

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, prediction: Any) -> None:
        size = self.size_of(prediction)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (prediction, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, freed) = self._items.popitem(last=False)
                self._bytes -= freed

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
