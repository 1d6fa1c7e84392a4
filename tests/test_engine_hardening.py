"""Engine-level hardening against hostile uploads and API values (the app's HTTP-level tests are elsewhere).

Each attack is reproduced through the engine API: checkpoint metadata that would break listing or every
prediction, name races between training and uploads, images and zips that are huge once decoded, values that
would turn into HTML or NaN, and a gate that must serve concurrent requests in arrival order.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from ikd_core import service
from ikd_core.checkpoint import read_metadata, save_checkpoint, validate_metadata
from ikd_core.errors import CheckpointError, DataError, IKDError

CKPT = "demo_texture-efficientnet_lite0.safetensors"


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every entry of ``directory`` (hidden ones included) with the bytes of files."""
    return {p.name: (p.read_bytes() if p.is_file() else b"<dir>") for p in directory.iterdir()}


@pytest.fixture
def ckpt_dir(tmp_path: Path, tiny_checkpoint) -> Path:
    d = tmp_path / "pretrained"
    d.mkdir()
    src = Path(tiny_checkpoint.checkpoint)
    shutil.copy(src, d / CKPT)
    shutil.copy(src.with_suffix(".json"), (d / CKPT).with_suffix(".json"))
    return d


def _with_meta(tiny_checkpoint, folder: Path, name: str, **changes) -> Path:
    """The tiny checkpoint's tensors with its metadata changed (``None`` removes a key)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {**tiny_checkpoint.metadata, **changes}
    meta = {k: v for k, v in meta.items() if v is not None}
    return save_checkpoint(folder / name, tiny_checkpoint.model.student.state_dict(), meta)


# ------------------------------------------------------------------------------------------ 1. metadata schema
def _bad_metadata(tiny_checkpoint) -> dict[str, tuple[dict, str]]:
    norm = tiny_checkpoint.metadata["score_normalization"]
    return {
        "metrics_list": ({"metrics": [1, 2, 3]}, "metrics"),
        "metrics_bool": ({"metrics": {"image_auroc": True}}, "metrics"),
        "metrics_inf": ({"metrics": {"image_auroc": math.inf}}, "metrics"),
        "data_root_int": ({"data": {"kind": "demo", "root": 123}}, "data"),
        "data_kind": ({"data": {"kind": "http", "root": "x"}}, "data.kind"),
        "size_2048": ({"image_size": 2048}, "image size 2048"),
        "size_float": ({"image_size": 64.5}, "image size"),
        "size_bool": ({"image_size": True}, "image size"),
        "threshold_nan": ({"score_normalization": {**norm, "threshold": math.nan}}, "threshold"),
        "threshold_below_lo": ({"score_normalization": {**norm, "threshold": norm["lo"] - 1}},
                               "score normalisation"),
        "stats_inf": ({"score_normalization": {**norm, "holdout_score_std": math.inf}}, "finite"),
        "backbone_unknown": ({"backbone": "evil_net"}, "unknown backbone"),
        "backbone_missing": ({"backbone": None}, "lacks 'backbone'"),
        "category_long": ({"category": "x" * 101}, "category"),
        "category_int": ({"category": 5}, "category"),
        "train_config_nested": ({"train_config": {"lr": {"a": 1}}}, "train_config.lr"),
        "teacher_list": ({"teacher": ["packaged"]}, "teacher"),
        "levels_str": ({"levels": ["1", "2"]}, "levels"),
        "channels_bool": ({"channels": [True, 40]}, "channels"),
        "nan_elsewhere": ({"final_loss": math.nan}, "final_loss"),
        "long_string": ({"created": "x" * 20_000}, "created"),
        "padded": ({"machine": "x" * (15 * 1024 * 1024)}, "metadata is .* bytes"),
    }


def test_validate_metadata_refuses_each_known_attack(tiny_checkpoint) -> None:
    good = dict(tiny_checkpoint.metadata)
    assert validate_metadata(good, "ok.safetensors") is good
    for label, (changes, pattern) in _bad_metadata(tiny_checkpoint).items():
        meta = {k: v for k, v in {**good, **changes}.items() if v is not None}
        with pytest.raises(CheckpointError, match=pattern) as err:
            validate_metadata(meta, "bad.safetensors")
        msg = str(err.value)
        assert "\n" not in msg and len(msg) < 400 and msg.startswith("bad.safetensors"), (label, msg[:500])


def test_image_size_limit_follows_the_operator(tiny_checkpoint, monkeypatch) -> None:
    meta = {**tiny_checkpoint.metadata, "image_size": 1024}
    monkeypatch.delenv("IKD_MAX_IMAGE_SIZE", raising=False)
    with pytest.raises(CheckpointError, match="image size 1024 .* 16-512 px"):
        validate_metadata(meta, "big.safetensors")
    assert validate_metadata(meta, "big.safetensors", max_image_size=1024)["image_size"] == 1024
    monkeypatch.setenv("IKD_MAX_IMAGE_SIZE", "1024")
    assert validate_metadata(meta, "big.safetensors")["image_size"] == 1024
    meta["image_size"] = 1056
    with pytest.raises(CheckpointError, match="16-1024 px"):
        validate_metadata(meta, "big.safetensors")


def test_nan_metrics_mean_not_available(tiny_checkpoint) -> None:
    """Metrics without a labelled test set are NaN ("n/a"): such checkpoints stay usable."""
    meta = {**tiny_checkpoint.metadata, "metrics": {"pixel_auroc": math.nan, "image_auroc": 0.5}}
    assert validate_metadata(meta, "x.safetensors") is meta


def test_load_model_uses_the_same_size_limit(tiny_checkpoint, tmp_path: Path) -> None:
    from ikd_core.loading import load_model

    path = _with_meta(tiny_checkpoint, tmp_path, "big.safetensors", image_size=2048)
    with pytest.raises(CheckpointError, match="image size 2048"):
        load_model(path)


def test_listing_flags_bad_metadata_instead_of_crashing(ckpt_dir: Path, tiny_checkpoint) -> None:
    for label, (changes, _) in _bad_metadata(tiny_checkpoint).items():
        if label == "padded":  # over the safetensors header limit of the listing test's copy: same path as others
            continue
        _with_meta(tiny_checkpoint, ckpt_dir, f"{label}.safetensors", **changes)
    infos = {i.name: i for i in service.list_checkpoints(ckpt_dir)}
    assert infos[CKPT].ok
    bad = [i for n, i in infos.items() if n != CKPT]
    assert len(bad) == len(_bad_metadata(tiny_checkpoint)) - 1
    for info in bad:
        assert not info.ok, info.name
        # everything the app shows works on an unusable entry
        assert "unreadable" in info.label() and "cannot be used" in info.describe()
        assert info.metrics == {} and info.category == "?"


def test_padded_metadata_is_refused_before_parsing(tiny_checkpoint, tmp_path: Path, monkeypatch) -> None:
    meta = {**tiny_checkpoint.metadata, "format": "ikd-studio-checkpoint/1",
            "machine": "x" * (15 * 1024 * 1024)}
    path = tmp_path / "padded.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_checkpoint.model.student.state_dict().items()}, str(path),
              metadata={"ikd": json.dumps(meta)})
    assert path.stat().st_size > 15 * 1024 * 1024

    def no_parse(*args, **kwargs):
        raise AssertionError("json.loads ran on 15 MB of metadata")

    monkeypatch.setattr("ikd_core.checkpoint.json.loads", no_parse)
    with pytest.raises(CheckpointError, match="metadata is .* bytes"):
        read_metadata(path)


def test_refused_uploads_leave_nothing_behind(ckpt_dir: Path, tiny_checkpoint, tmp_path: Path) -> None:
    before = _snapshot(ckpt_dir)
    for label, (changes, pattern) in _bad_metadata(tiny_checkpoint).items():
        upload = _with_meta(tiny_checkpoint, tmp_path / "up", f"{label}.safetensors", **changes)
        with pytest.raises(CheckpointError, match=pattern):
            service.import_checkpoint(upload, ckpt_dir, validate_model=False)
        assert _snapshot(ckpt_dir) == before, f"{label} left something in pretrained/"


def test_refused_sidecar_metadata_leaves_nothing_behind(ckpt_dir: Path, tiny_checkpoint, tmp_path: Path) -> None:
    """Metadata only in an uploaded .json sidecar goes through the same checks."""
    up = tmp_path / "side"
    up.mkdir()
    bare = up / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_checkpoint.model.student.state_dict().items()}, str(bare))
    side = up / "bare.json"
    side.write_text(json.dumps({**tiny_checkpoint.metadata, "format": "ikd-studio-checkpoint/1",
                                "data": {"kind": "demo", "root": 123}}))
    before = _snapshot(ckpt_dir)
    with pytest.raises(CheckpointError, match="data"):
        service.import_checkpoint(bare, ckpt_dir, sidecar=side)
    assert _snapshot(ckpt_dir) == before
    side.write_text(json.dumps({**tiny_checkpoint.metadata, "format": "ikd-studio-checkpoint/1"}))
    info = service.import_checkpoint(bare, ckpt_dir, sidecar=side)
    assert info.ok and service.checkpoint_info(info.path).ok


# ------------------------------------------------------------------------------------------ 2. name reservation
def test_reservations_are_exclusive(tmp_path: Path) -> None:
    n = 8
    barrier = threading.Barrier(n)
    got: list[Path] = []
    lock = threading.Lock()

    def claim() -> None:
        barrier.wait()
        p = service.reserve_checkpoint_path(tmp_path, "x.safetensors")
        with lock:
            got.append(p)

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in got) == sorted(["x.safetensors"] + [f"x-{i}.safetensors" for i in range(2, n + 1)])
    assert service.list_checkpoints(tmp_path) == []  # markers are hidden
    assert not any(p.exists() for p in got)  # only claimed, not created
    assert service.unique_path(tmp_path, "x.safetensors").name == f"x-{n + 1}.safetensors"
    service.release_checkpoint_path(tmp_path / "x.safetensors")
    assert service.unique_path(tmp_path, "x.safetensors").name == "x.safetensors"
    assert service.reserve_checkpoint_path(tmp_path, "x.safetensors").name == "x.safetensors"
    for p in got:
        service.release_checkpoint_path(p)
    service.release_checkpoint_path(tmp_path / "x.safetensors")
    service.release_checkpoint_path(tmp_path / "never.safetensors")  # no error
    assert list(tmp_path.iterdir()) == []


def test_reservation_skips_existing_files_and_sidecars(tmp_path: Path) -> None:
    (tmp_path / "a.safetensors").write_bytes(b"x")
    (tmp_path / "a-2.json").write_text("{}")
    assert service.reserve_checkpoint_path(tmp_path, "a.safetensors").name == "a-3.safetensors"


def test_import_does_not_take_a_reserved_name(ckpt_dir: Path, tmp_path: Path) -> None:
    """A training run reserved ``my_model.safetensors``: an upload of that name goes elsewhere."""
    reserved = service.reserve_checkpoint_path(ckpt_dir, "my_model.safetensors")
    assert reserved.name == "my_model.safetensors"
    upload = tmp_path / "my_model.safetensors"
    shutil.copy(ckpt_dir / CKPT, upload)
    info = service.import_checkpoint(upload, ckpt_dir)
    assert info.name == "my_model-2.safetensors"
    assert not reserved.exists()
    # the import released its own reservation; the run's one is still there
    hidden = sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("."))
    assert hidden == [".my_model.safetensors.reserved"]
    service.release_checkpoint_path(reserved)
    assert not any(p.name.startswith(".") for p in ckpt_dir.iterdir())
    assert service.import_checkpoint(upload, ckpt_dir).name == "my_model.safetensors"


def test_reserved_path_is_written_by_training(ckpt_dir: Path) -> None:
    """The claimed path is usable as an output path (the marker does not block the write)."""
    path = service.reserve_checkpoint_path(ckpt_dir, CKPT)
    assert path.name == "demo_texture-efficientnet_lite0-2.safetensors"
    shutil.copy(ckpt_dir / CKPT, path)
    service.release_checkpoint_path(path)
    assert service.unique_path(ckpt_dir, CKPT).name == "demo_texture-efficientnet_lite0-3.safetensors"
    assert os.path.exists(path)


# ------------------------------------------------------------------------------------------ 3. decoding by pixels
class _Decodes:
    """Counts full decodes (``ImageFile.load``) and records the size each one decodes at."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from PIL import ImageFile

        self.sizes: list[tuple[int, int]] = []
        original = ImageFile.ImageFile.load

        def load(img, *args, **kwargs):
            if img.tile:  # not yet decoded
                self.sizes.append(img.size)
            return original(img, *args, **kwargs)

        monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def _save(img, path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


def test_too_many_pixels_refused_from_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from ikd_core.data.transforms import image_pixels, load_image

    path = _save(Image.new("RGB", (300, 200), (10, 20, 30)), tmp_path / "a.png")
    assert image_pixels(path) == 60_000
    decodes = _Decodes(monkeypatch)
    with pytest.raises(DataError, match=r"too large \(300x200 pixels, limit 50000"):
        load_image(path, max_pixels=50_000)
    with pytest.raises(DataError, match="too large"):
        load_image(path.read_bytes(), max_pixels=50_000)
    assert decodes.sizes == []
    assert load_image(path, max_pixels=60_000).size == (300, 200)
    assert decodes.sizes == [(300, 200)]


def test_max_side_downscales_while_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from ikd_core.data.transforms import load_image

    jpeg = _save(Image.new("RGB", (4000, 3000), (200, 100, 50)), tmp_path / "big.jpg")
    gray = _save(Image.new("L", (3000, 1500), 90), tmp_path / "gray.png")
    decodes = _Decodes(monkeypatch)
    converted: list[tuple[int, int]] = []
    convert = Image.Image.convert

    def spy(img, *args, **kwargs):
        converted.append(img.size)
        return convert(img, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", spy)
    out = load_image(jpeg, max_side=500)
    assert out.size == (500, 375) and out.mode == "RGB"
    assert max(decodes.sizes[-1]) <= 1000, "the JPEG was decoded at full size"
    out = load_image(gray, max_side=300)
    assert out.size == (300, 150) and out.mode == "RGB"
    assert np.asarray(out)[0, 0].tolist() == [90, 90, 90]
    assert converted and max(max(s) for s in converted) <= 300, "a full-size RGB copy was made"


def test_inspect_image_messages_name_the_file_not_the_server_path(tmp_path: Path) -> None:
    from PIL import Image

    secret = tmp_path / "srv" / "gradio" / "0123abcd"
    broken = secret / "photo.png"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    big = _save(Image.new("RGB", (400, 300)), secret / "big.png")
    for path, kw, pattern in [(broken, {}, "photo.png"), (big, {"max_pixels": 1000}, "big.png: image too large"),
                              (secret / "gone.png", {}, "gone.png: file not found")]:
        with pytest.raises(DataError, match=pattern) as err:
            service.load_inspect_image(path, **kw)
        assert str(tmp_path) not in str(err.value) and "/srv/" not in str(err.value)
    img, note = service.load_inspect_image(big, max_side=200)
    assert img.size == (200, 150) and note == "big.png is 400x300 px: scored and shown at 200x150 px"
    assert service.load_inspect_image(big)[1] is None


# ------------------------------------------------------------------------------------------ 4. zips
def _big_png(side: int) -> bytes:
    """A ``side`` x ``side`` black grayscale PNG (a few tens of KB for 8192 px; ``side``^2 bytes decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    comp = zlib.compressobj(9)
    row = bytes(side + 1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_zip_of_huge_images_refused_before_any_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    png = _big_png(8192)
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):
            zf.writestr(f"img{i:02d}.png", png)
    assert z.stat().st_size < 200_000  # small on disk, 40 x 64 MP once decoded
    decodes = _Decodes(monkeypatch)
    work = tmp_path / "work"
    with pytest.raises(DataError, match="more than 512 megapixels"):
        service.uploaded_data_spec([z], work)
    assert decodes.sizes == [], "images were decoded before the pixel limits were checked"
    assert list((work / "uploads").iterdir()) == []
    # one image over the per-image limit is refused the same way
    with pytest.raises(DataError, match="img00.png: not a usable image .*too large"):
        service.uploaded_data_spec([z], work, max_pixels=4096 * 4096)
    assert decodes.sizes == []
    # plain files (not zipped) too
    loose = tmp_path / "loose"
    loose.mkdir()
    paths = []
    for i in range(9):
        paths.append(loose / f"p{i}.png")
        paths[-1].write_bytes(png)
    with pytest.raises(DataError, match="megapixels"):
        service.uploaded_data_spec(paths, work)
    assert decodes.sizes == []


def _zip64_with_entries(path: Path, n: int, declared: int | None = None) -> Path:
    """A ZIP64 archive whose central directory lists ``n`` empty ``a.png`` entries (``declared`` in its end
    records), written directly (15 MB for 300 000 entries in well under a second)."""
    import struct
    import zipfile as zf

    declared = n if declared is None else declared
    name = b"a.png"
    local = struct.pack(zf.structFileHeader, zf.stringFileHeader, 20, 0, 0, 0, 0, 0, 0, 0, 0, len(name), 0) + name
    central = struct.pack(zf.structCentralDir, zf.stringCentralDir, 45, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0,
                          len(name), 0, 0, 0, 0, 0, 0) + name
    cd = central * n
    end64_at = len(local) + len(cd)
    end64 = struct.pack(zf.structEndArchive64, zf.stringEndArchive64, 44, 45, 45, 0, 0, declared, declared,
                        len(cd), len(local))
    locator = struct.pack(zf.structEndArchive64Locator, zf.stringEndArchive64Locator, 0, end64_at, 1)
    end = struct.pack(zf.structEndArchive, zf.stringEndArchive, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(local + cd + end64 + locator + end)
    return path


def test_zip_with_too_many_entries_refused_before_its_directory_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zipfile

    z = _zip64_with_entries(tmp_path / "many.zip", 300_000)
    assert service.zip_directory_size(z) == (300_000, 300_000 * 51)
    small = _zip64_with_entries(tmp_path / "small.zip", 3)
    assert len(zipfile.ZipFile(small).infolist()) == 3  # the crafted layout is a real zip
    liar = _zip64_with_entries(tmp_path / "liar.zip", 300_000, declared=2)

    def parse(*args, **kwargs):
        raise AssertionError("the central directory was parsed")

    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", parse)
    work = tmp_path / "work"
    with pytest.raises(DataError, match="300000 entries \\(limit 10000\\)"):
        service.uploaded_data_spec([z], work)
    with pytest.raises(DataError, match="directory is 15300000 bytes for 2 entries"):
        service.uploaded_data_spec([liar], work)
    with pytest.raises(DataError, match="3 entries \\(limit 2\\)"):
        service.uploaded_data_spec([small], work, max_entries=2)
    assert list((work / "uploads").iterdir()) == []


# ------------------------------------------------------------------------------------------ 5. raw API values
@pytest.mark.parametrize("value", [math.nan, -math.nan, math.inf, -math.inf, "nan", "NaN", "inf", "-Infinity",
                                   "1e999", True, False, None, "", "  ", "0x10", "1,5", [0.5], {"v": 1}, 1.5, -0.1,
                                   "2", 10**400, "9" * 100])
def test_number_refuses_what_is_not_a_number_in_range(value) -> None:
    with pytest.raises(IKDError, match=r"threshold must be a number from 0 to 1, got "):
        service.number(value, "threshold", 0, 1)


def test_number_accepts_numbers_and_strings_of_numbers() -> None:
    assert service.number(0.5, "threshold", 0, 1) == 0.5
    assert service.number(" 0.25 ", "threshold", 0, 1) == 0.25
    assert service.number(1, "threshold", 0, 1) == 1.0 and isinstance(service.number(1, "t", 0, 1), float)
    assert service.number(np.float32(0.5), "threshold", 0, 1) == 0.5
    assert service.number("32", "epochs", 1, 1000, integer=True) == 32
    assert isinstance(service.number(32.0, "epochs", 1, 1000, integer=True), int)
    for bad in (32.5, "32.5", 0, 1001, True, math.nan):
        with pytest.raises(IKDError, match=r"epochs must be a whole number from 1 to 1000"):
            service.number(bad, "epochs", 1, 1000, integer=True)
    with pytest.raises(IKDError, match=r"got 'xxxxx"):
        service.number("x" * 1000, "alpha", 0, 1)  # the echoed value is short
    assert len(str(pytest.raises(IKDError, service.number, "x" * 1000, "alpha", 0, 1).value)) < 120


def _rendered(markdown_text: str) -> str:
    """HTML that a CommonMark renderer (markdown-it, as in Gradio's Python side) makes of the text."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown_text)


@pytest.mark.parametrize("text", [
    "<img src=x onerror=alert(1)>", "`rm -rf`", "**bold** _it_", "[link](javascript:alert(1))",
    "# heading", "a | b\n--- | ---\nc | d", "![x](http://e/x.png)", "<script>alert(1)</script>",
    "&lt;img src=x&gt;", "line1\n\n<b>line2</b>", "$$x^2$$", "\\<b>\\</b>", "~~s~~", "<!-- c -->",
])
def test_escape_markdown_is_inert(text: str) -> None:
    out = service.escape_markdown(text)
    assert "\n" not in out and "<" not in out and ">" not in out
    html = _rendered(f"category: {out}")
    assert html.startswith("<p>") and html.count("<") == 2, html  # one paragraph, no other element
    import html as html_mod

    shown = html_mod.unescape(html[len("<p>"):-len("</p>\n")])
    assert "$$" not in shown
    shown = shown.replace("\u200b", "")
    assert shown == "category: " + text.replace("\n", " "), shown  # the text is shown as it was, literally


def test_escape_markdown_truncates_and_drops_controls() -> None:
    out = service.escape_markdown("a" * 500, max_len=10)
    assert out == "a" * 9 + "\u2026"
    assert service.escape_markdown("ab\u202ecd\x00e\r\nf") == "abcde  f"
    assert service.escape_markdown(None) == "" and service.escape_markdown(12) == "12"
    long_specials = service.escape_markdown("<" * 300, max_len=5)
    assert long_specials == "&lt;" * 4 + "\u2026"  # cut before escaping: no broken entity


def test_public_message_scrubs_server_paths(tmp_path: Path) -> None:
    work = tmp_path / "work"
    err = DataError(f"{work}/uploads/20260101-ab/good/cat 1.png: image data is corrupt; also /etc/passwd, "
                    f"'/srv/app/pretrained/x.safetensors' and (/tmp/gradio/abc123/photo.jpg) failed")
    msg = service.public_message(err, roots=[work])
    assert str(tmp_path) not in msg and "/srv" not in msg and "/etc" not in msg and "/tmp" not in msg, msg
    assert msg.startswith("cat 1.png: image data is corrupt; also passwd, 'x.safetensors' and (photo.jpg)")
    rel = service.public_message("runs/studio/uploads/x/good/img.png is broken", roots=["runs/studio"])
    assert rel == "img.png is broken"
    keep = "see https://huggingface.co/spaces/x/y, 1/2 done, and/or a / b"
    assert service.public_message(keep) == keep
    assert service.public_message(RuntimeError()) == "RuntimeError"
    assert len(service.public_message("x" * 5000)) == 1000


# ------------------------------------------------------------------------------------------ 6. fair gate
def test_fair_gate_serves_waiters_in_arrival_order() -> None:
    gate = service.FairGate(1)
    order: list[int] = []
    gate.acquire()  # the main thread holds the only slot while the others line up
    threads = []
    for i in range(6):
        def work(i: int = i) -> None:
            with gate.turn():
                order.append(i)

        t = threading.Thread(target=work)
        t.start()
        threads.append(t)
        assert gate.wait_until_waiting(i + 1, timeout=30)  # thread i is queued before thread i + 1 starts
    assert order == [] and gate.busy == 1 and gate.waiting == 6
    gate.release()
    for t in threads:
        t.join(timeout=30)
    assert order == list(range(6))
    assert gate.busy == 0 and gate.waiting == 0


def test_fair_gate_limits_concurrency_and_freed_slots_go_to_the_oldest() -> None:
    gate = service.FairGate(2)
    inside: list[int] = []
    peak = [0]
    lock = threading.Lock()
    go = {i: threading.Event() for i in range(5)}
    entered = {i: threading.Event() for i in range(5)}

    def work(i: int) -> None:
        with gate.turn():
            with lock:
                inside.append(i)
                peak[0] = max(peak[0], len(inside))
            entered[i].set()
            go[i].wait(30)
            with lock:
                inside.remove(i)

    threads = [threading.Thread(target=work, args=(0,)), threading.Thread(target=work, args=(1,))]
    for t in threads:
        t.start()
    assert entered[0].wait(30) and entered[1].wait(30)
    for i in (2, 3, 4):
        threads.append(threading.Thread(target=work, args=(i,)))
        threads[-1].start()
        assert gate.wait_until_waiting(i - 1, timeout=30)
    assert sorted(inside) == [0, 1] and gate.waiting == 3
    go[1].set()  # one slot frees: the oldest waiter (2) gets it, not 3 or 4
    assert entered[2].wait(30)
    assert not entered[3].is_set() and not entered[4].is_set()
    go[0].set()
    assert entered[3].wait(30) and not entered[4].is_set()
    for i in (2, 3, 4):
        go[i].set()
    for t in threads:
        t.join(timeout=30)
    assert peak[0] == 2 and inside == [] and all(e.is_set() for e in entered.values())


def test_fair_gate_timeout_leaves_the_queue() -> None:
    gate = service.FairGate(1)
    gate.acquire()
    with pytest.raises(service.BusyError, match="busy"):
        gate.acquire(timeout=0.01)
    assert gate.waiting == 0
    got = threading.Event()
    t = threading.Thread(target=lambda: (gate.acquire(), got.set()))
    t.start()
    assert gate.wait_until_waiting(1, timeout=30)
    gate.release()
    assert got.wait(30)
    t.join(timeout=30)
    gate.release()
    assert gate.busy == 0
    with pytest.raises(RuntimeError):
        gate.release()
    with pytest.raises(ValueError):
        service.FairGate(0)


# ------------------------------------------------------------------------------------------ 7. GIF memory
def test_gif_of_huge_images_keeps_memory_small(tiny_checkpoint, tmp_path: Path, monkeypatch) -> None:
    import tracemalloc

    import imageio.v3 as iio
    from PIL import Image

    from ikd_core.gif import gif_frames, make_gif
    from ikd_core.predict import Predictor

    png = _big_png(6000)  # 6000 x 6000: 36 MB decoded (108 MB as RGB, 144 MB as a float map)
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"huge{i}.png")
        paths[-1].write_bytes(png)
    mask = tmp_path / "mask.png"
    mask.write_bytes(png)
    predictor = Predictor.from_checkpoint(tiny_checkpoint.checkpoint, backend="torch")
    converted: list[tuple[int, int]] = []
    convert = Image.Image.convert

    def spy(img, *args, **kwargs):
        converted.append(img.size)
        return convert(img, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", spy)
    tracemalloc.start()
    try:
        out = make_gif(predictor, paths, tmp_path / "huge.gif", masks=[mask, None, None, None], size=320)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024**2, f"{peak / 1024**2:.0f} MB traced while making the GIF"
    assert converted and max(max(s) for s in converted) <= 320, "an image was converted at full size"
    frames = iio.imread(out, index=None)
    assert frames.shape[0] == 4 and frames.shape[2] == 320
    # precomputed maps (e.g. from a GPU) at another resolution still work, frames at the requested width
    preds = predictor.predict([np.zeros((100, 80, 3), np.uint8)] * 2)
    small = gif_frames(None, [np.zeros((100, 80, 3), np.uint8)] * 2, predictions=preds, size=300)
    assert [f.shape[1] for f in small] == [300, 300]
    with pytest.raises(ValueError, match="predictor or predictions"):
        gif_frames(None, paths)


def test_checkpoint_description_is_inert(ckpt_dir: Path, tiny_checkpoint) -> None:
    """Text from a checkpoint's metadata cannot inject Markdown or HTML into the description."""
    evil = "`<img src=x onerror=alert(1)>` **x** [a](javascript:b)"
    _with_meta(tiny_checkpoint, ckpt_dir, "evil.safetensors", category=evil[:100], n_train="<b>bold</b>",
               device="``<i>i</i>", metrics={"<script>s</script>": 0.5}, created="\n# h1",
               train_config={**tiny_checkpoint.metadata["train_config"], "denoise": True})
    info = service.checkpoint_info(ckpt_dir / "evil.safetensors")
    assert info.ok
    html = _rendered(info.describe())
    for tag in ("<img", "<b>", "<i>", "<script", "<a ", "<h1", "<strong>x"):
        assert tag not in html, (tag, html)
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # shown, as text
    assert "denoising student" in html, "the method's levers are shown (their values are checked on reading)"
    bad = _with_meta(tiny_checkpoint, ckpt_dir, "bad.safetensors", backbone="<img src=x>")
    html = _rendered(service.checkpoint_info(bad).describe())
    assert "cannot be used" in html and "<img" not in html


def test_training_job_releases_its_reservation(tmp_path: Path) -> None:
    from ikd_core.data.sources import DataSpec
    from ikd_core.train import TrainConfig

    spec = DataSpec("folder", "custom", good_dir=str(tmp_path / "missing"))
    cfg = TrainConfig(image_size=64, epochs=1, device="cpu")
    out = service.reserve_checkpoint_path(tmp_path / "pretrained", "run.safetensors")
    kept = service.reserve_checkpoint_path(tmp_path / "pretrained", "run.safetensors")
    assert (out.name, kept.name) == ("run.safetensors", "run-2.safetensors")
    job = service.TrainingJob(spec, cfg, out, release_reservation=True).start()
    other = service.TrainingJob(spec, cfg, kept).start()
    assert job.join(60) and other.join(60) and job.state == other.state == "failed"
    assert service.unique_path(tmp_path / "pretrained", "run.safetensors") == out  # free again
    assert service.unique_path(tmp_path / "pretrained", "run-2.safetensors").name == "run-2-2.safetensors"
