"""Image I/O and tensor conversion: robust loading, resizing and ImageNet normalisation.

Importing this module does not import torch (the torch-free runtime, :mod:`ikd_core.runtime`, uses it);
the tensor helpers import it when called.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ikd_core.errors import DataError

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PIXEL_SCALE = (1.0 / (255.0 * np.asarray(IMAGENET_STD, dtype=np.float64))).astype(np.float32).reshape(3, 1, 1)
_PIXEL_SHIFT = (-np.asarray(IMAGENET_MEAN, dtype=np.float64) / np.asarray(IMAGENET_STD)).astype(np.float32).reshape(3, 1, 1)

#: File extensions treated as images when scanning folders (compared lower-case).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

#: Largest accepted image, in pixels (8k x 8k); bigger files are refused as decompression bombs.
MAX_PIXELS = 8192 * 8192

ImageSource = str | os.PathLike | bytes | bytearray | Image.Image | np.ndarray

_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (by extension, hidden files skipped), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _describe(src: object) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    return f"<{type(src).__name__}>"


def check_image_size(width: int, height: int, what: str, max_pixels: int | None = None) -> None:
    """DataError for images without pixels or with more than ``max_pixels`` (default :data:`MAX_PIXELS`)."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if width < 1 or height < 1:
        raise DataError(f"{what}: image has no pixels ({width}x{height}); replace or remove the file.")
    if width * height > limit:
        raise DataError(
            f"{what}: image too large ({width}x{height} pixels, limit {limit} pixels); "
            "downscale it before use."
        )


def _open_header(fp: object, what: str) -> Image.Image:
    """``Image.open`` (reads the header only; no pixel data is decoded) with clear errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{what}: image too large ({exc}); downscale it before use.") from exc
    except UnidentifiedImageError as exc:
        raise DataError(f"{what}: not a readable image file; remove it or re-save it as PNG/JPEG.") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{what}: image header is corrupt ({exc}); re-export or remove the file.") from exc


def image_header_size(src: str | os.PathLike | bytes | bytearray, what: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file from its header alone (nothing is decoded); DataError if unreadable."""
    what = what or _describe(src)
    fp: object = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray)) else Path(src)
    if isinstance(fp, Path) and not fp.is_file():
        raise DataError(f"{what}: file not found; check the path.")
    with _open_header(fp, what) as img:
        return int(img.width), int(img.height)


def image_pixels(src: str | os.PathLike | bytes | bytearray, what: str | None = None) -> int:
    """Width x height of an image file from its header alone (nothing is decoded); DataError if unreadable."""
    width, height = image_header_size(src, what)
    return width * height


def _shrink(img: Image.Image, max_side: int | None) -> Image.Image:
    """Downscale (keeping the aspect ratio) so that neither side exceeds ``max_side``."""
    if max_side is None or max(img.size) <= max_side:
        return img
    scale = max_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


#: Modes that are downscaled right after decoding (before the RGB conversion, so no full-size RGB copy is made).
_SHRINK_EARLY_MODES = ("RGB", "L", "RGBA", "LA", "CMYK", "YCbCr")


def _open_file(
    src: str | os.PathLike | bytes | bytearray, what: str, max_side: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Open and fully decode a file or byte string, guarding against bombs and corrupt data.

    The size in the header is checked against ``max_pixels`` before any pixel is decoded. With ``max_side``, JPEGs
    are decoded at a reduced scale (never below ``max_side``) and common modes are downscaled right after
    decoding, so no full-size copy is kept.
    """
    if isinstance(src, (bytes, bytearray)):
        fp: object = io.BytesIO(bytes(src))
    else:
        path = Path(src)
        if not path.is_file():
            raise DataError(f"{what}: file not found; check the path.")
        fp = path
    img = _open_header(fp, what)
    try:
        check_image_size(img.width, img.height, what, max_pixels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if max_side is not None and img.format == "JPEG" and max(img.size) > max_side:
                img.draft(img.mode, (max_side, max_side))
            img.load()
        if max_side is not None and img.mode in _SHRINK_EARLY_MODES:
            img = _shrink(img, max_side)
    except DataError:
        img.close()
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"{what}: image too large ({exc}); downscale it before use.") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(
            f"{what}: image data is corrupt or truncated ({exc}); re-export or remove the file."
        ) from exc
    return img


def _from_array(arr: np.ndarray, what: str, max_pixels: int | None = None) -> Image.Image:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise DataError(f"{what}: array of shape {arr.shape} is not an image; expected HxW, HxWx3 or HxWx4.")
    check_image_size(arr.shape[1], arr.shape[0], what, max_pixels)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = np.round(arr.astype(np.float32) / 257.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating) and arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        arr = np.round(arr * 255.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise DataError(f"{what}: array dtype {arr.dtype} is not supported; pass uint8 (0-255) pixels.")
    return Image.fromarray(np.ascontiguousarray(arr))


def _high_bit_to_l(img: Image.Image) -> Image.Image:
    """Scale a 16-bit / 32-bit / float single-channel image to 8-bit without clipping."""
    arr = np.asarray(img).astype(np.float64)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if img.mode.startswith("I;16"):
        scale, offset = 255.0 / 65535.0, 0.0
    elif img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scale, offset = 255.0, 0.0
    elif lo >= 0.0 and hi <= 255.0:
        scale, offset = 1.0, 0.0
    elif img.mode == "I" and lo >= 0.0 and hi <= 65535.0:
        scale, offset = 255.0 / 65535.0, 0.0
    else:  # arbitrary range: min-max stretch
        scale, offset = 255.0 / max(hi - lo, 1e-12), lo
    out = np.clip(np.round((arr - offset) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _to_rgb(img: Image.Image, what: str) -> Image.Image:
    if img.mode in _HIGH_BIT_MODES:
        img = _high_bit_to_l(img)
    if img.mode == "RGB":
        return img
    try:
        if img.mode in _ALPHA_MODES or "transparency" in img.info:
            rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
            rgb = rgba[:, :, :3] * (rgba[:, :, 3:4] / 255.0)  # composite on black
            return Image.fromarray(np.round(rgb).astype(np.uint8))
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise DataError(f"{what}: colour mode {img.mode!r} cannot be converted to RGB; re-save as PNG/JPEG.") from exc


def _open_any(
    src: ImageSource, max_side: int | None = None, max_pixels: int | None = None, what: str | None = None
) -> tuple[Image.Image, str]:
    what = what or _describe(src)
    if isinstance(src, Image.Image):
        check_image_size(src.width, src.height, what, max_pixels)
        img = src
    elif isinstance(src, np.ndarray):
        return _from_array(src, what, max_pixels), what
    elif isinstance(src, (str, os.PathLike, bytes, bytearray)):
        img = _open_file(src, what, max_side, max_pixels)
    else:
        raise DataError(f"{what}: cannot load an image from this type; pass a path, bytes, PIL image or array.")
    with contextlib.suppress(Exception):  # malformed EXIF must not block loading
        img = ImageOps.exif_transpose(img)
    return img, what


def load_image(
    src: ImageSource, max_side: int | None = None, max_pixels: int | None = None, what: str | None = None
) -> Image.Image:
    """Load a path / bytes / PIL image / uint8 array as an 8-bit RGB PIL image (EXIF orientation applied).

    ``max_side``: downscale (keeping the aspect ratio) so that neither side exceeds it, e.g. to show and
    score very large photos without holding them at full resolution (JPEGs are decoded at a reduced scale,
    others downscaled right after decoding). ``max_pixels`` (default :data:`MAX_PIXELS`): images with more
    pixels are refused from their header, before anything is decoded. ``what``: how messages name the image
    (default: its path).
    """
    if max_side is not None:
        if isinstance(max_side, bool) or not isinstance(max_side, (int, float)) or not 1 <= max_side < 2**31:
            raise DataError(f"max_side must be a positive integer, got {max_side!r}.")
        max_side = int(max_side)
    img, what = _open_any(src, max_side, max_pixels, what)
    img = _shrink(_to_rgb(img, what), max_side)
    return img


def load_mask(src: ImageSource, max_side: int | None = None) -> np.ndarray:
    """Load a mask as a boolean HxW array (any non-zero pixel, in any colour channel, is defective).

    ``max_side``: downscale (nearest) so that neither side exceeds it, e.g. for display.
    """
    img, _ = _open_any(src)
    if max_side is not None and max(img.size) > max_side:  # before any full-size array is made
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.NEAREST)
    if img.mode in ("1", "L") or img.mode in _HIGH_BIT_MODES:
        arr = np.asarray(img)
    elif img.mode in ("LA", "La"):
        arr = np.asarray(img)[:, :, 0]
    else:
        arr = np.asarray(img.convert("RGB")).max(axis=2)
    return arr > 0


def _check_target_size(size: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise DataError(f"image_size must be a positive integer, got {size!r}.")


def image_to_array(img: ImageSource, size: int) -> np.ndarray:
    """Resize (bilinear, antialiased) to ``size`` x ``size`` and ImageNet-normalise -> (3, size, size) float32."""
    _check_target_size(size)
    if not (isinstance(img, Image.Image) and img.mode == "RGB"):
        img = load_image(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return normalize_array(img)


def normalize_array(img: Image.Image) -> np.ndarray:
    """An RGB image ImageNet-normalised at its own size -> (3, H, W) float32."""
    # (x / 255 - mean) / std as one in-place multiply-add per channel plane of a (3, H, W) copy
    arr = np.asarray(img).transpose(2, 0, 1).astype(np.float32, order="C")
    arr *= _PIXEL_SCALE
    arr += _PIXEL_SHIFT
    return arr


def image_to_tensor(img: ImageSource, size: int) -> torch.Tensor:
    """Resize (bilinear, antialiased) to ``size`` x ``size`` and ImageNet-normalise -> (3, size, size) float."""
    import torch

    return torch.from_numpy(image_to_array(img, size))


def mask_to_tensor(mask_img: ImageSource, size: int) -> torch.Tensor:
    """Binarise (>0 -> 1) and nearest-resize a mask -> (1, size, size) float tensor in {0, 1}."""
    import torch

    _check_target_size(size)
    mask = load_mask(mask_img)
    m = Image.fromarray(mask.astype(np.uint8) * 255)
    if m.size != (size, size):
        m = m.resize((size, size), Image.Resampling.NEAREST)
    return torch.from_numpy((np.asarray(m) > 0).astype(np.float32))[None]


def denormalize(t: torch.Tensor) -> np.ndarray:
    """Undo ImageNet normalisation of a (3,H,W) or (1,3,H,W) tensor -> uint8 HxWx3 array for display."""
    import torch

    t = t.detach().cpu().float()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected a (3,H,W) image tensor, got shape {tuple(t.shape)}")
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (t * std + mean).clamp(0.0, 1.0)
    return (rgb * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
