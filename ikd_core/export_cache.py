"""The export cache: one checked ONNX export per checkpoint content, least recently used evicted past a size cap.

Used by :class:`~ikd_core.predict.Predictor`'s ``onnx`` / ``auto`` backends.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path
from typing import Any

from . import __version__
from .errors import IKDError
from .export import OPSET, export_onnx
from .fileio import file_digest
from .runtime import EXPORT_FORMAT
from .torch_model import IKDModel


def cache_dir() -> Path:
    """Folder of cached exports: ``$IKD_CACHE_DIR/onnx``, else ``~/.cache/ikd_studio/onnx``."""
    root = os.environ.get("IKD_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "ikd_studio"
    return base / "onnx"


def cached_onnx(checkpoint: str | os.PathLike[str], model: IKDModel, meta: dict[str, Any]) -> Path:
    """The ONNX export of a loaded checkpoint, made (and checked against torch) once and kept in
    :func:`cache_dir`, keyed by the checkpoint's content, its teacher and the export format."""
    import onnx

    digest = file_digest(checkpoint)
    key = hashlib.sha256("\n".join([digest, model.teacher_fingerprint, str(model.teacher_source), EXPORT_FORMAT,
                                    __version__, str(OPSET), onnx.__version__]).encode()).hexdigest()[:20]
    path = cache_dir() / f"{Path(checkpoint).stem}-{key}.onnx"
    if path.is_file():
        with contextlib.suppress(OSError):
            os.utime(path)  # mark as recently used (eviction goes oldest first)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, meta, path, digest)
    evict_cache(keep=path)
    return path


def cache_limit_bytes() -> int:
    """Size cap of the export cache: ``$IKD_ONNX_CACHE_MB`` megabytes (default 1024; 0 = no cap)."""
    raw = os.environ.get("IKD_ONNX_CACHE_MB", "1024")
    try:
        mb = float(raw)
    except ValueError:
        raise IKDError(f"IKD_ONNX_CACHE_MB must be a number of megabytes, not {raw!r}") from None
    return max(0, int(mb * 1024 * 1024))


def evict_cache(keep: Path | None = None, limit: int | None = None, min_age_s: float = 60.0) -> list[Path]:
    """Remove the least recently used exports from :func:`cache_dir` until it fits ``limit`` bytes
    (default :func:`cache_limit_bytes`). ``keep`` and files used in the last ``min_age_s`` seconds (another
    process may be about to load them) stay. Returns the removed files."""
    limit = cache_limit_bytes() if limit is None else limit
    if limit <= 0:
        return []
    entries = []
    for f in cache_dir().glob("*.onnx"):
        with contextlib.suppress(OSError):
            st = f.stat()
            entries.append((st.st_mtime, st.st_size, f))
    total = sum(size for _, size, _ in entries)
    now = time.time()
    removed: list[Path] = []
    for mtime, size, f in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if (keep is not None and f == keep) or now - mtime < min_age_s:
            continue
        with contextlib.suppress(OSError):
            f.unlink()
            total -= size
            removed.append(f)
    return removed
