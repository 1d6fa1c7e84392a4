"""File helpers shared by the engine and the service layer: atomic writes and content digests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over ``path``.

    Args:
        path: the file to (re)place; its folder is created.
        data: the whole content.

    Returns:
        ``path``. A failure leaves the previous file intact and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's content: the one content key of the project (export cache, exported
    ``checkpoint_sha256``, uploads seen twice, data a server trained on)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
