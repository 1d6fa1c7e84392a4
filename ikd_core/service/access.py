"""Which folders the studio may open, read or write: one allowlist, set by the operator.

Nothing a request or a checkpoint's metadata says ever becomes a path that is opened. A checkpoint's test data is
the operator's demo set or MVTec AD folder (by category name), or data this server itself recorded when it trained
the checkpoint (:class:`KnownData`). In private mode (a local user, ``IKD_PUBLIC`` off) the user may name server
folders to train from, but MVTec AD is only downloaded or extracted (which replaces category folders) inside the
data folder. In public mode (``SPACE_ID`` set, or ``IKD_PUBLIC=1``) no request names a server path at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.mvtec import check_category_name
from ..data.sources import DataSpec
from ..data.synthetic import DEMO_CATEGORIES
from ..errors import DataError, IKDError
from ..fileio import atomic_write_bytes
from .paths import StudioPaths

PUBLIC_ENV = "IKD_PUBLIC"
ALLOW_SERVER_PATHS_ENV = "IKD_ALLOW_SERVER_PATHS"
_OFF = ("0", "false", "no", "off")


def public_mode(environ: Mapping[str, str] | None = None) -> bool:
    """``IKD_PUBLIC`` when set (``1`` / ``0``), else whether this runs on a Hugging Face Space (``SPACE_ID``)."""
    env = os.environ if environ is None else environ
    flag = (env.get(PUBLIC_ENV) or "").strip().lower()
    if flag:
        return flag not in _OFF
    return bool(env.get("SPACE_ID"))


def _inside(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


class KnownData:
    """Data specs this server recorded for the checkpoints it trained, by checkpoint content
    (:func:`~ikd_core.fileio.file_digest`, SHA-256; records made before by BLAKE2b digest are found through the
    checkpoint's file and moved to its SHA-256 key).

    The only way a checkpoint's folder data (or an MVTec AD folder other than the operator's) is found again:
    metadata from the file itself is never trusted for paths.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def record(self, digest: str, spec: DataSpec) -> None:
        with self._lock:
            data = self._read()
            data[digest] = spec.to_dict()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))

    def lookup(self, digest: str, path: str | os.PathLike[str] | None = None) -> DataSpec | None:
        """The spec recorded for a checkpoint's ``digest``; ``path``: the checkpoint, to find a record made under
        its earlier BLAKE2b digest (which is then recorded again under ``digest``)."""
        with self._lock:
            data = self._read()
            entry = data.get(digest)
            if entry is None and path is not None:
                with contextlib.suppress(OSError), open(path, "rb") as fh:
                    legacy = hashlib.file_digest(fh, "blake2b").hexdigest()
                    entry = data.pop(legacy, None)
                    if entry is not None:
                        data[digest] = entry
                        atomic_write_bytes(self.path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
        if not isinstance(entry, dict):
            return None
        try:
            return DataSpec.from_dict(entry)
        except TypeError:
            return None


@dataclass(frozen=True)
class AccessPolicy:
    """The operator's allowlist. ``server_paths``: whether requests may name server folders to read (private mode
    only; ``IKD_ALLOW_SERVER_PATHS=0`` turns it off there too)."""

    paths: StudioPaths
    public: bool = False
    server_paths: bool = True
    known: KnownData | None = field(default=None, compare=False)

    @classmethod
    def from_env(cls, paths: StudioPaths, environ: Mapping[str, str] | None = None) -> AccessPolicy:
        env = os.environ if environ is None else environ
        public = public_mode(env)
        allow = (env.get(ALLOW_SERVER_PATHS_ENV) or "1").strip().lower() not in _OFF
        return cls(paths, public, allow and not public, KnownData(paths.work / "known_data.json"))

    # ------------------------------------------------------------------ reading
    def server_folder(self, folder: str | None, what: str = "folder") -> Path:
        """A server folder a (private-mode) user named; refused where requests may not name paths."""
        if not self.server_paths:
            raise DataError("server folders cannot be used here; upload images instead")
        if not folder or not str(folder).strip():
            raise DataError(f"give the {what} on the server")
        return Path(str(folder).strip()).expanduser()

    def mvtec_root(self, requested: str | None = None) -> Path:
        """Where MVTec AD is read from: the operator's folder, or (private mode) a folder the user names."""
        if requested and str(requested).strip() and self.server_paths:
            return Path(str(requested).strip()).expanduser()
        return self.paths.mvtec_root

    def mvtec_destination(self, requested: str | None = None) -> Path:
        """Where MVTec AD may be downloaded or extracted to. That replaces category folders, so only inside the
        data folder (or the operator's MVTec AD folder), never where a request points elsewhere."""
        if self.public:
            raise DataError("downloading MVTec AD is not available on this public deployment; the operator "
                            "provides it")
        root = self.mvtec_root(requested)
        if not (_inside(root, self.paths.data) or _inside(root, self.paths.mvtec_root)):
            raise DataError(f"MVTec AD is only downloaded or extracted inside the data folder "
                            f"({self.paths.data.name}/); to use a copy elsewhere, give its extracted folder")
        return root

    def test_spec(self, meta: Mapping[str, Any], digest: str | None = None,
                  path: str | os.PathLike[str] | None = None) -> DataSpec | None:
        """The test data of a checkpoint, from what the operator provides or this server recorded; ``None`` when
        there is none here. Only the data kind and the category name are read from the metadata. ``path``: the
        checkpoint file (finds records made under an earlier digest)."""
        if digest is not None and self.known is not None:
            spec = self.known.lookup(digest, path)
            if spec is not None and (spec.kind != "folder" or self.server_paths):
                return spec
        data = meta.get("data")
        if not isinstance(data, Mapping):
            return None
        kind, category = data.get("kind"), data.get("category", meta.get("category"))
        if not isinstance(category, str):
            return None
        if kind == "demo" and category in DEMO_CATEGORIES:
            return DataSpec("demo", category, str(self.paths.demo_root))
        if kind == "mvtec":
            try:
                check_category_name(category)
            except IKDError:
                return None
            return DataSpec("mvtec", category, str(self.paths.mvtec_root))
        return None  # folder data: only what this server recorded
