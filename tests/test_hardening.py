"""Hardening, through the running app (gradio_client): bad inputs, unsafe files, interrupted work and load.

Every case sends the bad input or fault through the app's API and checks both the message the client gets
and that nothing was lost: ``pretrained/`` keeps its bytes and the server answers the next request. One app
launch serves the module (``pretrained/``, data, work and Gradio temporary folders in a temporary directory,
an upload limit of 5 MB and a Gradio cache sweep of files older than 30 s, so both can be checked for real).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import zipfile  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import run_studio  # noqa: E402
from PIL import Image  # noqa: E402
from test_app_api import CKPT, _inspect  # noqa: E402
from test_checkpoint import MARKER, _copy_with, _Payload  # noqa: E402
from test_data import _chunk, _png_bytes  # noqa: E402

from benchmarks import load_test  # noqa: E402
from benchmarks.app_server import distinct_images  # noqa: E402

ENV = {"IKD_MAX_FILE_SIZE": "5mb", "IKD_DELETE_CACHE": "1,30", "IKD_ALLOW_SERVER_PATHS": "1"}
CACHE_AGE = 30


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("studio_hard")
    gtmp = root / "gradio"
    with run_studio(root, tiny_checkpoint, {"GRADIO_TEMP_DIR": str(gtmp), **ENV}) as s:
        s.gradio_tmp, s.canary = gtmp, None
        yield s


@pytest.fixture(scope="module")
def client(studio):
    from gradio_client import Client

    return Client(studio.url, verbose=False)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file and folder under ``folder`` (hidden ones too) with its bytes."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))}


def _good_image(studio) -> Path:
    return sorted((studio.demo / "demo_texture" / "test" / "good").glob("*.png"))[0]


def _serves(studio, client) -> float:
    """The server still answers a normal request with the ready checkpoint; its score."""
    out = _inspect(client, [_good_image(studio)])
    assert out[5] in ("normal", "anomalous")
    return out[4]


def _write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def _save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


# ------------------------------------------------------------------------------------------ upload limits
def test_upload_limit_file_types_and_canary(studio, client) -> None:
    import httpx
    from gradio_client.exceptions import AppError

    assert studio.app.launch_kwargs()["max_file_size"] == "5mb"
    assert client.config["max_file_size"] == 5 * 1024**2
    big = _write(studio.root / "big", "huge.png", os.urandom(6 * 1024**2))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        _inspect(client, [big])  # the client refuses before sending ...
    with big.open("rb") as fh:  # ... and the server refuses it when sent anyway
        r = httpx.post(studio.url + "gradio_api/upload", files=[("files", ("huge.png", fh))], timeout=60)
    assert r.status_code == 413 and "File size exceeded maximum allowed size" in r.text
    assert not [p for p in studio.gradio_tmp.rglob("huge.png")], "no partial upload kept"

    comps = {c.get("props", {}).get("elem_id"): c.get("props", {}) for c in client.config["components"]}
    assert comps["ikd-inspect-files"]["file_types"] == ["image"]
    assert comps["ikd-ckpt-upload"]["file_types"] == [".safetensors", ".json"]
    assert comps["ikd-train-upload"]["file_types"] == ["image", ".zip"]
    notes = _write(studio.root / "types", "notes.txt", b"hello")
    with pytest.raises(AppError, match="Invalid file type"):
        _inspect(client, [notes])

    # a unique upload whose temporary copy must be swept from Gradio's cache (see the last test)
    canary = _save(studio.root / "canary" / f"canary-{uuid.uuid4().hex[:8]}.png",
                   Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 48, 3), dtype=np.uint8)))
    assert _inspect(client, [canary])[5] in ("normal", "anomalous")
    found = list(studio.gradio_tmp.rglob(canary.name))
    assert found, "the upload is in Gradio's temporary folder"
    studio.canary = (found, time.monotonic())
    _serves(studio, client)


# ------------------------------------------------------------------------------------------ inspect inputs
def _bomb_png(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0"))
            + _chunk(b"IEND", b""))


def _demo_rgb(studio) -> Image.Image:
    return Image.open(sorted((studio.demo / "demo_texture" / "test" / "hole").glob("*.png"))[0]).convert("RGB")


def _exif_rotated(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    return _png_bytes(img.resize((80, 40)), "JPEG", exif=exif)


def _large_photo(img: Image.Image) -> bytes:
    arr = np.kron(np.asarray(img), np.ones((75, 100, 1), np.uint8))  # 6400 x 4800, smooth: a small JPEG
    return _png_bytes(Image.fromarray(arr), "JPEG", quality=80)


def _palette(img: Image.Image) -> bytes:
    p = img.convert("P")
    return _png_bytes(p, transparency=0)


# name -> (file name, bytes from the demo image, expected (width, height) of the shown image or error regex)
INSPECT_CASES = {
    "non-image bytes": ("photo.jpg", lambda im: b"PK\x03\x04 not an image at all" * 20, "not a readable image"),
    "truncated PNG": ("cut.png", lambda im: _png_bytes(im)[: len(_png_bytes(im)) // 2], "corrupt or truncated"),
    "truncated JPEG": ("cut.jpg", lambda im: _png_bytes(im, "JPEG")[: len(_png_bytes(im, "JPEG")) // 2],
                       "corrupt or truncated"),
    "16-bit PNG": ("deep.png", lambda im: _png_bytes(Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16)
                                                                     * 257)), (64, 64)),
    "grayscale": ("gray.png", lambda im: _png_bytes(im.convert("L")), (64, 64)),
    "RGBA": ("rgba.png", lambda im: _png_bytes(im.convert("RGBA")), (64, 64)),
    "palette": ("pal.png", _palette, (64, 64)),
    "CMYK JPEG": ("cmyk.jpg", lambda im: _png_bytes(im.convert("CMYK"), "JPEG"), (64, 64)),
    "EXIF-rotated photo": ("rotated.jpg", _exif_rotated, (40, 80)),
    "1x1 pixel": ("dot.png", lambda im: _png_bytes(im.resize((1, 1))), (1, 1)),
    "decompression bomb": ("bomb.png", lambda im: _bomb_png(100_000, 100_000), "too large"),
    "bomb below PIL's limit": ("big-header.png", lambda im: _bomb_png(9000, 9000), "too large.*limit"),
    "very large photo": ("large.jpg", _large_photo, (2048, 1536)),
}


@pytest.mark.parametrize("case", list(INSPECT_CASES))
def test_inspect_odd_and_bad_images(studio, client, case: str) -> None:
    from gradio_client.exceptions import AppError

    name, make, want = INSPECT_CASES[case]
    path = _write(studio.root / "inspect" / case.replace(" ", "_"), name, make(_demo_rgb(studio)))
    if isinstance(want, str):
        with pytest.raises(AppError, match=want) as err:
            _inspect(client, [path])
        assert str(err.value).startswith(f"{name}: "), "named as uploaded, not by the server's temporary path"
    else:
        original, heatmap, overlay, _gt, score, verdict, table, gallery, *_ = _inspect(client, [path])
        assert verdict in ("normal", "anomalous") and score >= 0.0  # unclipped: may exceed 1 (0.5 = threshold)
        assert table["data"][0][0] == name and len(gallery) == 1
        for pic in (original, heatmap, overlay):
            assert Image.open(pic).size == want, case
    _serves(studio, client)


# ------------------------------------------------------------------------------------------ checkpoint names
def test_checkpoint_names_cannot_escape_pretrained(studio, client) -> None:
    from gradio_client.exceptions import AppError

    outside = studio.root / "outside"
    outside.mkdir()
    shutil.copy(studio.pretrained / CKPT, outside / CKPT)
    link = studio.pretrained / "link.safetensors"
    link.symlink_to(outside / CKPT)
    try:
        before = _snapshot(studio.pretrained)
        listed = client.predict(CKPT, api_name="/list_checkpoints")
        assert "link.safetensors" not in {c[1] for c in listed["choices"]}, "links out of pretrained/ are not listed"
        for bad in ("../" + CKPT, "..\\" + CKPT, str(outside / CKPT), str(studio.pretrained / CKPT),
                    "link.safetensors", "sub/" + CKPT):
            info, label, _examples = client.predict(bad, api_name="/checkpoint_info")
            assert "invalid checkpoint name" in info and "Active model:** none" in label, (bad, info, label)
            with pytest.raises(AppError, match="invalid checkpoint name"):
                _inspect(client, [_good_image(studio)], ckpt=bad)
            with pytest.raises(AppError, match="invalid checkpoint name"):
                client.predict(bad, 1, 2, 128, 0.5, 0.5, "jet", [], api_name="/export_gif")
        assert _snapshot(studio.pretrained) == before
        _serves(studio, client)
    finally:
        link.unlink()


# ------------------------------------------------------------------------------------------ checkpoint uploads
def _bad_checkpoints(studio, tiny_checkpoint) -> list[tuple[Path, str]]:
    """(upload, expected message) pairs; the ones in valid format are named like the active checkpoint."""
    root = studio.root / "bad_ckpts"
    good = (studio.pretrained / CKPT).read_bytes()
    out: list[tuple[Path, str]] = []

    def add(sub: str, name: str, data: bytes, msg: str) -> None:
        out.append((_write(root / sub, name, data), msg))

    payload = pickle.dumps({"state_dict": _Payload()})
    buf = io.BytesIO()
    torch.save({"x": _Payload()}, buf)
    add("pickle", CKPT, payload, "pickle")
    add("torchzip", CKPT, buf.getvalue(), "pickle")
    add("pt", "evil.pt", payload, "Invalid file type")
    add("ckpt", "evil.ckpt", payload, "Invalid file type")
    add("truncated", CKPT, good[: len(good) // 2], "not a valid safetensors|truncated|corrupt")
    tmp = root / "made"
    tmp.mkdir(parents=True)
    made = {
        "backbone": (_copy_with(tiny_checkpoint, tmp, "a.safetensors", backbone="resnet18", levels=[1, 2, 3]),
                     "does not match its metadata"),
        "size": (_copy_with(tiny_checkpoint, tmp, "b.safetensors", image_size=100_000), "image size 100000"),
        "norm": (_copy_with(tiny_checkpoint, tmp, "c.safetensors",
                            score_normalization={"threshold": float("nan"), "lo": 0.0}), "score normalisation"),
    }
    state = dict(tiny_checkpoint.model.student.state_dict())
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 2)
    made["tensors"] = (_copy_with(tiny_checkpoint, tmp, "d.safetensors", state=state), "does not match its metadata")
    for sub, (path, msg) in made.items():
        add(sub, CKPT, path.read_bytes(), msg)
    return out


def test_bad_checkpoint_uploads_change_nothing(studio, client, tiny_checkpoint) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    score = _serves(studio, client)
    before = _snapshot(studio.pretrained)
    MARKER.unlink(missing_ok=True)
    for upload, msg in _bad_checkpoints(studio, tiny_checkpoint):
        with pytest.raises(AppError, match=msg):
            client.predict([handle_file(str(upload))], CKPT, api_name="/import_checkpoint")
        assert not MARKER.exists(), f"{upload} was unpickled"
        assert _snapshot(studio.pretrained) == before, f"{upload.parent.name} changed pretrained/"
    assert _serves(studio, client) == score, "the active model is unchanged"


# ------------------------------------------------------------------------------------------ training data
def _train_job(client, source="Folder on server", category=None, data_root="", folder="", uploads=(), epochs=1):
    from gradio_client import handle_file

    return client.submit(source, category, data_root, folder, "", [handle_file(str(u)) for u in uploads], "",
                         "efficientnet_lite0", 64, epochs, 4, 1e-3, api_name="/train")


def _mvtec(root: Path, studio) -> Path:
    """A one-category MVTec layout (``widget``) from demo images."""
    demo = studio.demo / "demo_texture"
    cat = root / "widget"
    for sub in ("train/good", "test/good", "test/hole", "ground_truth/hole"):
        (cat / sub).mkdir(parents=True, exist_ok=True)
    for p in sorted((demo / "train" / "good").glob("*.png"))[:4]:
        shutil.copy(p, cat / "train" / "good" / p.name)
    shutil.copy(sorted((demo / "test" / "good").glob("*.png"))[0], cat / "test" / "good" / "000.png")
    shutil.copy(sorted((demo / "test" / "hole").glob("*.png"))[0], cat / "test" / "hole" / "000.png")
    mask = sorted((demo / "ground_truth" / "hole").glob("*.png"))[0]
    shutil.copy(mask, cat / "ground_truth" / "hole" / "000_mask.png")
    return root


def test_bad_training_data_is_refused_before_training(studio, client) -> None:
    from gradio_client.exceptions import AppError

    base = studio.root / "data_cases"
    goods = sorted((studio.demo / "demo_texture" / "train" / "good").glob("*.png"))[:4]
    (base / "empty").mkdir(parents=True)
    _write(base / "only_notes", "notes.txt", b"hello")
    _write(base / "fake_png", "fake.png", b"this is text, not a PNG")
    for p in goods:
        shutil.copy(p, base / "fake_png" / p.name)
    no_mask = _mvtec(base / "mvtec_no_mask", studio)
    (no_mask / "widget" / "ground_truth" / "hole" / "000_mask.png").unlink()
    odd_mask = _mvtec(base / "mvtec_odd_mask", studio)
    _save(odd_mask / "widget" / "ground_truth" / "hole" / "000_mask.png", Image.new("L", (32, 48)))
    bad_zip = base / "parts.zip"
    with zipfile.ZipFile(bad_zip, "w") as zf:
        for p in goods:
            zf.write(p, f"good/{p.name}")
        zf.writestr("good/broken.png", b"not a png")
    cases = [
        (dict(folder=str(base / "missing")), "not found"),
        (dict(folder=str(base / "empty")), "contains no images"),
        (dict(folder=str(base / "only_notes")), "contains no images"),
        (dict(folder=str(base / "fake_png")), r"fake\.png: not a readable image"),
        (dict(source="MVTec AD", category="widget", data_root=str(no_mask)), "no mask for defective image"),
        (dict(source="MVTec AD", category="widget", data_root=str(odd_mask)), "same size as their images"),
        (dict(source="MVTec AD", category="a/widget", data_root=str(odd_mask)), "invalid category name"),
        (dict(source="MVTec AD", category="..\\widget", data_root=str(odd_mask)), "invalid category name"),
        (dict(source="Demo", category="../demo_texture"), "unknown demo category"),
        (dict(source="Upload good images", uploads=[bad_zip]), r"broken\.png: not a usable image"),
    ]
    before = _snapshot(studio.pretrained)
    for kwargs, msg in cases:
        job = _train_job(client, **kwargs)
        with pytest.raises(AppError, match=msg):
            job.result(timeout=60)
        assert job.outputs() == [], f"{kwargs}: training started ({job.outputs()})"
        assert _snapshot(studio.pretrained) == before, f"{kwargs} changed pretrained/"
    assert not list((studio.work / "uploads").glob("*")), "a refused upload leaves no extracted folder"
    _serves(studio, client)


# ------------------------------------------------------------------------------------------ training faults
def test_nan_loss_keeps_last_good_checkpoint(studio, client, monkeypatch: pytest.MonkeyPatch) -> None:
    from gradio_client.exceptions import AppError

    zip_path = studio.root / "nan" / "parts.zip"
    zip_path.parent.mkdir()
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted((studio.demo / "demo_texture" / "train" / "good").glob("*.png"))[:6]:
            zf.write(p, p.name)
    before = _snapshot(studio.pretrained)
    monkeypatch.setattr("ikd_core.loss.IKDLoss.forward", lambda self, t, s, **kw: torch.tensor(float("nan")))
    with pytest.raises(AppError, match="loss became nan.*no checkpoint was written"):
        _train_job(client, source="Upload good images", uploads=[zip_path]).result(timeout=120)
    monkeypatch.undo()
    assert _snapshot(studio.pretrained) == before
    assert not list((studio.work / "uploads").glob("*")), "the extracted upload is removed after a failed run"
    _serves(studio, client)


def test_inspection_does_not_wait_for_training_and_stop_keeps_files(studio, client) -> None:
    """The load test in small: 2 clients x 5 requests while a long training run goes on, then Stop."""
    from gradio_client import Client

    before = _snapshot(studio.pretrained)
    trainer = Client(studio.url, verbose=False)
    job = trainer.submit(*load_test.train_args(epochs=1000, image_size=64, batch_size=2), api_name="/train")
    load_test.wait_for_progress(job, timeout=90)
    sources = sorted((studio.demo / "demo_texture" / "test").glob("*/*.png"))
    images = distinct_images(sources, 10, studio.root / "load")
    result = load_test.run_load(studio.url, images, CKPT, clients=2, requests=10, time_limit=90,
                                training_running=lambda: not job.done())
    assert result.problems() == [], result.problems()
    assert len(result.records) == 10 and result.during_training == 10
    assert not job.done(), "inspection requests were answered while training went on"
    trainer.predict(api_name="/stop")
    final = job.result(timeout=60)
    assert "Stopped" in final[0] and "Nothing was saved" in final[0]
    assert _snapshot(studio.pretrained) == before, "a stopped run leaves no partial or temporary file"
    _serves(studio, client)


def test_closing_the_app_sets_its_stop_event_on_the_servers_loop(tmp_path: Path, tiny_checkpoint) -> None:
    """Gradio's ``Blocks.close`` set the server's asyncio stop event from the test's thread while the server's loop
    added and removed waiters of an open event stream: "deque mutated during iteration" escaped ``close`` (seen in
    CI at a teardown), the port stayed open and the next app inherited the variables of this one (a public-mode
    studio's, so a later test's checkpoint went to a visitor's workspace). ``StudioApp.close`` sets the event on the
    loop's own thread, then frees the port."""
    import socket
    import threading

    from gradio_client import Client

    with run_studio(tmp_path / "closing", tiny_checkpoint) as studio:
        job = Client(studio.url, verbose=False).submit(*load_test.train_args(epochs=1000, batch_size=2),
                                                       api_name="/train")
        load_test.wait_for_progress(job, timeout=90)  # its event stream is open: the stop event has a waiter
        event = studio.app.demo.app.stop_event
        setters: list[threading.Thread] = []
        real_set = event.set

        def recording_set() -> None:
            setters.append(threading.current_thread())
            real_set()

        event.set = recording_set
        try:
            studio.app.close()
        finally:
            jobs = studio.app.ctx.jobs
            for owner in list(jobs._jobs):
                jobs.stop(owner)  # the run lives on in its thread without the server: end it
        assert event.is_set() and setters and setters[0] is not threading.current_thread(), setters
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(studio.netloc.split(":")[1])), 2):
            pass


# ------------------------------------------------------------------------------------------ temporary files
def test_the_sweep_survives_an_upload_that_lands_during_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradio's own sweep iterates the live set of temporary files: an upload added meanwhile raised "Set changed size
    during iteration" and ended the scheduled sweep for good (seen in CI: the canary below was never deleted). The
    app's sweep works on a snapshot: the old files go, the new upload stays (on disk and in the set), nothing raises,
    and a sweep that fails is logged and leaves the schedule running."""
    from types import SimpleNamespace

    from ui import cache_sweep

    old = [_write(tmp_path, f"old{i}.png", b"x") for i in range(3)]
    kept = _write(tmp_path, "kept.png", b"k")
    upload = _write(tmp_path, "upload.png", b"y")
    temp = {str(f) for f in (*old, kept)}
    blocks = SimpleNamespace(blocks={0: SimpleNamespace(keep_in_cache={str(kept)})}, temp_file_sets=[temp])
    real_lstat = Path.lstat

    def racing_lstat(self: Path, *args, **kwargs):
        temp.add(str(upload))  # an upload lands while the sweep runs
        return real_lstat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "lstat", racing_lstat)
    cache_sweep.delete_files_created_by_app(blocks, -1)  # every file is older than -1 s, and each one is lstat-ed
    assert not any(f.exists() for f in old) and kept.exists() and upload.exists()
    assert temp == {str(kept), str(upload)}
    monkeypatch.undo()
    cache_sweep.delete_files_created_by_app(blocks, 3600)  # younger than the age: nothing goes
    assert kept.exists() and upload.exists()
    cache_sweep.delete_files_created_by_app(blocks, None)  # all but what a component keeps
    assert kept.exists() and not upload.exists() and temp == {str(kept)}
    cache_sweep.delete_files_created_by_app(SimpleNamespace(blocks=None, temp_file_sets=[]), None)  # logged, no raise


def test_gradio_temporary_files_are_swept(studio) -> None:
    from gradio import route_utils

    from ui import cache_sweep

    assert route_utils.delete_files_created_by_app is cache_sweep.delete_files_created_by_app
    assert studio.app.demo.delete_cache == (1, CACHE_AGE)
    assert studio.canary is not None, "needs test_upload_limit_file_types_and_canary"
    found, t_upload = studio.canary
    # Generous (the loop ends as soon as the sweep has run): Gradio ages files by ctime and sweeps from a worker
    # thread, which waits its turn on a loaded machine.
    deadline = max(t_upload, time.monotonic()) + CACHE_AGE + 120
    left = list(found)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = [p for p in found if p.exists()]
    ages = [(str(p), round(time.time() - p.stat().st_ctime)) for p in left if p.exists()]
    assert not left, f"Gradio's copies of an old upload are deleted; left (path, age in s): {ages}"
    leftover = list((studio.work / "uploads").glob("*"))
    assert not leftover, f"no extracted upload is left in the work folder: {leftover}"
