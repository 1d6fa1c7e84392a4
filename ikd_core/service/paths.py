"""Where the studio keeps its files, and safe file names."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..data.sources import DEFAULT_DEMO_ROOT, DEFAULT_MVTEC_ROOT

PRETRAINED_ENV = "IKD_PRETRAINED_DIR"
DATA_ENV = "IKD_DATA_DIR"
WORK_ENV = "IKD_WORK_DIR"
#: One folder for everything the studio writes (e.g. ``/data``, a Hugging Face Space's persistent storage).
STORAGE_ENV = "IKD_STORAGE"
#: The checkpoints that ship with the repository.
SHIPPED_PRETRAINED = Path("pretrained")


@dataclass(frozen=True)
class StudioPaths:
    """Where the app keeps checkpoints (``pretrained``), datasets (``data``) and scratch files (``work``).

    ``data/demo`` holds the generated demo set, ``data/mvtec`` MVTec AD; ``work`` receives uploaded
    training images and exported GIFs.
    """

    pretrained: Path
    data: Path
    work: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> StudioPaths:
        """Read ``IKD_PRETRAINED_DIR`` (default ``pretrained``), ``IKD_DATA_DIR`` (default ``data``) and
        ``IKD_WORK_DIR`` (default ``runs/studio``). With ``IKD_STORAGE=DIR`` the defaults become ``DIR/pretrained``,
        ``DIR/data`` and ``DIR/work`` (the variables above still win)."""
        env = os.environ if environ is None else environ
        storage = env.get(STORAGE_ENV)
        base = Path(storage) if storage else None
        return cls(
            pretrained=Path(env.get(PRETRAINED_ENV) or (base / "pretrained" if base else SHIPPED_PRETRAINED)),
            data=Path(env.get(DATA_ENV) or (base / "data" if base else DEFAULT_DEMO_ROOT.parent)),
            work=Path(env.get(WORK_ENV) or (base / "work" if base else "runs/studio")),
        )

    @property
    def demo_root(self) -> Path:
        return self.data / DEFAULT_DEMO_ROOT.name

    @property
    def mvtec_root(self) -> Path:
        return self.data / DEFAULT_MVTEC_ROOT.name


# ------------------------------------------------------------------------------------------ names
def sanitize_name(name: str, fallback: str = "custom") -> str:
    """A plain file-name stem from any string: unsafe characters become ``_`` (never empty)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._-")
    safe = re.sub(r"\.{2,}", ".", safe)
    return safe[:100] or fallback
