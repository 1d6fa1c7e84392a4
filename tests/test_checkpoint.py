"""Checkpoints: safetensors + metadata only, atomic writes, clear refusals, pickles never run."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from ikd_core.checkpoint import read_metadata, save_checkpoint, sidecar_path
from ikd_core.errors import CheckpointError
from ikd_core.loading import load_model
from ikd_core.predict import Predictor

MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / "ikd_pickle_was_executed"


class _Payload:
    """Unpickling this runs code: it would create MARKER."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".ckpt"])
def test_pickle_payload_is_never_executed(tmp_path: Path, suffix: str) -> None:
    MARKER.unlink(missing_ok=True)
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    torch.save({"x": _Payload()}, tmp_path / "evil_torch.pt")  # a torch-zip pickle as well
    for p in (path, tmp_path / "evil_torch.pt"):
        with pytest.raises(CheckpointError, match="only .safetensors|pickle|not safetensors"):
            load_model(p)
        with pytest.raises(CheckpointError):
            Predictor.from_checkpoint(p)
    renamed = tmp_path / "evil_torch.safetensors"
    (tmp_path / "evil_torch.pt").rename(renamed)
    with pytest.raises(CheckpointError, match="pickle|not safetensors"):
        load_model(renamed)
    assert not MARKER.exists()


def test_roundtrip_and_metadata(tiny_checkpoint) -> None:
    path = tiny_checkpoint.checkpoint
    meta = read_metadata(path)
    for key in ("backbone", "levels", "image_size", "normalization", "teacher", "category",
                "train_config", "score_normalization", "metrics", "version"):
        assert key in meta
    assert json.loads(sidecar_path(path).read_text())["teacher"] == meta["teacher"]
    model, _ = load_model(path)
    for k, v in tiny_checkpoint.model.student.state_dict().items():
        torch.testing.assert_close(model.student.state_dict()[k], v.cpu())


def _copy_with(tiny_checkpoint, tmp_path: Path, name: str, state=None, **meta_changes) -> Path:
    state = state if state is not None else tiny_checkpoint.model.student.state_dict()
    meta = {**tiny_checkpoint.metadata, **meta_changes}
    return save_checkpoint(tmp_path / name, state, meta)


def test_mismatches_fail_clearly(tiny_checkpoint, tmp_path: Path) -> None:
    bad_backbone = _copy_with(tiny_checkpoint, tmp_path, "a.safetensors", backbone="resnet18", levels=[1, 2, 3])
    with pytest.raises(CheckpointError, match="does not match its metadata"):
        load_model(bad_backbone)
    state = dict(tiny_checkpoint.model.student.state_dict())
    state.pop(next(iter(state)))
    missing = _copy_with(tiny_checkpoint, tmp_path, "b.safetensors", state=state)
    with pytest.raises(CheckpointError, match="missing"):
        load_model(missing)
    teacher = _copy_with(tiny_checkpoint, tmp_path, "c.safetensors",
                         teacher={"source": "packaged", "fingerprint": "0123456789abcdef"})
    with pytest.raises(CheckpointError, match="different"):
        load_model(teacher)
    nan_state = {k: v.clone() for k, v in tiny_checkpoint.model.student.state_dict().items()}
    next(v for v in nan_state.values() if v.is_floating_point()).fill_(float("nan"))
    with pytest.raises(CheckpointError, match="NaN"):
        load_model(_copy_with(tiny_checkpoint, tmp_path, "d.safetensors", state=nan_state))


def test_truncated_file_is_refused(tiny_checkpoint, tmp_path: Path) -> None:
    data = Path(tiny_checkpoint.checkpoint).read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_model(cut)


def test_failed_write_keeps_previous_checkpoint(tiny_checkpoint, tmp_path: Path, monkeypatch) -> None:
    path = _copy_with(tiny_checkpoint, tmp_path, "keep.safetensors")
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ikd_core.checkpoint.os.fsync", disk_full)
    with pytest.raises(OSError):
        _copy_with(tiny_checkpoint, tmp_path, "keep.safetensors")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left
