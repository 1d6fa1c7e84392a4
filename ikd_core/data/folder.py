"""Your own images: a folder of good images for training and an optional test folder (flat or by defect)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ikd_core.data.mvtec import (
    Sample,
    SampleDataset,
    Split,
    _check_split,
    _images_or_error,
    check_mask_matches,
    find_mask,
)
from ikd_core.data.transforms import list_images
from ikd_core.errors import DataError

_MASK_SUFFIXES: Sequence[str] = ("_mask", "")


class FolderDataset(SampleDataset):
    """Images from plain folders.

    * ``split="train"``: every image in ``good_dir`` (label 0).
    * ``split="test"`` with sub-folders in ``test_dir``: MVTec-like, ``good`` -> label 0, others -> label 1;
      masks found by name in ``mask_dir/<defect>/`` or ``mask_dir/`` as ``<stem>_mask.*`` or ``<stem>.*``.
    * ``split="test"`` with a flat ``test_dir``: every image unlabeled (label -1, defect_type "unknown").

    ``mask_dir`` is only used with a structured ``test_dir``; ``has_masks`` tells whether pixel labels exist.
    """

    def __init__(
        self,
        good_dir: str | os.PathLike,
        test_dir: str | os.PathLike | None = None,
        mask_dir: str | os.PathLike | None = None,
        split: Split = "train",
        image_size: int = 256,
    ) -> None:
        _check_split(split)
        self.good_dir = Path(good_dir)
        self.test_dir = Path(test_dir) if test_dir is not None else None
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None
        self.split = split
        if split == "train":
            samples = [Sample(str(p), None, 0, "good") for p in _images_or_error(self.good_dir)]
            super().__init__(samples, image_size=image_size, has_masks=False)
            return
        if self.test_dir is None:
            raise DataError("split='test' needs a test folder; pass test_dir (a folder of test images).")
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise DataError(f"mask folder {self.mask_dir} not found; fix the path or leave it empty.")
        if not self.test_dir.is_dir():
            raise DataError(f"test folder {self.test_dir} not found; fix the path.")
        subdirs = sorted(
            p for p in self.test_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and list_images(p)
        )
        if subdirs:
            loose = list_images(self.test_dir)
            if loose:
                raise DataError(
                    f"{self.test_dir} mixes images ({loose[0].name}, ...) with defect-type sub-folders; "
                    "move the loose images into a sub-folder (e.g. 'good')."
                )
            samples = self._scan_structured(subdirs)
            has_masks = self.mask_dir is not None
        else:
            samples = [Sample(str(p), None, -1, "unknown") for p in _images_or_error(self.test_dir)]
            has_masks = False
        super().__init__(samples, image_size=image_size, has_masks=has_masks)

    def _scan_structured(self, subdirs: list[Path]) -> list[Sample]:
        samples: list[Sample] = []
        for ddir in subdirs:
            defect = ddir.name
            for img in list_images(ddir):
                if defect == "good":
                    samples.append(Sample(str(img), None, 0, defect))
                    continue
                mask = None
                if self.mask_dir is not None:
                    mask = find_mask(self.mask_dir / defect, img.stem, _MASK_SUFFIXES) or find_mask(
                        self.mask_dir, img.stem, _MASK_SUFFIXES
                    )
                    if mask is None:
                        raise DataError(
                            f"no mask for defective image {img} in {self.mask_dir} "
                            f"(looked for {defect}/{img.stem}_mask.png or {img.stem}.png); add it or remove the image."
                        )
                    check_mask_matches(img, mask)
                samples.append(Sample(str(img), str(mask) if mask else None, 1, defect))
        return samples
