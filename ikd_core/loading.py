"""Loading a checkpoint into a ready model: metadata checked, teacher rebuilt and matched, student weights loaded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .backbones import build_student
from .checkpoint import check_state_matches, load_student_state, read_metadata
from .device import select_device
from .errors import CheckpointError, IKDError
from .segmentation import SegmentationHead
from .torch_model import SEGMENTER_PREFIX, IKDModel, make_student


def _teacher_source(meta: dict[str, Any], name: str, teacher_weights: str | os.PathLike[str] | None) -> str | None:
    """Where the teacher's weights come from: ``teacher_weights``, else the source recorded at training time."""
    source = teacher_weights or (meta.get("teacher") or {}).get("source")
    if source is not None and not isinstance(source, (str, os.PathLike)):
        raise CheckpointError(f"{name}: metadata is malformed (teacher source {source!r})")
    source = os.fspath(source) if source is not None else None
    if source and source.startswith("file:"):
        raise CheckpointError(
            f"{name} was trained with the teacher weights file {source[5:]!r}; pass it again (--teacher-weights FILE)"
        )
    return source


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    teacher_weights: str | os.PathLike[str] | None = None,
) -> tuple[IKDModel, dict[str, Any]]:
    """Load a checkpoint into a fresh model in eval mode.

    The metadata is checked by :func:`~ikd_core.checkpoint.read_metadata` (one schema, one set of bounds); the
    tensors must fit the backbone before a teacher is built, and the teacher is rebuilt from the source recorded at
    training time (or ``teacher_weights``) and must have the recorded fingerprint, since a student only makes sense
    against its own teacher.

    Args:
        path: a ``.safetensors`` checkpoint written by IKD Studio.
        device: where to put the model (``auto`` allowed).
        teacher_weights: a local teacher weights file, for checkpoints trained with one.

    Returns:
        ``(model, metadata)``.

    Raises:
        CheckpointError: on any mismatch, with a one-line message.
    """
    path = Path(path)
    meta = read_metadata(path)
    backbone, image_size = meta["backbone"], meta["image_size"]
    tcfg = meta.get("train_config") or {}
    state = load_student_state(path)
    source = _teacher_source(meta, path.name, teacher_weights)
    kind = tcfg.get("student", "forward")
    segment = bool(tcfg.get("segment", False))
    try:
        arch = build_student(backbone)  # cheap: check the tensors before fetching a teacher
        student = make_student(backbone, kind, arch) if kind != "forward" else arch
    except IKDError as exc:
        raise CheckpointError(f"{path.name}: {exc}") from exc
    if meta.get("levels") is not None and list(meta["levels"]) != list(arch.spec.out_indices):
        raise CheckpointError(f"{path.name}: levels {meta['levels']} do not match backbone {backbone}")
    expected = dict(student.state_dict())
    if segment:
        expected.update({f"{SEGMENTER_PREFIX}{k}": v for k, v in SegmentationHead(arch.channels).state_dict().items()})
    check_state_matches(state, expected, path.name, lambda: f"backbone {backbone}, {kind} student"
                        f"{' with a segmentation head' if segment else ''}, image size {image_size}")
    model = IKDModel(
        backbone,
        teacher_weights=source,
        combine=tcfg.get("combine", "product"),
        sigma=float(tcfg.get("sigma", 4.0)),
        feature_pool=bool(tcfg.get("feature_pool", False)),
        student=student,
        score_topk=int(tcfg.get("score_topk", 1)),
        student_kind=kind,
        segment=segment,
        segment_map=str(tcfg.get("segment_map", "head")),
        score_map=str(tcfg.get("score_map", "map")),
    )
    level_norm = meta.get("level_normalization")
    if level_norm is not None:
        if len(level_norm["lo"]) != len(model.levels):
            raise CheckpointError(f"{path.name}: level_normalization has {len(level_norm['lo'])} levels, the "
                                  f"{backbone} model {len(model.levels)}")
        model.anomaly_map.set_level_normalization(level_norm["lo"], level_norm["hi"])
    fusion = meta.get("fusion_normalization")
    if segment and model.segment_map == "fused":
        if fusion is None:
            raise CheckpointError(f"{path.name}: metadata has no fusion_normalization for its fused map")
        model.set_fusion_normalization(fusion["lo"], fusion["hi"])
    want = (meta.get("teacher") or {}).get("fingerprint")
    if want and want != model.teacher_fingerprint:
        raise CheckpointError(
            f"{path.name} was trained against a different {backbone} teacher ({want}) than the one "
            f"found here ({model.teacher_fingerprint}, {model.teacher_source})"
        )
    model.load_trainable_state(state)
    model.to(select_device(str(device))).eval()
    return model, meta
