"""Offline demo data: procedural texture / object categories with exact defect masks, in MVTec layout.

Defects change colour, structure or shape while keeping pixel brightness inside the range of normal
pixels, so they cannot be found by thresholding intensity; a model has to learn what "normal" looks like.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ikd_core.errors import DataError

GENERATOR_VERSION = 1
DEMO_CATEGORIES = ("demo_texture", "demo_object")
DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "demo_texture": ("scratch", "hole", "stain", "foreign_patch", "deformation"),
    "demo_object": ("scratch", "hole", "stain", "missing_print", "deformation"),
}
MARKER_NAME = ".ikd_demo.json"

#: Defect area as a fraction of the image; candidates outside are re-drawn.
_AREA_RANGE = (0.003, 0.05)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# --------------------------------------------------------------------------------------------------
# small vectorised helpers


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return y, x


def _noise(rng: np.random.Generator, size: int, cells: Sequence[int], aspect: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Multi-octave value noise (zero mean, unit std); ``aspect`` stretches it along x or y."""
    out = np.zeros((size, size), np.float32)
    for k, c in enumerate(cells):
        g = rng.standard_normal((c * aspect[0] + 2, c * aspect[1] + 2)).astype(np.float32)
        out += cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC) * 0.6**k
    return (out - out.mean()) / (out.std() + 1e-6)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ _LUMA


def _to_ycc(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = _luma(rgb)
    return y, (rgb[..., 2] - y) * 0.564, (rgb[..., 0] - y) * 0.713


def _from_ycc(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    r = y + 1.403 * cr
    g = y - 0.344 * cb - 0.714 * cr
    b = y + 1.773 * cb
    return np.clip(np.stack([r, g, b], axis=-1), 0.0, 1.0)


def _blob_sdf(
    size: int, cx: float, cy: float, radius: float, rng: np.random.Generator, irregular: float = 0.25
) -> np.ndarray:
    """Signed distance-like field (pixels, >0 inside) of an irregular star-shaped blob."""
    y, x = _grid(size)
    dx, dy = x - cx, y - cy
    theta = np.arctan2(dy, dx)
    r = np.full_like(theta, radius)
    for k in range(2, 6):
        r += radius * rng.uniform(-irregular, irregular) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return r - np.hypot(dx, dy)


def _curve_distance(size: int, rng: np.random.Generator, center: tuple[float, float], length: float) -> np.ndarray:
    """Distance (pixels) to a random quadratic Bezier curve of the given length around ``center``."""
    ang = rng.uniform(0, np.pi)
    d = np.array([np.cos(ang), np.sin(ang)])
    n = np.array([-d[1], d[0]])
    c = np.asarray(center, float)
    p0, p2 = c - d * length / 2, c + d * length / 2
    p1 = c + n * rng.uniform(-0.35, 0.35) * length
    t = np.linspace(0, 1, 64)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    line = np.full((size, size), 255, np.uint8)
    cv2.polylines(line, [np.round(pts).astype(np.int32)], False, 0, 1, cv2.LINE_8)
    return cv2.distanceTransform(line, cv2.DIST_L2, 5)


def _swirl_remap(
    img: np.ndarray, cx: float, cy: float, radius: float, strength: float, pinch: float
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``img`` by a swirl + pinch field inside a disc; returns (warped, displacement magnitude)."""
    size = img.shape[0]
    y, x = _grid(size)
    dx, dy = x - cx, y - cy
    r = np.hypot(dx, dy)
    w = np.clip(1 - (r / radius) ** 2, 0, None) ** 2
    a = strength * w
    s = 1 + pinch * w
    ca, sa = np.cos(a), np.sin(a)
    mx = (cx + s * (ca * dx - sa * dy)).astype(np.float32)
    my = (cy + s * (sa * dx + ca * dy)).astype(np.float32)
    warped = cv2.remap(img, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    return np.clip(warped, 0, 1), np.hypot(mx - x, my - y)


# --------------------------------------------------------------------------------------------------
# texture category: a twill-woven fabric


@dataclass(frozen=True)
class _Weave:
    period: float  # thread spacing as a fraction of the image size
    warp_rgb: tuple[float, float, float]
    weft_rgb: tuple[float, float, float]
    repeat: int  # 4 = 2/2 twill (diagonal ribs), 2 = plain weave
    angle: float = 0.0


_FABRIC = _Weave(1 / 17, (0.24, 0.34, 0.58), (0.84, 0.82, 0.76), 4)
_FOREIGN = _Weave(1 / 26, (0.62, 0.30, 0.22), (0.80, 0.72, 0.40), 2, angle=40.0)


def _weave(size: int, rng: np.random.Generator, style: _Weave) -> np.ndarray:
    y, x = _grid(size)
    theta = np.deg2rad(style.angle + rng.uniform(-4, 4))
    period = style.period * size * rng.uniform(0.95, 1.05)
    ox, oy = rng.uniform(0, 8 * period, 2)
    u = (x * np.cos(theta) + y * np.sin(theta) + ox) / period + 0.12 * _noise(rng, size, (3, 6))
    v = (-x * np.sin(theta) + y * np.cos(theta) + oy) / period + 0.12 * _noise(rng, size, (3, 6))
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    top = np.mod(iu + iv, style.repeat) < style.repeat / 2
    fib_v = _noise(rng, size, (24,), aspect=(1, 6))  # streaks along the warp threads
    fib_h = _noise(rng, size, (24,), aspect=(6, 1))
    warp_v = np.sin(np.pi * fu) ** 0.7 * (0.8 + 0.2 * np.sin(np.pi * fv)) * (1 + 0.10 * fib_v)
    weft_v = np.sin(np.pi * fv) ** 0.7 * (0.8 + 0.2 * np.sin(np.pi * fu)) * (1 + 0.10 * fib_h)
    val = np.where(top, warp_v, weft_v)[..., None]
    col = np.where(top[..., None], np.float32(style.warp_rgb), np.float32(style.weft_rgb))
    dye = 1 + 0.05 * _noise(rng, size, (2, 4))[..., None] + rng.uniform(-0.03, 0.03)
    img = col * dye * (0.22 + 0.85 * val) + rng.normal(0, 0.01, (size, size, 3))
    return np.clip(img, 0, 1).astype(np.float32)


def _texture_defect(kind: str, good: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = good.shape[0]
    m = 0.12 * size
    cx, cy = rng.uniform(m, size - m, 2)
    y, cb, cr = _to_ycc(good)
    if kind == "scratch":  # a stray thread of another colour, brightness taken from the fabric's range
        dist = _curve_distance(size, rng, (cx, cy), rng.uniform(0.2, 0.45) * size)
        half = rng.uniform(0.006, 0.011) * size
        mask = dist <= half
        prof = np.cos(np.clip(dist / half, 0, 1) * np.pi / 2)
        lo, hi = np.quantile(y, [0.3, 0.8])
        ny = lo + (hi - lo) * prof
        raw = _from_ycc(ny, np.full_like(y, -0.08), np.full_like(y, 0.16))
        return raw, mask
    if kind == "hole":  # a hole showing flat backing cloth, with frayed (pushed) threads around it
        r = rng.uniform(0.025, 0.065) * size
        sdf = _blob_sdf(size, cx, cy, r, rng, 0.3)
        rim = 0.025 * size
        frayed, _ = _swirl_remap(good, cx, cy, r + rim, 0.0, -0.35)
        backing = _from_ycc(
            np.median(y) + 0.03 * _noise(rng, size, (16, 32)), np.full_like(y, -0.02), np.full_like(y, 0.025)
        )
        raw = np.where((sdf > 0)[..., None], backing, frayed)
        return raw, sdf > -rim
    if kind == "stain":  # hue-shifting soft blob, brightness unchanged
        sdf = _blob_sdf(size, cx, cy, rng.uniform(0.04, 0.09) * size, rng, 0.35)
        soft = np.clip(sdf / (0.03 * size), 0, 1)
        mask = sdf > 0
        alpha = np.where(mask, 0.35 + 0.65 * soft, 0)
        ang, mag = rng.uniform(0, 2 * np.pi), rng.uniform(0.10, 0.16)
        raw = _from_ycc(y, cb + alpha * mag * np.cos(ang), cr + alpha * mag * np.sin(ang))
        return raw, mask
    if kind == "foreign_patch":  # another fabric, brightness matched to the replaced region's mean/std
        sdf = _blob_sdf(size, cx, cy, rng.uniform(0.05, 0.10) * size, rng, 0.15)
        mask = sdf > 0
        other = _weave(size, rng, _FOREIGN)
        oy, ocb, ocr = _to_ycc(other)
        ny = (oy - oy[mask].mean()) / (oy[mask].std() + 1e-6) * y[mask].std() + y[mask].mean()
        return _from_ycc(ny, ocb, ocr), mask
    if kind == "deformation":  # local swirl / pinch of the weave
        radius = rng.uniform(0.06, 0.11) * size
        raw, disp = _swirl_remap(
            good, cx, cy, radius, rng.choice([-1, 1]) * rng.uniform(0.8, 1.4), rng.uniform(-0.3, 0.3)
        )
        return raw, disp >= 0.75
    raise ValueError(f"unknown texture defect {kind!r}")


# --------------------------------------------------------------------------------------------------
# object category: a round printed button / nut on a matte surface


@dataclass(frozen=True)
class _ObjectPose:
    cx: float
    cy: float
    radius: float
    angle: float  # degrees
    light: tuple[float, float, float]
    gain: float


def _object_pose(size: int, rng: np.random.Generator) -> _ObjectPose:
    az = np.deg2rad(rng.uniform(120, 150))
    el = np.deg2rad(rng.uniform(45, 60))
    light = (float(np.cos(el) * np.cos(az)), float(-np.cos(el) * np.sin(az)), float(np.sin(el)))
    return _ObjectPose(
        cx=size / 2 + rng.uniform(-0.03, 0.03) * size,
        cy=size / 2 + rng.uniform(-0.03, 0.03) * size,
        radius=0.30 * size * rng.uniform(0.97, 1.03),
        angle=rng.uniform(-12, 12),
        light=light,
        gain=rng.uniform(0.95, 1.05),
    )


def _print_alpha(size: int, pose: _ObjectPose) -> np.ndarray:
    """Anti-aliased alpha of the printed mark ('IKD' over a bar), rotated with the object."""
    c = 2 * size
    canvas = np.zeros((c, c), np.uint8)
    scale = size / 128.0
    font = cv2.FONT_HERSHEY_DUPLEX
    thick = max(1, round(2.2 * scale))
    (tw, th), _ = cv2.getTextSize("IKD", font, scale, thick)
    cv2.putText(canvas, "IKD", (c // 2 - tw // 2, c // 2 + th // 3), font, scale, 255, thick, cv2.LINE_AA)
    bar_y = c // 2 + th // 3 + round(7 * scale)
    cv2.rectangle(canvas, (c // 2 - tw // 2, bar_y), (c // 2 + tw // 2, bar_y + max(1, round(2 * scale))), 255, -1)
    canvas = cv2.GaussianBlur(canvas.astype(np.float32) / 255, (0, 0), 0.7)
    rot = cv2.getRotationMatrix2D((c / 2, c / 2), pose.angle, 0.5)
    rot[:, 2] += (pose.cx - c / 2, pose.cy - c / 2)
    return np.clip(cv2.warpAffine(canvas, rot, (size, size), flags=cv2.INTER_LINEAR), 0, 1)


@dataclass
class _ObjectScene:
    size: int
    pose: _ObjectPose
    background: np.ndarray  # HxWx3, shadow included
    floor: np.ndarray  # HxWx3, background without the shadow (seen through holes)
    surface: np.ndarray  # HxWx3 object colour (print included) wherever the object could be
    surface_noprint: np.ndarray
    print_alpha: np.ndarray

    def coverage(self, bump: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        y, x = _grid(self.size)
        dx, dy = x - self.pose.cx, y - self.pose.cy
        rb = self.pose.radius + (bump(np.arctan2(dy, dx)) if bump else 0)
        return np.clip(rb - np.hypot(dx, dy) + 0.5, 0, 1)

    def compose(self, coverage: np.ndarray | None = None, printed: bool = True) -> np.ndarray:
        a = (self.coverage() if coverage is None else coverage)[..., None]
        surf = self.surface if printed else self.surface_noprint
        return np.clip(self.background * (1 - a) + surf * a, 0, 1).astype(np.float32)


def _object_scene(size: int, rng: np.random.Generator) -> _ObjectScene:
    pose = _object_pose(size, rng)
    y, x = _grid(size)
    dx, dy = x - pose.cx, y - pose.cy
    d = np.hypot(dx, dy)
    # matte grey-beige surface with a soft shadow opposite to the light
    ramp = ((x - size / 2) * pose.light[0] + (y - size / 2) * pose.light[1]) / size  # light fall-off
    mottle = 0.10 * _noise(rng, size, (3, 6, 12)) + 0.04 * _noise(rng, size, (32, 64)) + 0.25 * ramp
    bg = np.float32((0.56, 0.54, 0.50)) * (1 + mottle[..., None])
    sx, sy = -pose.light[0] * 0.06 * size, -pose.light[1] * 0.06 * size
    shadow = np.clip(pose.radius - np.hypot(x - pose.cx - sx, y - pose.cy - sy), 0, None)
    shadow = cv2.GaussianBlur(np.clip(shadow / 3, 0, 1), (0, 0), 0.03 * size)
    floor = bg
    bg = bg * (1 - 0.30 * shadow[..., None])
    # domed top with a groove ring, lambert + specular shading
    rr = np.clip(d / pose.radius, 0, 0.999)
    k = 0.75
    nx, ny = dx / pose.radius * k, dy / pose.radius * k
    nz = np.sqrt(np.clip(1 - (rr * k) ** 2, 0.05, None))
    lam = np.clip(nx * pose.light[0] + ny * pose.light[1] + nz * pose.light[2], 0, 1)
    groove = 1 - 0.30 * np.exp(-(((rr - 0.80) / 0.025) ** 2))
    grain = 1 + 0.04 * _noise(rng, size, (24, 48))
    shade = (0.50 + 0.45 * lam) * groove * grain * pose.gain
    base = np.float32((0.92, 0.64, 0.32))
    surface_np = base * shade[..., None] + (0.12 * lam**30)[..., None]
    pa = _print_alpha(size, pose)[..., None]
    ink = np.float32((0.14, 0.17, 0.32)) * (0.6 + 0.4 * lam)[..., None]
    surface = surface_np * (1 - pa) + ink * pa
    noise = rng.normal(0, 0.008, (size, size, 3)).astype(np.float32)
    return _ObjectScene(size, pose, bg + noise, floor + noise, surface + noise, surface_np + noise, pa[..., 0])


def _object_defect(
    kind: str, scene: _ObjectScene, good: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    size, pose = scene.size, scene.pose
    inside = scene.coverage() >= 1.0
    ang, rad = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1)) * 0.6 * pose.radius
    cx, cy = pose.cx + rad * np.cos(ang), pose.cy + rad * np.sin(ang)
    y, cb, cr = _to_ycc(good)
    if kind == "scratch":  # thin grey-blue scratch, brightness of the surface kept
        dist = _curve_distance(size, rng, (cx, cy), rng.uniform(0.2, 0.4) * size)
        half = rng.uniform(0.006, 0.010) * size
        mask = (dist <= half) & inside
        a = np.cos(np.clip(dist / half, 0, 1) * np.pi / 2) * 0.6 + 0.4
        raw = _from_ycc(y, cb + a * (0.05 - cb), cr + a * (-0.05 - cr))
        return raw, mask
    if kind == "hole":  # a through-hole showing the surface below, with a bevelled rim
        r = rng.uniform(0.025, 0.06) * size
        hy, hx = _grid(size)
        dh = np.hypot(hx - cx, hy - cy)
        rim = 0.02 * size
        hole = dh <= r
        mask = (dh <= r + rim) & inside
        facing = ((hx - cx) * pose.light[0] + (hy - cy) * pose.light[1]) / np.maximum(dh, 1e-3)
        bevel = 1 - 0.22 * facing * (1 - np.clip((dh - r) / rim, 0, 1))  # lit on one side, dark on the other
        raw = np.where(hole[..., None], scene.floor, good * bevel[..., None])
        return raw, mask
    if kind == "stain":
        sdf = _blob_sdf(size, cx, cy, rng.uniform(0.035, 0.08) * size, rng, 0.35)
        mask = (sdf > 0) & inside
        alpha = np.where(mask, 0.4 + 0.6 * np.clip(sdf / (0.03 * size), 0, 1), 0)
        hue, mag = rng.uniform(0, 2 * np.pi), rng.uniform(0.12, 0.18)
        raw = _from_ycc(y, cb * (1 - alpha) + alpha * mag * np.cos(hue), cr * (1 - alpha) + alpha * mag * np.sin(hue))
        return raw, mask
    if kind == "missing_print":  # all of the print, or the part on one side of a random line
        nx, ny = np.cos(ang), np.sin(ang)
        gy, gx = _grid(size)
        side = (gx - pose.cx) * nx + (gy - pose.cy) * ny > rng.uniform(-0.05, 0.05) * size
        part = side if rng.uniform() < 0.6 else np.ones_like(side)
        mask = (scene.print_alpha > 0.03) & part
        return scene.compose(printed=False), mask
    if kind == "deformation":  # dent or bulge of the outline
        theta0, width = rng.uniform(-np.pi, np.pi), rng.uniform(0.25, 0.55)
        amp = rng.choice([-1, 1]) * rng.uniform(0.06, 0.12) * pose.radius

        def bump(theta: np.ndarray) -> np.ndarray:
            t = np.angle(np.exp(1j * (theta - theta0))) / width
            return amp * np.clip(1 - t**2, 0, None) ** 2

        cov0, cov1 = scene.coverage(), scene.coverage(bump)
        return scene.compose(cov1), np.abs(cov1 - cov0) > 0.02
    raise ValueError(f"unknown object defect {kind!r}")


# --------------------------------------------------------------------------------------------------
# sample rendering and dataset writing


def _rng(seed: int, category: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(category.encode()), *keys])


def render_sample(
    category: str, defect: str | None, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one sample -> (good uint8 HxWx3, image uint8 HxWx3, mask bool HxW).

    ``defect=None`` gives a good sample (image == good, empty mask). Outside the mask the defective image
    is byte-identical to ``good``.
    """
    if category not in DEFECT_TYPES:
        raise DataError(f"unknown demo category {category!r}; choose from {', '.join(DEFECT_TYPES)}.")
    if defect is not None and defect not in DEFECT_TYPES[category]:
        raise DataError(f"unknown defect {defect!r} for {category}; choose from {', '.join(DEFECT_TYPES[category])}.")
    texture = category == "demo_texture"
    if texture:
        good_f = _weave(size, rng, _FABRIC)
    else:
        scene = _object_scene(size, rng)
        good_f = scene.compose()
    good = np.round(good_f * 255).astype(np.uint8)
    if defect is None:
        return good, good.copy(), np.zeros(good.shape[:2], bool)
    lo, hi = _AREA_RANGE
    raw, mask = None, None
    for _ in range(12):  # re-draw until the defect size is in range
        raw, mask = (_texture_defect(defect, good_f, rng) if texture else _object_defect(defect, scene, good_f, rng))
        if lo <= mask.mean() <= hi:
            break
    img = np.where(mask[..., None], np.round(np.clip(raw, 0, 1) * 255).astype(np.uint8), good)
    return good, img, mask


def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def _write_category(
    cat_dir: Path, category: str, n_train: int, n_test_good: int, n_test_defect: int, size: int, seed: int
) -> None:
    (cat_dir / "train" / "good").mkdir(parents=True)
    (cat_dir / "test" / "good").mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test_good)):
        for i in range(n):
            img = render_sample(category, None, size, _rng(seed, category, int(split == "test"), 0, i))[1]
            _save_png(img, cat_dir / split / "good" / f"{i:03d}.png")
    for k, defect in enumerate(DEFECT_TYPES[category], start=1):
        img_dir, gt_dir = cat_dir / "test" / defect, cat_dir / "ground_truth" / defect
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        for i in range(n_test_defect):
            _, img, mask = render_sample(category, defect, size, _rng(seed, category, 1, k, i))
            _save_png(img, img_dir / f"{i:03d}.png")
            _save_png(mask.astype(np.uint8) * 255, gt_dir / f"{i:03d}_mask.png")


def _marker(category: str, n_train: int, n_test_good: int, n_test_defect: int, size: int, seed: int) -> dict:
    return {
        "generator": "ikd_core.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "category": category,
        "seed": seed,
        "image_size": size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect": n_test_defect,
        "defect_types": list(DEFECT_TYPES[category]),
    }


def _check_args(categories: Sequence[str], counts: Sequence[int], image_size: int) -> None:
    for c in categories:
        if c not in DEFECT_TYPES:
            raise DataError(f"unknown demo category {c!r}; choose from {', '.join(DEFECT_TYPES)}.")
    if any(not isinstance(n, int) or n < 1 for n in counts):
        raise DataError(f"image counts must be positive integers, got {list(counts)}.")
    if not isinstance(image_size, int) or image_size < 32:
        raise DataError(f"demo image_size must be an integer >= 32, got {image_size!r}.")


def generate_demo_dataset(
    root: str | os.PathLike,
    categories: Sequence[str] = DEMO_CATEGORIES,
    n_train: int = 60,
    n_test_good: int = 12,
    n_test_defect: int = 6,
    image_size: int = 256,
    seed: int = 0,
) -> Path:
    """Write the demo set in MVTec layout under ``root/<category>/`` (replacing those folders); return root.

    ``n_test_defect`` is per defect type. Output is byte-identical for identical arguments.
    """
    if isinstance(categories, str):
        categories = (categories,)
    _check_args(categories, (n_train, n_test_good, n_test_defect), image_size)
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data folder {root} ({exc}); choose a writable --data-root.") from exc
    for cat in categories:
        stage = Path(tempfile.mkdtemp(prefix=f".{cat}-", dir=root))
        try:
            _write_category(stage, cat, n_train, n_test_good, n_test_defect, image_size, seed)
            info = _marker(cat, n_train, n_test_good, n_test_defect, image_size, seed)
            (stage / MARKER_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            stage.chmod(0o755)
            target = root / cat
            if target.exists():
                shutil.rmtree(target)
            os.replace(stage, target)
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
    return root


def ensure_demo_dataset(
    root: str | os.PathLike,
    categories: Sequence[str] = DEMO_CATEGORIES,
    image_size: int | None = None,
    seed: int | None = None,
) -> Path:
    """Generate the demo categories under ``root`` that are missing or from another generator version.

    An existing set (any size / counts) is kept unless ``image_size`` or ``seed`` is given and differs.
    Missing categories are generated with the defaults (256 px, seed 0 unless given). Returns root.
    """
    if isinstance(categories, str):
        categories = (categories,)
    _check_args(categories, (1,), image_size if image_size is not None else 256)
    root = Path(root)
    missing = []
    for cat in categories:
        try:
            have = json.loads((root / cat / MARKER_NAME).read_text())
        except (OSError, ValueError):
            have = None
        ok = (
            isinstance(have, dict)
            and have.get("generator_version") == GENERATOR_VERSION
            and have.get("category") == cat
            and (image_size is None or have.get("image_size") == image_size)
            and (seed is None or have.get("seed") == seed)
            and (root / cat / "train" / "good").is_dir()
        )
        if not ok:
            missing.append(cat)
    if missing:
        generate_demo_dataset(
            root, missing, image_size=image_size if image_size is not None else 256, seed=seed or 0
        )
    return root
