"""UI-agnostic services behind the IKD Studio app: checkpoints, uploads, background training, caches.

Nothing here imports a UI toolkit; the Gradio app (``app.py``) is a thin layer over these functions, and
every user-facing problem is raised as an :class:`~ikd_core.errors.IKDError` whose message can be shown
as is.

Locations come from :class:`StudioPaths` (environment variables ``IKD_PRETRAINED_DIR``, ``IKD_DATA_DIR``
and ``IKD_WORK_DIR``), so tests and deployments can point the app somewhere else than the repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import queue
import re
import shutil
import stat
import tempfile
import threading
import time
import traceback
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .checkpoint import read_metadata, sidecar_path
from .data.mvtec import Sample, list_categories
from .data.sources import DEFAULT_DEMO_ROOT, DEFAULT_MVTEC_ROOT, DataSpec
from .data.transforms import IMAGE_EXTENSIONS
from .errors import CheckpointError, DataError, IKDError

log = logging.getLogger(__name__)

PRETRAINED_ENV = "IKD_PRETRAINED_DIR"
DATA_ENV = "IKD_DATA_DIR"
WORK_ENV = "IKD_WORK_DIR"

CHECKPOINT_SUFFIX = ".safetensors"
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")

#: Limits for uploaded good images (one zip or several files).
MAX_UPLOAD_FILES = 5000
MAX_UPLOAD_FILE_BYTES = 64 * 1024 * 1024
MAX_UPLOAD_TOTAL_BYTES = 2 * 1024**3
#: Largest accepted checkpoint upload and JSON sidecar.
MAX_CHECKPOINT_BYTES = 2 * 1024**3
MAX_SIDECAR_BYTES = 16 * 1024 * 1024
#: Inspected images larger than this (either side, pixels) are downscaled before scoring and display.
MAX_INSPECT_SIDE = 2048


# ------------------------------------------------------------------------------------------ paths
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
        ``IKD_WORK_DIR`` (default ``runs/studio``)."""
        env = os.environ if environ is None else environ
        return cls(
            pretrained=Path(env.get(PRETRAINED_ENV) or "pretrained"),
            data=Path(env.get(DATA_ENV) or DEFAULT_DEMO_ROOT.parent),
            work=Path(env.get(WORK_ENV) or "runs/studio"),
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


def unique_path(directory: str | os.PathLike[str], name: str) -> Path:
    """``directory/name``, or ``directory/<stem>-2<suffix>`` (``-3``, ...) if that is taken."""
    directory = Path(directory)
    path = directory / name
    stem, suffix = path.stem, path.suffix
    n = 2
    while path.exists() or sidecar_path(path).exists():
        path = directory / f"{stem}-{n}{suffix}"
        n += 1
    return path


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
        """Markdown summary: backbone, category, image size, data, training, metrics, date."""
        if not self.ok:
            return f"**{self.name}**: cannot be used: {self.error}"
        m = self.metadata
        data = m.get("data") or {}
        lines = [
            f"**{self.name}**",
            "",
            f"- category: `{self.category}` (data: {data.get('kind', '?')})",
            f"- backbone: `{self.backbone}`, image size {self.image_size} px",
            f"- trained: {m.get('epochs_completed', '?')} epochs on {m.get('n_train', '?')} good images, "
            f"{m.get('train_seconds', '?')} s on {m.get('device', '?')}",
            f"- created: {self.created}",
        ]
        metrics = self.metrics
        if metrics:
            from .metrics import METRIC_LABELS

            order = [k for k in METRIC_LABELS if k in metrics] + [k for k in metrics if k not in METRIC_LABELS]
            parts = [f"{METRIC_LABELS.get(k, k)} {_fmt(metrics[k])}" for k in order]
            lines.append(f"- test metrics: {', '.join(parts)}")
        else:
            lines.append("- test metrics: none (no labelled test set)")
        return "\n".join(lines)


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
    :func:`~ikd_core.predict.load_model`. Only a file that passes is moved in, under a new name if the
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
    stem = sanitize_name(Path(Path(name).name).stem, "uploaded")
    directory.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".import-", dir=directory))
    try:
        staged = stage / f"{stem}{CHECKPOINT_SUFFIX}"
        shutil.copyfile(upload, staged)
        if sidecar is not None:
            side = Path(sidecar)
            if side.stat().st_size > MAX_SIDECAR_BYTES:
                raise CheckpointError(f"{side.name}: metadata file too large")
            try:
                json.loads(side.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"{side.name}: not a valid JSON metadata file ({exc})") from exc
            shutil.copyfile(side, sidecar_path(staged))
        meta = read_metadata(staged)
        if validate_model:
            from .predict import load_model

            try:
                load_model(staged, device)
            except IKDError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means an unusable upload
                raise CheckpointError(f"{name}: cannot be loaded: {exc}") from exc
        target = unique_path(directory, staged.name)
        side_target = sidecar_path(target)
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        side_staged = sidecar_path(staged)
        side_staged.write_text(text, encoding="utf-8")
        os.replace(side_staged, side_target)
        os.replace(staged, target)
        return CheckpointInfo(target.name, target, meta)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ------------------------------------------------------------------------------------------ uploads
def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _check_member_name(name: str) -> PurePosixPath:
    """A zip member name as a relative path; :class:`DataError` if it could escape the target."""
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if (
        not norm
        or norm.startswith("/")
        or p.is_absolute()
        or (len(norm) > 1 and norm[1] == ":")
        or ".." in p.parts
        or "\x00" in norm
    ):
        raise DataError(f"refusing the archive: member {name!r} would be written outside the upload folder")
    return p


def _verify_image(path: Path, shown: str) -> None:
    from .data.transforms import load_image

    try:
        load_image(path)
    except DataError as exc:
        raise DataError(f"{shown}: not a usable image ({exc}); remove it and upload again") from exc


def extract_images(
    files: Iterable[str | os.PathLike[str]],
    target: str | os.PathLike[str],
    max_files: int = MAX_UPLOAD_FILES,
    max_file_bytes: int = MAX_UPLOAD_FILE_BYTES,
    max_total_bytes: int = MAX_UPLOAD_TOTAL_BYTES,
    verify: bool = True,
) -> list[Path]:
    """Copy image files, and the images inside zip archives, flat into the new folder ``target``.

    Safe by construction: zip members with absolute paths, ``..`` or links are refused (the whole
    upload, nothing is kept), only image extensions are taken (other members are skipped), and the
    number and sizes of files are limited (also while decompressing, against zip bombs). Each image is
    decoded once to check it. ``target`` must not exist yet; on any error it is removed.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=False)
    written: list[Path] = []
    total = 0
    used: set[str] = set()

    def out_name(name: str) -> Path:
        stem, suffix = Path(name).stem, Path(name).suffix.lower()
        base = sanitize_name(stem, "image")
        cand, n = f"{base}{suffix}", 2
        while cand.lower() in used:
            cand, n = f"{base}-{n}{suffix}", n + 1
        used.add(cand.lower())
        return target / cand

    def account(size: int, shown: str) -> None:
        nonlocal total
        if size > max_file_bytes:
            raise DataError(f"{shown} is larger than {max_file_bytes // 1024**2} MiB; downscale it")
        total += size
        if total > max_total_bytes:
            raise DataError(f"the upload is larger than {max_total_bytes // 1024**2} MiB in total")
        if len(written) >= max_files:
            raise DataError(f"too many images (limit {max_files})")

    try:
        for f in files:
            src = Path(f)
            if zipfile.is_zipfile(src):
                with zipfile.ZipFile(src) as zf:
                    infos = zf.infolist()
                    for info in infos:  # check every member before writing anything
                        _check_member_name(info.filename)
                        if stat.S_ISLNK(info.external_attr >> 16):
                            raise DataError(f"refusing the archive: member {info.filename!r} is a symbolic link")
                    for info in infos:
                        p = PurePosixPath(info.filename.replace("\\", "/"))
                        if info.is_dir() or not _is_image_name(p.name):
                            continue
                        if any(part.startswith(".") or part == "__MACOSX" for part in p.parts):
                            continue
                        shown = f"{src.name}:{info.filename}"
                        account(info.file_size, shown)
                        dest = out_name(p.name)
                        with zf.open(info) as fin, dest.open("wb") as fout:
                            copied = 0
                            while chunk := fin.read(1 << 20):
                                copied += len(chunk)
                                if copied > max_file_bytes or copied > info.file_size:
                                    raise DataError(f"{shown}: decompresses to more than it declares; refused")
                                fout.write(chunk)
                        if verify:
                            _verify_image(dest, shown)
                        written.append(dest)
                continue
            if not _is_image_name(src.name):
                raise DataError(
                    f"{src.name}: not an image or zip file (accepted: {', '.join(sorted(IMAGE_EXTENSIONS))}, .zip)"
                )
            account(src.stat().st_size, src.name)
            dest = out_name(src.name)
            shutil.copyfile(src, dest)
            if verify:
                _verify_image(dest, src.name)
            written.append(dest)
        if not written:
            raise DataError("the upload contains no images (png, jpg, bmp, tif, webp; zip archives of those)")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return written


def uploaded_data_spec(
    files: Sequence[str | os.PathLike[str]],
    work_dir: str | os.PathLike[str],
    category: str | None = None,
    **limits: Any,
) -> DataSpec:
    """Extract uploaded good images (files and/or zips) into a fresh folder under ``work_dir/uploads``
    and return the matching ``DataSpec(kind="folder")``.

    ``category`` (default: the name of the first upload) names the data and the checkpoint.
    """
    if not files:
        raise DataError("upload good images first (several image files or one zip of them)")
    name = sanitize_name(category or Path(Path(str(files[0])).name).stem, "custom")
    folder = Path(work_dir) / "uploads" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}-{name}"
    good = folder / "good"
    folder.mkdir(parents=True, exist_ok=False)
    try:
        extract_images(files, good, **limits)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return DataSpec(kind="folder", category=name, good_dir=str(good))


def discard_upload(spec: DataSpec | None, work_dir: str | os.PathLike[str]) -> bool:
    """Remove the folder :func:`uploaded_data_spec` extracted for ``spec`` (once training is over).

    Only folders directly under ``work_dir/uploads`` are removed; any other spec is left alone. True if
    something was removed.
    """
    if spec is None or spec.kind != "folder" or not spec.good_dir:
        return False
    uploads = (Path(work_dir) / "uploads").resolve()
    folder = Path(spec.good_dir).resolve().parent
    if folder.parent != uploads or not folder.is_dir():
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def check_training_data(spec: DataSpec, image_size: int) -> tuple[Any, Any]:
    """The (train, test-or-None) datasets of ``spec``, checked before any training starts.

    Besides the layout checks of :func:`~ikd_core.data.sources.build_datasets` (missing or empty folders,
    unsafe category names, masks missing or of another size), every image and mask is opened once, header
    only, so a non-image file with an image extension or a decompression bomb is reported here by name
    instead of failing mid-epoch. Raises :class:`DataError`.
    """
    from .data.mvtec import image_size_of
    from .data.sources import build_datasets

    train_ds, test_ds = build_datasets(spec, image_size)
    for ds in (train_ds, test_ds):
        for sample in getattr(ds, "samples", []) if ds is not None else []:
            image_size_of(Path(sample.path))
            if sample.mask_path:
                image_size_of(Path(sample.mask_path))
    return train_ds, test_ds


def load_inspect_image(path: str | os.PathLike[str], max_side: int = MAX_INSPECT_SIDE) -> tuple[Any, str | None]:
    """An uploaded image as RGB for scoring and display, and a note when it was downscaled.

    Images larger than ``max_side`` pixels a side are downscaled (keeping the aspect ratio); the EXIF
    orientation is applied. Anything that is not a usable image (no image data, truncated, a decompression
    bomb, ...) raises :class:`DataError` with a clear message.
    """
    from .data.transforms import load_image

    try:
        img = load_image(path, max_side=max_side)
    except DataError as exc:  # name the file as the user knows it, not by its server-side temporary path
        raise DataError(str(exc).replace(str(path), Path(path).name)) from exc
    note = None
    with contextlib.suppress(Exception):
        from PIL import Image

        with Image.open(path) as head:
            w, h = head.size
        if max(w, h) > max_side:
            note = f"{Path(path).name} is {w}x{h} px: scored and shown at {img.width}x{img.height} px"
    return img, note


def data_spec_for_checkpoint(meta: dict[str, Any], paths: StudioPaths) -> DataSpec | None:
    """The data a checkpoint was trained on, re-rooted for this machine (``None`` if unknown).

    Demo data lives under ``paths.demo_root``; MVTec AD under the recorded root when it exists, else
    ``paths.mvtec_root``; folder data as recorded.
    """
    data = meta.get("data") or {}
    if not isinstance(data, dict) or "kind" not in data:
        return None
    try:
        spec = DataSpec.from_dict(data)
    except TypeError:
        return None
    if spec.kind == "demo":
        spec.root = str(paths.demo_root)
    elif spec.kind == "mvtec":
        recorded = Path(spec.root) if spec.root else None
        if recorded is None or not (recorded / spec.category).is_dir():
            spec.root = str(paths.mvtec_root)
    return spec


def mvtec_missing(root: str | os.PathLike[str], category: str | None = None) -> bool:
    """True when MVTec AD (or ``category`` of it) is not under ``root``."""
    cats = list_categories(root)
    return not cats if category is None else category not in cats


# ------------------------------------------------------------------------------------------ test-set lookup
class SampleIndex:
    """Finds the test-set sample (and so its ground-truth mask) of an image file by its content.

    Files are matched by size first and SHA-256 second, so renamed copies (e.g. uploads) are found.
    """

    def __init__(self, samples: Iterable[Sample]) -> None:
        self._by_size: dict[int, list[Sample]] = {}
        self._hashes: dict[str, str] = {}
        for s in samples:
            with contextlib.suppress(OSError):
                self._by_size.setdefault(os.path.getsize(s.path), []).append(s)

    @staticmethod
    def _sha(path: str | os.PathLike[str]) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def lookup(self, path: str | os.PathLike[str]) -> Sample | None:
        """The sample with the same bytes as ``path``, or ``None``."""
        try:
            cands = self._by_size.get(os.path.getsize(path), [])
            if not cands:
                return None
            want = self._sha(path)
            for s in cands:
                if s.path not in self._hashes:
                    self._hashes[s.path] = self._sha(s.path)
                if self._hashes[s.path] == want:
                    return s
        except OSError:
            return None
        return None


# ------------------------------------------------------------------------------------------ predictors
class PredictorCache:
    """A small thread-safe LRU of loaded :class:`~ikd_core.predict.Predictor`, keyed by checkpoint path,
    modification time, size and device (a rewritten file is reloaded)."""

    def __init__(self, maxsize: int = 3, loader: Callable[[Path, str], Any] | None = None) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[str, int, int, str], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int, int, str], threading.Lock] = {}
        self._loader = loader

    @staticmethod
    def key(path: str | os.PathLike[str], device: str = "cpu") -> tuple[str, int, int, str]:
        p = Path(path).resolve()
        st = p.stat()
        return (str(p), st.st_mtime_ns, st.st_size, str(device))

    def get(self, path: str | os.PathLike[str], device: str = "cpu") -> Any:
        """The predictor of ``path`` (loaded on first use; :class:`CheckpointError` if it cannot be)."""
        try:
            key = self.key(path, device)
        except OSError as exc:
            raise CheckpointError(f"checkpoint {Path(path).name} not found") from exc
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            predictor = self._load(Path(key[0]), device)
            with self._lock:
                self._items[key] = predictor
                self._items.move_to_end(key)
                while len(self._items) > self.maxsize:
                    self._items.popitem(last=False)
                self._loading.pop(key, None)
            return predictor

    def _load(self, path: Path, device: str) -> Any:
        if self._loader is not None:
            return self._loader(path, device)
        from .predict import Predictor

        return Predictor.from_checkpoint(path, device)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


# ------------------------------------------------------------------------------------------ training
@dataclass
class JobEvent:
    """One message from a :class:`TrainingJob`: ``kind`` is ``status``, ``progress`` or ``end``."""

    kind: str
    message: str = ""
    progress: Any = None  # ikd_core.train.Progress for kind == "progress"


@dataclass
class Curves:
    """ROC / PRO curves of a trained model on its test set (empty arrays where undefined)."""

    image_roc: tuple[Any, Any]
    pixel_roc: tuple[Any, Any]
    pro: tuple[Any, Any]
    metrics: dict[str, float]


class TrainingJob:
    """Runs :func:`ikd_core.train.train` in a background thread.

    Progress arrives as :class:`JobEvent` objects on :attr:`events` (``Progress`` reports during
    training, ``status`` texts between phases, one ``end`` last). :meth:`stop` sets :attr:`stop_event`;
    training then ends at the next step and nothing is written. When done, :attr:`state` is
    ``finished``, ``cancelled`` or ``failed``, with :attr:`result` / :attr:`curves` or :attr:`error`.
    """

    def __init__(
        self,
        spec: DataSpec,
        config: Any,
        out_path: str | os.PathLike[str] | None,
        curves: bool = True,
        device: Any = None,
        datasets: tuple[Any, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.datasets = datasets  # (train, test) already built and checked, e.g. by check_training_data
        self.config = config
        self.out_path = Path(out_path) if out_path is not None else None
        self.want_curves = curves
        self.device = device
        self.events: queue.Queue[JobEvent] = queue.Queue()
        self.stop_event = threading.Event()
        self.state = "pending"  # pending | running | finished | cancelled | failed
        self.result: Any = None
        self.curves: Curves | None = None
        self.error: str | None = None
        self.losses: list[tuple[int, float]] = []
        self.last_progress: Any = None
        self.n_train = 0
        self.n_test = 0
        self._thread = threading.Thread(target=self._run, name="ikd-training", daemon=True)

    # public API -----------------------------------------------------------------------------
    def start(self) -> TrainingJob:
        self.state = "running"
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the run to stop at the next step; no checkpoint is written for a stopped run."""
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it has finished."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self.state in ("finished", "cancelled", "failed")

    def iter_events(self, poll: float = 0.5) -> Iterable[JobEvent | None]:
        """Events as they come; ``None`` every ``poll`` seconds without one; stops after ``end``."""
        while True:
            try:
                ev = self.events.get(timeout=poll)
            except queue.Empty:
                if self.done and self.events.empty():
                    return
                yield None
                continue
            yield ev
            if ev.kind == "end":
                return

    # worker ---------------------------------------------------------------------------------
    def _status(self, message: str) -> None:
        self.events.put(JobEvent("status", message))

    def _on_progress(self, p: Any) -> None:
        self.last_progress = p
        if p.phase == "train":
            self.losses.append(((p.epoch - 1) * p.steps_per_epoch + p.step, float(p.loss)))
        self.events.put(JobEvent("progress", p.phase, p))

    def _run(self) -> None:
        try:
            from .data.sources import build_datasets
            from .train import train

            self._status("preparing data")
            if self.datasets is not None:
                train_ds, test_ds = self.datasets
            else:
                train_ds, test_ds = build_datasets(self.spec, self.config.image_size)
            self.n_train = len(train_ds)  # type: ignore[arg-type]
            self.n_test = len(test_ds) if test_ds is not None else 0  # type: ignore[arg-type]
            if self.stop_event.is_set():
                self.state = "cancelled"
                return
            self._status(f"building the {self.config.backbone} teacher and student")
            result = train(
                train_ds, test_ds, self.config, out_path=self.out_path, category=self.spec.category,
                data_info=self.spec.to_dict(), callback=self._on_progress, should_stop=self.stop_event.is_set,
                device=self.device,
            )
            self.result = result
            if result.cancelled:
                self.state = "cancelled"
                return
            if self.want_curves and result.test_outputs is not None and result.metrics:
                self._status("computing ROC and PRO curves")
                self.curves = curves_from_outputs(result.test_outputs)
            self.state = "finished"
        except IKDError as exc:
            self.error = str(exc)
            self.state = "failed"
        except Exception as exc:  # noqa: BLE001 - reported to the user, never kills the server
            log.error("training failed:\n%s", traceback.format_exc())
            self.error = f"training failed: {type(exc).__name__}: {exc}"
            self.state = "failed"
        finally:
            if self.state == "running":
                self.state = "failed"
                self.error = self.error or "training ended unexpectedly"
            self.events.put(JobEvent("end", self.state))


def prune_files(folder: str | os.PathLike[str], keep: int) -> None:
    """Delete all but the ``keep`` newest files of ``folder`` (e.g. exported GIFs, which Gradio has
    already copied into its own cache by the time they are shown)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    files = sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)


def curves_from_outputs(res: dict[str, Any]) -> Curves:
    """Curves and metrics from :func:`ikd_core.train.predict_maps` outputs."""
    from .metrics import image_roc_curve, pixel_roc_curve, pro_curve
    from .train import compute_metrics

    known = res["labels"] >= 0
    scores, labels = res["scores"][known], res["labels"][known]
    maps, masks = res["maps"][known], res["masks"][known]
    fpr, tpr, _ = image_roc_curve(scores, labels)
    has_masks = bool(masks.sum() > 0)
    if has_masks:
        pfpr, ptpr, _ = pixel_roc_curve(maps, masks)
        ofpr, opro = pro_curve(maps, masks)
    else:
        pfpr = ptpr = ofpr = opro = []
    return Curves((fpr, tpr), (pfpr, ptpr), (ofpr, opro), compute_metrics(res))


class JobRegistry:
    """Training jobs by owner (e.g. a browser session), so that Stop only stops the caller's run."""

    def __init__(self) -> None:
        self._jobs: dict[str, TrainingJob] = {}
        self._lock = threading.Lock()

    def put(self, owner: str, job: TrainingJob) -> None:
        with self._lock:
            self._jobs[owner] = job

    def get(self, owner: str) -> TrainingJob | None:
        with self._lock:
            return self._jobs.get(owner)

    def stop(self, owner: str) -> bool:
        """Stop the owner's running job; False if it has none."""
        job = self.get(owner)
        if job is None or job.done:
            return False
        job.stop()
        return True

    def discard(self, owner: str, job: TrainingJob) -> None:
        with self._lock:
            if self._jobs.get(owner) is job:
                del self._jobs[owner]
