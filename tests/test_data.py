"""Data layer: image loading, MVTec / folder datasets, synthetic demo set."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from ikd_core.data import transforms
from ikd_core.data.folder import FolderDataset
from ikd_core.data.mvtec import MVTecDataset, list_categories
from ikd_core.data.synthetic import (
    DEFECT_TYPES,
    DEMO_CATEGORIES,
    MARKER_NAME,
    ensure_demo_dataset,
    generate_demo_dataset,
    render_sample,
)
from ikd_core.data.transforms import denormalize, image_to_tensor, load_image, mask_to_tensor
from ikd_core.errors import DataError

S = 32  # side of the hand-made test images


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _img(seed: int, size: int = S) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _square_mask(k: int, size: int = S) -> np.ndarray:
    """A mask with an 4x4 square at a position that identifies ``k``."""
    m = np.zeros((size, size), np.uint8)
    m[4 * (k % 7) : 4 * (k % 7) + 4, 4 * (k // 7) : 4 * (k // 7) + 4] = 255
    return m


def _make_mvtec(root: Path, cat: str = "widget") -> dict[str, int]:
    """Tiny MVTec tree whose sorted image and mask lists do NOT line up (1, 10, 2 vs 10_mask, 1_mask, ...)."""
    c = root / cat
    for i in range(3):
        _save(c / "train" / "good" / f"{i:03d}.png", _img(i))
    _save(c / "test" / "good" / "000.png", _img(10))
    ids = {"1": 1, "10": 10, "2": 2}
    for name, k in ids.items():
        _save(c / "test" / "crack" / f"{name}.png", _img(100 + k))
        _save(c / "ground_truth" / "crack" / f"{name}_mask.png", _square_mask(k))
    return ids


# ------------------------------------------------------------------------------------------------ MVTec


def test_mvtec_pairs_masks_by_name(tmp_path: Path) -> None:
    ids = _make_mvtec(tmp_path)
    ds = MVTecDataset(tmp_path, "widget", "test", image_size=S)
    assert len(ds) == 4 and ds.has_masks
    checked = 0
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, S, S) and item["mask"].shape == (1, S, S)
        stem = Path(item["path"]).stem
        if item["defect_type"] == "good":
            assert item["label"] == 0 and item["mask"].sum() == 0
            continue
        assert item["label"] == 1
        expected = torch.from_numpy(_square_mask(ids[stem]) > 0).float()[None]
        assert torch.equal(item["mask"], expected), f"mask of {stem} mis-paired"
        checked += 1
    assert checked == 3
    assert [s.defect_type for s in ds.samples].count("crack") == 3


def test_mvtec_train_split_files_and_categories(tmp_path: Path) -> None:
    _make_mvtec(tmp_path)
    (tmp_path / "not_a_category").mkdir()
    assert list_categories(tmp_path) == ["widget"]
    assert list_categories(tmp_path / "nope") == []
    ds = MVTecDataset(tmp_path, "widget", "train", image_size=S)
    assert len(ds) == 3 and not ds.has_masks
    path, mask_path, label, defect = ds.samples[0]
    assert mask_path is None and label == 0 and defect == "good"
    sub = MVTecDataset(tmp_path, "widget", "train", image_size=S, files=["good/002.png", path])
    assert [Path(s.path).name for s in sub.samples] == ["002.png", "000.png"]
    with pytest.raises(DataError, match="not an image of this dataset"):
        MVTecDataset(tmp_path, "widget", "train", image_size=S, files=["good/999.png"])
    item = torch.utils.data.Subset(ds, [1])[0]
    assert item["mask"].sum() == 0 and item["image"].dtype == torch.float32


def test_mvtec_missing_mask(tmp_path: Path) -> None:
    _make_mvtec(tmp_path)
    (tmp_path / "widget" / "ground_truth" / "crack" / "10_mask.png").unlink()
    with pytest.raises(DataError, match=r"no mask for defective image .*10\.png"):
        MVTecDataset(tmp_path, "widget", "test")


def test_mvtec_mask_size_mismatch(tmp_path: Path) -> None:
    _make_mvtec(tmp_path)
    _save(tmp_path / "widget" / "ground_truth" / "crack" / "2_mask.png", np.zeros((S, S + 3), np.uint8))
    with pytest.raises(DataError, match=r"2_mask\.png.*same size"):
        MVTecDataset(tmp_path, "widget", "test")


@pytest.mark.parametrize("bad", ["../widget", "a/b", "..", "", "a\\b", "wid..get", "/abs"])
def test_mvtec_bad_category_name(tmp_path: Path, bad: str) -> None:
    _make_mvtec(tmp_path)
    with pytest.raises(DataError, match="invalid category name"):
        MVTecDataset(tmp_path, bad, "train")


def test_mvtec_missing_root_category_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="download"):
        MVTecDataset(tmp_path / "missing", "bottle", "train")
    _make_mvtec(tmp_path)
    with pytest.raises(DataError, match=r"'bottle' not found.*widget.*demo-data"):
        MVTecDataset(tmp_path, "bottle", "train")
    with pytest.raises(DataError, match="unknown split"):
        MVTecDataset(tmp_path, "widget", "val")  # type: ignore[arg-type]


def test_mvtec_empty_folder_and_non_images(tmp_path: Path) -> None:
    _make_mvtec(tmp_path)
    cat = tmp_path / "widget"
    # junk next to images is ignored
    (cat / "train" / "good" / "notes.txt").write_text("hello")
    (cat / "train" / "good" / ".DS_Store").write_bytes(b"\0\1")
    (cat / "train" / "good" / "._000.png").write_bytes(b"AppleDouble junk")
    (cat / "test" / "crack" / "Thumbs.db").write_bytes(b"x")
    assert len(MVTecDataset(tmp_path, "widget", "train")) == 3
    assert len(MVTecDataset(tmp_path, "widget", "test")) == 4
    # a folder with only non-images is an error
    for p in (cat / "train" / "good").glob("*.png"):
        p.unlink()
    with pytest.raises(DataError, match="contains no images"):
        MVTecDataset(tmp_path, "widget", "train")


def test_mvtec_corrupt_mask_is_reported(tmp_path: Path) -> None:
    _make_mvtec(tmp_path)
    (tmp_path / "widget" / "ground_truth" / "crack" / "1_mask.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="1_mask.png"):
        MVTecDataset(tmp_path, "widget", "test")


# ------------------------------------------------------------------------------------------------ folder


def test_folder_train_and_flat_test(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / "good" / f"g{i}.jpg", _img(i))
        _save(tmp_path / "flat" / f"t{i}.png", _img(10 + i))
    (tmp_path / "flat" / "readme.md").write_text("x")
    train = FolderDataset(tmp_path / "good", image_size=S)
    assert len(train) == 3 and {s.label for s in train.samples} == {0}
    test = FolderDataset(tmp_path / "good", tmp_path / "flat", split="test", image_size=S)
    assert len(test) == 3 and not test.has_masks
    item = test[0]
    assert item["label"] == -1 and item["defect_type"] == "unknown" and item["mask"].shape == (1, S, S)


def test_folder_structured_test_with_masks(tmp_path: Path) -> None:
    _save(tmp_path / "good" / "g.png", _img(0))
    _save(tmp_path / "test" / "good" / "a.png", _img(1))
    _save(tmp_path / "test" / "dent" / "x.png", _img(2))
    _save(tmp_path / "test" / "dent" / "y.png", _img(3))
    _save(tmp_path / "masks" / "dent" / "x_mask.png", _square_mask(5))
    _save(tmp_path / "masks" / "y.png", _square_mask(9))  # flat mask folder, same stem
    ds = FolderDataset(tmp_path / "good", tmp_path / "test", tmp_path / "masks", split="test", image_size=S)
    assert ds.has_masks
    by_name = {Path(ds[i]["path"]).stem: ds[i] for i in range(len(ds))}
    assert by_name["a"]["label"] == 0 and by_name["a"]["mask"].sum() == 0
    assert by_name["x"]["label"] == 1 and by_name["x"]["mask"].sum() == 16
    assert torch.equal(by_name["y"]["mask"][0], torch.from_numpy(_square_mask(9) > 0).float())
    # without masks: labels still known, masks absent
    ds2 = FolderDataset(tmp_path / "good", tmp_path / "test", split="test", image_size=S)
    assert not ds2.has_masks and sorted(s.label for s in ds2.samples) == [0, 1, 1]
    (tmp_path / "masks" / "y.png").unlink()
    with pytest.raises(DataError, match=r"no mask for defective image .*y\.png"):
        FolderDataset(tmp_path / "good", tmp_path / "test", tmp_path / "masks", split="test")


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no images"):
        FolderDataset(tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        FolderDataset(tmp_path / "missing")
    _save(tmp_path / "good" / "g.png", _img(0))
    with pytest.raises(DataError, match="test_dir"):
        FolderDataset(tmp_path / "good", split="test")
    with pytest.raises(DataError, match="not found"):
        FolderDataset(tmp_path / "good", tmp_path / "nope", split="test")
    _save(tmp_path / "mixed" / "loose.png", _img(1))
    _save(tmp_path / "mixed" / "good" / "a.png", _img(2))
    with pytest.raises(DataError, match="mixes images"):
        FolderDataset(tmp_path / "good", tmp_path / "mixed", split="test")


# ------------------------------------------------------------------------------------------------ synthetic


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_deterministic(tmp_path: Path) -> None:
    kw = dict(n_train=2, n_test_good=1, n_test_defect=1, image_size=48, seed=3)
    a = _tree_bytes(generate_demo_dataset(tmp_path / "a", **kw))
    b = _tree_bytes(generate_demo_dataset(tmp_path / "b", **kw))
    assert a == b and len(a) > 20
    c = _tree_bytes(generate_demo_dataset(tmp_path / "c", **{**kw, "seed": 4}))
    assert c.keys() == a.keys() and c != a


def test_synthetic_layout_and_masks(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path, n_train=3, n_test_good=2, n_test_defect=2, image_size=64)
    assert list_categories(root) == sorted(DEMO_CATEGORIES)
    for cat in DEMO_CATEGORIES:
        assert (root / cat / MARKER_NAME).is_file()
        assert len(list((root / cat / "train" / "good").glob("*.png"))) == 3
        assert not (root / cat / "ground_truth" / "good").exists()
        test = MVTecDataset(root, cat, "test", image_size=64)
        assert len(test) == 2 + 2 * len(DEFECT_TYPES[cat])
        assert {s.defect_type for s in test.samples} == {"good", *DEFECT_TYPES[cat]}
        for path, mask_path, label, defect in test.samples:
            if defect == "good":
                assert mask_path is None and label == 0
                continue
            mask = np.asarray(Image.open(mask_path))
            assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
            assert 0.001 < (mask > 0).mean() < 0.08, f"{defect} mask area {(mask > 0).mean():.4f}"
            assert Image.open(path).size == (64, 64)


@pytest.mark.parametrize("category", DEMO_CATEGORIES)
def test_synthetic_masks_are_exact(category: str) -> None:
    for k, defect in enumerate(DEFECT_TYPES[category]):
        good, img, mask = render_sample(category, defect, 96, np.random.default_rng(k))
        changed = (img != good).any(axis=2)
        assert mask.any() and not changed[~mask].any(), f"{defect}: pixels changed outside the mask"
        assert changed[mask].mean() > 0.8, f"{defect}: mask covers unchanged pixels"
    good, img, mask = render_sample(category, None, 96, np.random.default_rng(0))
    assert not mask.any() and np.array_equal(good, img)


def test_synthetic_defects_not_found_by_intensity(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path, n_train=1, n_test_good=3, n_test_defect=2, image_size=96)
    for cat in DEMO_CATEGORIES:
        lum, lab = [], []
        for path, mask_path, _, _ in MVTecDataset(root, cat, "test", image_size=96).samples:
            lum.append(np.asarray(Image.open(path).convert("L"), np.float32).ravel())
            m = np.asarray(Image.open(mask_path)) > 0 if mask_path else np.zeros(96 * 96, bool)
            lab.append(m.ravel())
        y, t = np.concatenate(lum), np.concatenate(lab)
        for name, score in (("I", y), ("-I", -y), ("|I-median|", np.abs(y - np.median(y)))):
            auroc = roc_auc_score(t, score)
            assert auroc < 0.75, f"{cat}: {name} finds defects (AUROC {auroc:.3f})"


def test_ensure_demo_dataset_idempotent(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path, n_train=2, n_test_good=1, n_test_defect=1, image_size=48)
    before = _tree_bytes(root)
    mtime = (root / "demo_texture" / MARKER_NAME).stat().st_mtime_ns
    assert ensure_demo_dataset(root) == root  # an existing (small) set is kept
    assert _tree_bytes(root) == before and (root / "demo_texture" / MARKER_NAME).stat().st_mtime_ns == mtime
    other = ensure_demo_dataset(tmp_path / "fresh", categories=("demo_object",), image_size=32)
    assert list_categories(other) == ["demo_object"]
    assert len(list((other / "demo_object" / "train" / "good").glob("*.png"))) == 60
    with pytest.raises(DataError, match="unknown demo category"):
        generate_demo_dataset(tmp_path, categories=("nope",))


# ------------------------------------------------------------------------------------------------ transforms


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_load_image_modes(tmp_path: Path) -> None:
    gray = Image.fromarray(np.full((5, 7), 200, np.uint8))
    out = load_image(gray)
    assert out.mode == "RGB" and out.size == (7, 5) and np.asarray(out)[0, 0].tolist() == [200, 200, 200]

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = [[0, 255, 128, 255]] * 4
    out = np.asarray(load_image(Image.fromarray(rgba, "RGBA")))
    assert out[0, :, 0].tolist() == [0, 255, 128, 255]  # composited on black

    pal = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).convert("P")
    assert load_image(pal).mode == "RGB"

    cmyk = Image.new("CMYK", (6, 4), (0, 255, 255, 0))  # red
    r, g, b = np.asarray(load_image(_png_bytes(cmyk, "JPEG", quality=95)))[2, 3].tolist()
    assert r > 200 and g < 60 and b < 60

    sixteen = np.array([[0, 257 * 100, 65535, 32768]], np.uint16)
    p16 = tmp_path / "sixteen.png"
    Image.fromarray(sixteen).save(p16)
    assert Image.open(p16).mode.startswith("I")
    assert np.asarray(load_image(p16))[0, :, 0].tolist() == [0, 100, 255, 128]
    i32 = Image.fromarray(np.array([[0, 1000, 65535]], np.int32), "I")
    assert np.asarray(load_image(i32))[0, :, 0].tolist() == [0, 4, 255]

    assert load_image(np.zeros((3, 5), np.uint8)).size == (5, 3)
    assert load_image(np.zeros((3, 5, 4), np.uint8)).mode == "RGB"
    assert load_image(Image.new("RGB", (1, 1), (1, 2, 3))).getpixel((0, 0)) == (1, 2, 3)
    assert load_image(str(p16)).size == (4, 1)


def test_load_image_exif_rotation() -> None:
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = load_image(_png_bytes(img, "JPEG", exif=exif))
    assert out.size == (20, 40)


def test_load_image_max_side() -> None:
    tall = Image.fromarray(_img(0, 64)[:, :48])
    assert load_image(tall, max_side=32).size == (24, 32)
    assert load_image(tall, max_side=100).size == (48, 64), "smaller images are kept as they are"
    photo = _png_bytes(Image.new("RGB", (400, 300), (200, 30, 30)), "JPEG")  # JPEG: decoded at reduced scale
    out = load_image(photo, max_side=100)
    assert out.size == (100, 75) and abs(np.asarray(out).astype(int)[40, 50] - [200, 30, 30]).max() < 8


def test_load_image_errors(tmp_path: Path) -> None:
    data = _png_bytes(Image.fromarray(_img(0, 64)))
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable image"):
        load_image(np.random.default_rng(0).bytes(500))
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="not supported"):
        load_image(np.zeros((4, 4), np.int64))
    with pytest.raises(DataError, match="not an image"):
        load_image(np.zeros((4, 4, 2), np.uint8))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_load_image_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0")) + _chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(DataError, match="too large"):
        load_image(tmp_path / "bomb.png")
    monkeypatch.setattr(transforms, "MAX_PIXELS", 100)  # our own limit, below PIL's
    with pytest.raises(DataError, match="too large"):
        load_image(_png_bytes(Image.new("RGB", (20, 20))))
    with pytest.raises(DataError, match="too large"):
        load_image(np.zeros((20, 20), np.uint8))


def test_tensors_roundtrip() -> None:
    arr = _img(1, 16)
    t = image_to_tensor(Image.fromarray(arr), 16)
    assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    assert np.abs(denormalize(t).astype(int) - arr).max() <= 1
    assert denormalize(t[None]).shape == (16, 16, 3)
    assert image_to_tensor(Image.fromarray(arr), 8).shape == (3, 8, 8)
    m = np.zeros((16, 16), np.uint8)
    m[:8, :8] = 3  # any non-zero is defective
    mt = mask_to_tensor(Image.fromarray(m), 4)
    assert mt.shape == (1, 4, 4) and set(mt.unique().tolist()) == {0.0, 1.0} and mt.sum() == 4
    rgb_mask = np.zeros((8, 8, 3), np.uint8)
    rgb_mask[0, 0, 0] = 255
    assert mask_to_tensor(Image.fromarray(rgb_mask), 8).sum() == 1
