"""Uploaded files: good images for training (files or zips, extracted safely), images to inspect, and
clean-up of what the studio wrote for them."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import time
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..data.sources import DataSpec
from ..data.transforms import IMAGE_EXTENSIONS, MAX_PIXELS, check_image_size, image_header_size, load_image
from ..errors import DataError
from .paths import sanitize_name

#: Limits for uploaded good images (one zip or several files).
MAX_UPLOAD_FILES = 5000
MAX_UPLOAD_FILE_BYTES = 64 * 1024 * 1024
MAX_UPLOAD_TOTAL_BYTES = 2 * 1024**3
#: Most entries a zip may declare (its central directory is refused before it is parsed), and most bytes of
#: central directory per declared entry (the count in the end record could lie).
MAX_ZIP_ENTRIES = 2 * MAX_UPLOAD_FILES
MAX_ZIP_DIRECTORY_BYTES_PER_ENTRY = 512
#: Pixel limits for uploaded good images, checked from the image headers before any image is decoded.
MAX_UPLOAD_PIXELS = MAX_PIXELS
MAX_UPLOAD_TOTAL_PIXELS = 512 * 1024 * 1024
#: Inspected images larger than this (either side, pixels) are downscaled before scoring and display.
MAX_INSPECT_SIDE = 2048


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _check_member_name(name: str) -> PurePosixPath:
    """A zip member name as a relative path; :class:`DataError` if it could escape the target."""
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if (
        not norm
        or norm.startswith("/")
        or p.is_absolute()
        or (len(norm) > 1 and norm[1] == ":")
        or ".." in p.parts
        or "\x00" in norm
    ):
        raise DataError(f"refusing the archive: member {name!r} would be written outside the upload folder")
    return p


def _verify_image(path: Path, shown: str, max_pixels: int) -> None:

    try:
        load_image(path, max_pixels=max_pixels, what=shown)
    except DataError as exc:
        raise _unusable(shown, exc) from exc


def _unusable(shown: str, exc: DataError) -> DataError:
    reason = str(exc).removeprefix(f"{shown}: ")
    return DataError(f"{shown}: not a usable image ({reason}); remove it and upload again")


def zip_directory_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(entries, central directory bytes) a zip declares in its end record (ZIP64 too), read without parsing
    the central directory (which :class:`zipfile.ZipFile` does entirely when it opens). DataError if not a zip."""
    try:
        with open(path, "rb") as fh:
            rec = zipfile._EndRecData(fh)  # the end record (+ ZIP64 end record): a few hundred bytes at most
    except (OSError, zipfile.BadZipFile, struct.error) as exc:
        raise DataError(f"{Path(path).name}: not a readable zip archive ({exc})") from exc
    if rec is None:
        raise DataError(f"{Path(path).name}: not a readable zip archive (no end record)")
    return int(rec[zipfile._ECD_ENTRIES_TOTAL]), int(rec[zipfile._ECD_SIZE])


def _check_zip_directory(src: Path, max_entries: int) -> None:
    entries, size = zip_directory_size(src)
    if entries > max_entries:
        raise DataError(f"{src.name}: the archive has {entries} entries (limit {max_entries}); upload fewer files")
    if size > max(entries, 1) * MAX_ZIP_DIRECTORY_BYTES_PER_ENTRY:
        raise DataError(f"{src.name}: the archive's directory is {size} bytes for {entries} entries; refused")


@dataclass
class _Extraction:
    """The state of one :func:`extract_images` call: the files written so far and the running totals."""

    target: Path
    max_files: int
    max_file_bytes: int
    max_total_bytes: int
    max_entries: int
    max_pixels: int
    max_total_pixels: int
    written: list[tuple[Path, str]] = field(default_factory=list)
    total: int = 0
    pixels: int = 0
    used: set[str] = field(default_factory=set)

    def out_name(self, name: str) -> Path:
        """A fresh, safe file name in the target folder for a file called ``name``."""
        stem, suffix = Path(name).stem, Path(name).suffix.lower()
        base = sanitize_name(stem, "image")
        cand, n = f"{base}{suffix}", 2
        while cand.lower() in self.used:
            cand, n = f"{base}-{n}{suffix}", n + 1
        self.used.add(cand.lower())
        return self.target / cand

    def account(self, size: int, shown: str) -> None:
        """Count a file of ``size`` bytes against the limits before it is written."""
        if size > self.max_file_bytes:
            raise DataError(f"{shown} is larger than {self.max_file_bytes // 1024**2} MiB; downscale it")
        self.total += size
        if self.total > self.max_total_bytes:
            raise DataError(f"the upload is larger than {self.max_total_bytes // 1024**2} MiB in total")
        if len(self.written) >= self.max_files:
            raise DataError(f"too many images (limit {self.max_files})")

    def account_pixels(self, dest: Path, shown: str) -> None:
        """Header only: the image's size against the limits; nothing is decoded."""

        try:
            w, h = image_header_size(dest, shown)
            check_image_size(w, h, shown, self.max_pixels)
        except DataError as exc:
            raise _unusable(shown, exc) from exc
        self.pixels += w * h
        if self.pixels > self.max_total_pixels:
            raise DataError(
                f"the upload has more than {self.max_total_pixels // 1024**2} megapixels of images in total; "
                "downscale them or upload fewer"
            )
        self.written.append((dest, shown))

    def add_zip(self, src: Path) -> None:
        """The images inside a zip archive (every member's name is checked before anything is written)."""
        _check_zip_directory(src, self.max_entries)
        with zipfile.ZipFile(src) as zf:
            infos = zf.infolist()
            if len(infos) > self.max_entries:
                raise DataError(f"{src.name}: the archive has {len(infos)} entries (limit {self.max_entries})")
            for info in infos:  # check every member before writing anything
                _check_member_name(info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise DataError(f"refusing the archive: member {info.filename!r} is a symbolic link")
            for info in infos:
                p = PurePosixPath(info.filename.replace("\\", "/"))
                if info.is_dir() or not _is_image_name(p.name):
                    continue
                if any(part.startswith(".") or part == "__MACOSX" for part in p.parts):
                    continue
                shown = f"{src.name}:{info.filename}"
                self.account(info.file_size, shown)
                dest = self.out_name(p.name)
                with zf.open(info) as fin, dest.open("wb") as fout:
                    copied = 0
                    while chunk := fin.read(1 << 20):
                        copied += len(chunk)
                        if copied > self.max_file_bytes or copied > info.file_size:
                            raise DataError(f"{shown}: decompresses to more than it declares; refused")
                        fout.write(chunk)
                self.account_pixels(dest, shown)

    def add_file(self, src: Path) -> None:
        """One uploaded image file."""
        if not _is_image_name(src.name):
            raise DataError(
                f"{src.name}: not an image or zip file (accepted: {', '.join(sorted(IMAGE_EXTENSIONS))}, .zip)"
            )
        self.account(src.stat().st_size, src.name)
        dest = self.out_name(src.name)
        shutil.copyfile(src, dest)
        self.account_pixels(dest, src.name)


def extract_images(
    files: Iterable[str | os.PathLike[str]],
    target: str | os.PathLike[str],
    max_files: int = MAX_UPLOAD_FILES,
    max_file_bytes: int = MAX_UPLOAD_FILE_BYTES,
    max_total_bytes: int = MAX_UPLOAD_TOTAL_BYTES,
    verify: bool = True,
    max_entries: int = MAX_ZIP_ENTRIES,
    max_pixels: int = MAX_UPLOAD_PIXELS,
    max_total_pixels: int = MAX_UPLOAD_TOTAL_PIXELS,
) -> list[Path]:
    """Copy image files, and the images inside zip archives, flat into the new folder ``target``.

    Safe by construction, in this order: a zip declaring more than ``max_entries`` entries (or an oversized
    directory) is refused from its end record, before its directory is parsed; members with absolute paths,
    ``..`` or links are refused (the whole upload, nothing is kept); only image extensions are taken (other
    members are skipped); the number and sizes of files are limited (also while decompressing, against zip
    bombs); then every image's size is read from its header and checked against ``max_pixels`` each and
    ``max_total_pixels`` in all; only then is each image decoded once to check it (``verify``). ``target`` must
    not exist yet; on any error it is removed.

    Returns:
        The paths of the images written, in upload order.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=False)
    run = _Extraction(target, max_files, max_file_bytes, max_total_bytes, max_entries, max_pixels, max_total_pixels)
    try:
        for f in files:
            src = Path(f)
            if zipfile.is_zipfile(src):
                run.add_zip(src)
            else:
                run.add_file(src)
        if not run.written:
            raise DataError("the upload contains no images (png, jpg, bmp, tif, webp; zip archives of those)")
        if verify:  # full decodes only once every header is within the limits
            for dest, shown in run.written:
                _verify_image(dest, shown, max_pixels)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return [dest for dest, _ in run.written]


def uploaded_data_spec(
    files: Sequence[str | os.PathLike[str]],
    work_dir: str | os.PathLike[str],
    category: str | None = None,
    **limits: Any,
) -> DataSpec:
    """Extract uploaded good images (files and/or zips) into a fresh folder under ``work_dir/uploads``
    and return the matching ``DataSpec(kind="folder")``.

    ``category`` (default: the name of the first upload) names the data and the checkpoint.
    """
    if not files:
        raise DataError("upload good images first (several image files or one zip of them)")
    name = sanitize_name(category or Path(Path(str(files[0])).name).stem, "custom")
    folder = Path(work_dir) / "uploads" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}-{name}"
    good = folder / "good"
    folder.mkdir(parents=True, exist_ok=False)
    try:
        extract_images(files, good, **limits)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return DataSpec(kind="folder", category=name, good_dir=str(good))


def discard_upload(spec: DataSpec | None, work_dir: str | os.PathLike[str]) -> bool:
    """Remove the folder :func:`uploaded_data_spec` extracted for ``spec`` (once training is over).

    Only folders directly under ``work_dir/uploads`` are removed; any other spec is left alone. True if
    something was removed.
    """
    if spec is None or spec.kind != "folder" or not spec.good_dir:
        return False
    uploads = (Path(work_dir) / "uploads").resolve()
    folder = Path(spec.good_dir).resolve().parent
    if folder.parent != uploads or not folder.is_dir():
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def load_inspect_image(
    path: str | os.PathLike[str], max_side: int = MAX_INSPECT_SIDE, max_pixels: int | None = None
) -> tuple[Any, str | None]:
    """An uploaded image as RGB for scoring and display, and a note when it was downscaled.

    Images with more than ``max_pixels`` (default :data:`~ikd_core.data.transforms.MAX_PIXELS`) are refused from
    their header, before decoding; larger than ``max_side`` pixels a side are downscaled while decoding (keeping
    the aspect ratio); the EXIF orientation is applied. Anything that is not a usable image (no image data,
    truncated, a decompression bomb, ...) raises :class:`DataError`. Messages name the file by its name only,
    never by its server path.
    """
    from PIL import Image


    shown = Path(path).name
    try:
        w, h = image_header_size(path, shown)
        img = load_image(path, max_side=max_side, max_pixels=max_pixels, what=shown)
    except DataError as exc:
        raise DataError(str(exc).replace(str(path), shown)) from exc
    note = None
    if isinstance(img, Image.Image) and max(w, h) > max_side:
        note = f"{shown} is {w}x{h} px: scored and shown at {img.width}x{img.height} px"
    return img, note


def prune_files(folder: str | os.PathLike[str], keep: int) -> None:
    """Delete all but the ``keep`` newest files of ``folder`` (e.g. exported GIFs, which Gradio has
    already copied into its own cache by the time they are shown)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    dated = []
    for p in folder.iterdir():
        try:  # another request may prune the same folder at the same moment: a file listed may be gone
            st = p.stat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            dated.append((st.st_mtime_ns, p))
    dated.sort(key=lambda item: item[0], reverse=True)
    for _, old in dated[keep:]:
        old.unlink(missing_ok=True)
