"""Device choice and mixed precision: the bottom of the engine (imports nothing else of it)."""

from __future__ import annotations

import torch


def select_device(name: str = "auto") -> torch.device:
    """The device to run on.

    Args:
        name: ``auto`` (CUDA, then Apple MPS, then CPU) or any torch device name (``cpu``, ``cuda:1``).

    Returns:
        The torch device.
    """
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def training_autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """Mixed precision for training steps: bf16 (fp16 where the GPU lacks bf16) on CUDA only, off elsewhere."""
    dtype = torch.bfloat16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled and device.type == "cuda")


def full_precision(device: torch.device) -> torch.autocast:
    """Autocast off: maps, thresholds and metrics are always computed in float32, whatever the caller's context."""
    return torch.autocast(device_type=device.type, enabled=False)
