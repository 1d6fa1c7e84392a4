"""The studio's training use case, without a UI: check a request, reserve the new checkpoint's name, follow the run,
and compare the new model with the active one on the same test set.

The run itself (:func:`~ikd_core.service.jobs.stream_training`) happens where the caller puts it (on ZeroGPU, in a
GPU worker); this module only works on plain values and the updates the run yields.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backbones import BACKBONES
from ..checkpoint import max_image_size
from ..data.sources import DataSpec, build_datasets, default_checkpoint_name
from ..errors import IKDError
from ..evaluation import evaluate_model
from ..fileio import file_digest
from ..recipes import RECIPES, recipe_settings
from ..train import Progress, TrainConfig
from .access import AccessPolicy
from .checkpoint_store import checkpoint_info, reserve_checkpoint_path, unique_path
from .jobs import TrainingUpdate
from .predictors import PredictorCache
from .testsets import check_training_data
from .validate import number
from .workspaces import Workspace

log = logging.getLogger(__name__)


class TrainingRequestError(IKDError):
    """A training request that cannot run as given (the message says what to change)."""


def default_form(has_gpu: bool, max_minutes: float | None = None) -> dict[str, Any]:
    """The training form's defaults: the ``paper`` recipe on a GPU (hrnet_w32), the ``cpu`` recipe otherwise
    (efficientnet_lite0, at most 10 minutes); see :mod:`ikd_core.recipes`.

    Args:
        has_gpu: Whether training will run on a GPU.
        max_minutes: The operator's time limit (public mode), which caps every run.

    Returns:
        The values of the form's fields, by name (``recipe`` included).
    """
    recipe = "paper" if has_gpu else "cpu"
    d: dict[str, Any] = {"recipe": recipe, "backbone": "hrnet_w32" if has_gpu else "efficientnet_lite0",
                         **recipe_form(recipe), "max_minutes": 0 if has_gpu else 10}
    if max_minutes:
        d["max_minutes"] = min(d["max_minutes"] or max_minutes, max_minutes)
    return d


def recipe_form(recipe: str) -> dict[str, Any]:
    """The form fields a recipe sets (image size, epochs, batch size, learning rate)."""
    settings = recipe_settings(recipe)
    return {k: settings[k] for k in ("image_size", "epochs", "batch_size", "lr")}


def run_limits(epochs: Any, max_minutes: Any, cap: float | None = None) -> tuple[int | None, float | None]:
    """(epochs, minutes) from a request: an empty or 0 field means "no limit" of that kind; at least one is needed.

    Args:
        epochs: The requested number of epochs (empty or 0: none).
        max_minutes: The requested time limit in minutes (empty or 0: none).
        cap: The operator's time limit (public mode), which caps the time.

    Returns:
        The checked epochs and minutes (``None``: no limit of that kind).
    """
    n = None if epochs in (None, "", 0) else int(number(epochs, "epochs", 1, 100_000, integer=True))
    m = None if max_minutes in (None, "", 0) else float(number(max_minutes, "time limit", 0.05, 100_000))
    if cap:
        m = min(m or cap, cap)
    if n is None and m is None:
        raise TrainingRequestError(
            "set a number of epochs or a time limit (an empty epochs field trains until the time limit)"
        )
    return n, m


def training_config(
    backbone: str, image_size: Any, epochs: Any, batch_size: Any, lr: Any, max_minutes: Any,
    cap: float | None = None, recipe: str | None = None,
) -> TrainConfig:
    """The checked :class:`~ikd_core.train.TrainConfig` of a request (an API client bypasses the form's limits).

    Args:
        backbone: The teacher backbone's name.
        image_size: Image side in pixels.
        epochs: Epochs (empty or 0: until the time limit).
        batch_size: Batch size.
        lr: Learning rate.
        max_minutes: Time limit in minutes (empty or 0: none).
        cap: The operator's time limit (public mode).
        recipe: A key of :data:`~ikd_core.recipes.RECIPES` for everything the form does not set (student, loss,
            score side, schedule); None: the paper's.

    Returns:
        The training configuration.
    """
    if backbone not in BACKBONES:
        raise TrainingRequestError("unknown backbone")
    if recipe is not None and recipe not in RECIPES:
        raise TrainingRequestError(f"unknown recipe; choose one of: {', '.join(RECIPES)}")
    rest = {k: v for k, v in recipe_settings(recipe or "paper").items()
            if k not in ("image_size", "epochs", "batch_size", "lr")}
    n_epochs, minutes = run_limits(epochs, max_minutes, cap)
    return TrainConfig(
        backbone=backbone,
        image_size=int(number(image_size, "image size", 32, max_image_size(), integer=True)),
        epochs=n_epochs,
        batch_size=int(number(batch_size, "batch size", 1, 4096, integer=True)),
        lr=float(number(lr, "learning rate", 1e-8, 10.0)),
        max_minutes=minutes,
        **rest,
    )


def reserve_output(spec: DataSpec, cfg: TrainConfig, ws: Workspace, shipped: Path) -> Path:
    """Check the training data, then reserve the new checkpoint's path in the workspace.

    Every data problem (missing or empty folders, unsafe names, masks, non-images) is reported before a run starts
    or a name is taken; the name is reserved at once, so an upload meanwhile gets another one.

    Args:
        spec: The training data.
        cfg: The training configuration.
        ws: The caller's workspace (the checkpoint goes into its ``pretrained`` folder).
        shipped: The folder of the shipped checkpoints, whose names a visitor's checkpoint never takes (it would
            hide the shipped one from their list).

    Returns:
        The reserved path (released by the run when it ends).
    """
    check_training_data(spec, cfg.image_size)
    name = default_checkpoint_name(spec.category, cfg.backbone)
    if ws.pretrained != shipped:
        name = unique_path(shipped, name).name
    return reserve_checkpoint_path(ws.pretrained, name)


@dataclass
class RunLog:
    """What a consumer of a run's updates keeps: the loss curve, the last progress and status, the end."""

    losses: list[tuple[int, float]] = field(default_factory=list)
    status: str = ""
    last: Progress | None = None
    end: TrainingUpdate | None = None

    def add(self, update: TrainingUpdate) -> bool:
        """Take one update.

        Args:
            update: An update of :func:`~ikd_core.service.jobs.stream_training`.

        Returns:
            Whether the run has ended.
        """
        self.losses += update.losses
        if update.kind == "end":
            self.end = update
            return True
        if update.kind == "status":
            self.status = update.message
        else:
            self.status, self.last = "", update.progress
        return False


def record_data(policy: AccessPolicy, checkpoint: Path, spec: DataSpec) -> None:
    """Remember the data a new checkpoint was trained on, so its test set is found again (never from metadata).

    Args:
        policy: The access policy (its record of known data).
        checkpoint: The new checkpoint.
        spec: Its training data (demo data needs no record).
    """
    if spec.kind != "demo" and policy.known is not None:
        policy.known.record(file_digest(checkpoint), spec)


def usable_active(active: str | None, new: str, resolve: Callable[[str], Path]) -> Path | None:
    """The active checkpoint to compare a new one with: ``None`` when there is none, it is the new one, or it
    cannot be used.

    Args:
        active: The active checkpoint's name.
        new: The new checkpoint's name.
        resolve: Name to path in the caller's checkpoints (raises :class:`IKDError` when missing).

    Returns:
        The active checkpoint's path, or ``None``.
    """
    if not active or active == new:
        return None
    with contextlib.suppress(IKDError):
        path = resolve(active)
        return path if checkpoint_info(path).ok else None
    return None


def metrics_on_test_set(
    checkpoint: Path, spec: DataSpec, predictors: PredictorCache, device: str, backend: str | None = None
) -> dict[str, float]:
    """Metrics of a checkpoint on ``spec``'s test set, computed as training computes them
    (:func:`~ikd_core.evaluation.evaluate_model` at the checkpoint's own image size), so two models are compared on
    the same images.

    Args:
        checkpoint: The checkpoint to evaluate.
        spec: The data whose test set is used.
        predictors: The app's predictor cache (a loaded model is used again).
        device: Where to run the model.
        backend: Backend of CPU predictors (the cache's default when ``None``).

    Returns:
        The metrics (empty without a labelled test set).
    """

    predictor = predictors.get(checkpoint, device, backend)
    _, test_ds = build_datasets(spec, predictor.image_size)
    if test_ds is None or not len(test_ds):  # type: ignore[arg-type]
        return {}
    return evaluate_model(predictor.model, test_ds, predictor.device).metrics


def compare_on_test_set(
    checkpoint: Path, spec: DataSpec, predictors: PredictorCache, device: str, backend: str | None = None
) -> dict[str, float] | None:
    """:func:`metrics_on_test_set` of the active model, or ``None`` when it fails (the new model is saved
    either way).

    Args:
        checkpoint: The active checkpoint.
        spec: The new run's data.
        predictors: The app's predictor cache.
        device: Where to run the model.
        backend: Backend of CPU predictors.

    Returns:
        The metrics, or ``None``.
    """
    try:
        return metrics_on_test_set(checkpoint, spec, predictors, device, backend)
    except Exception as exc:  # noqa: BLE001 - the new model is saved either way
        log.warning("could not evaluate %s on the new test set: %s", checkpoint.name, exc)
        return None
