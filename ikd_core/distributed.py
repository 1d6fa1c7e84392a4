"""Multi-process training with PyTorch's own engine (``torchrun`` + DistributedDataParallel).

Every statistic the method needs from "the batch" is taken over the global batch: AHSM margins,
hard sets, pixel and context similarity losses (through autograd-aware all-reduces of sums and
C x C Grams), and the student's batch-norm statistics. Hence N processes with batch B train
exactly like one process with batch N * B on the same samples (up to float rounding).

    torchrun --nproc_per_node 2 -m ikd_core train --data demo --category demo_texture --batch-size 4
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler, Sampler


def is_distributed_env() -> bool:
    """True when started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> tuple[int, int]:
    """Initialise the default process group from torchrun's variables: (rank, world size)."""
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def all_reduce_sum(x: Tensor) -> Tensor:
    """Autograd-aware sum over ranks (the backward pass sums gradients over ranks too)."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x, op=dist.ReduceOp.SUM)


class EpochSampler(Sampler[int]):
    """Single-process sampler drawing the same permutation per epoch as ``DistributedSampler``
    (``randperm`` seeded with seed + epoch), so one process with batch N * B sees the same global
    batches as N processes with batch B."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def distributed_sampler(ds: Dataset, seed: int) -> DistributedSampler:
    return DistributedSampler(ds, shuffle=True, seed=seed, drop_last=True)


def _global_batch_norm(self: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """Batch norm whose training statistics are those of the global batch."""
    c = x.shape[1]
    xf = x.float()
    local = torch.cat([xf.sum((0, 2, 3)), xf.square().sum((0, 2, 3)),
                       xf.new_tensor([x.numel() / c])])
    stats = all_reduce_sum(local)
    n = stats[-1]
    mean = stats[:c] / n
    var = (stats[c : 2 * c] / n - mean.square()).clamp_min(0.0)
    if self.track_running_stats and self.running_mean is not None:
        with torch.no_grad():
            momentum = 0.1 if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
            unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
            self.num_batches_tracked += 1
    y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
    if self.affine:
        y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
    return y.to(x.dtype)


def _global_bn(module: nn.BatchNorm2d, x: Tensor) -> Tensor:
    if not (module.training and dist.is_initialized()):
        return super(type(module), module).forward(x)  # the original layer
    y = _global_batch_norm(module, x)
    # timm's BatchNormAct2d applies dropout and activation after the normalisation.
    for attr in ("drop", "act"):
        fn = getattr(module, attr, None)
        if fn is not None:
            y = fn(y)
    return y


_GLOBAL_TYPES: dict[type, type] = {}


def convert_batch_norm(module: nn.Module) -> nn.Module:
    """Make every BatchNorm2d of ``module`` (timm's BatchNormAct2d included) use global-batch
    statistics, in place, keeping parameters and buffers. ``nn.SyncBatchNorm`` would do this on
    GPUs only; this works with gloo on CPUs too."""
    generated = tuple(_GLOBAL_TYPES.values())
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d) and not isinstance(m, generated):
            base = type(m)
            if base not in _GLOBAL_TYPES:
                _GLOBAL_TYPES[base] = type(f"Global{base.__name__}", (base,), {"forward": _global_bn})
            m.__class__ = _GLOBAL_TYPES[base]
    return module
