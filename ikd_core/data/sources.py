"""One entry point from "which data" (MVTec AD, the demo set, your own folder) to datasets."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import DataError
from .folder import FolderDataset
from .mvtec import MVTEC_CATEGORIES, MVTecDataset, check_category_name
from .synthetic import DEMO_CATEGORIES, ensure_demo_dataset

DEFAULT_DEMO_ROOT = Path("data/demo")
DEFAULT_MVTEC_ROOT = Path("data/mvtec")
KINDS = ("demo", "mvtec", "folder")


@dataclass
class DataSpec:
    """Where training and test images come from.

    ``kind``: ``demo`` (generated on first use under ``root``), ``mvtec`` (``root/<category>``) or
    ``folder`` (``good_dir`` of good images, optional ``test_dir`` / ``mask_dir``).
    """

    kind: str = "demo"
    category: str = "demo_texture"
    root: str | None = None
    good_dir: str | None = None
    test_dir: str | None = None
    mask_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        return cls(**{k: d[k] for k in ("kind", "category", "root", "good_dir", "test_dir", "mask_dir") if k in d})


def build_datasets(spec: DataSpec, image_size: int = 256) -> tuple[Dataset, Dataset | None]:
    """(train, test-or-None) datasets for ``spec``; every data problem is a :class:`DataError`
    raised here, before any training starts."""
    if spec.kind == "demo":
        if spec.category not in DEMO_CATEGORIES:
            raise DataError(f"unknown demo category {spec.category!r}; choose one of {', '.join(DEMO_CATEGORIES)}")
        root = ensure_demo_dataset(spec.root or DEFAULT_DEMO_ROOT)
        return (MVTecDataset(root, spec.category, "train", image_size),
                MVTecDataset(root, spec.category, "test", image_size))
    if spec.kind == "mvtec":
        check_category_name(spec.category)
        root = Path(spec.root or DEFAULT_MVTEC_ROOT)
        if spec.category not in MVTEC_CATEGORIES and not (root / spec.category).is_dir():
            raise DataError(f"unknown MVTec AD category {spec.category!r}; choose one of {', '.join(MVTEC_CATEGORIES)}")
        return (MVTecDataset(root, spec.category, "train", image_size),
                MVTecDataset(root, spec.category, "test", image_size))
    if spec.kind == "folder":
        if not spec.good_dir:
            raise DataError("folder data needs a folder of good images (--good-dir DIR)")
        train = FolderDataset(spec.good_dir, split="train", image_size=image_size)
        test = None
        if spec.test_dir:
            test = FolderDataset(spec.good_dir, spec.test_dir, spec.mask_dir, split="test", image_size=image_size)
        return train, test
    raise DataError(f"unknown data kind {spec.kind!r}; choose one of {', '.join(KINDS)}")


def default_checkpoint_name(category: str, backbone: str) -> str:
    """``pretrained/<category>-<backbone>.safetensors`` naming, with a safe category."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in category).strip("._") or "custom"
    return f"{safe}-{backbone}.safetensors"

