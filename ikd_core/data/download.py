"""MVTec AD download: streamed, checksum-verified download and path-safe archive extraction."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from ikd_core.data.mvtec import list_categories
from ikd_core.errors import DataError

MVTEC_URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
    "420938113-1629952094/mvtec_anomaly_detection.tar.xz"
)
#: SHA-256 of the official full archive (``mvtec_anomaly_detection.tar.xz``, about 4.9 GB): every download is
#: verified against it unless another hash is passed (``sha256=`` / ``--sha256``).
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
MVTEC_HOME = "https://www.mvtec.com/company/research/datasets/mvtec-ad"

Progress = Callable[[int, int], None]
_CHUNK = 1 << 20


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _check_sha(actual: str, expected: str | None, what: str) -> None:
    if expected is not None and actual.lower() != expected.strip().lower():
        raise DataError(
            f"checksum mismatch for {what}: expected SHA-256 {expected}, got {actual}; "
            "the file is corrupt or has changed - download it again."
        )


def download_file(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    progress: Progress | None = None,
    timeout: float = 30,
) -> Path:
    """Stream ``url`` to ``dest`` (tqdm bar + optional ``progress(done, total)``; total 0 if unknown).

    Writes to a temporary file next to ``dest``, verifies ``sha256`` if given and renames atomically,
    so ``dest`` is either the complete, verified file or untouched. Failures raise DataError.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create folder {dest.parent} ({exc}); choose a writable location.") from exc
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            req = urllib.request.Request(url, headers={"User-Agent": "ikd-studio"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0)
                done = 0
                with tqdm(total=total or None, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        bar.update(len(chunk))
                        if progress is not None:
                            progress(done, total)
        if total and done != total:
            raise DataError(f"download of {url} stopped early ({done} of {total} bytes); try again.")
        _check_sha(h.hexdigest(), sha256, url)
        os.replace(tmp, dest)
    except DataError:
        tmp.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"download of {url} failed: {reason}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _inside(target: Path, rel: str) -> bool:
    """True if ``rel`` (an archive path, '/' or '\\' separated) stays inside ``target``."""
    rel = rel.replace("\\", "/")
    if rel.startswith("/") or PurePosixPath(rel).is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        return False
    resolved = (target / rel).resolve()
    return resolved == target or target in resolved.parents


def _check_tar(tf: tarfile.TarFile, target: Path) -> None:
    for m in tf.getmembers():
        if not _inside(target, m.name):
            raise DataError(f"refusing to extract archive: member {m.name!r} would be written outside {target}.")
        if m.issym() or m.islnk():
            link = m.linkname.replace("\\", "/")
            base = PurePosixPath(m.name.replace("\\", "/")).parent.as_posix() if m.issym() else ""
            if link.startswith("/") or not _inside(target, f"{base}/{link}" if base else link):
                raise DataError(
                    f"refusing to extract archive: link {m.name!r} -> {m.linkname!r} points outside {target}."
                )
        elif not (m.isfile() or m.isdir()):
            raise DataError(f"refusing to extract archive: member {m.name!r} is a device or special file.")


def _check_zip(zf: zipfile.ZipFile, target: Path) -> None:
    for info in zf.infolist():
        if not _inside(target, info.filename):
            raise DataError(
                f"refusing to extract archive: member {info.filename!r} would be written outside {target}."
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"refusing to extract archive: member {info.filename!r} is a symbolic link.")


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike, progress: Progress | None = None) -> Path:
    """Extract a tar (.tar/.tar.gz/.tar.xz/.tar.bz2) or zip archive into ``target``.

    Every member is checked first; if any would land outside ``target`` (``..``, absolute paths, links
    pointing outside, device files) a DataError is raised and nothing is extracted. ``progress(done, total)``
    is called after each extracted member.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DataError(f"archive {archive} not found; check the path.")
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, root)
                infos = zf.infolist()
                for i, info in enumerate(infos, 1):
                    zf.extract(info, root)
                    if progress is not None:
                        progress(i, len(infos))
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                _check_tar(tf, root)
                members = tf.getmembers()
                for i, member in enumerate(members, 1):
                    if hasattr(tarfile, "data_filter"):
                        tf.extract(member, root, filter="data")
                    else:  # pragma: no cover - Python without extraction filters; members checked above
                        tf.extract(member, root)
                    if progress is not None:
                        progress(i, len(members))
        else:
            raise DataError(f"{archive} is not a tar or zip archive; pass the .tar.xz (or .zip) file.")
    except DataError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise DataError(f"cannot extract {archive} ({exc}); the archive is corrupt or incomplete.") from exc
    return target


def _find_dataset_root(folder: Path, depth: int = 2) -> Path | None:
    """``folder`` or a sub-folder (down to ``depth`` levels) that holds MVTec categories."""
    if list_categories(folder):
        return folder
    if depth > 0:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found = _find_dataset_root(sub, depth - 1)
            if found is not None:
                return found
    return None


def _archive_name(url: str) -> str:
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    ok = name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".zip"))
    return name if ok else "mvtec_anomaly_detection.tar.xz"


def download_mvtec(
    data_root: str | os.PathLike,
    url: str = MVTEC_URL,
    sha256: str | None = None,
    archive: str | os.PathLike | None = None,
    progress: Progress | None = None,
    keep_archive: bool = False,
    extract_progress: Progress | None = None,
) -> Path:
    """Put MVTec AD under ``data_root/<category>/``; return ``data_root``.

    With ``archive`` (a local .tar.xz / .zip: the full set, or one category's archive such as ``bottle.tar.xz``)
    that file is extracted and never deleted; otherwise ``url`` is downloaded into ``data_root`` (removed after
    extraction unless ``keep_archive``). Categories already present are replaced by the archive's copy.
    ``sha256``: the expected hash; by default a download must match :data:`MVTEC_SHA256` (a mismatch keeps
    nothing) and a local archive is not checked (a category's archive has its own hash). ``progress`` reports
    the download's bytes, ``extract_progress`` the extracted members.
    """
    if sha256 is None and archive is None:
        sha256 = MVTEC_SHA256
    data_root = Path(data_root)
    try:
        data_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data folder {data_root} ({exc}); choose a writable --data-root.") from exc
    downloaded = False
    if archive is not None:
        src = Path(archive)
        if not src.is_file():
            raise DataError(f"archive {src} not found; download it from {MVTEC_HOME} and pass its path.")
        if sha256 is not None:
            _check_sha(sha256_of(src), sha256, str(src))
    else:
        src = data_root / _archive_name(url)
        try:
            if src.is_file() and (sha256 is None or sha256_of(src) == sha256.strip().lower()):
                pass  # a complete earlier download (only ever created by an atomic rename)
            else:
                download_file(url, src, sha256=sha256, progress=progress)
        except DataError as exc:
            raise DataError(
                f"{exc}. Download MVTec AD manually from {MVTEC_HOME} and run "
                "`python -m ikd_core download --archive FILE`."
            ) from exc
        downloaded = True

    install_archive(src, data_root, progress=extract_progress)
    if downloaded and not keep_archive:
        src.unlink(missing_ok=True)
    return data_root


def install_archive(src: str | os.PathLike, data_root: str | os.PathLike,
                    progress: Progress | None = None) -> list[str]:
    """Extract an MVTec AD archive (the full set or one category's) into a staging folder inside ``data_root``,
    then move its categories to ``data_root/<category>/`` (replacing those present); return their names. A bad
    archive (not one, unsafe members, no category inside) raises DataError and changes nothing in ``data_root``."""
    src, data_root = Path(src), Path(data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".mvtec-extract-", dir=data_root))
    try:
        safe_extract(src, stage, progress=progress)
        found = _find_dataset_root(stage)
        if found is None:
            raise DataError(
                f"{src.name} contains no MVTec AD categories (folders with train/good); "
                "check that it is the MVTec AD archive or one category's archive."
            )
        cats = list_categories(found)
        for cat in cats:
            dest = data_root / cat
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(found / cat, dest)
        for extra in found.iterdir():  # license / readme next to the categories
            if extra.is_file() and not (data_root / extra.name).exists():
                os.replace(extra, data_root / extra.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return cats
