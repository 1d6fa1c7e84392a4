"""Shared fixtures: offline mode, a small demo dataset, a tiny trained checkpoint."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _export_cache(tmp_path_factory: pytest.TempPathFactory):
    """Cached ONNX exports (``Predictor`` backend auto, the CLI's default) go to a temporary folder, not ~/.cache."""
    old = os.environ.get("IKD_CACHE_DIR")
    os.environ["IKD_CACHE_DIR"] = str(tmp_path_factory.mktemp("ikd_cache"))
    yield
    if old is None:
        os.environ.pop("IKD_CACHE_DIR", None)
    else:
        os.environ["IKD_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic demo set in MVTec layout (64 px)."""
    from ikd_core.data.synthetic import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    return generate_demo_dataset(root, n_train=12, n_test_good=4, n_test_defect=2, image_size=64, seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(demo_root, tmp_path_factory: pytest.TempPathFactory):
    """A checkpoint trained for one short epoch on the demo texture at 64 px."""
    from ikd_core.data.sources import DataSpec, build_datasets
    from ikd_core.train import TrainConfig, train

    spec = DataSpec("demo", "demo_texture", str(demo_root))
    train_ds, test_ds = build_datasets(spec, 64)
    out = tmp_path_factory.mktemp("ckpt") / "demo_texture-efficientnet_lite0.safetensors"
    cfg = TrainConfig(image_size=64, epochs=1, batch_size=4, lr=1e-3)
    result = train(train_ds, test_ds, cfg, out_path=out, category="demo_texture", data_info=spec.to_dict())
    return result


STUDIO_CKPT = "demo_texture-efficientnet_lite0.safetensors"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_studio(root: Path, tiny_checkpoint, env: dict[str, str] | None = None):
    """A fresh app (``ui.build_app`` with its own settings) on a free 127.0.0.1 port, with a 64-px demo set and the
    tiny checkpoint in folders under ``root`` (``IKD_PRETRAINED_DIR``, ``IKD_DATA_DIR``, ``IKD_WORK_DIR``), so the
    repository's files are never touched. ``env`` adds variables for this launch (read into its ``Settings``, and
    set while it runs for what Gradio reads, e.g. ``GRADIO_TEMP_DIR``); all are restored afterwards."""
    import ui
    from ikd_core.data.synthetic import generate_demo_dataset
    from ikd_core.service import Settings

    pretrained, data, work = root / "pretrained", root / "data", root / "work"
    generate_demo_dataset(data / "demo", n_train=12, n_test_good=4, n_test_defect=2, image_size=64, seed=0)
    pretrained.mkdir()
    src = Path(tiny_checkpoint.checkpoint)
    shutil.copy(src, pretrained / STUDIO_CKPT)
    shutil.copy(src.with_suffix(".json"), (pretrained / STUDIO_CKPT).with_suffix(".json"))
    # torch maps by default, so tests can compare pixels with ikd_core.render; IKD_BACKEND=auto (the app's default,
    # onnxruntime on the CPU) is tested on its own
    new = {"IKD_PRETRAINED_DIR": str(pretrained), "IKD_DATA_DIR": str(data), "IKD_WORK_DIR": str(work),
           "IKD_BACKEND": "torch", **(env or {})}
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    app = ui.build_app(Settings.from_env())
    assert app.settings.paths.pretrained == pretrained
    port = _free_port()
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    **app.launch_kwargs())
    try:
        yield SimpleNamespace(app=app, url=f"http://127.0.0.1:{port}/", netloc=f"127.0.0.1:{port}", root=root,
                              pretrained=pretrained, demo=data / "demo", work=work)
    finally:
        try:
            app.close()
        finally:  # whatever close raises, the next app must not inherit this one's variables (e.g. public mode)
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
