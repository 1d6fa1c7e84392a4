"""Unit tests of ikd_core.service: safe names, checkpoint import, upload extraction, background training."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io  # noqa: E402
import shutil  # noqa: E402
import stat  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from ikd_core import service  # noqa: E402
from ikd_core.data.sources import DataSpec, build_datasets  # noqa: E402
from ikd_core.errors import CheckpointError, DataError, IKDError  # noqa: E402
from ikd_core.train import TrainConfig  # noqa: E402

# ------------------------------------------------------------------------------------------ helpers


def _png_bytes(seed: int = 0, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes), hidden ones included."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture()
def ckpt_dir(tmp_path: Path, tiny_checkpoint) -> Path:
    """A pretrained/ folder holding the tiny checkpoint and its sidecar."""
    d = tmp_path / "pretrained"
    d.mkdir()
    src = Path(tiny_checkpoint.checkpoint)
    shutil.copy(src, d / src.name)
    shutil.copy(src.with_suffix(".json"), d / src.with_suffix(".json").name)
    return d


# ------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("name", ["demo_texture-efficientnet_lite0.safetensors", "a.b-c_1.safetensors"])
def test_check_checkpoint_name_accepts_plain_names(name: str) -> None:
    assert service.check_checkpoint_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "   ", "../x.safetensors", "..", "a/b.safetensors", "a\\b.safetensors", "/etc/x.safetensors",
     "C:\\x.safetensors", ".hidden.safetensors", "x..safetensors", "model.pt", "model.ckpt", "x\x00.safetensors",
     "-rf.safetensors"],
)
def test_check_checkpoint_name_refuses_escapes(name: str) -> None:
    with pytest.raises(CheckpointError):
        service.check_checkpoint_name(name)


def test_resolve_checkpoint_stays_inside(ckpt_dir: Path, tmp_path: Path) -> None:
    name = "demo_texture-efficientnet_lite0.safetensors"
    assert service.resolve_checkpoint(name, ckpt_dir) == (ckpt_dir / name).resolve()
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    for bad in ("../outside.safetensors", str(outside)):
        with pytest.raises(CheckpointError, match="invalid checkpoint name"):
            service.resolve_checkpoint(bad, ckpt_dir)
    with pytest.raises(CheckpointError, match="not found"):
        service.resolve_checkpoint("missing.safetensors", ckpt_dir)


def test_sanitize_and_unique_path(tmp_path: Path) -> None:
    assert service.sanitize_name("../../etc/passwd") == "etc_passwd"
    assert service.sanitize_name("My Parts (v2)") == "My_Parts__v2"
    assert service.sanitize_name("...") == "custom"
    (tmp_path / "a.safetensors").write_bytes(b"")
    assert service.unique_path(tmp_path, "a.safetensors").name == "a-2.safetensors"
    assert service.unique_path(tmp_path, "b.safetensors").name == "b.safetensors"


# ------------------------------------------------------------------------------------------ listing
def test_list_checkpoints_reads_metadata_and_flags_bad_files(ckpt_dir: Path) -> None:
    (ckpt_dir / "broken.safetensors").write_bytes(b"not a checkpoint at all")
    (ckpt_dir / ".tmp.safetensors").write_bytes(b"partial")
    infos = service.list_checkpoints(ckpt_dir)
    assert [i.name for i in infos] == ["broken.safetensors", "demo_texture-efficientnet_lite0.safetensors"]
    bad, good = infos
    assert not bad.ok and "not safetensors" in bad.error
    assert good.ok and good.category == "demo_texture" and good.backbone == "efficientnet_lite0"
    assert good.image_size == 64 and set(good.metrics) >= {"image_auroc", "pixel_auroc"}
    text = good.describe()
    assert "efficientnet_lite0" in text and "Image AUROC" in text and "64 px" in text
    assert "- method: `the paper's" in text, "the fixture is trained with the paper's method"
    assert service.default_checkpoint(infos, ["missing.safetensors"]) == good.name
    assert service.list_checkpoints(ckpt_dir / "nope") == []


# ------------------------------------------------------------------------------------------ import
def test_import_checkpoint_adds_a_validated_copy(ckpt_dir: Path, tmp_path: Path) -> None:
    before = _snapshot(ckpt_dir)
    upload = tmp_path / "upload" / "my model!.safetensors"
    upload.parent.mkdir()
    shutil.copy(ckpt_dir / "demo_texture-efficientnet_lite0.safetensors", upload)
    info = service.import_checkpoint(upload, ckpt_dir)
    assert info.ok and info.name == "my_model.safetensors" and info.category == "demo_texture"
    assert (ckpt_dir / "my_model.safetensors").is_file() and (ckpt_dir / "my_model.json").is_file()
    # the same name again: a new file, the first one untouched
    info2 = service.import_checkpoint(upload, ckpt_dir)
    assert info2.name == "my_model-2.safetensors"
    after = _snapshot(ckpt_dir)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".")], "staging folder left behind"


def _bad_uploads(tmp_path: Path, good: Path) -> list[tuple[Path, str]]:
    import torch
    from safetensors.torch import save_file

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(256))
    pickle = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pickle)
    disguised = tmp_path / "pickle.safetensors"
    shutil.copy(pickle, disguised)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    truncated = tmp_path / "truncated.safetensors"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return [
        (garbage, "not safetensors|not a valid"),
        (pickle, "only .safetensors"),
        (disguised, "pickle|not safetensors"),
        (foreign, "no IKD metadata"),
        (truncated, "truncated|corrupt|not safetensors|not a valid"),
    ]


def test_bad_upload_leaves_everything_intact(ckpt_dir: Path, tmp_path: Path) -> None:
    before = _snapshot(ckpt_dir)
    good = ckpt_dir / "demo_texture-efficientnet_lite0.safetensors"
    for upload, pattern in _bad_uploads(tmp_path, good):
        with pytest.raises(CheckpointError, match=pattern):
            service.import_checkpoint(upload, ckpt_dir)
        assert _snapshot(ckpt_dir) == before, f"{upload.name} changed pretrained/"
    # a bad upload named like the active checkpoint does not replace it
    evil = tmp_path / "evil" / good.name
    evil.parent.mkdir()
    evil.write_bytes(b"\x80\x04junk")
    with pytest.raises(CheckpointError):
        service.import_checkpoint(evil, ckpt_dir)
    assert _snapshot(ckpt_dir) == before


def test_import_rejects_mismatched_tensors(ckpt_dir: Path, tmp_path: Path) -> None:
    """Valid metadata but tensors of another shape: refused by the full load_model check."""
    import json

    import torch
    from safetensors.torch import save_file

    from ikd_core.checkpoint import read_metadata

    meta = read_metadata(ckpt_dir / "demo_texture-efficientnet_lite0.safetensors")
    bad = tmp_path / "mismatch.safetensors"
    save_file({"w": torch.zeros(3)}, str(bad), metadata={"ikd": json.dumps(meta)})
    before = _snapshot(ckpt_dir)
    with pytest.raises(CheckpointError, match="does not match"):
        service.import_checkpoint(bad, ckpt_dir)
    assert _snapshot(ckpt_dir) == before


# ------------------------------------------------------------------------------------------ uploads
def _zip(path: Path, members: dict[str, bytes], links: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def test_uploaded_zip_becomes_folder_dataspec(tmp_path: Path) -> None:
    z = _zip(tmp_path / "my parts.zip", {
        "good/a.png": _png_bytes(1), "good/sub/a.png": _png_bytes(2), "b.JPG": _jpeg(), "README.txt": b"hi",
        "__MACOSX/good/._a.png": b"junk", ".hidden.png": _png_bytes(3),
    })
    loose = tmp_path / "c.png"
    loose.write_bytes(_png_bytes(4))
    spec = service.uploaded_data_spec([z, loose], tmp_path / "work")
    assert spec.kind == "folder" and spec.category == "my_parts"
    good = Path(spec.good_dir)
    assert good.is_relative_to(tmp_path / "work" / "uploads")
    assert sorted(p.name for p in good.iterdir()) == ["a-2.png", "a.png", "b.jpg", "c.png"]
    train_ds, test_ds = build_datasets(spec, 32)
    assert len(train_ds) == 4 and test_ds is None
    # a second upload gets a fresh folder
    spec2 = service.uploaded_data_spec([loose], tmp_path / "work", category="../x")
    assert spec2.good_dir != spec.good_dir and spec2.category == "x"


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("members", "links", "pattern"),
    [
        ({"../evil.png": _png_bytes(), "ok.png": _png_bytes(1)}, (), "outside"),
        ({"good/../../evil.png": _png_bytes()}, (), "outside"),
        ({"/abs/evil.png": _png_bytes()}, (), "outside"),
        ({"C:/evil.png": _png_bytes()}, (), "outside"),
        ({"ok.png": _png_bytes()}, ("link.png",), "symbolic link"),
        ({"README.md": b"no images"}, (), "no images"),
        ({"broken.png": b"\x89PNG\r\n\x1a\nbroken"}, (), "not a usable image"),
    ],
)
def test_unsafe_or_useless_zip_is_refused(tmp_path: Path, members, links, pattern) -> None:
    z = _zip(tmp_path / "up.zip", members, links)
    work = tmp_path / "work"
    with pytest.raises(DataError, match=pattern):
        service.uploaded_data_spec([z], work)
    assert not (tmp_path / "evil.png").exists() and not (work / "evil.png").exists()
    assert list((work / "uploads").iterdir()) == [], "a refused upload must leave no folder behind"


def test_upload_limits(tmp_path: Path) -> None:
    files = []
    for i in range(3):
        f = tmp_path / f"{i}.png"
        f.write_bytes(_png_bytes(i))
        files.append(f)
    with pytest.raises(DataError, match="too many images"):
        service.extract_images(files, tmp_path / "t1", max_files=2)
    with pytest.raises(DataError, match="larger than"):
        service.extract_images(files, tmp_path / "t2", max_file_bytes=100)
    bomb = _zip(tmp_path / "bomb.zip", {"big.png": b"\0" * 5_000_000})
    with pytest.raises(DataError, match="larger than"):
        service.extract_images([bomb], tmp_path / "t3", max_file_bytes=1_000_000)
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(DataError, match="not an image or zip"):
        service.extract_images([text], tmp_path / "t4")
    assert not any((tmp_path / f"t{i}").exists() for i in range(1, 5))


# ------------------------------------------------------------------------------------------ lookups
def test_sample_index_finds_copies_by_content(demo_root: Path, tmp_path: Path) -> None:
    _, test_ds = build_datasets(DataSpec("demo", "demo_texture", str(demo_root)), 64)
    index = service.SampleIndex(test_ds.samples)
    defect = next(s for s in test_ds.samples if s.mask_path)
    copy = tmp_path / "renamed.png"
    shutil.copy(defect.path, copy)
    assert index.lookup(copy) == defect
    other = tmp_path / "other.png"
    other.write_bytes(_png_bytes(7))
    assert index.lookup(other) is None
    assert index.lookup(tmp_path / "missing.png") is None


def test_paths_from_the_environment() -> None:
    env = {service.PRETRAINED_ENV: "/a", service.DATA_ENV: "/b", service.WORK_ENV: "/c"}
    assert service.StudioPaths.from_env(env) == service.StudioPaths(Path("/a"), Path("/b"), Path("/c"))
    assert service.StudioPaths.from_env({}).pretrained == Path("pretrained")


def test_storage_folder_and_seeding_the_shipped_checkpoints(tmp_path: Path, tiny_checkpoint) -> None:
    """IKD_STORAGE (a Space's /data) holds everything; the shipped checkpoints are copied there once and a file
    already there (a user's retrained model of the same name) is never replaced."""
    store = tmp_path / "data"
    paths = service.StudioPaths.from_env({service.STORAGE_ENV: str(store)})
    assert paths == service.StudioPaths(store / "pretrained", store / "data", store / "work")
    env = {service.STORAGE_ENV: str(store), service.WORK_ENV: "/w"}
    assert service.StudioPaths.from_env(env).work == Path("/w"), "the single-folder variables win"
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    src = Path(tiny_checkpoint.checkpoint)
    for name in ("a.safetensors", "b.safetensors"):
        (shipped / name).write_bytes(src.read_bytes())
        (shipped / name).with_suffix(".json").write_bytes(src.with_suffix(".json").read_bytes())
    (shipped / "broken.safetensors").write_bytes(b"not a checkpoint")
    paths.pretrained.mkdir(parents=True)
    (paths.pretrained / "b.safetensors").write_bytes(b"user's own")
    assert service.seed_checkpoints(shipped, paths.pretrained) == ["a.safetensors"]
    assert (paths.pretrained / "a.safetensors").read_bytes() == src.read_bytes()
    assert (paths.pretrained / "a.json").is_file()
    assert (paths.pretrained / "b.safetensors").read_bytes() == b"user's own"
    assert not (paths.pretrained / "broken.safetensors").exists()
    assert service.seed_checkpoints(shipped, paths.pretrained) == []
    assert service.seed_checkpoints(shipped, shipped) == []


def test_prediction_cache_is_bounded_in_bytes() -> None:
    import numpy as np

    from ikd_core.predictor_base import Prediction

    def pred(side: int) -> Prediction:
        return Prediction(np.zeros((side, side), np.float32), 1.0, 2.0, 0.0)

    one = service.PredictionCache.size_of(pred(100))
    cache = service.PredictionCache(max_bytes=3 * one)
    for k in "abc":
        cache.put(k, pred(100))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", pred(100))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 3
    assert cache.nbytes <= 3 * one
    cache.put("huge", pred(1000))
    assert cache.get("huge") is None and len(cache) == 3, "an item larger than the budget is not kept"


def test_predictor_cache_is_lru_and_reloads_changed_files(tmp_path: Path) -> None:
    loads: list[str] = []
    cache = service.PredictorCache(maxsize=2, loader=lambda p, d: loads.append(p.name) or object())
    a, b, c = (tmp_path / f"{n}.safetensors" for n in "abc")
    for p in (a, b, c):
        p.write_bytes(b"x")
    pa = cache.get(a)
    assert cache.get(a) is pa and loads == ["a.safetensors"]
    cache.get(b)
    cache.get(c)  # evicts a
    assert len(cache) == 2
    cache.get(a)
    assert loads == ["a.safetensors", "b.safetensors", "c.safetensors", "a.safetensors"]
    st = os.stat(c)
    os.utime(c, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten file: new key
    cache.get(c)
    assert loads[-1] == "c.safetensors" and len(loads) == 5
    with pytest.raises(CheckpointError, match="not found"):
        cache.get(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------------ training jobs
def test_training_job_stop_writes_nothing(demo_root: Path, tmp_path: Path) -> None:
    spec = DataSpec("demo", "demo_texture", str(demo_root))
    cfg = TrainConfig(image_size=64, epochs=500, batch_size=4, lr=1e-3, device="cpu")
    out = tmp_path / "pretrained" / "stopped.safetensors"
    job = service.TrainingJob(spec, cfg, out).start()
    deadline = time.monotonic() + 120
    seen = []
    for ev in job.iter_events(poll=0.2):
        if ev is not None:
            seen.append(ev.kind)
            if ev.kind == "progress":
                job.stop()
        assert time.monotonic() < deadline, "no progress from the training thread"
    assert job.join(60)
    assert job.state == "cancelled" and job.error is None
    assert seen[0] == "status" and "progress" in seen and seen[-1] == "end"
    assert job.last_progress.epoch < 500
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not (out.parent.exists() and any(out.parent.iterdir())), "a stopped run must leave no partial file"


def test_training_job_finishes_with_checkpoint_and_curves(demo_root: Path, tmp_path: Path) -> None:
    spec = DataSpec("demo", "demo_texture", str(demo_root))
    cfg = TrainConfig(image_size=64, epochs=1, batch_size=4, lr=1e-3, device="cpu")
    out = tmp_path / "ok.safetensors"
    job = service.TrainingJob(spec, cfg, out).start()
    kinds = [ev.kind for ev in job.iter_events(poll=0.2) if ev is not None]
    assert job.state == "finished", job.error
    assert kinds[-1] == "end" and kinds.count("progress") >= 2
    assert job.result.checkpoint == out and out.is_file()
    assert job.losses and all(np.isfinite(loss) for _, loss in job.losses)
    curves = job.curves
    assert curves is not None and len(curves.image_roc[0]) > 1 and len(curves.pixel_roc[0]) > 1
    assert len(curves.pro[0]) > 1
    assert curves.metrics["image_auroc"] == pytest.approx(job.result.metrics["image_auroc"], abs=1e-6)


def test_training_job_reports_data_errors(tmp_path: Path) -> None:
    spec = DataSpec("folder", "custom", good_dir=str(tmp_path / "missing"))
    job = service.TrainingJob(spec, TrainConfig(image_size=64, epochs=1, device="cpu"), tmp_path / "x.safetensors")
    job.start()
    assert job.join(60)
    assert job.state == "failed" and "not found" in job.error
    assert [e.kind for e in job.iter_events(poll=0.1) if e is not None][-1] == "end"


def test_job_registry_stops_only_the_owners_job(demo_root: Path, tmp_path: Path) -> None:
    reg = service.JobRegistry()
    job = service.TrainingJob(DataSpec("demo", "demo_texture", str(demo_root)),
                              TrainConfig(image_size=64, epochs=1, device="cpu"), None)
    job.state = "running"  # not started: registry bookkeeping only
    reg.put("alice", job)
    assert not reg.stop("bob") and not job.stop_event.is_set()
    assert reg.stop("alice") and job.stop_event.is_set()
    reg.discard("bob", job)
    assert reg.get("alice") is job
    reg.discard("alice", job)
    assert reg.get("alice") is None


def test_prune_files_keeps_the_newest(tmp_path) -> None:
    for i in range(5):
        f = tmp_path / f"{i}.gif"
        f.write_bytes(b"x")
        os.utime(f, ns=(i * 10**9, i * 10**9))
    service.prune_files(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3.gif", "4.gif"]
    service.prune_files(tmp_path / "missing", keep=1)  # no folder: nothing to do


def test_prune_files_tolerates_a_file_pruned_by_another_request(tmp_path, monkeypatch) -> None:
    """Two requests pruning one exports folder at once: a file one of them lists and checks may be deleted by the
    other before it is dated or unlinked (CI failed on that race: FileNotFoundError from stat)."""
    for i in range(5):
        f = tmp_path / f"{i}.csv"
        f.write_bytes(b"x")
        os.utime(f, ns=(i * 10**9, i * 10**9))
    real_stat = Path.stat

    def seen_then_gone(self: Path, **kwargs):
        result = real_stat(self, **kwargs)
        if self.name == "0.csv" and os.path.exists(self):
            os.unlink(self)  # the other request's prune, right after this one looked at the file
        return result

    monkeypatch.setattr(Path, "stat", seen_then_gone)
    service.prune_files(tmp_path, keep=2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3.csv", "4.csv"]


# ------------------------------------------------------------------------------------------ settings, training use case
def test_settings_are_read_from_the_given_environment_only(tmp_path: Path) -> None:
    from ikd_core.service import Settings

    private = Settings.from_env({"IKD_STORAGE": str(tmp_path)})
    public = Settings.from_env({"IKD_STORAGE": str(tmp_path), "SPACE_ID": "x/y", "IKD_MAX_INSPECT_IMAGES": "3"})
    assert private.paths.pretrained == tmp_path / "pretrained" and not private.public and private.allow_server_paths
    assert (private.max_inspect_images, private.max_train_minutes, private.max_file_size) == (64, None, "1gb")
    assert public.public and not public.allow_server_paths
    assert (public.max_inspect_images, public.max_train_minutes, public.max_file_size) == (3, 10, "100mb")
    assert public.live_time_limit == 60 and public.max_image_pixels == 16_000_000
    with pytest.raises(AttributeError):
        public.backend = "torch"  # type: ignore[misc]
    with pytest.raises(SystemExit, match="IKD_GPU_MAX_DURATION"):
        service.settings.gpu_max_duration({"IKD_GPU_MAX_DURATION": "300"})


def test_training_requests_are_checked_and_names_reserved(demo_root: Path, tmp_path: Path) -> None:
    from ikd_core.service import training

    with pytest.raises(training.TrainingRequestError, match="set a number of epochs or a time limit"):
        training.run_limits(0, "")
    assert training.run_limits(None, None, cap=10) == (None, 10)
    assert training.run_limits(5, 30, cap=10) == (5, 10)
    with pytest.raises(training.TrainingRequestError, match="unknown backbone"):
        training.training_config("nope", 64, 1, 4, 1e-3, 0)
    with pytest.raises(IKDError, match="learning rate"):
        training.training_config("efficientnet_lite0", 64, 1, 4, float("nan"), 0)
    cfg = training.training_config("efficientnet_lite0", 64, 1, 4, 1e-3, 0)
    assert (cfg.image_size, cfg.epochs, cfg.max_minutes) == (64, 1, None)
    shipped, own = tmp_path / "shipped", tmp_path / "ws" / "pretrained"
    shipped.mkdir()
    (shipped / "demo_texture-efficientnet_lite0.safetensors").write_bytes(b"x")
    ws = service.Workspace("v", tmp_path / "ws", own)
    spec = DataSpec("demo", "demo_texture", str(demo_root))
    first = training.reserve_output(spec, cfg, ws, shipped)
    second = training.reserve_output(spec, cfg, ws, shipped)
    assert first.parent == own and first.name != "demo_texture-efficientnet_lite0.safetensors", "never a shipped name"
    assert second != first, "a reserved name is not given twice"


def test_recipes_fill_the_form_and_the_settings_it_does_not_show(monkeypatch) -> None:
    from ikd_core import recipes
    from ikd_core.service import training

    assert set(recipes.RECIPE_NOTES) == set(recipes.RECIPES), "every recipe is explained in the form and the help"
    assert training.default_form(has_gpu=False)["recipe"] == "cpu"
    assert training.default_form(has_gpu=True)["recipe"] == "paper"
    assert training.default_form(has_gpu=False)["batch_size"] == recipes.RECIPES["cpu"]["batch_size"]
    monkeypatch.setitem(recipes.RECIPES, "levers", {**recipes.RECIPES["cpu"], "student": "reverse", "score_topk": 7})
    cfg = training.training_config("efficientnet_lite0", 64, 1, 4, 1e-3, 0, recipe="levers")
    assert (cfg.student, cfg.score_topk, cfg.image_size, cfg.batch_size) == ("reverse", 7, 64, 4), "form fields win"
    paper = training.training_config("efficientnet_lite0", 64, 1, 4, 1e-3, 0)
    assert (paper.student, paper.score_topk, paper.level_norm, paper.denoise) == ("forward", 1, False, False)
    cpu = training.training_config("efficientnet_lite0", 64, 1, 4, 1e-3, 0, recipe="cpu")
    assert (cpu.student, cpu.loss, cpu.denoise, cpu.combine) == ("forward", "ikd", True, "product")
    assert (cpu.segment, cpu.segment_map, cpu.score_map) == (True, "fused", "distillation"), \
        "the CPU recipe (the app's CPU default) is the bench's choice: the paper's loss with the denoising student, " \
        "the segmentation head fused with the distillation map and the score from the map's distillation part"
    assert (paper.segment, paper.score_map) == (False, "map")
    light = training.training_config("efficientnet_lite0", 64, 1, 4, 1e-3, 0, recipe="cpu-denoise")
    assert (light.denoise, light.segment, light.score_map, light.loss) == (True, False, "map", "ikd"), \
        "cpu-denoise: the denoising student alone"
    assert {k for k in recipes.RECIPES["cpu"] if recipes.RECIPES["cpu"][k] != recipes.RECIPES["cpu-denoise"][k]} == {
        "segment", "segment_map", "score_map"}, "same minutes and optimisation as the CPU recipe"
    with pytest.raises(training.TrainingRequestError, match="unknown recipe"):
        training.training_config("efficientnet_lite0", 64, 1, 4, 1e-3, 0, recipe="<script>")


def test_run_log_and_active_model_choice(tmp_path: Path) -> None:
    from ikd_core.service import training

    log = training.RunLog()
    assert not log.add(service.TrainingUpdate("status", message="loading"))
    assert not log.add(service.TrainingUpdate("progress", progress="p", losses=[(1, 0.5)]))
    assert (log.status, log.last, log.losses) == ("", "p", [(1, 0.5)])
    assert log.add(service.TrainingUpdate("end", state="finished", losses=[(2, 0.4)]))
    assert log.end is not None and log.losses == [(1, 0.5), (2, 0.4)]

    def missing(name: str) -> Path:
        raise CheckpointError(f"{name} not found")

    assert training.usable_active(None, "new", missing) is None
    assert training.usable_active("new", "new", missing) is None
    assert training.usable_active("old", "new", missing) is None
    broken = tmp_path / "old.safetensors"
    broken.write_bytes(b"not a checkpoint")
    assert training.usable_active("old", "new", lambda _: broken) is None, "an unusable active model is not compared"
