"""Training the IKD student, fitting the score normalisation, evaluation and checkpointing."""

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
from .checkpoint import save_checkpoint
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .distributed import EpochSampler, all_reduce_sum, convert_batch_norm, distributed_sampler
from .errors import IKDError
from .loss import AllReduce, IKDLoss
from .metrics import evaluate
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

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.epochs is None and self.max_minutes is None:
            raise ValueError("epochs may only be left out (None) when max_minutes is set")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SCHEDULES = ("constant", "cosine", "linear")

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


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple MPS, then CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)


def to_uint8(image: Tensor) -> Tensor | None:
    """The 8-bit pixels of an ImageNet-normalised (3, H, W) image, or None where the image is not exactly 8-bit
    pixels (then only a float copy keeps it): uint8 holds the same image in a quarter of the memory."""
    u8 = (image.unsqueeze(0).float() * _STD + _MEAN).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    if not torch.allclose(normalize_uint8(u8), image.unsqueeze(0).float(), rtol=0.0, atol=1e-4):
        return None
    return u8[0]


def normalize_uint8(batch: Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    """ImageNet-normalise a (B, 3, H, W) uint8 batch -> float32, vectorised (``(x / 255 - mean) / std``)."""
    mean, std = _MEAN.to(batch.device), _STD.to(batch.device)
    x = batch.to(dtype=torch.float32, memory_format=memory_format)
    return x.div_(255.0).sub_(mean).div_(std)


class CachedDataset(Dataset):
    """Keeps decoded, resized items in memory: every epoch after the first skips image decoding.

    ``keys``: the item fields kept (default all). ``uint8``: images that are exactly 8-bit pixels are held as
    uint8 (a quarter of float32's memory); the training loop normalises the batch with :func:`normalize_uint8`.
    """

    def __init__(self, base: Dataset, keys: tuple[str, ...] | None = None, uint8: bool = False) -> None:
        self.base = base
        self.keys = keys
        self.uint8 = uint8
        self._cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if idx not in self._cache:
            item = self.base[idx]
            if self.keys is not None:
                item = {k: item[k] for k in self.keys}
            if self.uint8 and isinstance(item.get("image"), Tensor) and item["image"].dtype != torch.uint8:
                u8 = to_uint8(item["image"])
                if u8 is not None:
                    item = {**item, "image": u8}
            self._cache[idx] = item
        return self._cache[idx]


def collate_images(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Training batch ``{"image": (B, 3, H, W)}``: uint8 when every item is uint8 (normalised later, on the
    batch), else float32 (uint8 items normalised first)."""
    images = [it["image"] for it in items]
    if all(im.dtype == torch.uint8 for im in images):
        return {"image": torch.stack(images)}
    return {"image": torch.stack([normalize_uint8(im[None])[0] if im.dtype == torch.uint8 else im.float()
                                  for im in images])}


def split_holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``n`` good training images into (train, held-out) indices."""
    n_hold = int(round(n * fraction)) if n >= 5 else 0
    n_hold = min(max(n_hold, 1 if fraction > 0 and n >= 5 else 0), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_hold:]), sorted(perm[:n_hold])


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    dtype = torch.bfloat16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled and device.type == "cuda")


@torch.no_grad()
def predict_maps(model: IKDModel, loader: DataLoader, device: torch.device) -> dict[str, Tensor]:
    """Run the model over a loader: maps (N,H,W), scores (N,), labels (N,), masks (N,H,W).

    Always float32 with autocast off, whatever the caller's context: the threshold fit, the metrics and
    :class:`~ikd_core.predict.Predictor` must all see the same maps (mixed precision is for training steps).
    """
    model.eval()
    maps, labels, masks = [], [], []
    for batch in loader:
        with torch.autocast(device_type=device.type, enabled=False):
            m = model(batch["image"].to(device, non_blocking=True))
        maps.append(m.float()[:, 0].cpu())
        labels.append(torch.as_tensor(batch["label"]))
        masks.append(batch["mask"][:, 0])
    out = {"maps": torch.cat(maps), "labels": torch.cat(labels), "masks": torch.cat(masks)}
    out["scores"] = out["maps"].flatten(1).amax(dim=1)
    return out


def fit_normalization(maps: Tensor | list[Tensor], k: float = 3.0) -> dict[str, float]:
    """Threshold and colour scale from held-out good maps.

    threshold = max(mean + k * std, max) of the image scores (max of each map), so no held-out good
    image is above it; ``lo`` = median good pixel.
    The normalised score 0.5 * (x - lo) / (threshold - lo) puts the threshold at 0.5.
    """
    if isinstance(maps, (list, tuple)):  # maps of different sizes (e.g. tiled at native resolution)
        scores = torch.stack([m.max() for m in maps]).double()
        flat = torch.cat([m.flatten() for m in maps])
    else:
        scores = maps.flatten(1).amax(dim=1).double()
        flat = maps.flatten()
    mean = scores.mean().item()
    std = scores.std().item() if scores.numel() > 1 else 0.0
    if flat.numel() > 1_000_000:
        flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    lo = flat.double().median().item()
    threshold = max(mean + k * std, scores.max().item())
    if threshold <= lo:
        threshold = lo + 1e-12
    return {
        "threshold": threshold,
        "lo": lo,
        "holdout_score_mean": mean,
        "holdout_score_std": std,
        "holdout_score_max": scores.max().item(),
        "n_holdout": int(scores.numel()),
    }


@torch.no_grad()
def fit_tile_normalization(model: IKDModel, paths: list[str], image_size: int, device: torch.device,
                           k: float = 3.0) -> dict[str, float]:
    """Threshold and colour scale for tile mode: the held-out good images scored in ``image_size`` tiles at their
    native resolution (as ``Predictor(tile=True)`` does), fitted like :func:`fit_normalization`."""
    from .data.transforms import load_image
    from .predict import tiled_map

    model.eval()

    def maps_fn(batch: Tensor) -> Tensor:
        with torch.autocast(device_type=device.type, enabled=False):
            return model(batch.to(device))[:, 0].float().cpu()

    maps = [torch.from_numpy(tiled_map(maps_fn, load_image(p), image_size)[0]) for p in paths]
    return fit_normalization(maps, k)


def _loader(ds: Dataset, batch_size: int, cfg: TrainConfig) -> DataLoader:
    """An in-order evaluation loader."""
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=cfg.num_workers)


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
        out_path: where to save the checkpoint (``None``: not saved).
        callback: called with :class:`Progress` after every step and at each phase.
        should_stop: polled every step; when it returns True training ends and nothing is saved, unless
            ``keep_on_stop`` (a bool, or a callable asked at that moment) is true: then the model trained so far
            is still fitted, evaluated and saved, marked ``stopped_early`` / ``stopped_by_user`` with a ``note``
            (a stop before the first step keeps nothing).

    Under torch.distributed (``torchrun``), each process trains on its share of every global batch
    with DDP, all batch statistics are global, and only rank 0 fits, evaluates and saves.
    """
    cfg = config or TrainConfig()
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank = dist.get_rank() if distributed else 0
    device = device or select_device(cfg.device)
    train_idx, hold_idx = split_holdout(len(train_ds), cfg.holdout_fraction, cfg.seed)  # type: ignore[arg-type]
    fit_ds: Dataset = CachedDataset(Subset(train_ds, train_idx), keys=("image",), uint8=True)
    hold_ds: Dataset = Subset(train_ds, hold_idx) if hold_idx else Subset(train_ds, train_idx)

    model = IKDModel(cfg.backbone, cfg.teacher_weights, cfg.combine, cfg.sigma, cfg.feature_pool).to(device)
    # channels_last only on one process: under DDP (gloo, CPU) it made the two-process run drift from the
    # one-process run on the same global batch (tests/test_distributed.py), so DDP keeps the default layout.
    fmt = torch.channels_last if cfg.channels_last and not distributed else torch.contiguous_format
    model = model.to(memory_format=fmt)
    weights = cfg.level_weights or model.default_level_weights
    criterion = IKDLoss(len(model.student.channels), weights, cfg.gamma, cfg.hard_mining, cfg.alpha,
                        cfg.beta).to(device)
    net: torch.nn.Module = model
    all_reduce: AllReduce | None = None
    if distributed:
        convert_batch_norm(model.student)
        all_reduce = all_reduce_sum
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=cfg.backbone.startswith("hrnet"))
    optimizer = torch.optim.AdamW(model.student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())

    sampler = distributed_sampler(fit_ds, cfg.seed) if distributed else EpochSampler(len(fit_ds), cfg.seed)
    loader = DataLoader(fit_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        drop_last=len(fit_ds) > cfg.batch_size, persistent_workers=cfg.num_workers > 0,
                        collate_fn=collate_images)
    steps = max(1, len(loader))
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
    planned_steps = cfg.epochs * steps if cfg.epochs is not None else None
    history: list[dict[str, float]] = []
    reduce_kwargs = {"all_reduce": all_reduce} if all_reduce is not None else {}
    seen = 0
    t_train = _clock()
    last_loss = float("nan")
    lr_now = cfg.lr
    stopped_early = False
    stopped_by_user = False

    def keep() -> bool:
        """A user's stop keeps the partial model (at least one step trained, and ``keep_on_stop``)."""
        return bool(history) and bool(keep_on_stop() if callable(keep_on_stop) else keep_on_stop)

    def report(epoch: int, step: int, phase: str, now: float | None = None) -> None:
        if callback is None:
            return
        elapsed = (_clock() if now is None else now) - t_train
        rate = seen / elapsed if elapsed > 0 else 0.0
        done = (epoch - 1) * steps + step
        time_frac = min(1.0, elapsed / budget_s) if budget_s else None
        etas = []
        if planned_steps is not None and done:
            etas.append(elapsed / done * (planned_steps - done))
        if budget_s is not None:
            etas.append(max(0.0, budget_s - elapsed))
        eta = min(etas) if etas else float("nan")
        callback(Progress(epoch, cfg.epochs or 0, step, steps, last_loss, rate, elapsed, eta, phase, lr_now,
                          time_frac))

    def time_state(now: float, prev: float | None, done: int) -> tuple[bool, float]:
        """(out of time, run progress at the end of the coming step) from this rank's clock, one decision for
        all ranks. The coming step is assumed to take as long as the last one, so the lr reaches its end on
        the step that ends at the deadline (and on the last planned step)."""
        elapsed = now - t_train
        step_s = now - prev if prev is not None else 0.0
        progress = (done + 1) / planned_steps if planned_steps is not None else 0.0
        over = False
        if budget_s is not None:
            over = bool(done) and elapsed >= budget_s
            progress = max(progress, (elapsed + step_s) / budget_s)
        if distributed and (budget_s is not None or cfg.schedule != "constant"):
            flag = torch.tensor([float(over), progress], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            over, progress = bool(flag[0].item()), float(flag[1].item())
        return over, min(progress, 1.0)

    prev_now: float | None = None
    epoch = 0
    while cfg.epochs is None or epoch < cfg.epochs:
        epoch += 1
        sampler.set_epoch(epoch)
        net.train()
        for step, batch in enumerate(loader, start=1):
            now = _clock()
            over, progress = time_state(now, prev_now, len(history))
            prev_now = now
            if over:
                stopped_early = True
                break
            if should_stop is not None and should_stop():
                if keep():
                    stopped_early = stopped_by_user = True
                    break
                return TrainResult(model, {}, {}, history, None, cancelled=True,
                                   seconds=time.perf_counter() - start)
            lr_now = cfg.lr * lr_factor(cfg.schedule, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            x = batch["image"].to(device, non_blocking=True)
            x = normalize_uint8(x, fmt) if x.dtype == torch.uint8 else x.contiguous(memory_format=fmt)
            with _autocast(device, use_amp):
                t_feats, s_feats = net(x)
            loss = criterion(t_feats, s_feats, **reduce_kwargs)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} at epoch {epoch}, step {step}; training stopped and "
                    "no checkpoint was written (try a lower learning rate or check the images)"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += x.shape[0]
            last_loss = loss.item()
            history.append({"epoch": epoch, "step": (epoch - 1) * steps + step, "loss": last_loss, "lr": lr_now})
            report(epoch, step, "train")
        if stopped_by_user:
            break
        if (test_ds is not None and cfg.val_every and epoch % cfg.val_every == 0
                and (cfg.epochs is None or epoch < cfg.epochs)):
            report(epoch, steps, "validate")
            res = predict_maps(model, _loader(test_ds, 8, cfg), device)
            history[-1].update({f"val_{k}": v for k, v in compute_metrics(res).items()})
        if stopped_early:
            break
    train_seconds = _clock() - t_train
    # Back to the default layout: the held-out fit, the test maps and the saved weights are then exactly those
    # of a model loaded from the checkpoint (Predictor).
    model = model.to(memory_format=torch.contiguous_format)
    if should_stop is not None and should_stop():
        if not keep():
            return TrainResult(model, {}, {}, history, None, cancelled=True, seconds=time.perf_counter() - start)
        stopped_early = stopped_by_user = True
    if rank != 0:  # rank 0 fits the threshold, evaluates and saves
        return TrainResult(model, {}, {}, history, None, seconds=time.perf_counter() - start)

    report(epoch, steps, "fit")
    hold = predict_maps(model, _loader(hold_ds, 8, cfg), device)
    norm = fit_normalization(hold["maps"], cfg.threshold_k)
    norm["holdout_is_train"] = not hold_idx
    samples = getattr(train_ds, "samples", None)
    tile_norm = None
    if samples is not None:  # the same held-out images, scored in tiles at native resolution (predict --tile)
        tile_norm = fit_tile_normalization(model, [samples[i].path for i in (hold_idx or train_idx)],
                                           cfg.image_size, device, cfg.threshold_k)
    metrics: dict[str, float] = {}
    test_outputs = None
    if test_ds is not None:
        report(epoch, steps, "evaluate")
        test_outputs = predict_maps(model, _loader(test_ds, 8, cfg), device)
        metrics = compute_metrics(test_outputs)

    cfg_dict = cfg.to_dict()
    cfg_dict["level_weights"] = list(weights)
    metadata: dict[str, Any] = {
        "backbone": cfg.backbone,
        "levels": list(model.student.spec.out_indices),
        "channels": model.student.channels,
        "image_size": cfg.image_size,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "teacher": {"source": model.teacher_source, "fingerprint": model.teacher_fingerprint},
        "category": category,
        "data": data_info or {},
        "train_config": cfg_dict,
        "score_normalization": norm,
        **({"tile_normalization": tile_norm} if tile_norm is not None else {}),
        "margins": [float(m.margin) for m in criterion.margins],
        "metrics": metrics,
        "epochs_completed": round(len(history) / steps, 2),
        "stopped_early": stopped_early,
        "stopped_by_user": stopped_by_user,
        "train_seconds": round(train_seconds, 2),
        "images_per_sec": round(seen / train_seconds, 3) if train_seconds > 0 else None,
        "final_loss": last_loss,
        "loss_per_epoch": [
            float(np.mean([h["loss"] for h in history if h["epoch"] == e]))
            for e in sorted({h["epoch"] for h in history})
        ],
        "n_train": len(train_idx),
        "device": str(device),
        "world_size": dist.get_world_size() if distributed else 1,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} / {platform.processor() or platform.system()}",
        "torch": torch.__version__,
        "ikd_core": __version__,
    }
    if stopped_early:
        why = "stopped by the user" if stopped_by_user else f"stopped at the time limit ({cfg.max_minutes:g} min)"
        planned = f" of {cfg.epochs} planned" if cfg.epochs is not None else ""
        metadata["note"] = (f"{why} after {metadata['epochs_completed']:g}{planned} epochs ({len(history)} steps); "
                            "compare its metrics before relying on it")
    ckpt = None
    if out_path is not None:
        ckpt = save_checkpoint(out_path, model.student.state_dict(), metadata)
    report(epoch, steps, "done")
    return TrainResult(model, metadata, metrics, history, ckpt, seconds=time.perf_counter() - start,
                       test_outputs=test_outputs)


def compute_metrics(res: dict[str, Tensor]) -> dict[str, float]:
    """Metrics of :func:`predict_maps` outputs (unlabelled images, label -1, are left out)."""
    labels = res["labels"]
    known = labels >= 0
    if not bool(known.any()):
        return {}
    has_masks = bool(res["masks"][known].sum() > 0)
    return evaluate(
        res["scores"][known],
        labels[known],
        res["maps"][known] if has_masks else None,
        res["masks"][known] if has_masks else None,
    )

