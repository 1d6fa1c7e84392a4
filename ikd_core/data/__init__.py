"""Datasets: MVTec AD, your own folder, and the synthetic demo set."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FolderDataset": "folder",
    "MVTecDataset": "mvtec",
    "MVTEC_CATEGORIES": "mvtec",
    "TEXTURE_CATEGORIES": "mvtec",
    "OBJECT_CATEGORIES": "mvtec",
    "Sample": "mvtec",
    "list_categories": "mvtec",
    "DEMO_CATEGORIES": "synthetic",
    "generate_demo_dataset": "synthetic",
    "ensure_demo_dataset": "synthetic",
    "download_mvtec": "download",
    "download_file": "download",
    "safe_extract": "download",
    "load_image": "transforms",
    "image_header_size": "transforms",
    "image_pixels": "transforms",
    "image_to_tensor": "transforms",
    "mask_to_tensor": "transforms",
    "denormalize": "transforms",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Lazy re-exports, so importing one submodule does not import the others (and torch)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
