"""Test sets: the data a checkpoint was trained on, checks of training data, and finding an image's
ground truth by content."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..data.mvtec import Sample, image_size_of, list_categories
from ..data.sources import DataSpec, build_datasets


def check_training_data(spec: DataSpec, image_size: int) -> tuple[Any, Any]:
    """The (train, test-or-None) datasets of ``spec``, checked before any training starts.

    Besides the layout checks of :func:`~ikd_core.data.sources.build_datasets` (missing or empty folders,
    unsafe category names, masks missing or of another size), every image and mask is opened once, header
    only, so a non-image file with an image extension or a decompression bomb is reported here by name
    instead of failing mid-epoch. Raises :class:`DataError`.
    """

    train_ds, test_ds = build_datasets(spec, image_size)
    for ds in (train_ds, test_ds):
        for sample in getattr(ds, "samples", []) if ds is not None else []:
            image_size_of(Path(sample.path))
            if sample.mask_path:
                image_size_of(Path(sample.mask_path))
    return train_ds, test_ds


def mvtec_missing(root: str | os.PathLike[str], category: str | None = None) -> bool:
    """True when MVTec AD (or ``category`` of it) is not under ``root``."""
    cats = list_categories(root)
    return not cats if category is None else category not in cats


class SampleIndex:
    """Finds the test-set sample (and so its ground-truth mask) of an image file by its content.

    Files are matched by size first and SHA-256 second, so renamed copies (e.g. uploads) are found.
    """

    def __init__(self, samples: Iterable[Sample]) -> None:
        self._by_size: dict[int, list[Sample]] = {}
        self._hashes: dict[str, str] = {}
        for s in samples:
            with contextlib.suppress(OSError):
                self._by_size.setdefault(os.path.getsize(s.path), []).append(s)

    @staticmethod
    def _sha(path: str | os.PathLike[str]) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def lookup(self, path: str | os.PathLike[str]) -> Sample | None:
        """The sample with the same bytes as ``path``, or ``None``."""
        try:
            cands = self._by_size.get(os.path.getsize(path), [])
            if not cands:
                return None
            want = self._sha(path)
            for s in cands:
                if s.path not in self._hashes:
                    self._hashes[s.path] = self._sha(s.path)
                if self._hashes[s.path] == want:
                    return s
        except OSError:
            return None
        return None
