"""Export (ONNX / OpenVINO), the onnxruntime engine and backends, and the torch-free runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ikd_core.cli import main
from ikd_core.data.transforms import image_to_tensor, list_images
from ikd_core.errors import IKDError
from ikd_core.predict import Predictor
from ikd_core.runtime import OnnxEngine, OnnxPredictor
from ikd_core.tiling import resize_bilinear

ROOT = Path(__file__).resolve().parents[1]
DEMO_CKPT = ROOT / "pretrained" / "demo_texture-efficientnet_lite0.safetensors"


def _test_images(demo_root: Path) -> list[Path]:
    test = Path(demo_root) / "demo_texture" / "test"
    return [p for d in sorted(test.iterdir()) for p in list_images(d)]


@pytest.fixture(scope="module")
def demo256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo texture's test images at the demo checkpoint's 256 px (as ``demo-data`` writes them)."""
    from ikd_core.data.synthetic import generate_demo_dataset

    return generate_demo_dataset(tmp_path_factory.mktemp("demo256"), categories=("demo_texture",), n_train=1,
                                 n_test_good=4, n_test_defect=2, image_size=256, seed=0)


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint) -> dict[str, Path]:
    return {"tiny-64px": Path(tiny_checkpoint.checkpoint), "demo-256px": DEMO_CKPT}


@pytest.fixture(scope="module")
def exported(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each checkpoint exported through the CLI."""
    out = tmp_path_factory.mktemp("export")
    paths = {}
    for name, ck in checkpoints.items():
        paths[name] = out / f"{name}.onnx"
        assert main(["export", "--checkpoint", str(ck), "--format", "onnx", "--out", str(paths[name])]) == 0
    return paths


def test_export_embeds_metadata_and_has_a_dynamic_batch(exported: dict[str, Path], checkpoints) -> None:
    import onnx

    from ikd_core.checkpoint import read_metadata

    for name, path in exported.items():
        meta = read_metadata(checkpoints[name])
        proto = onnx.load(str(path))
        props = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(props["ikd"]) == json.loads(json.dumps(meta))
        assert int(props["image_size"]) == meta["image_size"]
        assert float(props["threshold"]) == meta["score_normalization"]["threshold"]
        assert float(props["lo"]) == meta["score_normalization"]["lo"]
        assert props["backbone"] == meta["backbone"]
        assert props["teacher_fingerprint"] == meta["teacher"]["fingerprint"]
        assert json.loads(props["mean"]) == [0.485, 0.456, 0.406]
        assert props["checkpoint_sha256"]
        s = meta["image_size"]
        # the map, and (a score from the fused map's distillation part, the CPU recipe's) the map scored
        channels = 2 if meta["train_config"].get("score_map", "map") == "distillation" else 1
        engine = OnnxEngine(path, micro_batch=8)
        for batch in (1, 3):
            out = engine.session.run(None, {"image": np.zeros((batch, 3, s, s), np.float32)})[0]
            assert out.shape == (batch, channels, s, s)


@pytest.mark.parametrize("name", ["tiny-64px", "demo-256px"])
def test_onnx_parity_on_every_demo_test_image(name: str, exported, checkpoints, demo_root, demo256) -> None:
    """Maps within 1e-3 of (threshold - lo) of the torch model's, and the same verdict on every test image."""
    torch_pred = Predictor.from_checkpoint(checkpoints[name], "cpu", backend="torch")
    onnx_pred = OnnxPredictor(exported[name])
    assert onnx_pred.metadata == json.loads(json.dumps(torch_pred.metadata))
    assert (onnx_pred.image_size, onnx_pred.threshold, onnx_pred.lo) == (
        torch_pred.image_size, torch_pred.threshold, torch_pred.lo)
    images = _test_images(demo256 if name == "demo-256px" else demo_root)
    assert len(images) >= 10
    bound = 1e-3 * (torch_pred.threshold - torch_pred.lo)
    x = torch.stack([image_to_tensor(p, torch_pred.image_size) for p in images])
    with torch.no_grad():
        ref = torch_pred.model(x).numpy()
    got = onnx_pred.maps(x.numpy())
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= bound
    a, b = torch_pred.predict(images), onnx_pred.predict(images)
    for p, q in zip(a, b, strict=True):
        assert q.anomaly_map.shape == p.anomaly_map.shape
        assert np.abs(q.anomaly_map - p.anomaly_map).max() <= bound
        assert abs(q.score - p.score) <= bound
        assert q.is_anomalous() == p.is_anomalous()
    if name == "demo-256px":  # a trained model: both verdicts occur, so the comparison means something
        assert {p.is_anomalous() for p in a} == {True, False}


def test_tiled_prediction_matches_torch(exported, checkpoints, demo_root) -> None:
    torch_pred = Predictor.from_checkpoint(checkpoints["tiny-64px"], "cpu", backend="torch", tile=True)
    onnx_pred = OnnxPredictor(exported["tiny-64px"], tile=True)
    from PIL import Image

    auto_pred = Predictor.from_checkpoint(checkpoints["tiny-64px"], "cpu", backend="onnx", tile=True)
    big = Image.open(_test_images(demo_root)[-1]).convert("RGB").resize((150, 100))
    small = big.resize((40, 30))
    tiles = torch_pred.metadata["tile_normalization"]
    for im in (big, small):
        p, q, r = torch_pred.predict(im)[0], onnx_pred.predict(im)[0], auto_pred.predict(im)[0]
        assert q.anomaly_map.shape == p.anomaly_map.shape == r.anomaly_map.shape == (im.height, im.width)
        assert np.abs(q.anomaly_map - p.anomaly_map).max() <= 1e-3 * (p.threshold - p.lo)
        assert np.abs(r.anomaly_map - p.anomaly_map).max() <= 1e-3 * (p.threshold - p.lo)
        # every backend judges tiles against the threshold fitted on held-out tiles
        assert (p.threshold, p.lo) == (q.threshold, q.lo) == (r.threshold, r.lo) == (tiles["threshold"], tiles["lo"])


def test_resize_bilinear_matches_torch_interpolate() -> None:
    a = np.random.default_rng(0).normal(size=(2, 9, 13)).astype(np.float32)
    for h, w in ((9, 13), (31, 40), (4, 5), (20, 7)):
        ref = F.interpolate(torch.from_numpy(a)[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        assert np.abs(resize_bilinear(a, h, w) - ref.numpy()).max() < 1e-5


def test_predictor_auto_backend_exports_once_into_the_cache(checkpoints, demo_root, tmp_path, monkeypatch) -> None:
    import ikd_core.export_cache as export_mod

    monkeypatch.setenv("IKD_CACHE_DIR", str(tmp_path))
    ck = checkpoints["tiny-64px"]
    auto = Predictor.from_checkpoint(ck, "cpu", backend="auto")
    assert auto.backend == "onnxruntime"
    cached = list((tmp_path / "onnx").glob("*.onnx"))
    assert [auto.engine.path] == cached

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds this checkpoint")

    monkeypatch.setattr(export_mod, "export_onnx", no_export)
    again = Predictor.from_checkpoint(ck, "cpu", backend="onnx")
    assert again.engine.path == auto.engine.path
    plain = Predictor.from_checkpoint(ck, "cpu")
    assert plain.backend == "torch" and plain.engine is None
    images = _test_images(demo_root)
    for p, q in zip(plain.predict(images), again.predict(images), strict=True):
        assert np.abs(p.anomaly_map - q.anomaly_map).max() <= 1e-3 * (p.threshold - p.lo)
        assert p.is_anomalous() == q.is_anomalous()


def test_onnxruntime_threads_stop_spinning_when_a_run_ends(exported) -> None:
    """Between runs the engine's threads must not burn the cores (they would slow torch training, rendering and
    other requests on a 2-core machine): the process uses next to no CPU while it sleeps after a run."""
    import resource
    import time

    engine = OnnxEngine(exported["tiny-64px"], threads=2)
    x = np.zeros((1, 3, 64, 64), np.float32)

    def cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    engine.maps(x)
    idle = 0.0
    for _ in range(10):
        engine.maps(x)
        c0 = cpu_s()
        time.sleep(0.05)
        idle += cpu_s() - c0
    assert idle / 10 < 0.005, f"{idle / 10 * 1000:.1f} ms of CPU per 50 ms asleep: onnxruntime threads still spin"


def test_export_cache_evicts_least_recently_used_beyond_its_cap(tmp_path, monkeypatch) -> None:
    import time

    import ikd_core.export_cache as export_mod

    monkeypatch.setenv("IKD_CACHE_DIR", str(tmp_path))
    folder = export_mod.cache_dir()
    folder.mkdir(parents=True)
    now = time.time()
    files = {}
    for name, age in [("old", 4000), ("mid", 3000), ("new", 2000), ("fresh", 10), ("kept", 5000)]:
        f = folder / f"{name}.onnx"
        f.write_bytes(b"x" * 1000)
        os.utime(f, (now - age, now - age))
        files[name] = f
    removed = export_mod.evict_cache(keep=files["kept"], limit=3500)
    # 5000 bytes, cap 3500: the two oldest go (the kept file is skipped); the one used seconds ago stays
    assert sorted(f.name for f in removed) == ["mid.onnx", "old.onnx"]
    assert sorted(f.name for f in folder.glob("*.onnx")) == ["fresh.onnx", "kept.onnx", "new.onnx"]
    assert export_mod.evict_cache(limit=0) == []  # 0 = no cap
    monkeypatch.setenv("IKD_ONNX_CACHE_MB", "lots")
    with pytest.raises(IKDError, match="IKD_ONNX_CACHE_MB"):
        export_mod.cache_limit_bytes()


def test_auto_backend_falls_back_to_torch_without_onnxruntime(checkpoints, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    ck = checkpoints["tiny-64px"]
    assert Predictor.from_checkpoint(ck, "cpu", backend="auto").backend == "torch"
    with pytest.raises(IKDError, match="onnxruntime is not installed"):
        Predictor.from_checkpoint(ck, "cpu", backend="onnx")
    with pytest.raises(IKDError, match="unknown backend"):
        Predictor.from_checkpoint(ck, "cpu", backend="tensorrt")


def test_cli_predict_with_an_exported_model(exported, checkpoints, demo256, tmp_path, capsys) -> None:
    images = [str(p) for p in _test_images(demo256)[::5]]
    assert main(["predict", "--model", str(exported["demo-256px"]), *images, "--out-dir", str(tmp_path)]) == 0
    onnx_lines = capsys.readouterr().out.strip().splitlines()
    assert main(["predict", "--checkpoint", str(checkpoints["demo-256px"]), "--backend", "torch", *images,
                 "--out-dir", str(tmp_path)]) == 0
    torch_lines = capsys.readouterr().out.strip().splitlines()
    assert len(onnx_lines) == len(images) and onnx_lines == torch_lines
    assert all(Path(ln.split("\t")[-1]).is_file() for ln in onnx_lines)


def test_cli_export_and_model_errors_are_one_line(exported, checkpoints, tmp_path, capsys) -> None:
    import onnx
    from onnx import TensorProto, helper

    plain = tmp_path / "plain.onnx"  # a valid ONNX model that is not an IKD export
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["anomaly_map"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(plain))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x80\x04not a model")
    cases = [
        (["predict", "--model", str(tmp_path / "missing.onnx"), "x.png"], "not found"),
        (["predict", "--model", str(plain), "x.png"], "not an IKD Studio export"),
        (["predict", "--model", str(junk), "x.png"], "cannot be loaded by onnxruntime"),
        (["predict", "--model", str(exported["tiny-64px"]), "--backend", "torch", "x.png"], "--backend torch"),
        (["export", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "o.onnx")],
         "not found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_openvino_export_matches_torch(checkpoints, demo256, tmp_path) -> None:
    ov = pytest.importorskip("openvino")
    ck = checkpoints["demo-256px"]
    assert main(["export", "--checkpoint", str(ck), "--format", "openvino", "--out", str(tmp_path / "m.xml")]) == 0
    model = ov.Core().read_model(str(tmp_path / "m.xml"))
    pred = Predictor.from_checkpoint(ck, "cpu", backend="torch")
    assert float(model.get_rt_info(["ikd", "threshold"]).astype(str)) == pred.threshold
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.stack([image_to_tensor(p, pred.image_size) for p in _test_images(demo256)[::3]])
    with torch.no_grad():
        ref = pred.model(x)[:, 0].numpy()
    got = compiled(x.numpy())[0][:, 0]
    assert np.abs(got - ref).max() <= 1e-3 * (pred.threshold - pred.lo)


NO_TORCH_BLOCK = (
    "import sys\n"
    "for name in ('torch', 'timm', 'torchvision', 'kornia'):\n"
    "    sys.modules[name] = None  # any import of these now fails\n"
    "from ikd_core.runtime import main\n"
    "rc = main(sys.argv[1:])\n"
    "assert not any(m.split('.')[0] in ('torch', 'timm') for m in sys.modules if sys.modules[m] is not None)\n"
    "sys.exit(rc)\n"
)


def _run_runtime(python: str, model: Path, images: list[Path], npz: Path, env: dict | None = None):
    cmd = [python, "-c", NO_TORCH_BLOCK, str(model), *map(str, images), "--save-maps", str(npz), "--json"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _check_runtime_maps(npz: Path, stdout: str, checkpoint: Path, images: list[Path]) -> None:
    pred = Predictor.from_checkpoint(checkpoint, "cpu", backend="torch")
    ref = pred.predict(images)
    data = np.load(npz)
    rows = [json.loads(ln) for ln in stdout.strip().splitlines()]
    assert len(rows) == len(images)
    for i, (p, row) in enumerate(zip(ref, rows, strict=True)):
        assert np.abs(data[f"map_{i}"] - p.anomaly_map).max() <= 1e-3 * (p.threshold - p.lo)
        assert row["verdict"] == ("anomalous" if p.is_anomalous() else "normal")


def test_runtime_module_runs_with_torch_blocked(exported, checkpoints, demo256, tmp_path) -> None:
    images = _test_images(demo256)[::4]
    res = _run_runtime(sys.executable, exported["demo-256px"], images, tmp_path / "maps.npz")
    assert res.returncode == 0, res.stderr
    _check_runtime_maps(tmp_path / "maps.npz", res.stdout, checkpoints["demo-256px"], images)


@pytest.fixture(scope="session")
def no_torch_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A venv (no system site-packages) with only onnxruntime, numpy and Pillow."""
    root = tmp_path_factory.mktemp("venv_no_torch")
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(root)
    python = str(root / "bin" / "python")
    res = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "onnxruntime",
                          "numpy", "pillow"], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        pytest.skip(f"pip could not install onnxruntime numpy pillow into a venv: "
                    f"{(res.stderr.strip().splitlines() or ['no output'])[-1]}")
    return python


def test_runtime_in_a_venv_without_torch(no_torch_python, exported, checkpoints, demo256, tmp_path) -> None:
    probe = subprocess.run([no_torch_python, "-c", "import importlib.util as u; "
                            "print([m for m in ('torch', 'timm', 'onnxruntime') if u.find_spec(m)])"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "['onnxruntime']", probe.stdout + probe.stderr
    images = _test_images(demo256)[1::4]
    res = _run_runtime(no_torch_python, exported["demo-256px"], images, tmp_path / "maps.npz")
    assert res.returncode == 0, res.stderr
    _check_runtime_maps(tmp_path / "maps.npz", res.stdout, checkpoints["demo-256px"], images)


def test_app_serves_the_onnx_path_by_default(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> None:
    """The app's default (IKD_BACKEND=auto) runs onnxruntime on the CPU, with the torch model's verdicts and scores
    within 1e-3 of (threshold - lo)."""
    from conftest import STUDIO_CKPT, run_studio
    from gradio_client import Client, handle_file

    root = tmp_path_factory.mktemp("studio_onnx")
    with run_studio(root, tiny_checkpoint, {"IKD_BACKEND": "auto"}) as studio:
        from ui import gpu

        assert studio.app.settings.backend == "auto"
        assert studio.app.ctx.predictors is gpu.PREDICTORS, "one predictor cache per process"
        client = Client(studio.url, verbose=False)
        images = sorted((studio.demo / "demo_texture" / "test").glob("*/*.png"))[:4]
        out = client.predict([handle_file(str(p)) for p in images], STUDIO_CKPT, 0.5, 0.5, "jet", False,
                             api_name="/inspect")
        served = studio.app.ctx.cpu_predictor(studio.pretrained / STUDIO_CKPT)
        assert served.backend == "onnxruntime"
        torch_pred = Predictor.from_checkpoint(studio.pretrained / STUDIO_CKPT, backend="torch")
        for row, path in zip(out[6]["data"], images, strict=True):
            want = torch_pred.predict([str(path)])[0]
            assert row[1] == pytest.approx(want.relative_score, abs=1e-3 * 0.5 + 1e-4)
            assert row[2] == ("anomalous" if want.is_anomalous(0.5) else "normal")
