"""Training batches: decoded images cached as uint8, normalised on the batch, and the held-out split."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .transforms import IMAGENET_MEAN, IMAGENET_STD

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
