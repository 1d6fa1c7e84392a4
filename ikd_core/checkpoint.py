"""Checkpoints: the student's tensors in safetensors plus JSON metadata, written atomically.

The metadata is embedded in the safetensors header (key ``ikd``) so a single uploaded file is
complete, and mirrored in a ``.json`` sidecar for people and tools. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_bytes
from torch import Tensor

from . import __version__
from .backbones import BACKBONES
from .errors import CheckpointError
from .fileio import atomic_write_bytes
from .segmentation import SCORE_MAPS, SEGMENT_MAPS

FORMAT = "ikd-studio-checkpoint/1"
META_KEY = "ikd"
MAX_HEADER_BYTES = 16 * 1024 * 1024

#: Model input sizes a checkpoint may declare. The upper bound is what the studio can train; an operator raises it
#: with ``IKD_MAX_IMAGE_SIZE`` (a larger size makes every prediction slow and memory hungry).
MIN_IMAGE_SIZE = 16
DEFAULT_MAX_IMAGE_SIZE = 512
MAX_IMAGE_SIZE_ENV = "IKD_MAX_IMAGE_SIZE"
#: Bounds on checkpoint metadata: the whole JSON text, each string, the category, nesting depth.
MAX_METADATA_BYTES = 1024 * 1024
MAX_METADATA_STRING = 10_000
MAX_CATEGORY_CHARS = 100
MAX_METADATA_DEPTH = 16
DATA_KINDS = ("demo", "mvtec", "folder")
STUDENT_KINDS = ("forward", "reverse")
MAX_SCORE_TOPK = 1_000_000


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


def max_image_size() -> int:
    """The largest model input size a checkpoint may declare: ``IKD_MAX_IMAGE_SIZE``, else 512."""
    return _env_max_image_size()


def _env_max_image_size() -> int:
    raw = os.environ.get(MAX_IMAGE_SIZE_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_SIZE
    try:
        value = int(raw)
    except ValueError as exc:
        raise CheckpointError(f"{MAX_IMAGE_SIZE_ENV}={raw!r} is not a whole number of pixels") from exc
    return max(value, MIN_IMAGE_SIZE)


def _is_number(value: object) -> bool:
    """A JSON number that a float can hold (a 400-digit integer is not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _check_json_value(value: object, where: str, name: str, depth: int = 0, allow_nan: bool = False) -> None:
    """Only JSON values: bounded strings, finite numbers, bounded nesting."""
    if depth > MAX_METADATA_DEPTH:
        raise CheckpointError(f"{name}: metadata is nested too deeply at {where}")
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not (math.isfinite(value) or (allow_nan and math.isnan(value))):
            raise CheckpointError(f"{name}: metadata {where} is {value}, not a finite number")
    elif isinstance(value, str):
        if len(value) > MAX_METADATA_STRING:
            raise CheckpointError(f"{name}: metadata {where} is a string of {len(value)} characters "
                                  f"(limit {MAX_METADATA_STRING})")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]", name, depth + 1, allow_nan)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or len(key) > 200:
                raise CheckpointError(f"{name}: metadata {where} has an invalid key")
            _check_json_value(item, f"{where}.{key}", name, depth + 1, allow_nan)
    else:
        raise CheckpointError(f"{name}: metadata {where} is a {type(value).__name__}, not a JSON value")


def _flat_dict(meta: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    """``meta[key]`` as a dict of JSON scalars and lists of scalars (``{}`` if absent)."""
    value = meta.get(key, {})
    if not isinstance(value, dict):
        raise CheckpointError(f"{name}: metadata {key} must be an object, not {type(value).__name__}")
    for k, v in value.items():
        items = v if isinstance(v, list) else [v]
        if any(isinstance(x, (dict, list)) for x in items):
            raise CheckpointError(f"{name}: metadata {key}.{k} must be a number, string, boolean or list of those")
    return value


def _int_list(meta: dict[str, Any], key: str, name: str) -> None:
    value = meta.get(key)
    if value is not None and (not isinstance(value, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in value)):
        raise CheckpointError(f"{name}: metadata {key} must be a list of whole numbers")


def _check_train_config(tcfg: dict[str, Any], name: str) -> None:
    """The training settings a loaded model is rebuilt from (the rest is only recorded)."""
    topk = tcfg.get("score_topk", 1)
    if not isinstance(topk, int) or isinstance(topk, bool) or not 1 <= topk <= MAX_SCORE_TOPK:
        raise CheckpointError(f"{name}: metadata train_config.score_topk must be a whole number in 1-{MAX_SCORE_TOPK}")
    for key, allowed in (("student", STUDENT_KINDS), ("combine", ("product", "sum")), ("segment_map", SEGMENT_MAPS),
                         ("score_map", SCORE_MAPS)):
        if key in tcfg and tcfg[key] not in allowed:
            raise CheckpointError(f"{name}: metadata train_config.{key} must be one of {', '.join(allowed)}")
    sigma = tcfg.get("sigma", 4.0)
    if not (_is_number(sigma) and math.isfinite(sigma) and 0 <= sigma <= 64):
        raise CheckpointError(f"{name}: metadata train_config.sigma must be a number in 0-64")
    ood = tcfg.get("ood_penalty", 0.0)
    if not (_is_number(ood) and math.isfinite(ood) and 0 <= ood <= 1e6):
        raise CheckpointError(f"{name}: metadata train_config.ood_penalty must be a number in 0-1e6")
    for key in ("feature_pool", "level_norm", "denoise", "segment"):
        if not isinstance(tcfg.get(key, False), bool):
            raise CheckpointError(f"{name}: metadata train_config.{key} must be true or false")
    if tcfg.get("score_map", "map") != "map" and not (tcfg.get("segment") and tcfg.get("segment_map") == "fused"):
        raise CheckpointError(f"{name}: metadata train_config: a score from the distillation map needs the fused map")
    if tcfg.get("segment") and tcfg.get("level_norm"):
        raise CheckpointError(f"{name}: metadata train_config: level normalisation does not apply with a segmentation "
                              "head")
    if tcfg.get("level_norm") and tcfg.get("combine", "product") == "product":
        raise CheckpointError(f"{name}: metadata train_config: level normalisation needs combine 'sum'")


def _check_level_normalization(value: object, name: str, key: str = "level_normalization",
                               length: int | None = None) -> None:
    """``level_normalization`` (``fusion_normalization``): ``lo`` and ``hi`` lists of finite numbers of one length
    (one per level; ``length`` when given)."""
    if value is None:
        return
    ok = isinstance(value, dict) and all(
        isinstance(value.get(k), list) and 0 < len(value[k]) <= 16 and len(value[k]) == (length or len(value[k]))
        and all(_is_number(x) and math.isfinite(x) for x in value[k]) for k in ("lo", "hi"))
    if not ok or len(value["lo"]) != len(value["hi"]):  # type: ignore[index]
        raise CheckpointError(f"{name}: metadata {key} must hold lo and hi lists of "
                              f"{f'{length} ' if length else ''}finite numbers")


def _check_scale(norm: dict[str, Any], name: str, hi_key: str, lo_key: str) -> None:
    """``norm[hi_key]`` and ``norm[lo_key]`` are finite numbers, the first above the second."""
    threshold, lo = norm.get(hi_key), norm.get(lo_key)
    if not (_is_number(threshold) and _is_number(lo) and math.isfinite(threshold) and math.isfinite(lo)
            and threshold > lo):
        raise CheckpointError(
            f"{name}: score normalisation in its metadata is invalid ({hi_key} {str(threshold)[:40]}, "
            f"{lo_key} {str(lo)[:40]}); the file is damaged or was not made by IKD Studio"
        )


def validate_metadata(meta: dict[str, Any], name: str, max_image_size: int | None = None) -> dict[str, Any]:
    """Check checkpoint metadata against the schema IKD Studio writes; return it unchanged.

    Required: ``backbone`` (a known backbone), ``image_size`` (whole number in ``MIN_IMAGE_SIZE`` ..
    ``max_image_size``, default :func:`max_image_size`), ``score_normalization`` (finite ``threshold`` > ``lo``).
    Optional but typed: ``metrics`` (name -> number; NaN means "n/a"), ``category`` (<= 100 characters),
    ``data`` (``kind`` demo/mvtec/folder, string values), ``train_config`` / ``teacher`` (flat objects),
    ``levels`` / ``channels`` (whole numbers). Everywhere: JSON values only, finite numbers, strings up to
    10 000 characters, 1 MB of JSON in all. Raises :class:`CheckpointError` with a one-line message.
    """

    limit = _env_max_image_size() if max_image_size is None else int(max_image_size)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{name}: metadata is not a JSON object")
    if meta.get("format", FORMAT) != FORMAT:
        raise CheckpointError(f"{name}: not an IKD Studio checkpoint (format {str(meta.get('format'))[:40]!r})")
    try:
        size = len(json.dumps(meta, allow_nan=True).encode())
    except (TypeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{name}: metadata is not plain JSON ({type(exc).__name__})") from exc
    if size > MAX_METADATA_BYTES:
        raise CheckpointError(f"{name}: metadata is {size} bytes (limit {MAX_METADATA_BYTES})")
    for key in ("backbone", "image_size", "score_normalization"):
        if key not in meta:
            raise CheckpointError(f"{name}: metadata lacks '{key}'; the file was not made by IKD Studio")
    backbone = meta["backbone"]
    if not isinstance(backbone, str) or backbone not in BACKBONES:
        raise CheckpointError(f"{name}: unknown backbone {str(backbone)[:40]!r} in its metadata "
                              f"(known: {', '.join(BACKBONES)})")
    size_px = meta["image_size"]
    if not isinstance(size_px, int) or isinstance(size_px, bool):
        raise CheckpointError(f"{name}: image size {str(size_px)[:40]!r} in its metadata is not a whole number")
    if not MIN_IMAGE_SIZE <= size_px <= limit:
        raise CheckpointError(
            f"{name}: image size {size_px} in its metadata is outside {MIN_IMAGE_SIZE}-{limit} px "
            f"(the operator can raise the limit with {MAX_IMAGE_SIZE_ENV})"
        )
    norm = meta["score_normalization"]
    if not isinstance(norm, dict):
        raise CheckpointError(f"{name}: score normalisation in its metadata is not an object")
    tile = meta.get("tile_normalization")
    if tile is not None and not isinstance(tile, dict):
        raise CheckpointError(f"{name}: tile normalisation in its metadata is not an object")
    for scale in (norm, tile or {}):
        if scale is norm or scale:
            _check_scale(scale, name, "threshold", "lo")
        if "map_threshold" in scale or "map_lo" in scale:
            _check_scale(scale, name, "map_threshold", "map_lo")
    metrics = meta.get("metrics", {})
    if not isinstance(metrics, dict) or not all(_is_number(v) for v in metrics.values()):
        raise CheckpointError(f"{name}: metadata metrics must map names to numbers")
    for key, value in metrics.items():
        if isinstance(value, float) and math.isinf(value):
            raise CheckpointError(f"{name}: metadata metrics.{str(key)[:40]} is not a finite number")
    for key, value in meta.items():
        _check_json_value(value, str(key)[:40], name, allow_nan=key == "metrics")
    category = meta.get("category", "")
    if not isinstance(category, str) or len(category) > MAX_CATEGORY_CHARS:
        raise CheckpointError(f"{name}: metadata category must be text of at most {MAX_CATEGORY_CHARS} characters")
    data = _flat_dict(meta, "data", name)
    if data and data.get("kind") not in DATA_KINDS:
        raise CheckpointError(f"{name}: metadata data.kind must be one of {', '.join(DATA_KINDS)}")
    if not all(v is None or isinstance(v, str) for v in data.values()):
        raise CheckpointError(f"{name}: metadata data values must be text")
    _check_train_config(_flat_dict(meta, "train_config", name), name)
    _check_level_normalization(meta.get("level_normalization"), name)
    _check_level_normalization(meta.get("fusion_normalization"), name, "fusion_normalization", 2)
    _flat_dict(meta, "teacher", name)
    _int_list(meta, "levels", name)
    _int_list(meta, "channels", name)
    return meta


def read_metadata(
    path: str | os.PathLike[str],
    sidecar: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Metadata of a checkpoint (embedded, else the ``.json`` sidecar), without loading tensors.

    The metadata is checked with :func:`validate_metadata`. ``sidecar``: the ``.json`` file to use instead of the
    one beside ``path``; ``name``: how messages call the file (default: its name).
    """
    path = Path(path)
    name = name or path.name
    if Path(name).suffix.lower() != ".safetensors":
        raise CheckpointError(
            f"{name}: only .safetensors checkpoints are accepted (.pt/.ckpt/.pth are pickles "
            "and are never loaded)"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {name}")
    _check_is_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{name} is not a valid safetensors file: {exc}") from exc
    if raw is None:
        side = Path(sidecar) if sidecar is not None else sidecar_path(path)
        if not side.is_file():
            raise CheckpointError(f"{name} has no IKD metadata and no {sidecar_path(name).name} beside it")
        if side.stat().st_size > MAX_METADATA_BYTES:
            raise CheckpointError(f"{name}: metadata file is larger than {MAX_METADATA_BYTES} bytes")
        try:
            raw = side.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"{name}: metadata file is not UTF-8 text") from exc
    if len(raw) > MAX_METADATA_BYTES:
        raise CheckpointError(f"{name}: metadata is {len(raw)} bytes (limit {MAX_METADATA_BYTES})")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{name}: metadata is not valid JSON ({exc.msg})") from exc
    except RecursionError as exc:
        raise CheckpointError(f"{name}: metadata is nested too deeply") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{name}: not an IKD Studio checkpoint (format {str(fmt)[:40]!r})")
    return validate_metadata(meta, name)


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
