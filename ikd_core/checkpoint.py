"""Checkpoints: the student's tensors in safetensors plus JSON metadata, written atomically.

The metadata is embedded in the safetensors header (key ``ikd``) so a single uploaded file is
complete, and mirrored in a ``.json`` sidecar for people and tools. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_bytes
from torch import Tensor

from . import __version__
from .errors import CheckpointError

FORMAT = "ikd-studio-checkpoint/1"
META_KEY = "ikd"
MAX_HEADER_BYTES = 16 * 1024 * 1024


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
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


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``x.safetensors`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


def save_checkpoint(
    path: str | os.PathLike[str], student_state: dict[str, Tensor], metadata: dict[str, Any]
) -> Path:
    """Save the student and its metadata; the previous file stays intact if anything fails."""
    meta = {"format": FORMAT, "version": __version__, **metadata}
    text = json.dumps(meta, sort_keys=True, allow_nan=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in student_state.items()}
    data = save_bytes(tensors, metadata={META_KEY: text})
    path = atomic_write_bytes(path, data)
    atomic_write_bytes(sidecar_path(path), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return path


def _check_is_safetensors(path: Path) -> None:
    """Refuse anything that is not a plausible safetensors file before a parser sees it."""
    try:
        with path.open("rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from exc
    if len(head) < 9:
        raise CheckpointError(f"{path.name} is not a safetensors checkpoint (file too short)")
    header_len = int.from_bytes(head[:8], "little")
    if head[8:9] != b"{" or header_len > MAX_HEADER_BYTES or header_len + 8 > path.stat().st_size:
        kind = "a pickle (e.g. a .pt/.ckpt file)" if head[:1] == b"\x80" or head[:2] == b"PK" else "not safetensors"
        raise CheckpointError(
            f"{path.name} is {kind}; only .safetensors checkpoints made by IKD Studio are loaded "
            "(pickled files are refused because they can run code)"
        )


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Metadata of a checkpoint (embedded, else the ``.json`` sidecar), without loading tensors."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(
            f"{path.name}: only .safetensors checkpoints are accepted (.pt/.ckpt/.pth are pickles "
            "and are never loaded)"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    _check_is_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name} is not a valid safetensors file: {exc}") from exc
    if raw is None:
        side = sidecar_path(path)
        if not side.is_file():
            raise CheckpointError(f"{path.name} has no IKD metadata and no {side.name} beside it")
        raw = side.read_text(encoding="utf-8")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path.name}: metadata is not valid JSON ({exc.msg})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path.name}: not an IKD Studio checkpoint (format {meta.get('format')!r})")
    return meta


def load_student_state(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Tensors of a checkpoint (safetensors only)."""
    path = Path(path)
    _check_is_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no iter
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path.name} is truncated or corrupt: {exc}") from exc


def check_state_matches(
    state: dict[str, Tensor], expected: dict[str, Tensor], name: str, describe: Callable[[], str]
) -> None:
    """Fail clearly when tensors do not fit the model the metadata describes."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    bad = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or bad:
        detail = []
        if missing:
            detail.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
        if extra:
            detail.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        if bad:
            k = bad[0]
            detail.append(f"{k} is {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}")
        raise CheckpointError(f"{name} does not match its metadata ({describe()}): {'; '.join(detail)}")
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{name}: tensor {k} holds NaN or inf")
