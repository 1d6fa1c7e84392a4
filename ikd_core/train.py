"""The training loop: set up a run, train the student on good images, then calibrate, evaluate and save.

:func:`train` is three steps, each on a screen: :func:`_setup` (data, model, loss, optimiser), :func:`_train_steps`
(epochs until the planned steps, the time budget or a stop) and :func:`_finish` (threshold fits, test metrics,
metadata, checkpoint).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from . import __version__
from .calibration import (
    fit_fusion_normalization,
    fit_level_normalization,
    fit_normalization,
    fit_tile_normalization,
)
from .checkpoint import save_checkpoint
from .data.anomaly_synthesis import AnomalySynthesizer
from .data.batching import CachedDataset, collate_images, normalize_uint8, split_holdout
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .device import select_device, training_autocast
from .distributed import EpochSampler, all_reduce_sum, convert_batch_norm, distributed_sampler
from .errors import IKDError
from .evaluation import EVAL_BATCH_SIZE, evaluate_model, predict_maps
from .loss import CosineDistillationLoss, IKDLoss
from .segmentation import SCORE_MAPS, SEGMENT_LR, SEGMENT_MAPS
from .torch_model import IKDModel


class TrainingError(IKDError):
    """Training could not finish (e.g. the loss became NaN)."""


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults follow the paper (constant learning rate), except the
    backbone (offline default ``efficientnet_lite0``; the paper uses ``hrnet_w32``)."""

    backbone: str = "efficientnet_lite0"
    image_size: int = 256
    epochs: int | None = 50  # None: train until max_minutes (which must then be set)
    batch_size: int = 2
    lr: float = 5e-5
    weight_decay: float = 1e-2
    gamma: float = 1.0  # CSL weight; 0 = CSL off
    hard_mining: bool = True  # AHSM; False = all positions
    alpha: float = 0.01
    beta: float = 2.0
    level_weights: tuple[float, ...] | None = None  # None: the backbone's (HRNet: 1, 2)
    combine: str = "product"
    sigma: float = 4.0
    feature_pool: bool = False
    holdout_fraction: float = 0.1  # good training images kept aside to fit the threshold
    threshold_k: float = 3.0  # threshold = max(mean + k * std, max) of held-out good image scores
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # CUDA only; the loss is always float32
    num_workers: int = 0
    val_every: int = 0  # evaluate on the test set every N epochs (0: only at the end)
    teacher_weights: str | None = None
    max_minutes: float | None = None  # training time limit: stop (and still save) when reached
    # Learning-rate schedule: "constant" (paper), or "cosine" / "linear" decay to 0 as a function of the run's
    # progress = the larger of elapsed / max_minutes and step / planned steps ("budget-aware", Li et al. 2020).
    # Default constant: higher mean AU-PRO than cosine over the budget cells of results/quality.md (idle machine).
    schedule: str = "constant"
    channels_last: bool = True  # NHWC layout for teacher and student (faster convolutions; one process only)
    # Score side: per-level map normalisation fitted on the held-out images (EfficientAD quantiles 0.9 -> 0,
    # 0.995 -> 0.1) before the levels are combined; image score = max (1) or mean of the top k pixels.
    level_norm: bool = False
    score_topk: int = 1
    # Student side: "forward" (the paper's: the teacher's architecture on the image) or "reverse" (RD4AD: a decoder
    # rebuilds the teacher's levels from a one-class bottleneck of them); loss "ikd" (AHSM + CSL) or "cosine" (RD's
    # per-level 1 - cos); denoise: the student sees the image with a synthetic anomaly and must output the teacher's
    # features of the clean image (DeSTSeg's first stage).
    student: str = "forward"
    loss: str = "ikd"
    denoise: bool = False
    # DeSTSeg's second stage: a segmentation head on teacher x student features of the denoising student's augmented
    # images, trained on their anomaly masks beside the student (ikd_core/segmentation.py); its output is the map.
    segment: bool = False
    # with segment: "head" (the head's map, DeSTSeg's) or "fused" (distillation map + head map, each normalised by
    # held-out quantiles as EfficientAD fuses its two maps)
    segment_map: str = "head"
    # with the fused map: where the image score (and its threshold) is taken, "map" (the fused map) or
    # "distillation" (its distillation part; the map shown stays the fused one)
    score_map: str = "map"
    # EfficientAD's penalty: weight of the student's mean squared raw output on out-of-distribution images
    # (transformed procedural textures), relative to its output on the batch (IKDModel.ood_ratio); 0 = off.
    ood_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.epochs is None and self.max_minutes is None:
            raise ValueError("epochs may only be left out (None) when max_minutes is set")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not (math.isfinite(self.ood_penalty) and self.ood_penalty >= 0):
            raise ValueError(f"ood_penalty must be a finite number >= 0, got {self.ood_penalty}")
        if self.score_topk < 1:
            raise ValueError(f"score_topk must be >= 1, got {self.score_topk}")
        if self.segment and not self.denoise:
            raise ValueError("the segmentation head learns from the denoising student's synthetic anomalies: "
                             "segment needs denoise (--no-segment turns the head off)")
        if self.segment and self.level_norm:
            raise ValueError("with the segmentation head the map is the head's output: level normalisation does "
                             "not apply (--no-segment turns the head off)")
        if self.level_norm and self.combine == "product":
            raise ValueError("level normalisation maps good pixels below 0: combine the levels with 'sum'")
        for key, allowed in (("student", STUDENTS), ("loss", LOSSES), ("segment_map", SEGMENT_MAPS),
                             ("score_map", SCORE_MAPS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"unknown {key} {getattr(self, key)!r}; choose one of: {', '.join(allowed)}")
        if self.score_map != "map" and not (self.segment and self.segment_map == "fused"):
            raise ValueError("an image score from the distillation map needs the fused map (--segment --segment-map "
                             "fused): without the head the map is the distillation map already")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SCHEDULES = ("constant", "cosine", "linear")
OOD_POOL = 64
"""Foreign textures made once per run for the out-of-distribution penalty."""
STUDENTS = ("forward", "reverse")
LOSSES = ("ikd", "cosine")

_clock = time.perf_counter
"""The training loop's clock (tests replace it with a fake one)."""


def lr_factor(schedule: str, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1] of the run: 1 throughout for ``constant``,
    ``(1 + cos(pi p)) / 2`` for ``cosine``, ``1 - p`` for ``linear`` (both reach 0 at p = 1)."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "linear":
        return 1.0 - p
    raise ValueError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")


@dataclass
class Progress:
    """One training progress report. ``epochs`` is 0 when the run is bounded by time only; ``time_fraction``
    is elapsed / time budget (None without a budget)."""

    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    loss: float
    images_per_sec: float
    elapsed_s: float
    eta_s: float
    phase: str = "train"  # train | validate | fit | evaluate | done
    lr: float = float("nan")
    time_fraction: float | None = None

    @property
    def fraction(self) -> float:
        """Done fraction of the run: the larger of the step fraction (with epochs) and the time fraction."""
        frac = 0.0
        if self.epochs:
            total = max(1, self.epochs * self.steps_per_epoch)
            frac = ((self.epoch - 1) * self.steps_per_epoch + self.step) / total
        if self.time_fraction is not None:
            frac = max(frac, self.time_fraction)
        return min(1.0, frac)


@dataclass
class TrainResult:
    """What a run produced."""

    model: IKDModel
    metadata: dict[str, Any]
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    cancelled: bool = False
    seconds: float = 0.0
    test_outputs: dict[str, Tensor] | None = None  # maps, scores, labels, masks of the test set


class _Run:
    """The state of one training run: what :func:`_setup` builds and :func:`_train_steps` advances."""

    def __init__(self, train_ds: Dataset, cfg: TrainConfig, device: torch.device | None) -> None:
        self.cfg = cfg
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.device = device or select_device(cfg.device)
        n = len(train_ds)  # type: ignore[arg-type]
        self.train_idx, self.hold_idx = split_holdout(n, cfg.holdout_fraction, cfg.seed)
        self.fit_ds: Dataset = CachedDataset(Subset(train_ds, self.train_idx), keys=("image",), uint8=True)
        self.hold_ds: Dataset = Subset(train_ds, self.hold_idx or self.train_idx)
        self.history: list[dict[str, float]] = []
        self.seen = 0
        self.epoch = 0
        self.last_loss = float("nan")
        self.lr_now = cfg.lr
        self.stopped_early = False
        self.stopped_by_user = False
        self.t_train = 0.0
        self.train_seconds = 0.0
        self.level_norm: dict[str, list[float]] | None = None
        self.fusion_norm: dict[str, list[float]] | None = None
        # denoising student: synthetic anomalies drawn from a generator of the run's seed and this rank
        self.synthesizer = AnomalySynthesizer() if cfg.denoise else None
        # out-of-distribution images of the penalty: the synthesizer's foreign textures, whole images
        self.ood_source = AnomalySynthesizer() if cfg.ood_penalty > 0 else None
        self.ood_pool: Tensor | None = None
        self.generator = torch.Generator().manual_seed(cfg.seed + self.rank)

    def report(self, callback: Callable[[Progress], None] | None, step: int, phase: str) -> None:
        """Send a :class:`Progress` of the current epoch's ``step`` to ``callback``."""
        if callback is None:
            return
        elapsed = _clock() - self.t_train
        done = (self.epoch - 1) * self.steps + step
        etas = []
        if self.planned_steps is not None and done:
            etas.append(elapsed / done * (self.planned_steps - done))
        if self.budget_s is not None:
            etas.append(max(0.0, self.budget_s - elapsed))
        callback(Progress(self.epoch, self.cfg.epochs or 0, step, self.steps, self.last_loss,
                          self.seen / elapsed if elapsed > 0 else 0.0, elapsed, min(etas) if etas else float("nan"),
                          phase, self.lr_now, min(1.0, elapsed / self.budget_s) if self.budget_s else None))

    def time_state(self, now: float, prev: float | None) -> tuple[bool, float]:
        """(out of time, run progress at the end of the coming step) from this rank's clock, one decision for all
        ranks. The coming step is assumed to take as long as the last one, so the lr reaches its end on the step that
        ends at the deadline (and on the last planned step)."""
        done = len(self.history)
        elapsed = now - self.t_train
        step_s = now - prev if prev is not None else 0.0
        progress = (done + 1) / self.planned_steps if self.planned_steps is not None else 0.0
        over = False
        if self.budget_s is not None:
            over = bool(done) and elapsed >= self.budget_s
            progress = max(progress, (elapsed + step_s) / self.budget_s)
        if self.distributed and (self.budget_s is not None or self.cfg.schedule != "constant"):
            flag = torch.tensor([float(over), progress], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            over, progress = bool(flag[0].item()), float(flag[1].item())
        return over, min(progress, 1.0)

    def ood_images(self, x: Tensor) -> Tensor | None:
        """Out-of-distribution images like ``x`` (normalised, same size and layout; a quarter of its batch, at least
        one) for the penalty, drawn from a pool of :data:`OOD_POOL` foreign textures made once (as EfficientAD draws
        from ImageNet); None when the penalty is off."""
        if self.ood_source is None:
            return None
        if self.ood_pool is None:
            pixels = self.ood_source.foreign_images(OOD_POOL, x.shape[-2], x.shape[-1], self.generator)
            self.ood_pool = pixels.mul(255).round().to(torch.uint8)
        pick = torch.randint(OOD_POOL, (max(1, x.shape[0] // 4),), generator=self.generator)
        return normalize_uint8(self.ood_pool[pick].to(x.device), self.fmt).to(x.dtype)

    def step(self, batch: dict[str, Tensor], progress: float, step: int) -> None:
        """One optimisation step at run ``progress`` (sets the scheduled learning rate first)."""
        cfg = self.cfg
        factor = lr_factor(cfg.schedule, progress)
        self.lr_now = cfg.lr * factor
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        x = batch["image"].to(self.device, non_blocking=True)
        x = normalize_uint8(x, self.fmt) if x.dtype == torch.uint8 else x.contiguous(memory_format=self.fmt)
        x_student, mask = self.synthesizer(x, self.generator) if self.synthesizer is not None else (None, None)
        x_ood = self.ood_images(x)
        with training_autocast(self.device, self.use_amp):
            t, s, *extra = self.net(x, x_student, x_ood, mask if cfg.segment else None)
        loss = self.criterion(t, s, **self.reduce_kwargs)
        if x_ood is not None:
            loss = loss + self.cfg.ood_penalty * extra.pop(0)
        if cfg.segment:
            loss = loss + extra.pop(0)  # only the head's parameters get its gradient
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss.item()} at epoch {self.epoch}, step {step}; training stopped and "
                "no checkpoint was written (try a lower learning rate or check the images)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.seen += x.shape[0]
        self.last_loss = loss.item()
        self.history.append({"epoch": self.epoch, "step": (self.epoch - 1) * self.steps + step,
                             "loss": self.last_loss, "lr": self.lr_now})


def _setup(train_ds: Dataset, cfg: TrainConfig, device: torch.device | None) -> _Run:
    """Seed, split off the held-out images, build model, loss, optimiser and loader."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    run = _Run(train_ds, cfg, device)
    model = IKDModel(cfg.backbone, cfg.teacher_weights, cfg.combine, cfg.sigma, cfg.feature_pool,
                     score_topk=cfg.score_topk, student_kind=cfg.student, segment=cfg.segment,
                     segment_map=cfg.segment_map, score_map=cfg.score_map).to(run.device)
    # channels_last only on one process: under DDP (gloo, CPU) it made the two-process run drift from the
    # one-process run on the same global batch (tests/test_distributed.py), so DDP keeps the default layout.
    run.fmt = torch.channels_last if cfg.channels_last and not run.distributed else torch.contiguous_format
    run.model = model.to(memory_format=run.fmt)
    run.weights = cfg.level_weights or model.default_level_weights
    n_levels = len(model.levels)
    run.criterion = (IKDLoss(n_levels, run.weights, cfg.gamma, cfg.hard_mining, cfg.alpha, cfg.beta)
                     if cfg.loss == "ikd" else CosineDistillationLoss(n_levels, run.weights)).to(run.device)
    run.net = model
    run.reduce_kwargs = {}
    if run.distributed:
        convert_batch_norm(model.student)
        run.reduce_kwargs = {"all_reduce": all_reduce_sum}
        run.net = DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
                                          find_unused_parameters=cfg.backbone.startswith("hrnet"))
    groups = [{"params": list(model.student.parameters()), "lr": cfg.lr, "initial_lr": cfg.lr}]
    if model.segmenter is not None:
        groups.append({"params": list(model.segmenter.parameters()), "lr": SEGMENT_LR, "initial_lr": SEGMENT_LR})
    run.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    run.use_amp = cfg.amp and run.device.type == "cuda"
    run.scaler = torch.amp.GradScaler("cuda", enabled=run.use_amp and not torch.cuda.is_bf16_supported())
    n_fit = len(run.fit_ds)  # type: ignore[arg-type]
    run.sampler = distributed_sampler(run.fit_ds, cfg.seed) if run.distributed else EpochSampler(n_fit, cfg.seed)
    run.loader = DataLoader(run.fit_ds, batch_size=cfg.batch_size, sampler=run.sampler, num_workers=cfg.num_workers,
                            drop_last=n_fit > cfg.batch_size, persistent_workers=cfg.num_workers > 0,
                            collate_fn=collate_images)
    run.steps = max(1, len(run.loader))
    run.budget_s = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
    run.planned_steps = cfg.epochs * run.steps if cfg.epochs is not None else None
    return run


def _train_steps(run: _Run, test_ds: Dataset | None, callback: Callable[[Progress], None] | None,
                 should_stop: Callable[[], bool] | None, keep: Callable[[], bool]) -> bool:
    """Train until the planned epochs, the time budget or a stop. Returns False when a stop cancels the run (nothing
    is kept), True otherwise (``run.stopped_early`` / ``stopped_by_user`` say why it ended)."""
    cfg = run.cfg
    run.t_train = _clock()
    prev_now: float | None = None
    while cfg.epochs is None or run.epoch < cfg.epochs:
        run.epoch += 1
        run.sampler.set_epoch(run.epoch)
        run.net.train()
        for step, batch in enumerate(run.loader, start=1):
            now = _clock()
            over, progress = run.time_state(now, prev_now)
            prev_now = now
            if over:
                run.stopped_early = True
                break
            if should_stop is not None and should_stop():
                if not keep():
                    return False
                run.stopped_early = run.stopped_by_user = True
                break
            run.step(batch, progress, step)
            run.report(callback, step, "train")
        if run.stopped_by_user:
            break
        if (test_ds is not None and cfg.val_every and run.epoch % cfg.val_every == 0
                and (cfg.epochs is None or run.epoch < cfg.epochs)):
            run.report(callback, run.steps, "validate")
            val = evaluate_model(run.model, test_ds, run.device, num_workers=cfg.num_workers)
            run.history[-1].update({f"val_{k}": v for k, v in val.metrics.items()})
        if run.stopped_early:
            break
    run.train_seconds = _clock() - run.t_train
    return True


def _calibrate(run: _Run, train_ds: Dataset) -> tuple[dict[str, Any], dict[str, float] | None]:
    """Per-level map normalisation (when asked for), then whole-image and (for data sets of files) tile
    normalisation, all fitted on the held-out good images."""
    cfg = run.cfg
    loader = DataLoader(run.hold_ds, batch_size=EVAL_BATCH_SIZE, shuffle=False, num_workers=cfg.num_workers)
    if cfg.level_norm:
        run.level_norm = fit_level_normalization(run.model, loader, run.device)
        run.model.anomaly_map.set_level_normalization(run.level_norm["lo"], run.level_norm["hi"])
    if cfg.segment and cfg.segment_map == "fused":
        run.fusion_norm = fit_fusion_normalization(run.model, loader, run.device)
        run.model.set_fusion_normalization(run.fusion_norm["lo"], run.fusion_norm["hi"])
    hold = predict_maps(run.model, loader, run.device)
    norm: dict[str, Any] = fit_normalization(hold["maps"], cfg.threshold_k, cfg.score_topk,
                                             score_maps=hold.get("score_maps"))
    norm["holdout_is_train"] = not run.hold_idx
    samples = getattr(train_ds, "samples", None)
    if samples is None:
        return norm, None
    # the same held-out images, scored in tiles at native resolution (predict --tile)
    paths = [samples[i].path for i in (run.hold_idx or run.train_idx)]
    return norm, fit_tile_normalization(run.model, paths, cfg.image_size, run.device, cfg.threshold_k,
                                        cfg.score_topk)


def _metadata(run: _Run, category: str, data_info: dict[str, Any] | None, norm: dict[str, Any],
              tile_norm: dict[str, float] | None, metrics: dict[str, float]) -> dict[str, Any]:
    """The checkpoint's metadata: what was trained, how, on what, and what it measured."""
    cfg, model, history = run.cfg, run.model, run.history
    cfg_dict = cfg.to_dict()
    cfg_dict["level_weights"] = list(run.weights)
    epochs_done = sorted({h["epoch"] for h in history})
    meta: dict[str, Any] = {
        "backbone": cfg.backbone,
        "levels": model.levels,
        "channels": list(model.teacher.channels),
        "image_size": cfg.image_size,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "teacher": {"source": model.teacher_source, "fingerprint": model.teacher_fingerprint},
        "category": category,
        "data": data_info or {},
        "train_config": cfg_dict,
        "score_normalization": norm,
        **({"tile_normalization": tile_norm} if tile_norm is not None else {}),
        **({"level_normalization": run.level_norm} if run.level_norm is not None else {}),
        **({"fusion_normalization": run.fusion_norm} if run.fusion_norm is not None else {}),
        "margins": [float(m.margin) for m in getattr(run.criterion, "margins", [])],
        "metrics": metrics,
        "epochs_completed": round(len(history) / run.steps, 2),
        "stopped_early": run.stopped_early,
        "stopped_by_user": run.stopped_by_user,
        "train_seconds": round(run.train_seconds, 2),
        "images_per_sec": round(run.seen / run.train_seconds, 3) if run.train_seconds > 0 else None,
        "final_loss": run.last_loss,
        "loss_per_epoch": [float(np.mean([h["loss"] for h in history if h["epoch"] == e])) for e in epochs_done],
        "n_train": len(run.train_idx),
        "device": str(run.device),
        "world_size": dist.get_world_size() if run.distributed else 1,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} / {platform.processor() or platform.system()}",
        "torch": torch.__version__,
        "ikd_core": __version__,
    }
    if run.stopped_early:
        why = "stopped by the user" if run.stopped_by_user else f"stopped at the time limit ({cfg.max_minutes:g} min)"
        planned = f" of {cfg.epochs} planned" if cfg.epochs is not None else ""
        meta["note"] = (f"{why} after {meta['epochs_completed']:g}{planned} epochs ({len(history)} steps); "
                        "compare its metrics before relying on it")
    return meta


def train(
    train_ds: Dataset,
    test_ds: Dataset | None = None,
    config: TrainConfig | None = None,
    out_path: str | Path | None = None,
    category: str = "custom",
    data_info: dict[str, Any] | None = None,
    callback: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: torch.device | None = None,
    keep_on_stop: bool | Callable[[], bool] = False,
) -> TrainResult:
    """Train a student on good images, fit the normalisation, evaluate, save a checkpoint.

    Args:
        train_ds: good images (items with ``image``); a held-out part fits the threshold.
        test_ds: optional labelled test set for metrics.
        config: the run's :class:`TrainConfig` (default: the paper's setting on the offline backbone).
        out_path: where to save the checkpoint (``None``: not saved).
        category: the category name recorded in the metadata.
        data_info: where the data came from (recorded in the metadata).
        callback: called with :class:`Progress` after every step and at each phase.
        should_stop: polled every step; when it returns True training ends and nothing is saved, unless
            ``keep_on_stop`` (a bool, or a callable asked at that moment) is true: then the model trained so far
            is still fitted, evaluated and saved, marked ``stopped_early`` / ``stopped_by_user`` with a ``note``
            (a stop before the first step keeps nothing).
        device: where to train (default: ``config.device``).

    Returns:
        The :class:`TrainResult` (``cancelled`` when a stop kept nothing).

    Under torch.distributed (``torchrun``), each process trains on its share of every global batch
    with DDP, all batch statistics are global, and only rank 0 fits, evaluates and saves.
    """
    cfg = config or TrainConfig()
    start = time.perf_counter()
    run = _setup(train_ds, cfg, device)

    def keep() -> bool:
        """A user's stop keeps the partial model (at least one step trained, and ``keep_on_stop``)."""
        return bool(run.history) and bool(keep_on_stop() if callable(keep_on_stop) else keep_on_stop)

    finished = _train_steps(run, test_ds, callback, should_stop, keep)
    # Back to the default layout: the held-out fit, the test maps and the saved weights are then exactly those
    # of a model loaded from the checkpoint (Predictor).
    model = run.model = run.model.to(memory_format=torch.contiguous_format)
    if finished and should_stop is not None and should_stop():
        finished = keep()
        run.stopped_early = run.stopped_by_user = True
    if not finished:
        return TrainResult(model, {}, {}, run.history, None, cancelled=True, seconds=time.perf_counter() - start)
    if run.rank != 0:  # rank 0 fits the threshold, evaluates and saves
        return TrainResult(model, {}, {}, run.history, None, seconds=time.perf_counter() - start)
    return _finish(run, train_ds, test_ds, out_path, category, data_info, callback, start)


def _finish(run: _Run, train_ds: Dataset, test_ds: Dataset | None, out_path: str | Path | None, category: str,
            data_info: dict[str, Any] | None, callback: Callable[[Progress], None] | None,
            start: float) -> TrainResult:
    """Calibrate on the held-out images, evaluate on the test set, write the checkpoint."""
    run.report(callback, run.steps, "fit")
    norm, tile_norm = _calibrate(run, train_ds)
    metrics: dict[str, float] = {}
    test_outputs = None
    if test_ds is not None:
        run.report(callback, run.steps, "evaluate")
        result = evaluate_model(run.model, test_ds, run.device, num_workers=run.cfg.num_workers)
        test_outputs, metrics = result.outputs, result.metrics
    metadata = _metadata(run, category, data_info, norm, tile_norm, metrics)
    ckpt = None
    if out_path is not None:
        ckpt = save_checkpoint(out_path, run.model.trainable_state_dict(), metadata)
    run.report(callback, run.steps, "done")
    return TrainResult(run.model, metadata, metrics, run.history, ckpt, seconds=time.perf_counter() - start,
                       test_outputs=test_outputs)
