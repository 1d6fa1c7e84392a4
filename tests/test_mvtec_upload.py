"""MVTec AD in the browser's API: an uploaded archive (the full set or one category's) is extracted safely into the
operator's MVTec AD folder and its categories listed; a bad archive gives a clear error and changes nothing; public
mode refuses uploads. And the official archive's SHA-256 is pinned: a download with another hash keeps nothing."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io  # noqa: E402
import tarfile  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import run_studio  # noqa: E402
from PIL import Image  # noqa: E402
from test_download import server  # noqa: E402, F401 - the loopback HTTP server fixture

from ikd_core.data import download  # noqa: E402
from ikd_core.data.mvtec import list_categories  # noqa: E402
from ikd_core.errors import DataError  # noqa: E402


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _members(cats: tuple[str, ...], prefix: str = "") -> dict[str, bytes]:
    """The files of a tiny MVTec-layout set: train/good, test/good + a defect, its ground truth."""
    out = {}
    for cat in cats:
        out.update({
            f"{prefix}{cat}/train/good/000.png": _png(100),
            f"{prefix}{cat}/test/good/000.png": _png(110),
            f"{prefix}{cat}/test/crack/000.png": _png(120),
            f"{prefix}{cat}/ground_truth/crack/000_mask.png": _png(255),
        })
    return out


def _tar(path: Path, members: dict[str, bytes], mode: str = "w:xz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ SHA pin
def test_official_archive_hash_is_pinned_and_checked(tmp_path: Path, server) -> None:  # noqa: F811
    url, served = server
    assert download.MVTEC_SHA256 == "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
    _tar(served / "mvtec_anomaly_detection.tar.xz", _members(("bottle",)))
    root = tmp_path / "data"
    with pytest.raises(DataError, match="checksum mismatch.*" + download.MVTEC_SHA256):
        download.download_mvtec(root, url=f"{url}/mvtec_anomaly_detection.tar.xz")  # the pinned hash by default
    assert list(root.iterdir()) == [], "nothing is kept: no archive, no partial file, no category"
    # a local archive (e.g. one category's, with its own hash) is not held to the full archive's hash
    assert download.download_mvtec(root, archive=served / "mvtec_anomaly_detection.tar.xz") == root
    assert list_categories(root) == ["bottle"]


# ------------------------------------------------------------------------------------------ upload through the API
@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint):
    with run_studio(tmp_path_factory.mktemp("studio_mvtec"), tiny_checkpoint) as s:
        yield s


@pytest.fixture(scope="module")
def client(studio):
    from gradio_client import Client

    return Client(studio.url, verbose=False)


def _upload(client, archive: Path, category: str = "bottle") -> tuple:
    from gradio_client import handle_file

    return client.predict(handle_file(str(archive)), "", category, api_name="/upload_mvtec")


def test_full_and_single_category_archives(studio, client, tmp_path: Path) -> None:
    mvtec = Path(studio.app.settings.paths.mvtec_root)
    full = _tar(tmp_path / "mvtec_anomaly_detection.tar.xz", {**_members(("bottle", "cable")), "license.txt": b"cc"})
    msg, root, category = _upload(client, full)
    msg = msg.replace("\\", "")  # Markdown escapes
    assert "Extracted 2 categories (bottle, cable)" in msg and Path(root) == mvtec
    assert category["value"] == "bottle" and {c[1] for c in category["choices"]} == {"bottle", "cable"}
    single = _tar(tmp_path / "screw.tar.xz", _members(("screw",)))
    msg, _, category = _upload(client, single, category="bottle")
    msg = msg.replace("\\", "")
    assert "Extracted 1 category (screw)" in msg and "now has 3" in msg
    assert category["value"] == "screw" and list_categories(mvtec) == ["bottle", "cable", "screw"]
    # the category can be trained on at once (its data is found where the Model tab looks)
    assert not [p for p in mvtec.iterdir() if p.name.startswith(".")], "no staging folder left"


@pytest.mark.parametrize(
    ("name", "members", "match"),
    [
        ("notes.zip", None, "not a tar or zip archive"),
        ("pictures.zip", {"a/b/c.png": _png(1)}, "no MVTec AD categories"),
        ("evil.tar.gz", {"../../evil/train/good/0.png": _png(1)}, "would be written outside"),
        ("report.pdf", None, "Invalid file type|is not an MVTec AD archive"),  # Gradio checks file_types too
    ],
)
def test_bad_archive_is_refused_and_changes_nothing(studio, client, tmp_path: Path, name: str, members, match) -> None:
    from gradio_client.exceptions import AppError

    data = Path(studio.app.settings.paths.data)
    before = _snapshot(data)
    path = tmp_path / name
    if members is None:
        path.write_bytes(b"this is not an archive at all")
    elif name.endswith(".zip"):
        _zip(path, members)
    else:
        _tar(path, members, "w:gz")
    with pytest.raises(AppError, match=match) as err:
        _upload(client, path)
    assert str(tmp_path) not in str(err.value), "no server path in the message"
    assert _snapshot(data) == before
    assert not (tmp_path.parent / "evil").exists()


def test_public_mode_refuses_mvtec_uploads(studio, tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    archive = _tar(tmp_path_factory.mktemp("pub_archive") / "bottle.tar.xz", _members(("bottle",)))
    with run_studio(tmp_path_factory.mktemp("studio_mvtec_public"), tiny_checkpoint, {"IKD_PUBLIC": "1"}) as pub:
        with pytest.raises(AppError, match="not available on this public deployment"):
            Client(pub.url, verbose=False).predict(handle_file(str(archive)), "", "bottle", api_name="/upload_mvtec")
        assert not list_categories(Path(pub.app.settings.paths.mvtec_root))
