"""The checkpoint store: safe names, listing, metadata summaries and validated imports."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import read_metadata, sidecar_path
from ..errors import CheckpointError, IKDError
from ..fileio import atomic_write_bytes
from ..recipes import method_parts
from .paths import sanitize_name
from .validate import escape_markdown

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIX = ".safetensors"
#: Suffix of the hidden marker ``.<name>.reserved`` that claims a checkpoint name (see reserve_checkpoint_path).
RESERVED_SUFFIX = ".reserved"
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
#: Largest accepted checkpoint upload and JSON sidecar.
MAX_CHECKPOINT_BYTES = 2 * 1024**3
MAX_SIDECAR_BYTES = 16 * 1024 * 1024


def check_checkpoint_name(name: str) -> str:
    """Return ``name`` if it is a plain ``*.safetensors`` file name, else raise :class:`CheckpointError`.

    Refused: empty names, absolute paths, path separators, ``..``, hidden files and other suffixes.
    """
    if not isinstance(name, str) or not name.strip():
        raise CheckpointError("no checkpoint chosen; pick one from the list or train / upload one")
    name = name.strip()
    if (
        "/" in name
        or "\\" in name
        or ".." in name
        or "\x00" in name
        or os.path.isabs(name)
        or not _NAME_RE.fullmatch(name)
    ):
        raise CheckpointError(
            f"invalid checkpoint name {name!r}: use a plain file name from the list such as "
            "'demo_texture-efficientnet_lite0.safetensors' (no folders or '..')"
        )
    if not name.lower().endswith(CHECKPOINT_SUFFIX):
        raise CheckpointError(f"{name}: only .safetensors checkpoints are accepted")
    return name


def resolve_checkpoint(name: str, directory: str | os.PathLike[str]) -> Path:
    """The path of checkpoint ``name`` inside ``directory``; never a path outside it.

    Raises :class:`CheckpointError` for unsafe names or missing files.
    """
    name = check_checkpoint_name(name)
    root = Path(directory).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise CheckpointError(f"invalid checkpoint name {name!r}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {name} not found in {directory}; refresh the list")
    return path


def _reservation_marker(path: Path) -> Path:
    return path.with_name(f".{path.name}{RESERVED_SUFFIX}")


def _taken(path: Path) -> bool:
    return path.exists() or sidecar_path(path).exists() or _reservation_marker(path).exists()


def _candidates(directory: Path, name: str):  # noqa: ANN202 - a generator of paths
    path = directory / name
    stem, suffix = path.stem, path.suffix
    yield path
    n = 2
    while True:
        yield directory / f"{stem}-{n}{suffix}"
        n += 1


def unique_path(directory: str | os.PathLike[str], name: str) -> Path:
    """``directory/name``, or ``directory/<stem>-2<suffix>`` (``-3``, ...) if that is taken (file, ``.json``
    sidecar or a reservation by :func:`reserve_checkpoint_path`). Not atomic: use :func:`reserve_checkpoint_path`
    when the file is written later."""
    return next(p for p in _candidates(Path(directory), name) if not _taken(p))


def reserve_checkpoint_path(directory: str | os.PathLike[str], name: str) -> Path:
    """Atomically claim a free checkpoint name in ``directory`` and return its path (not created).

    ``name``, else ``<stem>-2<suffix>``, ``-3``, ...: the first one without a file, a ``.json`` sidecar or a
    reservation. The claim is a hidden marker ``.<name>.reserved`` created with ``O_CREAT | O_EXCL``, so two
    threads or processes never get the same path. Call :func:`release_checkpoint_path` once the file is written
    (or abandoned).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for path in _candidates(directory, name):
        if path.exists() or sidecar_path(path).exists():
            continue
        try:
            fd = os.open(_reservation_marker(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        if path.exists() or sidecar_path(path).exists():  # written between the check and the claim
            _reservation_marker(path).unlink(missing_ok=True)
            continue
        return path
    raise AssertionError("unreachable")  # pragma: no cover - the candidates never end


def release_checkpoint_path(path: str | os.PathLike[str]) -> None:
    """Drop the reservation of ``path`` made by :func:`reserve_checkpoint_path` (no error if there is none)."""
    _reservation_marker(Path(path)).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ checkpoints
@dataclass
class CheckpointInfo:
    """A checkpoint file and its metadata (``error`` instead when it cannot be read)."""

    name: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def category(self) -> str:
        return str(self.metadata.get("category", "?"))

    @property
    def backbone(self) -> str:
        return str(self.metadata.get("backbone", "?"))

    @property
    def image_size(self) -> int | None:
        size = self.metadata.get("image_size")
        return int(size) if size is not None else None

    @property
    def metrics(self) -> dict[str, float]:
        m = self.metadata.get("metrics") or {}
        return {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}

    @property
    def created(self) -> str:
        return str(self.metadata.get("created", "?"))

    def label(self) -> str:
        """Short text for a choice list."""
        if not self.ok:
            return f"{self.name} (unreadable)"
        return f"{self.name} ({self.category}, {self.backbone}, {self.image_size} px)"

    def describe(self) -> str:
        """Markdown summary: backbone, category, image size, data, training, metrics, date.

        Every value read from the metadata is inert (numbers, or text in code spans that cannot be closed from
        inside), so a hostile checkpoint cannot inject Markdown or HTML."""

        if not self.ok:
            return f"**{escape_markdown(self.name)}**: cannot be used: {escape_markdown(self.error, 400)}"
        m = self.metadata
        data = m.get("data") if isinstance(m.get("data"), dict) else {}
        tc = m.get("train_config") if isinstance(m.get("train_config"), dict) else {}
        method = ", ".join(method_parts(tc)) or "the paper's (IKD loss, forward student, product of levels)"
        lines = [
            f"**{escape_markdown(self.name)}**",
            "",
            f"- category: {_code(self.category)} (data: {_code(data.get('kind', '?'))})",
            f"- backbone: {_code(self.backbone)}, image size {_value(self.image_size)} px",
            f"- trained: {_value(m.get('epochs_completed', '?'))} epochs on {_value(m.get('n_train', '?'))} good "
            f"images, {_value(m.get('train_seconds', '?'))} s on {_code(m.get('device', '?'))}",
            f"- method: {_code(method)}",
            f"- created: {_code(self.created)}",
        ]
        metrics = self.metrics
        if metrics:
            from ..metrics import METRIC_LABELS

            order = [k for k in METRIC_LABELS if k in metrics] + [k for k in metrics if k not in METRIC_LABELS]
            parts = [f"{escape_markdown(METRIC_LABELS.get(k, k), 60)} {_fmt(metrics[k])}" for k in order]
            lines.append(f"- test metrics: {', '.join(parts)}")
        else:
            lines.append("- test metrics: none (no labelled test set)")
        return "\n".join(lines)


def _code(value: object, max_len: int = 100) -> str:
    """``value`` as one Markdown code span (inert: no Markdown or HTML inside), on one line, shortened."""
    text = " ".join(str(value).split())
    if len(text) > max_len:
        text = text[: max_len - 1] + "\u2026"
    run = max((len(r) for r in re.findall(r"`+", text)), default=0)
    fence = "`" * (run + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or run else ""
    return f"{fence}{pad}{text}{pad}{fence}" if text else "`?`"


def _value(value: object) -> str:
    """A number as text; anything else as a code span."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return "?" if value == "?" else _code(value)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Metadata of one checkpoint (header only; tensors are not loaded)."""
    path = Path(path)
    try:
        return CheckpointInfo(path.name, path, read_metadata(path))
    except IKDError as exc:
        return CheckpointInfo(path.name, path, {}, str(exc))
    except OSError as exc:
        return CheckpointInfo(path.name, path, {}, f"cannot read: {exc}")


def list_checkpoints(directory: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """Every ``*.safetensors`` directly in ``directory`` (hidden and temporary files, and links that lead
    outside ``directory``, skipped), by name."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    root = directory.resolve()
    paths = sorted(
        p for p in directory.iterdir()
        if p.is_file() and p.suffix == CHECKPOINT_SUFFIX and not p.name.startswith(".")
        and _NAME_RE.fullmatch(p.name) and p.resolve().parent == root
    )
    return [checkpoint_info(p) for p in paths]


def default_checkpoint(infos: Sequence[CheckpointInfo], preferred: Sequence[str] = ()) -> str | None:
    """The first usable name of ``preferred`` present in ``infos``, else the first usable one."""
    usable = [i.name for i in infos if i.ok]
    for name in preferred:
        if name in usable:
            return name
    return usable[0] if usable else None


def import_checkpoint(
    upload: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    sidecar: str | os.PathLike[str] | None = None,
    original_name: str | None = None,
    device: str = "cpu",
    validate_model: bool = True,
) -> CheckpointInfo:
    """Copy an uploaded checkpoint (+ optional ``.json`` sidecar) into ``directory`` after checking it.

    The file is staged in a private temporary folder, then checked with
    :func:`~ikd_core.checkpoint.read_metadata` and (``validate_model``) a full
    :func:`~ikd_core.loading.load_model`. Only a file that passes is moved in, under a new name if the
    name is taken, so a bad upload never replaces or touches existing files.
    """
    upload = Path(upload)
    directory = Path(directory)
    name = original_name or upload.name
    if not name.lower().endswith(CHECKPOINT_SUFFIX):
        raise CheckpointError(
            f"{Path(name).name}: only .safetensors checkpoints are accepted (.pt/.ckpt/.pth files are pickles "
            "and are never loaded)"
        )
    if not upload.is_file():
        raise CheckpointError(f"uploaded file {name} is missing; upload it again")
    if upload.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{name} is larger than {MAX_CHECKPOINT_BYTES // 1024**2} MiB")
    shown = Path(name).name
    stem = sanitize_name(Path(shown).stem, "uploaded")
    if sidecar is not None and Path(sidecar).stat().st_size > MAX_SIDECAR_BYTES:
        raise CheckpointError(f"{Path(sidecar).name}: metadata file too large")
    # The metadata is checked on the upload itself, so a refused file never reaches ``directory``.
    meta = read_metadata(upload, sidecar=sidecar, name=shown)
    directory.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".import-", dir=directory))
    target: Path | None = None
    try:
        staged = stage / f"{stem}{CHECKPOINT_SUFFIX}"
        shutil.copyfile(upload, staged)
        side_staged = sidecar_path(staged)
        side_staged.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        meta = read_metadata(staged)  # the copy, as it will be used (the sidecar now mirrors the checked metadata)
        if validate_model:
            from ..loading import load_model

            try:
                load_model(staged, device)
            except IKDError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means an unusable upload
                raise CheckpointError(f"{shown}: cannot be loaded: {exc}") from exc
        target = reserve_checkpoint_path(directory, staged.name)
        os.replace(side_staged, sidecar_path(target))
        os.replace(staged, target)
        return CheckpointInfo(target.name, target, meta)
    finally:
        if target is not None:
            release_checkpoint_path(target)
        shutil.rmtree(stage, ignore_errors=True)


def seed_checkpoints(source: str | os.PathLike[str], directory: str | os.PathLike[str]) -> list[str]:
    """Copy the checkpoints of ``source`` (with their ``.json`` sidecars) that ``directory`` lacks, e.g. the shipped
    ones into persistent storage on first start. Existing files are never replaced. Returns the names copied."""
    source, directory = Path(source), Path(directory)
    if not source.is_dir() or (directory.exists() and directory.resolve() == source.resolve()):
        return []
    directory.mkdir(parents=True, exist_ok=True)
    copied = []
    for info in list_checkpoints(source):
        target = directory / info.name
        if not info.ok or target.exists():
            continue
        side = sidecar_path(info.path)
        if side.is_file():
            atomic_write_bytes(sidecar_path(target), side.read_bytes())
        atomic_write_bytes(target, info.path.read_bytes())
        copied.append(info.name)
    return copied
