"""The Model tab's engine parts and its API: stop that keeps (or discards) the model trained so far, time-limited
training without epochs, a new model shown beside the active one, checkpoint deletion.

The engine tests stop a run from its own progress callback (after a known step), so nothing waits on a clock.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from ikd_core import service  # noqa: E402
from ikd_core.checkpoint import read_metadata  # noqa: E402
from ikd_core.data.sources import DataSpec, build_datasets  # noqa: E402
from ikd_core.train import TrainConfig, train  # noqa: E402


def _datasets(demo_root: Path) -> tuple[Any, Any]:
    return build_datasets(DataSpec("demo", "demo_texture", str(demo_root)), 64)


# ------------------------------------------------------------------------------------------ engine
@pytest.mark.parametrize("keep", [True, False])
def test_train_stop_keeps_partial_model_or_nothing(demo_root: Path, tmp_path: Path, keep: bool) -> None:
    train_ds, test_ds = _datasets(demo_root)
    stop = {"now": False}

    def callback(p: Any) -> None:
        if p.phase == "train" and p.epoch == 2 and p.step == 1:
            stop["now"] = True

    out = tmp_path / "m.safetensors"
    cfg = TrainConfig(image_size=64, epochs=50, batch_size=4, lr=1e-3)
    res = train(train_ds, test_ds, cfg, out_path=out, callback=callback, should_stop=lambda: stop["now"],
                keep_on_stop=keep)
    if not keep:
        assert res.cancelled and res.checkpoint is None and not out.exists()
        return
    assert not res.cancelled and res.checkpoint == out and out.is_file()
    meta = read_metadata(out)
    steps = len(train_ds) * 9 // 10 // 4  # 10 % held out, drop_last
    assert meta["stopped_early"] is True and meta["stopped_by_user"] is True
    assert meta["epochs_completed"] == pytest.approx((steps + 1) / steps, abs=0.01)
    assert "stopped by the user" in meta["note"] and "of 50 planned" in meta["note"]
    assert set(res.metrics) >= {"image_auroc", "pixel_auroc"}, "the partial model is evaluated"


def test_stop_file_keep_reaches_job(demo_root: Path, tmp_path: Path) -> None:
    """The cross-process path: a StopFile written with keep=True (as the server process does for a ZeroGPU worker)
    ends the run with a saved checkpoint marked stopped early; the file holds the choice."""
    stop = service.StopFile(tmp_path / "jobs")
    cfg = TrainConfig(image_size=64, epochs=50, batch_size=4, lr=1e-3)
    out = tmp_path / "k.safetensors"
    job = service.TrainingJob(DataSpec("demo", "demo_texture", str(demo_root)), cfg, out, stop_file=stop.path,
                              curves=False)
    job._on_progress = _stop_after_first_step(job._on_progress, stop)  # type: ignore[method-assign]
    updates = list(service.stream_training(job, poll=0.05, every=0.0))
    end = updates[-1]
    assert end.kind == "end" and end.state == "finished", end.error
    assert end.metadata["stopped_early"] and end.metadata["stopped_by_user"] and out.is_file()
    assert service.StopFile.read_keep(stop.path) is True
    stop.set(keep=False)
    assert service.StopFile.read_keep(stop.path) is False
    stop.clear()
    assert service.StopFile.read_keep(stop.path) is None


def _stop_after_first_step(on_progress: Any, stop: service.StopFile) -> Any:
    def wrapped(p: Any) -> None:
        on_progress(p)
        if p.phase == "train" and not stop.path.exists():
            stop.set(keep=True)

    return wrapped


def test_time_limit_without_epochs_saves(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """epochs=None with max_minutes: the run ends at the limit (a fake clock: 10 s a step) and is saved."""
    import ikd_core.train as train_mod

    ticks = iter(range(0, 10_000, 10))
    monkeypatch.setattr(train_mod, "_clock", lambda: float(next(ticks)))
    train_ds, test_ds = _datasets(demo_root)
    cfg = TrainConfig(image_size=64, epochs=None, batch_size=4, lr=1e-3, max_minutes=1.0)
    res = train(train_ds, test_ds, cfg, out_path=tmp_path / "t.safetensors")
    meta = read_metadata(res.checkpoint)
    assert meta["stopped_early"] is True and meta["stopped_by_user"] is False
    assert "time limit" in meta["note"]
