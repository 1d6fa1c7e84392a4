"""Per-visitor workspaces: each browser session of a public deployment gets its own folders for uploads, trained
and uploaded checkpoints and results, with quotas, removed when the session ends or after a time to live.

In private mode there is one shared workspace whose checkpoints are the studio's ``pretrained/`` folder.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IKDError


class QuotaError(IKDError):
    """A workspace would exceed its quota."""


@dataclass(frozen=True)
class Quota:
    """Limits of one workspace (``None``: unlimited)."""

    max_bytes: int | None = 300 * 1024**2
    max_checkpoints: int | None = 5

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Quota:
        env = os.environ if environ is None else environ
        return cls(max_bytes=int(float(env.get("IKD_WORKSPACE_MB", "300")) * 1024**2),
                   max_checkpoints=int(env.get("IKD_WORKSPACE_CHECKPOINTS", "5")))


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


@dataclass
class Workspace:
    """One visitor's folders: ``pretrained`` (their checkpoints), ``uploads``, ``exports`` and ``jobs``."""

    id: str
    root: Path
    pretrained: Path
    quota: Quota = field(default_factory=Quota)
    shared: bool = False  # the private-mode workspace (never removed, no quota)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def used_bytes(self) -> int:
        folders = {self.root, self.pretrained} if not self.shared else set()
        return sum(_folder_bytes(f) for f in folders if f.is_dir())

    def checkpoint_count(self) -> int:
        if not self.pretrained.is_dir():
            return 0
        return sum(1 for p in self.pretrained.glob("*.safetensors") if not p.name.startswith("."))

    def check_quota(self, extra_bytes: int = 0, extra_checkpoints: int = 0) -> None:
        """Raise :class:`QuotaError` when adding this much would exceed the quota."""
        if self.shared:
            return
        q = self.quota
        if q.max_checkpoints is not None and self.checkpoint_count() + extra_checkpoints > q.max_checkpoints:
            raise QuotaError(f"your workspace holds at most {q.max_checkpoints} checkpoints: download the ones you "
                             "want to keep and delete others (or reload the page for a fresh workspace)")
        if q.max_bytes is not None and self.used_bytes() + extra_bytes > q.max_bytes:
            raise QuotaError(f"your workspace is limited to {q.max_bytes // 1024**2} MB; delete checkpoints or "
                             "uploads first")

    def remove(self) -> None:
        if not self.shared:
            shutil.rmtree(self.root, ignore_errors=True)


class WorkspaceManager:
    """Workspaces by owner (a browser session). ``public=False``: everyone shares one workspace (private mode)."""

    def __init__(self, base: str | os.PathLike[str], pretrained: str | os.PathLike[str], public: bool,
                 quota: Quota | None = None, ttl_s: float = 7200.0,
                 on_remove: Callable[[Workspace], None] | None = None) -> None:
        self.base = Path(base)
        self.public = public
        self.quota = quota or Quota()
        self.ttl_s = ttl_s
        self.on_remove = on_remove
        self._by_owner: dict[str, Workspace] = {}
        self._lock = threading.Lock()
        self.shared = Workspace("shared", self.base, Path(pretrained), Quota(None, None), shared=True)
        if public:  # workspaces of an earlier run belong to sessions that no longer exist
            shutil.rmtree(self.base / "workspaces", ignore_errors=True)

    def get(self, owner: str | None, create: bool = True) -> Workspace | None:
        """The owner's workspace (made on first use); ``None`` for an unknown owner when not ``create``."""
        if not self.public:
            return self.shared
        if not owner:
            raise IKDError("this request has no session; reload the page")
        self.sweep()
        with self._lock:
            ws = self._by_owner.get(owner)
            if ws is None and create:
                wid = secrets.token_hex(16)  # server-issued: nothing a client sends names a folder
                root = self.base / "workspaces" / wid
                ws = Workspace(wid, root, root / "pretrained", self.quota)
                ws.pretrained.mkdir(parents=True, exist_ok=True)
                self._by_owner[owner] = ws
        if ws is not None:
            ws.touch()
        return ws

    def close(self, owner: str | None) -> bool:
        """Remove the owner's workspace (the browser tab was closed). True if there was one."""
        if not self.public or not owner:
            return False
        with self._lock:
            ws = self._by_owner.pop(owner, None)
        if ws is None:
            return False
        self._remove(ws)
        return True

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove workspaces idle for longer than the time to live; returns their ids."""
        now = time.monotonic() if now is None else now
        with self._lock:
            old = [(o, ws) for o, ws in self._by_owner.items() if now - ws.last_used > self.ttl_s]
            for o, _ in old:
                del self._by_owner[o]
        for _, ws in old:
            self._remove(ws)
        return [ws.id for _, ws in old]

    def _remove(self, ws: Workspace) -> None:
        if self.on_remove is not None:
            self.on_remove(ws)
        ws.remove()

    def workspaces(self) -> Iterable[Workspace]:
        with self._lock:
            return list(self._by_owner.values())
