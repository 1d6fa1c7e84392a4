"""MVTec download / extraction against a local HTTP server (no internet)."""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ikd_core.data.download import download_file, download_mvtec, safe_extract
from ikd_core.data.mvtec import MVTecDataset, list_categories
from ikd_core.errors import DataError


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, served folder) of an HTTP server on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _png(path: Path, value: int, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size), value, np.uint8)
    if value == 255:  # a mask: only part of the image
        arr[: size // 2] = 0
    Image.fromarray(arr).save(path)


def _tree(root: Path, cats: tuple[str, ...] = ("widget", "gadget")) -> Path:
    """A tiny MVTec-layout tree under ``root`` plus a license file."""
    for cat in cats:
        c = root / cat
        _png(c / "train" / "good" / "000.png", 100)
        _png(c / "train" / "good" / "001.png", 110)
        _png(c / "test" / "good" / "000.png", 120)
        _png(c / "test" / "crack" / "000.png", 130)
        _png(c / "ground_truth" / "crack" / "000_mask.png", 255)
    (root / "license.txt").write_text("CC BY-NC-SA 4.0")
    return root


def _tar(tree: Path, out: Path, wrap: str | None = None, mode: str = "w:xz") -> Path:
    with tarfile.open(out, mode) as tf:
        for p in sorted(tree.iterdir()):
            tf.add(p, arcname=f"{wrap}/{p.name}" if wrap else p.name)
    return out


def _zip(tree: Path, out: Path, wrap: str | None = None) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(tree.rglob("*")):
            rel = p.relative_to(tree).as_posix()
            zf.write(p, f"{wrap}/{rel}" if wrap else rel)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_result(data_root: Path) -> None:
    assert list_categories(data_root) == ["gadget", "widget"]
    test = MVTecDataset(data_root, "widget", "test", image_size=16)
    assert len(test) == 2
    item = next(test[i] for i in range(2) if test[i]["label"] == 1)
    assert item["mask"].sum() == 16 * 8
    assert not [p for p in data_root.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_download_checksum_and_extract(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, served = server
    archive = _tar(_tree(tmp_path / "src"), served / "mvtec_anomaly_detection.tar.xz")
    calls: list[tuple[int, int]] = []
    root = download_mvtec(
        tmp_path / "data",
        url=f"{url}/mvtec_anomaly_detection.tar.xz",
        sha256=_sha(archive),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert root == tmp_path / "data"
    _check_result(root)
    assert (root / "license.txt").read_text() == "CC BY-NC-SA 4.0"
    assert calls and calls[-1] == (archive.stat().st_size, archive.stat().st_size)
    assert not (root / "mvtec_anomaly_detection.tar.xz").exists()  # removed after extraction


def test_download_file_checksum_mismatch_leaves_nothing(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, served = server
    (served / "f.bin").write_bytes(b"x" * 5000)
    dest_dir = tmp_path / "dl"
    with pytest.raises(DataError, match="checksum mismatch"):
        download_file(f"{url}/f.bin", dest_dir / "f.bin", sha256="0" * 64)
    assert list(dest_dir.iterdir()) == []
    # an existing destination is left untouched by a failed download
    (dest_dir / "f.bin").write_bytes(b"old")
    with pytest.raises(DataError, match="checksum mismatch"):
        download_file(f"{url}/f.bin", dest_dir / "f.bin", sha256="0" * 64)
    assert (dest_dir / "f.bin").read_bytes() == b"old" and len(list(dest_dir.iterdir())) == 1
    ok = download_file(f"{url}/f.bin", dest_dir / "f.bin", sha256=hashlib.sha256(b"x" * 5000).hexdigest())
    assert ok.read_bytes() == b"x" * 5000


def test_download_failure_suggests_manual_archive(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, _ = server
    with pytest.raises(DataError, match=r"--archive"):
        download_mvtec(tmp_path / "data", url=f"{url}/missing.tar.xz")
    assert not [p for p in (tmp_path / "data").iterdir()]


@pytest.mark.parametrize("wrap", [None, "mvtec_anomaly_detection"])
def test_local_archive(tmp_path: Path, wrap: str | None) -> None:
    archive = _tar(_tree(tmp_path / "src"), tmp_path / "mvtec.tar.gz", wrap=wrap, mode="w:gz")
    root = download_mvtec(tmp_path / "data", archive=archive)
    _check_result(root)
    assert archive.is_file()  # a user's archive is never deleted
    with pytest.raises(DataError, match="checksum mismatch"):
        download_mvtec(tmp_path / "data2", archive=archive, sha256="1" * 64)
    with pytest.raises(DataError, match="not found"):
        download_mvtec(tmp_path / "data3", archive=tmp_path / "nope.tar.xz")


def test_zip_archive(tmp_path: Path) -> None:
    archive = _zip(_tree(tmp_path / "src"), tmp_path / "mvtec.zip", wrap="wrapped")
    _check_result(download_mvtec(tmp_path / "data", archive=archive))


def test_archive_without_categories(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("hi")
    archive = _tar(tmp_path / "src", tmp_path / "other.tar")
    with pytest.raises(DataError, match="no MVTec AD categories"):
        download_mvtec(tmp_path / "data", archive=archive)
    (tmp_path / "plain.txt").write_text("not an archive")
    with pytest.raises(DataError, match="not a tar or zip"):
        safe_extract(tmp_path / "plain.txt", tmp_path / "out")


def _evil_tar(path: Path, evil: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:xz") as tf:
        good = tarfile.TarInfo("widget/ok.txt")
        good.size = 2
        tf.addfile(good, io.BytesIO(b"ok"))
        if evil.isreg():
            evil.size = 4
            tf.addfile(evil, io.BytesIO(b"evil"))
        else:
            tf.addfile(evil)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    "evil",
    [
        _info("../evil.txt"),
        _info("widget/../../evil.txt"),
        _info("/tmp/ikd_evil_abs.txt"),
        _info("widget/link", tarfile.SYMTYPE, "../../evil.txt"),
        _info("widget/abs_link", tarfile.SYMTYPE, "/etc/passwd"),
        _info("widget/hard", tarfile.LNKTYPE, "../evil.txt"),
        _info("widget/dev", tarfile.CHRTYPE),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-abs", "hardlink-out", "device"],
)
def test_safe_extract_refuses_escape(tmp_path: Path, evil: tarfile.TarInfo) -> None:
    archive = _evil_tar(tmp_path / "evil.tar.xz", evil)
    target = tmp_path / "a" / "b" / "target"
    with pytest.raises(DataError, match="refusing to extract"):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []  # nothing extracted, not even the harmless member
    assert not (tmp_path / "a" / "b" / "evil.txt").exists() and not (tmp_path / "a" / "evil.txt").exists()
    assert not Path("/tmp/ikd_evil_abs.txt").exists()


def test_safe_extract_refuses_zip_escape(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("widget/ok.txt", "ok")
        zf.writestr("../evil.txt", "evil")
    target = tmp_path / "sub" / "target"
    with pytest.raises(DataError, match="refusing to extract"):
        safe_extract(archive, target)
    assert list(target.iterdir()) == [] and not (tmp_path / "sub" / "evil.txt").exists()


def test_safe_extract_allows_internal_links(tmp_path: Path) -> None:
    archive = _evil_tar(tmp_path / "ok.tar.xz", _info("widget/link.txt", tarfile.SYMTYPE, "ok.txt"))
    out = safe_extract(archive, tmp_path / "out")
    assert (out / "widget" / "link.txt").read_text() == "ok"
