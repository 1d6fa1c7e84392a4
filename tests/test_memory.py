"""Freed memory goes back to the OS after a burst of requests (glibc ``malloc_trim``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from ikd_core.service import memory

GLIBC = memory._libc() is not None


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_release_memory_returns_freed_heap_pages() -> None:
    # 100 MB in 64 KB blocks (below glibc's mmap threshold, so they come from the heap), each followed by a small
    # block that stays: the freed blocks cannot merge into the heap's top, so they stay resident until malloc_trim.
    code = textwrap.dedent("""
        import ctypes, os
        from ikd_core.service.memory import _libc, release_memory
        libc = _libc()
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        page = os.sysconf("SC_PAGE_SIZE")
        def rss():
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * page / 2**20
        blocks, pins = [], []
        for _ in range(1600):
            blocks.append(libc.malloc(65536))
            pins.append(libc.malloc(4000))
            ctypes.memset(blocks[-1], 1, 65536)
        before = rss()
        for b in blocks:
            libc.free(b)
        freed = rss()
        released = release_memory()
        print(before, freed, rss(), released)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    before, freed, after, released = out.stdout.split()
    assert float(freed) > float(before) - 20  # free() alone kept (most of) the 100 MB resident
    assert float(after) < float(freed) - 80  # malloc_trim gave it back
    assert released == "True"


def test_trimmer_trims_once_when_the_last_request_of_a_burst_ends(monkeypatch) -> None:
    calls: list[int] = []
    trimmer = memory.Trimmer()
    monkeypatch.setattr(memory, "release_memory", lambda: calls.append(1) or True)
    first_in, second_done = threading.Event(), threading.Event()

    def first() -> None:
        with trimmer.request():
            first_in.set()
            assert second_done.wait(10)
            assert calls == []  # the other request ended, this one still works: no trim yet

    t = threading.Thread(target=first)
    t.start()
    assert first_in.wait(10)
    with trimmer.request():
        pass
    second_done.set()
    t.join(10)
    assert calls == [1]
    with pytest.raises(RuntimeError), trimmer.request():
        raise RuntimeError("a failed request still ends its part of the burst")
    assert calls == [1, 1]
