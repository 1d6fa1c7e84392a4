"""The Model tab's engine parts and its API: stop that keeps (or discards) the model trained so far, time-limited
training without epochs, a new model shown beside the active one, checkpoint deletion.

The engine tests stop a run from its own progress callback (after a known step), so nothing waits on a clock.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from conftest import STUDIO_CKPT as CKPT  # noqa: E402
from conftest import run_studio  # noqa: E402

from ikd_core import service  # noqa: E402
from ikd_core.checkpoint import read_metadata  # noqa: E402
from ikd_core.data.sources import DataSpec, build_datasets  # noqa: E402
from ikd_core.train import TrainConfig, train  # noqa: E402


def _datasets(demo_root: Path) -> tuple[Any, Any]:
    return build_datasets(DataSpec("demo", "demo_texture", str(demo_root)), 64)


# ------------------------------------------------------------------------------------------ engine
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


# ------------------------------------------------------------------------------------------ through the API
@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint):
    with run_studio(tmp_path_factory.mktemp("studio_model"), tiny_checkpoint) as s:
        yield s


@pytest.fixture(scope="module")
def client(studio):
    from gradio_client import Client

    return Client(studio.url, verbose=False)


def _train(client, epochs: Any = 1, minutes: Any = 0, active: str | None = CKPT, submit: bool = False) -> Any:
    args = ("Demo", "demo_texture", "", "", "", [], "", "efficientnet_lite0", 64, epochs, 4, 1e-3, minutes, active)
    return client.submit(*args, api_name="/train") if submit else client.predict(*args, api_name="/train")


def _names(studio) -> set[str]:
    return {p.name for p in studio.pretrained.glob("*.safetensors")}


def _wait_for_steps(job: Any) -> None:
    """Until the run reports training steps (polls the job's streamed outputs; no fixed sleep decides)."""
    deadline = time.monotonic() + 180
    while not any("step" in str(o[0]) for o in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), "no training progress"
        time.sleep(0.1)


@pytest.mark.parametrize("keep", [True, False])
def test_stop_keeps_a_checkpoint_or_nothing(studio, client, keep: bool) -> None:
    before = _names(studio)
    job = _train(client, epochs=500, submit=True)
    _wait_for_steps(job)
    client.predict(api_name="/stop_keep" if keep else "/stop")
    progress, *_, compare, new_name = job.result(timeout=180)
    assert "Stopped" in progress
    added = _names(studio) - before
    assert not list(studio.pretrained.glob(".*")), "no partial or temporary file"
    if not keep:
        assert not added and "Nothing was saved" in progress
        return
    assert added == {new_name}, progress
    meta = read_metadata(studio.pretrained / new_name)
    assert meta["stopped_early"] is True and meta["stopped_by_user"] is True
    assert "stopped by the user" in meta["note"] and meta["note"] in compare.replace("\\", "")
    assert "Stopped early" in progress and "the active model is still" in progress


def test_time_limit_without_epochs(studio, client) -> None:
    before = _names(studio)
    progress, *_, dropdown, _info, _compare, new_name = _train(client, epochs=None, minutes=0.05)
    assert "Done" in progress, progress
    assert _names(studio) - before == {new_name}
    meta = read_metadata(studio.pretrained / new_name)
    assert meta["train_config"]["epochs"] is None and meta["train_config"]["max_minutes"] == 0.05
    assert meta["stopped_early"] is True and "time limit" in meta["note"]
    assert dropdown["value"] == CKPT, "the active model stays until the user chooses"
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="set a number of epochs or a time limit"):
        _train(client, epochs=0, minutes=0)


def test_new_model_is_active_at_once_without_an_active_one(studio, client) -> None:
    progress, *_, dropdown, _info, compare, new_name = _train(client, active="")
    assert "saved and active" in progress and dropdown["value"] and not new_name
    assert "is active (there was no active model)" in compare


def test_delete_own_checkpoint_and_refuse_escaping_names(studio, client) -> None:
    from gradio_client.exceptions import AppError

    name = next(n for n in _names(studio) if n != CKPT)
    dropdown, _info = client.predict(name, api_name="/delete_checkpoint")
    assert not (studio.pretrained / name).exists() and not (studio.pretrained / name).with_suffix(".json").exists()
    assert name not in {c[1] for c in dropdown["choices"]}
    outside = studio.root / "outside.safetensors"
    outside.write_bytes(b"keep me")
    for bad in ("../outside.safetensors", str(outside), "missing.safetensors"):
        with pytest.raises(AppError, match="invalid checkpoint name|not found"):
            client.predict(bad, api_name="/delete_checkpoint")
    assert outside.read_bytes() == b"keep me"


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint, studio):
    with run_studio(tmp_path_factory.mktemp("studio_model_public"), tiny_checkpoint, {"IKD_PUBLIC": "1"}) as s:
        yield s


def test_public_mode_never_deletes_shipped_checkpoints(public, tiny_checkpoint, tmp_path: Path) -> None:
    import shutil

    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    visitor = Client(public.url, verbose=False)
    with pytest.raises(AppError, match="shipped with this app and cannot be deleted"):
        visitor.predict(CKPT, api_name="/delete_checkpoint")
    assert (public.pretrained / CKPT).is_file()
    # the visitor's own upload (same name as nothing shipped) can be deleted
    own = tmp_path / "mine.safetensors"
    shutil.copy(tiny_checkpoint.checkpoint, own)
    name = visitor.predict([handle_file(str(own))], CKPT, api_name="/import_checkpoint")[0]["value"]
    held = list(public.work.rglob(name))
    assert len(held) == 1
    dropdown, _ = visitor.predict(name, api_name="/delete_checkpoint")
    assert not held[0].exists() and dropdown["value"] == CKPT
    assert (public.pretrained / CKPT).is_file()
