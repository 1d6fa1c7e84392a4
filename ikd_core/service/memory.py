"""Give freed memory back to the operating system (glibc's allocator keeps it otherwise).

A long-lived server decodes large uploads, renders big overlays and runs forward passes from many threads. glibc
serves large blocks from its heap once its dynamic mmap threshold has grown (it grows each time a large mmapped
block is freed, up to 32 MB), and its arenas keep the pages of freed blocks, so after a burst of big requests the
freed memory stays in the process's resident set. :func:`release_memory` (glibc's ``malloc_trim(0)``) hands the
free pages of every arena back; :class:`Trimmer` calls it when the last request of a burst ends. Off glibc it
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, when this process uses it (malloc_trim exists only there)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def release_memory() -> bool:
    """Return free heap pages to the OS (``malloc_trim(0)``); True if any were released."""
    libc = _libc()
    return bool(libc.malloc_trim(ctypes.c_size_t(0))) if libc is not None else False


class Trimmer:
    """Counts the requests in progress; the last one to finish calls :func:`release_memory`, so a burst of
    heavy requests leaves no freed memory resident, and no trim runs while others of the burst still work."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0

    @contextmanager
    def request(self) -> Iterator[None]:
        """Wrap one request's heavy work."""
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                last = self._active == 0
            if last:
                release_memory()
