"""MVTec AD dataset: layout validation, name-based mask pairing and the shared sample-based Dataset."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ikd_core.data.transforms import (
    IMAGE_EXTENSIONS,
    check_image_size,
    image_to_tensor,
    list_images,
    load_image,
    mask_to_tensor,
)
from ikd_core.errors import DataError

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
TEXTURE_CATEGORIES = ("carpet", "grid", "leather", "tile", "wood")
OBJECT_CATEGORIES = tuple(c for c in MVTEC_CATEGORIES if c not in TEXTURE_CATEGORIES)

Split = Literal["train", "test"]

GET_DATA_HINT = (
    "get MVTec AD with `python -m ikd_core download --data-root DIR` "
    "or the synthetic demo set with `python -m ikd_core demo-data`"
)

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


class Sample(NamedTuple):
    """One dataset entry: image path, mask path (None = no mask), label (0 good, 1 defect, -1 unknown)."""

    path: str
    mask_path: str | None
    label: int
    defect_type: str


def check_category_name(category: str) -> str:
    """Return ``category`` if it is a plain folder name; DataError for separators, ``..`` or odd characters."""
    if (
        not isinstance(category, str)
        or not _SAFE_NAME.fullmatch(category)
        or ".." in category
        or os.sep in category
        or (os.altsep is not None and os.altsep in category)
    ):
        raise DataError(
            f"invalid category name {category!r}: use a plain folder name such as 'bottle' "
            "(letters, digits, '_', '-', no path separators or '..')."
        )
    return category


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'.")


def find_mask(folder: Path, stem: str, suffixes: Sequence[str] = ("_mask",)) -> Path | None:
    """The mask for image ``stem`` in ``folder``: ``<stem><suffix>.<image ext>``, first suffix wins."""
    if not folder.is_dir():
        return None
    for suffix in suffixes:
        for ext in (".png", *sorted(IMAGE_EXTENSIONS - {".png"})):
            for cand in (folder / f"{stem}{suffix}{ext}", folder / f"{stem}{suffix}{ext.upper()}"):
                if cand.is_file():
                    return cand
    return None


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) read from the file header (nothing is decoded); DataError if the file is not an
    image or declares more pixels than :data:`~ikd_core.data.transforms.MAX_PIXELS`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                size = img.size
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large ({exc}); downscale it before use.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image file ({exc}); re-export or remove it.") from exc
    check_image_size(size[0], size[1], str(path))
    return size


def check_mask_matches(image_path: Path, mask_path: Path) -> None:
    """DataError if the mask's pixel size differs from its image's."""
    isz, msz = image_size_of(image_path), image_size_of(mask_path)
    if isz != msz:
        raise DataError(
            f"mask {mask_path} is {msz[0]}x{msz[1]} but its image {image_path} is {isz[0]}x{isz[1]}; "
            "masks must have the same size as their images."
        )


def list_categories(root: str | os.PathLike) -> list[str]:
    """Categories under ``root``: sub-folders that contain ``train/good`` (sorted; [] if root is missing)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "train" / "good").is_dir()
    )


def _images_or_error(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"folder {folder} not found; {GET_DATA_HINT}.")
    images = list_images(folder)
    if not images:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(f"folder {folder} contains no images ({exts}); add images or fix the path.")
    return images


def _select_files(samples: list[Sample], files: Sequence[str | os.PathLike], base: Path) -> list[Sample]:
    """Keep the samples named in ``files`` (absolute paths or paths relative to ``base``), in that order."""
    index: dict[str, Sample] = {}
    for s in samples:
        p = Path(s.path)
        index[str(p.resolve())] = s
        index[p.relative_to(base).as_posix()] = s
    out = []
    for f in files:
        key = Path(f).as_posix() if not Path(f).is_absolute() else str(Path(f).resolve())
        if key not in index:
            raise DataError(f"file {f} is not an image of this dataset split ({base}); check the file list.")
        out.append(index[key])
    return out


class SampleDataset(Dataset):
    """Dataset over a list of :class:`Sample`; items are dicts with image, mask, label, defect_type, path."""

    samples: list[Sample]
    image_size: int
    has_masks: bool

    def __init__(self, samples: list[Sample], image_size: int = 256, has_masks: bool = True) -> None:
        if not isinstance(image_size, int) or image_size < 8:
            raise DataError(f"image_size must be an integer >= 8, got {image_size!r}.")
        self.samples = list(samples)
        self.image_size = image_size
        self.has_masks = has_masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        size = self.image_size
        image = image_to_tensor(load_image(s.path), size)
        mask = mask_to_tensor(s.mask_path, size) if s.mask_path else torch.zeros(1, size, size)
        return {"image": image, "mask": mask, "label": s.label, "defect_type": s.defect_type, "path": s.path}


class MVTecDataset(SampleDataset):
    """One MVTec AD category split. Validates the layout (images, masks by name, mask sizes) on construction."""

    def __init__(
        self,
        root: str | os.PathLike,
        category: str,
        split: Split = "train",
        image_size: int = 256,
        files: Sequence[str | os.PathLike] | None = None,
    ) -> None:
        check_category_name(category)
        _check_split(split)
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"dataset root {root} not found; {GET_DATA_HINT}.")
        cat_dir = root / category
        if not cat_dir.is_dir():
            found = ", ".join(list_categories(root)) or "none"
            raise DataError(
                f"category {category!r} not found in {root} (categories there: {found}); {GET_DATA_HINT}."
            )
        self.root, self.category, self.split = root, category, split
        split_dir = cat_dir / split
        samples = self._scan_train(split_dir) if split == "train" else self._scan_test(split_dir, cat_dir)
        if files is not None:
            samples = _select_files(samples, files, split_dir)
        super().__init__(samples, image_size=image_size, has_masks=split == "test")

    @staticmethod
    def _scan_train(split_dir: Path) -> list[Sample]:
        return [Sample(str(p), None, 0, "good") for p in _images_or_error(split_dir / "good")]

    @staticmethod
    def _scan_test(split_dir: Path, cat_dir: Path) -> list[Sample]:
        if not split_dir.is_dir():
            raise DataError(f"folder {split_dir} not found; {GET_DATA_HINT}.")
        defect_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not defect_dirs:
            raise DataError(f"{split_dir} has no defect-type folders (expected e.g. test/good, test/<defect>).")
        samples: list[Sample] = []
        for ddir in defect_dirs:
            defect = ddir.name
            for img in _images_or_error(ddir):
                if defect == "good":
                    samples.append(Sample(str(img), None, 0, defect))
                    continue
                mask_dir = cat_dir / "ground_truth" / defect
                mask = find_mask(mask_dir, img.stem)
                if mask is None:
                    raise DataError(
                        f"no mask for defective image {img}: expected {mask_dir / (img.stem + '_mask.png')}; "
                        "add the mask or remove the image."
                    )
                check_mask_matches(img, mask)
                samples.append(Sample(str(img), str(mask), 1, defect))
        return samples
