"""GPU work of the app: ZeroGPU's ``spaces.GPU`` decorator and the only functions that use CUDA.

On a ZeroGPU Space a GPU exists only inside functions decorated with ``spaces.GPU``, which run in a worker process:
their arguments and every value they return or yield are pickled. So models are loaded on the CPU in the server
process (before the worker forks), only forward passes and training run in the two functions below, and re-rendering
(threshold, opacity, colormap, GIF frames) uses maps cached in the server process. Outside ZeroGPU ``spaces.GPU``
returns the function as it is.

Two things here are fixed for the process, not per app: the GPU call durations (the decorators need them at import,
from ``IKD_GPU_MAX_DURATION``) and :data:`PREDICTORS`, the one cache of loaded models, which the GPU worker inherits
by fork (every app's :class:`~ui.context.AppContext` uses it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ikd_core import service
from ikd_core.data.sources import DataSpec
from ikd_core.service.settings import gpu_max_duration

try:
    import spaces  # type: ignore[import-not-found]
    from spaces.config import Config as _SpacesConfig  # type: ignore[import-not-found]

    ZERO_GPU = bool(_SpacesConfig.zero_gpu)
except ImportError:  # not on Hugging Face: plain CPU / CUDA
    spaces = None
    ZERO_GPU = False

#: Longest GPU call asked for, in seconds (ZeroGPU refuses more than its maximum; shorter calls queue sooner).
GPU_MAX_DURATION = gpu_max_duration()
INFER_DURATION = min(30, GPU_MAX_DURATION)  # up to 64 images through the model
TRAIN_DURATION = GPU_MAX_DURATION
#: Seconds of a ZeroGPU training call kept for data loading, model building, the threshold fit, evaluation and
#: saving; the rest is the training time limit there.
TRAIN_RESERVE_S = 45
GPU_FUNCTIONS: dict[str, int] = {}  # name -> duration of every GPU-decorated function (tests check them)


def gpu(duration: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``spaces.GPU(duration=...)`` where the ``spaces`` package is installed; the duration must fit the ceiling."""
    if not 0 < duration <= GPU_MAX_DURATION:
        raise ValueError(f"GPU duration {duration} s is above the ceiling of {GPU_MAX_DURATION} s")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        GPU_FUNCTIONS[fn.__name__] = duration
        return spaces.GPU(duration=duration)(fn) if spaces is not None else fn

    return deco


def has_gpu() -> bool:
    """Whether forward passes will run on a GPU (on ZeroGPU: inside the decorated functions)."""
    return ZERO_GPU or torch.cuda.is_available()


def compute_device() -> str:
    """The device of forward passes. Call it only inside a :func:`gpu` function: on ZeroGPU CUDA exists there."""
    return "cuda" if torch.cuda.is_available() else "cpu"


#: The process's loaded predictors, by checkpoint file, device and CPU backend (CPU ones load in the server process,
#: GPU ones are copies of those made inside the GPU calls). The backend comes with each request, from the app's
#: settings (``IKD_BACKEND``: ``auto`` runs onnxruntime on a cached export that reproduces the torch maps).
PREDICTORS = service.PredictorCache(maxsize=3, backend="auto")


@gpu(duration=INFER_DURATION)
def predict_on_device(
    ckpt_path: str, images: list[np.ndarray], tile: bool = False, backend: str | None = None
) -> list[Any]:
    """The forward passes of Inspect, GIF export and Live: one image per pass (so a result never depends on the
    other images and equals ``Predictor.predict([image])``); ``tile``: in overlapping tiles at the image's
    resolution, against the threshold fitted on tiles; ``backend``: of the CPU predictor (default: the cache's).
    Takes and returns plain picklable values (uint8 arrays in, :class:`~ikd_core.predict.Prediction` out)."""
    predictor = PREDICTORS.get(ckpt_path, compute_device(), backend)
    if tile:
        predictor = copy.copy(predictor)
        predictor.tile = True
    return [predictor.predict([img])[0] for img in images]


@gpu(duration=TRAIN_DURATION)
def train_on_device(
    spec: dict[str, Any], config: dict[str, Any], out_path: str, stop_file: str
) -> Iterator[service.TrainingUpdate]:
    """The training run itself, on the GPU where there is one. Plain values in (the data spec and config as dicts),
    picklable :class:`~ikd_core.service.TrainingUpdate` values out. On ZeroGPU the run is limited to the call's
    duration less :data:`TRAIN_RESERVE_S`; Stop reaches it through ``stop_file``."""
    from ikd_core.train import TrainConfig

    dev = compute_device()
    cfg = TrainConfig(**{**config, "device": dev})
    if ZERO_GPU:
        budget = (TRAIN_DURATION - TRAIN_RESERVE_S) / 60
        cfg.max_minutes = budget if cfg.max_minutes is None else min(cfg.max_minutes, budget)
    job = service.TrainingJob(
        DataSpec.from_dict(spec), cfg, out_path, device=torch.device(dev), stop_file=stop_file, release_reservation=True
    )  # the name is free again only once the run has ended
    yield from service.stream_training(job)
