"""A cache of loaded predictors."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import CheckpointError


class PredictorCache:
    """A small thread-safe LRU of loaded :class:`~ikd_core.predict.Predictor`, keyed by checkpoint path,
    modification time, size and device (a rewritten file is reloaded)."""

    def __init__(self, maxsize: int = 3, loader: Callable[[Path, str], Any] | None = None) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[str, int, int, str], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int, int, str], threading.Lock] = {}
        self._loader = loader

    @staticmethod
    def key(path: str | os.PathLike[str], device: str = "cpu") -> tuple[str, int, int, str]:
        p = Path(path).resolve()
        st = p.stat()
        return (str(p), st.st_mtime_ns, st.st_size, str(device))

    def get(self, path: str | os.PathLike[str], device: str = "cpu") -> Any:
        """The predictor of ``path`` (loaded on first use; :class:`CheckpointError` if it cannot be)."""
        try:
            key = self.key(path, device)
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
            predictor = self._load(Path(key[0]), device)
            with self._lock:
                self._items[key] = predictor
                self._items.move_to_end(key)
                while len(self._items) > self.maxsize:
                    self._items.popitem(last=False)
                self._loading.pop(key, None)
            return predictor

    def _load(self, path: Path, device: str) -> Any:
        if self._loader is not None:
            return self._loader(path, device)
        from ..predict import Predictor

        return Predictor.from_checkpoint(path, device)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
