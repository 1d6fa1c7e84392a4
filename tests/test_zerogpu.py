"""ZeroGPU readiness, checked with the ``spaces`` package installed (outside ZeroGPU its decorator returns the
function as is, so the GPU functions run in-process here).

On a ZeroGPU Space the functions decorated with ``spaces.GPU`` run in a forked worker: their arguments and every
value they return or yield are pickled, their durations must stay within what ZeroGPU grants, and CUDA exists only
inside them. The tests wrap the app's GPU functions to pickle everything that would cross, count the calls, and
spy on every move to CUDA.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import functools  # noqa: E402
import inspect  # noqa: E402
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import STUDIO_CKPT as CKPT  # noqa: E402
from conftest import run_studio  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ZEROGPU_MAX = 300  # ZeroGPU refuses longer durations


class GpuCalls:
    """Wraps an app's GPU functions: pickles every argument and every returned / yielded value (as ZeroGPU does),
    counts the calls and knows whether one is running."""

    def __init__(self, app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        from ui import gpu  # the app's GPU functions live there; the tabs call them through the module

        self.calls: dict[str, int] = dict.fromkeys(gpu.GPU_FUNCTIONS, 0)
        self.active = 0
        self.pickled = 0
        for name in gpu.GPU_FUNCTIONS:
            monkeypatch.setattr(gpu, name, self._wrap(name, getattr(gpu, name)))

    def _cross(self, value: Any) -> Any:
        """The value as the other process would receive it."""
        self.pickled += 1
        return pickle.loads(pickle.dumps(value))

    def _wrap(self, name: str, fn: Any) -> Any:
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen(*args: Any, **kwargs: Any) -> Any:
                args, kwargs = self._cross((args, kwargs))
                self.calls[name] += 1
                self.active += 1
                try:
                    for value in fn(*args, **kwargs):
                        yield self._cross(value)
                finally:
                    self.active -= 1
            return gen

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = self._cross((args, kwargs))
            self.calls[name] += 1
            self.active += 1
            try:
                return self._cross(fn(*args, **kwargs))
            finally:
                self.active -= 1
        return call


class CudaSpy:
    """Pretends CUDA is available and records every move of a module or tensor to it (then keeps it on the CPU),
    noting whether a GPU function was running at the time."""

    def __init__(self, gpu: GpuCalls, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inside = 0
        self.outside: list[str] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        module_to, tensor_to = torch.nn.Module.to, torch.Tensor.to

        def record(what: str) -> None:
            if gpu.active:
                self.inside += 1
            else:
                self.outside.append(what)

        def module_to_spy(mod: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
            device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
            if device is not None and device.type == "cuda":
                record(type(mod).__name__)
                return module_to(mod, dtype) if dtype is not None else mod
            return module_to(mod, *args, **kwargs)

        def tensor_to_spy(t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
            if device is not None and device.type == "cuda":
                record(f"tensor {tuple(t.shape)}")
                return tensor_to(t, dtype) if dtype is not None else t
            return tensor_to(t, *args, **kwargs)

        monkeypatch.setattr(torch.nn.Module, "to", module_to_spy)
        monkeypatch.setattr(torch.Tensor, "to", tensor_to_spy)


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint):
    with run_studio(tmp_path_factory.mktemp("studio_zerogpu"), tiny_checkpoint) as s:
        yield s


@pytest.fixture(scope="module")
def client(studio):
    from gradio_client import Client

    return Client(studio.url, verbose=False)


def _images(studio, n: int = 2) -> list[Path]:
    return sorted((studio.demo / "demo_texture" / "test").glob("*/*.png"))[:n]


def _inspect(client, images: list[Path], threshold: float = 0.5, alpha: float = 0.5, cmap: str = "jet") -> Any:
    from gradio_client import handle_file

    return client.predict([handle_file(str(p)) for p in images], CKPT, threshold, alpha, cmap, 0,
                          api_name="/inspect")


# ------------------------------------------------------------------------------------------ durations
def test_spaces_is_installed_and_gpu_functions_are_registered(studio) -> None:
    from ui import gpu as app

    assert app.spaces is not None, "the tests run with Hugging Face's `spaces` package (requirements-dev.txt)"
    assert not app.ZERO_GPU
    assert set(app.GPU_FUNCTIONS) == {"predict_on_device", "train_on_device"}
    assert all(0 < d <= app.GPU_MAX_DURATION < ZEROGPU_MAX for d in app.GPU_FUNCTIONS.values()), app.GPU_FUNCTIONS
    assert app.TRAIN_DURATION - app.TRAIN_RESERVE_S >= 30, "a ZeroGPU training call leaves time to train"


def _app_gpu_functions(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import json; from ui import gpu; print(json.dumps(gpu.GPU_FUNCTIONS))"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)


def test_duration_ceiling_comes_from_the_environment() -> None:
    import json

    low = _app_gpu_functions({"IKD_GPU_MAX_DURATION": "20"})
    assert low.returncode == 0, low.stderr
    durations = json.loads(low.stdout.strip().splitlines()[-1])
    assert durations and max(durations.values()) <= 20
    high = _app_gpu_functions({"IKD_GPU_MAX_DURATION": "900"})
    assert high.returncode != 0 and "IKD_GPU_MAX_DURATION" in high.stderr


# ------------------------------------------------------------------------------------------ inspect / GIF
def test_inspect_and_gif_cross_as_pickles_and_rerendering_needs_no_gpu(studio, client, monkeypatch) -> None:
    gpu = GpuCalls(studio.app, monkeypatch)
    spy = CudaSpy(gpu, monkeypatch)
    images = _images(studio)
    first = _inspect(client, images)
    # one call per image here (each takes its turn at the fair gate); one call for all of them on ZeroGPU
    assert gpu.calls["predict_on_device"] == len(images)
    assert spy.inside > 0, "the model went to the (pretended) GPU inside the GPU call"
    # threshold, opacity and colormap re-render from the maps cached in the server process: no GPU call
    moved = _inspect(client, images, threshold=0.9, alpha=0.2, cmap="viridis")
    assert gpu.calls["predict_on_device"] == len(images), "re-rendering made no GPU call"
    assert moved[4] == first[4], "same score"
    assert Path(moved[2]).read_bytes() != Path(first[2]).read_bytes(), "the overlay was drawn again"
    # a GIF of the model's test images: one GPU call for the maps it lacks, none when they are cached
    preview, _, _ = client.predict(CKPT, 3, 2, 256, 0.5, 0.5, "jet", [], api_name="/export_gif")
    assert Path(preview).stat().st_size > 0
    calls = gpu.calls["predict_on_device"]
    client.predict(CKPT, 3, 2, 256, 0.7, 0.5, "magma", [], api_name="/export_gif")
    assert gpu.calls["predict_on_device"] == calls
    assert gpu.pickled >= 4
    assert spy.outside == [], f"CUDA used outside the GPU functions: {spy.outside}"


def test_models_load_on_the_cpu_in_the_server_process(studio, client, monkeypatch) -> None:
    """Checkpoint changes and page loads read models on the CPU only (never a GPU call, never CUDA)."""
    gpu = GpuCalls(studio.app, monkeypatch)
    spy = CudaSpy(gpu, monkeypatch)
    studio.app.ctx.predictors.clear()
    client.predict(CKPT, api_name="/checkpoint_info")
    client.predict(CKPT, api_name="/list_checkpoints")
    assert sum(gpu.calls.values()) == 0
    assert spy.outside == [] and spy.inside == 0
    assert all(p.device.type == "cpu" for p in studio.app.ctx.predictors._items.values())


# ------------------------------------------------------------------------------------------ training
def _train_args(epochs: int) -> tuple[Any, ...]:
    return ("Demo", "demo_texture", "", "", "", [], "", "efficientnet_lite0", 64, epochs, 4, 1e-3)


def test_training_crosses_as_pickles(studio, client, monkeypatch) -> None:
    from ikd_core import service

    gpu = GpuCalls(studio.app, monkeypatch)
    created: list[bool] = []
    job_cls = service.TrainingJob

    class SpyJob(job_cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            created.append(bool(gpu.active))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(service, "TrainingJob", SpyJob)
    before = {p.name for p in studio.pretrained.glob("*.safetensors")}
    out = client.predict(*_train_args(1), api_name="/train")
    assert "Done" in out[0], out[0]
    assert gpu.calls["train_on_device"] == 1
    assert created == [True], "the training job is created inside the GPU function"
    assert gpu.pickled >= 3, "arguments, progress updates and the final result all pickled"
    new = {p.name for p in studio.pretrained.glob("*.safetensors")} - before
    assert len(new) == 1, (out[0], before, sorted(p.name for p in studio.pretrained.iterdir()))


def test_stop_reaches_a_run_in_another_process(studio, client, monkeypatch) -> None:
    """Stop works through the stop file alone (the run's thread could live in a ZeroGPU worker): the run ends at
    its next step and saves nothing."""
    import time

    GpuCalls(studio.app, monkeypatch)
    before = {p.name for p in studio.pretrained.glob("*")}
    job = client.submit(*_train_args(500), api_name="/train")
    deadline = time.monotonic() + 120
    while not any("epoch" in str(o[0]) for o in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), "no training progress"
        time.sleep(0.2)
    handles = list(studio.app.ctx.jobs._jobs.values())
    assert len(handles) == 1 and isinstance(handles[0], __import__("ikd_core.service").service.StopFile)
    client.predict(api_name="/stop")
    result = job.result(timeout=120)
    assert "Stopped" in result[0]
    assert {p.name for p in studio.pretrained.glob("*")} == before
    assert not list((studio.work / "jobs").glob("*.stop")), "the stop file is removed"
