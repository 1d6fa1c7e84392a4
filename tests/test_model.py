"""Backbones, offline teacher weights, the teacher/student model and anomaly maps."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from ikd_core.anomaly_map import AnomalyMapGenerator
from ikd_core.backbones import (
    BACKBONES,
    FeatureExtractor,
    build_teacher,
    packaged_efficientnet_lite0_state,
    resolve_teacher_state,
)
from ikd_core.errors import WeightsError
from ikd_core.torch_model import IKDModel


def test_packaged_weights_are_real_imagenet_weights() -> None:
    """The mapped offline weights classify scikit-image's chelsea photo as a cat (281-285)."""
    skimage_data = pytest.importorskip("skimage.data")
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.load_state_dict(packaged_efficientnet_lite0_state())
    model.eval()
    img = torch.tensor(np.asarray(skimage_data.chelsea())).permute(2, 0, 1).float()[None] / 255
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        top = model((img - mean) / std).argmax(1).item()
    assert 281 <= top <= 285


def test_teacher_without_weights_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="Ways out"):
        resolve_teacher_state("resnet18")
    with pytest.raises(WeightsError, match="unknown backbone"):
        resolve_teacher_state("nope")


def test_auto_offline_resolves_to_packaged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, source = resolve_teacher_state("efficientnet_lite0")
    assert source == "packaged"


def test_local_weights_file(tmp_path) -> None:
    from safetensors.torch import save_file

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    teacher, source, fp = build_teacher("resnet18", path)
    assert source == "file:r18.safetensors" and len(fp) == 16
    torch.testing.assert_close(teacher.body.state_dict()["conv1.weight"], state["conv1.weight"])


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "hrnet_w18"])
def test_feature_levels(name: str) -> None:
    ext = FeatureExtractor(name)
    feats = ext(torch.randn(1, 3, 128, 128))
    spec = BACKBONES[name]
    assert len(feats) == len(spec.out_indices) == len(spec.level_weights)
    assert [f.shape[1] for f in feats] == ext.channels
    if spec.upsample_to is not None:  # HRNet: every level at the highest-resolution branch (stride 4)
        assert {f.shape[-1] for f in feats} == {32}
    else:
        assert [f.shape[-1] for f in feats] == [128 // s for s in ext.strides]


def test_model_teacher_frozen_student_random() -> None:
    model = IKDModel("efficientnet_lite0", teacher_weights="packaged")
    model.train()
    assert not model.teacher.training and model.student.training
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for p in model.student.parameters())
    t, s = model(torch.randn(2, 3, 64, 64))
    assert len(t) == 3
    for level in t + s:  # L2-normalised along channels
        torch.testing.assert_close(level.norm(dim=1), torch.ones_like(level[:, 0]), rtol=1e-4, atol=1e-4)
    ts = model.teacher.body.state_dict()["conv_stem.weight"]
    ss = model.student.body.state_dict()["conv_stem.weight"]
    assert not torch.allclose(ts, ss)
    model.eval()
    maps = model(torch.randn(2, 3, 64, 64))
    assert maps.shape == (2, 1, 64, 64) and torch.isfinite(maps).all()


def test_anomaly_map_product_and_sum() -> None:
    t = [torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)]
    s = [torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)]
    s[0][0, 0] = 1.0  # level 0: distance 1 everywhere
    s[1][0, 1] = 2.0  # level 1: distance 4 everywhere
    prod = AnomalyMapGenerator("product", sigma=0)(t, s, (8, 8))
    summ = AnomalyMapGenerator("sum", sigma=0)(t, s, (8, 8))
    torch.testing.assert_close(prod, torch.full((1, 1, 8, 8), 4.0))
    torch.testing.assert_close(summ, torch.full((1, 1, 8, 8), 5.0))
    blurred = AnomalyMapGenerator("product", sigma=4)(t, s, (8, 8))
    torch.testing.assert_close(blurred, torch.full((1, 1, 8, 8), 4.0))  # blur keeps a constant map
