"""Shared fixtures: offline mode, a small demo dataset, a tiny trained checkpoint."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
