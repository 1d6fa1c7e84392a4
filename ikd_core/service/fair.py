"""A first-come, first-served gate for expensive work (e.g. one image's forward pass) shared by all visitors."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import IKDError


class BusyError(IKDError):
    """The server is too busy: a turn did not come within the time allowed."""


class FairGate:
    """At most ``slots`` threads inside at once; waiting threads get in strictly in arrival (FIFO) order.

    A freed slot is handed directly to the oldest waiter, so a thread arriving later can never overtake one that
    is already waiting (``threading.Semaphore`` gives no such guarantee). Taking one turn per image means a
    one-image request waits for at most one image of each request ahead of it, not for whole requests.
    """

    def __init__(self, slots: int) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be a positive integer, got {slots!r}")
        self.slots = slots
        self._free = slots
        self._queue: deque[threading.Event] = deque()
        self._changed = threading.Condition(threading.Lock())

    @property
    def waiting(self) -> int:
        """Threads waiting for a turn now."""
        with self._changed:
            return len(self._queue)

    @property
    def busy(self) -> int:
        """Turns taken now."""
        with self._changed:
            return self.slots - self._free

    def acquire(self, timeout: float | None = None) -> None:
        """Wait for a turn (FIFO); :class:`BusyError` if none came within ``timeout`` seconds."""
        with self._changed:
            if self._free > 0 and not self._queue:
                self._free -= 1
                return
            ticket = threading.Event()
            self._queue.append(ticket)
            self._changed.notify_all()
        try:
            if ticket.wait(timeout):
                return
        except BaseException:  # interrupted while waiting: give up the place, or pass on a turn just handed over
            with self._changed:
                handed = ticket.is_set()
                if not handed:
                    self._queue.remove(ticket)
                    self._changed.notify_all()
            if handed:
                self.release()
            raise
        with self._changed:
            if ticket.is_set():  # handed over just as the wait ended: the turn is ours
                return
            self._queue.remove(ticket)
            self._changed.notify_all()
        raise BusyError(f"the server is busy (no turn within {timeout:g} s); try again in a moment")

    def release(self) -> None:
        """End a turn: the slot goes to the oldest waiter, else it becomes free."""
        with self._changed:
            if self._queue:
                self._queue.popleft().set()
            elif self._free < self.slots:
                self._free += 1
            else:
                raise RuntimeError("FairGate.release() without a turn")
            self._changed.notify_all()

    @contextmanager
    def turn(self, timeout: float | None = None) -> Iterator[None]:
        """``with gate.turn(): ...`` runs the block in a turn (see :meth:`acquire`)."""
        self.acquire(timeout)
        try:
            yield
        finally:
            self.release()

    def wait_until_waiting(self, n: int, timeout: float | None = None) -> bool:
        """Block until at least ``n`` threads wait for a turn (for monitoring and tests); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while len(self._queue) < n:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
            return True
