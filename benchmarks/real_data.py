"""A development bench of REAL images (issue 16), written in MVTec AD layout, offline and deterministic.

    python -m benchmarks.real_data --out data/real_bench            # both sources, seed 0

Sources (nothing is fetched at run time; both come from PyPI packages):

* ``elpv`` -- real defects. The PyPI package ``elpv-dataset`` (1.0.0.post1; data CC BY-NC-SA 4.0, code
  Apache-2.0; Buerhop-Lutz et al. 2018, Deitsch et al. 2019, ZAE Bayern): 2,624 electroluminescence images
  (300x300, 8-bit grey) of real mono- and polycrystalline solar cells cut from 44 real modules, each labelled
  with a defect probability (0, 1/3, 2/3, 1) by experts; cracks, inactive regions, finger interruptions.
  Categories ``real_elpv_mono`` and ``real_elpv_poly``: good = probability 0, defective = probability 1
  (the uncertain 1/3 and 2/3 cells are left out). There are NO pixel masks: every defective image gets an
  all-defect mask only so that the MVTec loader accepts it; ``bench.json`` marks these categories
  ``"pixel_masks": false`` and pixel metrics (pixel AUROC, AU-PRO) must be reported as n/a for them.
  Not in CI's requirements (a 91 MB wheel): ``pip install -r requirements-bench.txt``.
* ``skimage`` -- real texture photographs with planted defects. ``scikit-image``'s packaged images
  ``brick`` (CC0Textures Bricks25), ``grass`` (DeviantArt linolafett, CC0) and ``gravel`` (CC0Textures
  Gravel04), 512x512 grey, shipped inside the wheel. Categories ``real_skimage_<name>``. Five defect types,
  each with an exact mask (every changed pixel lies inside the mask): ``contamination`` (a patch of another
  real photo through a Perlin-noise blob), ``scratch`` (anti-aliased smooth stroke, darker or lighter than
  the texture), ``crack`` (jagged dark branching line), ``hole`` (dark irregular pit, deeper at its centre)
  and ``stain`` (soft brightness shift, texture kept).

Splits. Every category has two MVTec roots: ``OUT/test/<category>`` (the reported test split) and
``OUT/dev/<category>`` (a disjoint split for tuning); both hold the same ``train/good`` images (hard links
where possible). ELPV: train / dev / test are disjoint random subsets of the cells. Textures: train crops come
from the left 58 % of each photo, dev crops from the top-right part and test crops from the bottom-right
part (non-overlapping regions), with random position, a rotation of up to 10 degrees and random
left-right / up-down flips. ``OUT/manifest.csv`` records each file's provenance (source image, crop box, angle, defect);
``OUT/bench.json`` the sizes, the seed and whether pixel masks are real; ``OUT/SOURCES.md`` the licences.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

SOURCES = ("elpv", "skimage")
SPLIT_ROOTS = ("test", "dev")
TEXTURES = ("brick", "grass", "gravel")
TEXTURE_DEFECTS = ("contamination", "scratch", "crack", "hole", "stain")
ELPV_TYPES = ("mono", "poly")
MAX_ROTATION_DEG = 10.0
#: Texture photo regions as (y0, y1, x0, x1) fractions: train, dev and test never overlap.
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "train": (0.0, 1.0, 0.0, 0.58),
    "dev": (0.0, 0.5, 0.58, 1.0),
    "test": (0.5, 1.0, 0.58, 1.0),
}

SOURCES_MD = """# Sources of this real-image bench

Written by `python -m benchmarks.real_data` (seed {seed}). Nothing here was downloaded at run time.

| source | package | licence | what | categories |
|---|---|---|---|---|
| elpv | `elpv-dataset` {elpv_version} (PyPI) | data CC BY-NC-SA 4.0, code Apache-2.0 | 2,624 real \
electroluminescence images (300x300 grey) of mono/poly solar cells from 44 modules, expert defect \
probabilities; Buerhop-Lutz et al., "A Benchmark for Visual Identification of Defective Solar Cells in \
Electroluminescence Imagery", EU PVSEC 2018; Deitsch et al., Solar Energy 185, 2019 | real_elpv_mono, \
real_elpv_poly |
| skimage | `scikit-image` {skimage_version} (PyPI), `skimage.data` | CC0 (brick: CC0Textures Bricks25; grass: \
DeviantArt linolafett "Grass 01"; gravel: CC0Textures Gravel04) | real texture photographs, 512x512 grey; \
defects planted by this script with exact masks | real_skimage_brick, real_skimage_grass, real_skimage_gravel |

ELPV categories have image-level labels only (good = probability 0, defective = probability 1): their masks
cover the whole image and pixel metrics are n/a (`bench.json`: `"pixel_masks": false`). The ELPV data is
licensed non-commercially (CC BY-NC-SA 4.0): do not redistribute it with the app.

Layout: `test/<category>` and `dev/<category>` are MVTec AD roots with the same `train/good` images; `test/`
holds the reported split, `dev/` a disjoint one for tuning. `manifest.csv` gives each file's provenance.
"""


@dataclass(frozen=True)
class BenchSizes:
    """Images per category: good train, and good / defective per test split (dev and test alike)."""

    n_train: int = 200
    n_good: int = 50
    n_defect: int = 50


# ---------------------------------------------------------------------------------------------------------
# Random fields and strokes


def _rng(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def perlin(shape: tuple[int, int], cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gradient (Perlin) noise in about [-0.7, 0.7] on an ``shape`` grid with ``cells`` lattice cells."""
    h, w = shape
    angles = rng.uniform(0.0, 2.0 * np.pi, (cells[0] + 1, cells[1] + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    y = np.arange(h) * cells[0] / h
    x = np.arange(w) * cells[1] / w
    iy, ix = y.astype(int)[:, None], x.astype(int)[None, :]
    fy, fx = (y - np.floor(y))[:, None], (x - np.floor(x))[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        return gy[iy + dy, ix + dx] * (fy - dy) + gx[iy + dy, ix + dx] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    uy, ux = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return top * (1 - uy) + bottom * uy


def blob_mask(size: int, rng: np.random.Generator, radius: tuple[float, float], min_area: float = 0.002) -> np.ndarray:
    """An irregular blob: a Gaussian envelope at a random centre, modulated by Perlin noise, thresholded."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(20):
        r = rng.uniform(*radius) * size
        cy, cx = rng.uniform(0.15 * size, 0.85 * size, 2)
        aspect = rng.uniform(0.5, 1.6)
        env = np.exp(-(((yy - cy) / (r * aspect)) ** 2 + ((xx - cx) / (r / aspect)) ** 2) / 2.0)
        cells = int(rng.choice([4, 8, 12]))
        noise = perlin((size, size), (cells, cells), rng) + 0.5 * perlin((size, size), (2 * cells, 2 * cells), rng)
        mask = env * (0.75 + noise) > 0.45
        if mask.mean() >= min_area:
            return mask
    return mask  # pragma: no cover - practically unreachable


def feather(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Alpha in [0, 1] that is 0 outside ``mask`` and rises smoothly towards its inside."""
    soft = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    return np.clip(soft / 0.5, 0.0, 1.0) * mask


def stroke_alpha(size: int, points: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased coverage of a polyline (points: (N, 2) as y, x) of ``width`` pixels, in [0, 1]."""
    a, b = points[:-1], points[1:]
    lo = np.floor(points.min(0) - width - 2).clip(0, size - 1).astype(int)
    hi = np.ceil(points.max(0) + width + 3).clip(1, size).astype(int)
    yy, xx = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]].astype(np.float32)
    p = np.stack([yy, xx], -1)[:, :, None, :]  # (h, w, 1, 2)
    ab = (b - a)[None, None]
    t = ((p - a[None, None]) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9)
    closest = a[None, None] + t.clip(0, 1)[..., None] * ab
    dist = np.sqrt(((p - closest) ** 2).sum(-1)).min(-1)
    alpha = np.zeros((size, size), np.float32)
    alpha[lo[0] : hi[0], lo[1] : hi[1]] = np.clip(width / 2.0 + 0.5 - dist, 0.0, 1.0)
    return alpha


def _bezier(rng: np.random.Generator, size: int, length: float) -> np.ndarray:
    c = rng.uniform(0.2 * size, 0.8 * size, 2)
    ang = rng.uniform(0, np.pi)
    d = np.array([np.sin(ang), np.cos(ang)]) * length / 2
    p0, p2 = c - d, c + d
    p1 = c + rng.normal(0, 0.25 * length, 2)
    t = np.linspace(0, 1, 48)[:, None]
    return ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2).astype(np.float32)


def _walk(rng: np.random.Generator, start: np.ndarray, angle: float, steps: int, step: float) -> np.ndarray:
    turns = np.cumsum(rng.normal(0, 0.45, steps)) * 0.5 + angle
    deltas = np.stack([np.sin(turns), np.cos(turns)], 1) * step
    return np.vstack([start, start + np.cumsum(deltas, 0)]).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Defects on a grey float32 crop (0..255). Each returns (image, mask); pixels outside mask are unchanged.


def _contamination(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    mask = blob_mask(size, rng, (0.06, 0.16))
    y, x = rng.integers(0, donor.shape[0] - size + 1), rng.integers(0, donor.shape[1] - size + 1)
    patch = donor[y : y + size, x : x + size].astype(np.float32)
    if rng.random() < 0.5:
        patch = patch.T
    # Pull the foreign material part of the way towards the host's brightness and contrast.
    k = rng.uniform(0.3, 0.9)
    matched = (patch - patch.mean()) / (patch.std() + 1e-6) * img.std() + img.mean()
    patch = k * matched + (1 - k) * patch
    alpha = feather(mask, 1.5)
    return img * (1 - alpha) + patch * alpha, mask


def _line_defect(img: np.ndarray, alpha: np.ndarray, colour: float, strength: float) -> tuple[np.ndarray, np.ndarray]:
    a = alpha * strength
    return img * (1 - a) + colour * a, alpha > 0


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    alpha = np.zeros_like(img)
    for _ in range(int(rng.integers(1, 3))):
        pts = _bezier(rng, size, rng.uniform(0.25, 0.7) * size)
        alpha = np.maximum(alpha, stroke_alpha(size, pts, rng.uniform(0.9, 2.5)))
    dark = rng.random() < 0.5
    colour = np.percentile(img, 1) * 0.6 if dark else min(255.0, np.percentile(img, 99.5) * 1.1 + 10)
    return _line_defect(img, alpha, colour, rng.uniform(0.65, 0.95))


def _crack(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    start = rng.uniform(0.25 * size, 0.75 * size, 2).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    steps = int(rng.integers(12, 24))
    main = _walk(rng, start, angle, steps, size / 60)
    alpha = stroke_alpha(size, main, rng.uniform(0.8, 1.6))
    for _ in range(int(rng.integers(1, 3))):
        j = int(rng.integers(steps // 3, steps))
        branch = _walk(rng, main[j], angle + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2), steps // 2, size / 70)
        alpha = np.maximum(alpha, stroke_alpha(size, branch, rng.uniform(0.6, 1.1)))
    return _line_defect(img, alpha, np.percentile(img, 1) * 0.4, rng.uniform(0.75, 0.95))


def _hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mask = blob_mask(img.shape[0], rng, (0.035, 0.08))
    depth = ndimage.distance_transform_edt(mask)
    depth = depth / max(depth.max(), 1.0)
    alpha = feather(mask, 1.0)
    dark = np.percentile(img, 1) * 0.3 + 0.25 * img * (1 - depth)  # deeper and darker towards the centre
    return img * (1 - alpha) + dark * alpha, mask


def _stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    mask = blob_mask(size, rng, (0.08, 0.18))
    alpha = feather(mask, 3.0) * rng.uniform(0.5, 0.9)
    alpha = alpha * (0.8 + 0.4 * perlin((size, size), (4, 4), rng))
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(25, 55)
    return np.clip(img + shift * alpha, 0, 255), mask


def plant_defect(
    kind: str, img: np.ndarray, rng: np.random.Generator, donor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Apply defect ``kind`` (one of :data:`TEXTURE_DEFECTS`) to a grey crop; -> (uint8 image, bool mask)."""
    src = img.astype(np.float32)
    if kind == "contamination":
        out, mask = _contamination(src, rng, donor)
    else:
        out, mask = {"scratch": _scratch, "crack": _crack, "hole": _hole, "stain": _stain}[kind](src, rng)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    out[~mask] = img[~mask]  # exact: nothing outside the mask changes (also not by rounding)
    return out, mask


# ---------------------------------------------------------------------------------------------------------
# Crops


@dataclass(frozen=True)
class Crop:
    """Where a crop came from: window (y, x, side) in the photo, rotation (degrees), left-right / up-down flips."""

    y: int
    x: int
    window: int
    angle: float
    flip_lr: bool
    flip_ud: bool


def region_box(shape: tuple[int, int], subset: str) -> tuple[int, int, int, int]:
    """Pixel box (y0, y1, x0, x1) of a split's region of a photo."""
    h, w = shape
    fy0, fy1, fx0, fx1 = REGIONS[subset]
    return round(fy0 * h), round(fy1 * h), round(fx0 * w), round(fx1 * w)


def random_crop(photo: np.ndarray, subset: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, Crop]:
    """A ``size`` crop from the split's region, rotated by up to 10 degrees inside a larger window."""
    y0, y1, x0, x1 = region_box(photo.shape, subset)
    angle = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    rad = math.radians(abs(angle))
    window = min(math.ceil(size * (math.cos(rad) + math.sin(rad))) + 2, y1 - y0, x1 - x0)
    if window < size:
        raise ValueError(f"crop {size} does not fit the {subset} region {y1 - y0}x{x1 - x0}")
    y = int(rng.integers(y0, y1 - window + 1))
    x = int(rng.integers(x0, x1 - window + 1))
    win = photo[y : y + window, x : x + window].astype(np.float32)
    if window >= math.ceil(size * (math.cos(rad) + math.sin(rad))):
        win = ndimage.rotate(win, angle, reshape=False, order=1, mode="reflect")
    else:
        angle = 0.0
    off = (window - size) // 2
    out = win[off : off + size, off : off + size]
    # Flips only (no quarter turns): the photo's main orientation is kept, as on an inspection line.
    flip_lr, flip_ud = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    if flip_lr:
        out = out[:, ::-1]
    if flip_ud:
        out = out[::-1, :]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), Crop(y, x, window, angle, flip_lr, flip_ud)


# ---------------------------------------------------------------------------------------------------------
# Writing


class _Writer:
    """Writes one category into ``root/test`` and ``root/dev`` and collects manifest rows."""

    def __init__(self, root: Path, category: str, source: str) -> None:
        self.root, self.category, self.source = root, category, source
        self.rows: list[dict[str, str]] = []
        for split_root in SPLIT_ROOTS:
            shutil.rmtree(root / split_root / category, ignore_errors=True)

    def _row(self, split_root: str, rel: str, origin: str, crop: Crop | None, defect: str) -> None:
        c = crop
        self.rows.append({
            "root": split_root, "category": self.category, "file": rel, "source": self.source, "origin": origin,
            "y": "" if c is None else str(c.y), "x": "" if c is None else str(c.x),
            "window": "" if c is None else str(c.window), "angle": "" if c is None else f"{c.angle:.2f}",
            "flip_lr": "" if c is None else str(int(c.flip_lr)), "flip_ud": "" if c is None else str(int(c.flip_ud)),
            "defect": defect,
        })  # fmt: skip

    def train(self, name: str, image: np.ndarray | Path, origin: str, crop: Crop | None = None) -> None:
        rel = f"train/good/{name}.png"
        first = self.root / SPLIT_ROOTS[0] / self.category / rel
        _save(image, first)
        for split_root in SPLIT_ROOTS[1:]:
            _link_or_copy(first, self.root / split_root / self.category / rel)
        for split_root in SPLIT_ROOTS:
            self._row(split_root, rel, origin, crop, "good")

    def test(
        self, split_root: str, defect: str, name: str, image: np.ndarray | Path, mask: np.ndarray | None,
        origin: str, crop: Crop | None = None,
    ) -> None:  # fmt: skip
        cat_dir = self.root / split_root / self.category
        rel = f"test/{defect}/{name}.png"
        _save(image, cat_dir / rel)
        if defect != "good":
            assert mask is not None
            _save((mask.astype(np.uint8) * 255), cat_dir / "ground_truth" / defect / f"{name}_mask.png")
        self._row(split_root, rel, origin, crop, defect)


def _save(image: np.ndarray | Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, Path):
        shutil.copyfile(image, path)
    else:
        Image.fromarray(image).save(path, compress_level=1)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# ---------------------------------------------------------------------------------------------------------
# Sources


def elpv_data_dir() -> Path:
    """The ``data`` folder of the installed ``elpv-dataset`` package (labels.csv, images/)."""
    try:
        import elpv_dataset
    except ImportError as exc:
        raise RuntimeError("source 'elpv' needs the PyPI package elpv-dataset: pip install elpv-dataset") from exc
    return Path(elpv_dataset.__file__).parent / "data"


def read_elpv_labels(data_dir: Path) -> list[tuple[str, float, str]]:
    """(relative image path, defect probability, 'mono' | 'poly') for every cell of ``labels.csv``."""
    rows = []
    for line in (data_dir / "labels.csv").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.append((parts[0], float(parts[1]), parts[2]))
    return rows


def _build_elpv(
    root: Path, seed: int, sizes: BenchSizes, data_dir: Path
) -> list[tuple[str, list[dict[str, str]]]]:
    rows = read_elpv_labels(data_dir)
    categories = []
    for kind in ELPV_TYPES:
        category = f"real_elpv_{kind}"
        rng = _rng(seed, category)
        good = sorted(p for p, prob, t in rows if t == kind and prob == 0.0)
        bad = sorted(p for p, prob, t in rows if t == kind and prob == 1.0)
        good = [good[i] for i in rng.permutation(len(good))]
        bad = [bad[i] for i in rng.permutation(len(bad))]
        need_good = sizes.n_train + 2 * sizes.n_good
        if len(good) < need_good or len(bad) < 2 * sizes.n_defect:
            raise ValueError(f"{category}: {len(good)} good / {len(bad)} defective cells, need "
                             f"{need_good} / {2 * sizes.n_defect}")
        w = _Writer(root, category, "elpv")
        for rel in good[: sizes.n_train]:
            w.train(Path(rel).stem, data_dir / rel, rel)
        for k, split_root in enumerate(SPLIT_ROOTS):
            start = sizes.n_train + k * sizes.n_good
            for rel in good[start : start + sizes.n_good]:
                w.test(split_root, "good", Path(rel).stem, data_dir / rel, None, rel)
            for rel in bad[k * sizes.n_defect : (k + 1) * sizes.n_defect]:
                with Image.open(data_dir / rel) as im:
                    full = np.ones((im.height, im.width), bool)  # image-level label only: no real mask
                w.test(split_root, "defective", Path(rel).stem, data_dir / rel, full, rel)
        categories.append((category, w.rows))
    return categories


def skimage_photos() -> dict[str, np.ndarray]:
    """The packaged real texture photographs of scikit-image (grey uint8, 512x512), by name."""
    from skimage import data

    return {name: np.asarray(getattr(data, name)(), dtype=np.uint8) for name in TEXTURES}


def _build_textures(
    root: Path, seed: int, sizes: BenchSizes, photos: dict[str, np.ndarray], crop: int
) -> list[tuple[str, list[dict[str, str]]]]:
    out = []
    for name, photo in photos.items():
        category = f"real_skimage_{name}"
        rng = _rng(seed, category)
        donors = [p for n, p in photos.items() if n != name] or [photo[::-1, ::-1]]
        w = _Writer(root, category, "skimage")
        for i in range(sizes.n_train):
            img, c = random_crop(photo, "train", crop, rng)
            w.train(f"{i:03d}", img, name, c)
        for split_root in SPLIT_ROOTS:
            for i in range(sizes.n_good):
                img, c = random_crop(photo, split_root, crop, rng)
                w.test(split_root, "good", f"{i:03d}", img, None, name, c)
            for i in range(sizes.n_defect):
                kind = TEXTURE_DEFECTS[i % len(TEXTURE_DEFECTS)]
                img, c = random_crop(photo, split_root, crop, rng)
                donor = donors[int(rng.integers(len(donors)))]
                bad, mask = plant_defect(kind, img, rng, donor)
                w.test(split_root, kind, f"{i:03d}", bad, mask, name, c)
        out.append((category, w.rows))
    return out


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def build_real_bench(
    root: Path,
    seed: int = 0,
    sources: Sequence[str] = SOURCES,
    sizes: BenchSizes = BenchSizes(),  # noqa: B008 - frozen dataclass
    crop: int = 160,
    elpv_dir: Path | None = None,
    photos: dict[str, np.ndarray] | None = None,
) -> list[str]:
    """Write the real-image bench under ``root``; return its category names (sorted).

    ``root/test/<category>`` and ``root/dev/<category>`` are MVTec AD roots (load them with
    ``MVTecDataset(root / "test", category, split)``). ``crop``: side in pixels of the texture crops.
    ``elpv_dir``: ELPV's data folder (default: the installed package's); ``photos``: texture photos to use
    instead of scikit-image's (tests).
    """
    root = Path(root)
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown sources {sorted(unknown)}; choose from {SOURCES}")
    results: list[tuple[str, list[dict[str, str]]]] = []
    if "elpv" in sources:
        results += _build_elpv(root, seed, sizes, elpv_dir or elpv_data_dir())
    if "skimage" in sources:
        results += _build_textures(root, seed, sizes, photos if photos is not None else skimage_photos(), crop)
    _write_metadata(root, seed, sizes, crop, results)
    return sorted(c for c, _ in results)


def _write_metadata(
    root: Path, seed: int, sizes: BenchSizes, crop: int, results: list[tuple[str, list[dict[str, str]]]]
) -> None:
    meta_path = root / "bench.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"categories": {}}
    meta.update({"seed": seed, "split_roots": {"test": "test", "dev": "dev"},
                 "layout": "MVTec AD; test/<category> = reported split, dev/<category> = tuning split"})
    rows_all: list[dict[str, str]] = []
    for category, rows in results:
        source = rows[0]["source"]
        meta["categories"][category] = {
            "source": source, "pixel_masks": source != "elpv", "seed": seed, "crop": crop if source != "elpv" else 300,
            "n_train": sizes.n_train, "n_good": sizes.n_good, "n_defect": sizes.n_defect,
        }  # fmt: skip
        rows_all += rows
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    manifest = root / "manifest.csv"
    kept: list[dict[str, str]] = []
    if manifest.is_file():
        done = {c for c, _ in results}
        with manifest.open(newline="") as fh:
            kept = [r for r in csv.DictReader(fh) if r["category"] not in done]
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows_all[0]) if rows_all else ["category"])
        writer.writeheader()
        writer.writerows(kept + rows_all)
    (root / "SOURCES.md").write_text(
        SOURCES_MD.format(seed=seed, elpv_version=_version("elpv-dataset"), skimage_version=_version("scikit-image"))
    )


def has_pixel_masks(root: Path, category: str) -> bool:
    """False for categories whose masks are placeholders (image-level labels only): report pixel metrics n/a."""
    meta = json.loads((Path(root) / "bench.json").read_text())
    return bool(meta["categories"][category]["pixel_masks"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/real_bench"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--n-train", type=int, default=BenchSizes.n_train)
    parser.add_argument("--n-good", type=int, default=BenchSizes.n_good, help="good images per test split")
    parser.add_argument("--n-defect", type=int, default=BenchSizes.n_defect, help="defective images per test split")
    parser.add_argument("--crop", type=int, default=160, help="texture crop side in pixels")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        cats = build_real_bench(args.out, args.seed, args.sources, BenchSizes(args.n_train, args.n_good, args.n_defect),
                                args.crop)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(cats)} categories to {args.out} in {time.perf_counter() - t0:.1f} s: {', '.join(cats)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
