"""Issue 16's levers as train options: per-level map normalisation, additive fusion and top-k image scores (score
side), recorded in the metadata, reproduced by a loaded checkpoint, its ONNX export and the torch-free runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ikd_core.checkpoint import read_metadata, save_checkpoint, validate_metadata
from ikd_core.cli import main
from ikd_core.data.sources import DataSpec, build_datasets
from ikd_core.errors import CheckpointError
from ikd_core.evaluation import evaluate_model
from ikd_core.loading import load_model
from ikd_core.predict import Predictor
from ikd_core.runtime import OnnxPredictor
from ikd_core.scoring import image_scores, top_k_for
from ikd_core.train import TrainConfig, train


def test_image_scores_max_and_top_k_agree_in_torch_and_numpy() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((3, 16, 16)).astype(np.float32)
    assert np.allclose(image_scores(maps, 1), maps.reshape(3, -1).max(1))
    want = np.sort(maps.reshape(3, -1), axis=1)[:, -7:].mean(1)
    assert np.allclose(image_scores(maps, 7), want)
    assert torch.allclose(image_scores(torch.from_numpy(maps), 7), torch.from_numpy(want))
    assert np.allclose(image_scores(maps, 10_000), maps.reshape(3, -1).mean(1))  # k capped at the pixel count
    assert top_k_for(512, 256, 256, 10) == 20 and top_k_for(64, 64, 256, 1) == 1


@pytest.fixture(scope="module")
def lever_run(demo_root, tmp_path_factory: pytest.TempPathFactory):
    spec = DataSpec("demo", "demo_texture", str(demo_root))
    train_ds, test_ds = build_datasets(spec, 64)
    out = tmp_path_factory.mktemp("levers") / "levers.safetensors"
    cfg = TrainConfig(image_size=64, epochs=1, batch_size=4, lr=1e-3, level_norm=True, combine="sum", score_topk=10)
    return train(train_ds, test_ds, cfg, out_path=out, category="demo_texture", data_info=spec.to_dict()), test_ds


def test_level_normalisation_maps_the_held_out_quantiles_to_0_and_0_1(lever_run, demo_root) -> None:
    result, _ = lever_run
    ln = result.metadata["level_normalization"]
    assert len(ln["lo"]) == len(ln["hi"]) == 3 and all(h > lo for lo, h in zip(ln["lo"], ln["hi"], strict=True))
    assert ln["quantiles"] == [0.9, 0.995]
    gen = result.model.anomaly_map
    assert gen.level_norm and torch.allclose(gen.level_lo, torch.tensor(ln["lo"], dtype=torch.float32))
    # refit on a loader of good images: each level's 0.9 / 0.995 quantiles of those pixels are lo / hi, and the map of
    # the same images is the sum of the levels mapped so that lo -> 0 and hi -> 0.1
    from torch.utils.data import DataLoader

    from ikd_core.calibration import fit_level_normalization

    model, (train_ds, _) = result.model, build_datasets(DataSpec("demo", "demo_texture", str(demo_root)), 64)
    loader = DataLoader(train_ds, batch_size=4)
    fit = fit_level_normalization(model, loader, torch.device("cpu"))
    x = torch.cat([b["image"] for b in loader])
    with torch.no_grad():
        t, s = model.features(x)
        levels = gen.level_maps(t, s, (64, 64))
    per_level = levels.transpose(0, 1).flatten(1).double()
    assert np.allclose(fit["lo"], torch.quantile(per_level, 0.9, dim=1).numpy(), rtol=1e-5)
    assert np.allclose(fit["hi"], torch.quantile(per_level, 0.995, dim=1).numpy(), rtol=1e-5)
    plain = type(gen)(combine="sum", sigma=0.0, num_levels=3)
    plain.set_level_normalization(fit["lo"], fit["hi"])
    mapped = 0.1 * (per_level - torch.tensor(fit["lo"])[:, None]) / torch.tensor(
        [h - lo for lo, h in zip(fit["lo"], fit["hi"], strict=True)])[:, None]
    assert np.isclose(torch.quantile(mapped, 0.9, dim=1).numpy(), 0.0, atol=1e-6).all()
    assert np.isclose(torch.quantile(mapped, 0.995, dim=1).numpy(), 0.1, atol=1e-6).all()
    with torch.no_grad():
        want = mapped.float().reshape(3, x.shape[0], 64, 64).sum(0)
        assert torch.allclose(plain(t, s, (64, 64))[:, 0], want, atol=1e-5)


def test_top_k_scores_are_used_by_evaluation_and_recorded(lever_run) -> None:
    result, test_ds = lever_run
    assert result.metadata["train_config"]["score_topk"] == 10
    assert result.metadata["train_config"]["combine"] == "sum"
    maps = result.test_outputs["maps"]
    assert torch.allclose(result.test_outputs["scores"], maps.flatten(1).topk(10, dim=1).values.mean(1))
    assert not torch.allclose(result.test_outputs["scores"], maps.flatten(1).amax(1))


def test_a_loaded_checkpoint_its_export_and_the_runtime_reproduce_the_levers(lever_run, demo_root, tmp_path) -> None:
    result, test_ds = lever_run
    model, meta = load_model(result.checkpoint)
    assert model.anomaly_map.level_norm and model.score_topk == 10
    again = evaluate_model(model, test_ds, torch.device("cpu")).outputs
    assert torch.allclose(again["maps"], result.test_outputs["maps"], rtol=1e-4, atol=1e-6)
    assert torch.allclose(again["scores"], result.test_outputs["scores"], rtol=1e-4, atol=1e-6)
    images = sorted((Path(demo_root) / "demo_texture" / "test").rglob("*.png"))[:4]
    torch_preds = Predictor(model, meta).predict(images)
    onnx_file = tmp_path / "levers.onnx"
    assert main(["export", "--checkpoint", str(result.checkpoint), "--out", str(onnx_file)]) == 0
    rt_preds = OnnxPredictor(onnx_file).predict(images)
    scale = meta["score_normalization"]["threshold"] - meta["score_normalization"]["lo"]
    for a, b in zip(torch_preds, rt_preds, strict=True):
        assert np.abs(a.anomaly_map - b.anomaly_map).max() / scale < 1e-3
        assert abs(a.score - b.score) / scale < 1e-3
        k = top_k_for(*a.anomaly_map.shape, 64, 10)
        assert a.score == pytest.approx(float(np.sort(a.anomaly_map.ravel())[-k:].mean()), rel=1e-4)


def test_bad_lever_metadata_is_refused(lever_run, tmp_path) -> None:
    result, _ = lever_run
    meta = read_metadata(result.checkpoint)
    for bad in ({"level_normalization": {"lo": [0.1], "hi": [0.2, 0.3]}},
                {"level_normalization": {"lo": ["x"], "hi": [1.0]}},
                {"train_config": {**meta["train_config"], "score_topk": 0}},
                {"train_config": {**meta["train_config"], "student": "sideways"}}):
        with pytest.raises(CheckpointError):
            validate_metadata({**meta, **bad}, "bad.safetensors")
    state = result.model.student.state_dict()
    path = save_checkpoint(tmp_path / "bad.safetensors", state, {**meta, "level_normalization": {"lo": [1.0]}})
    with pytest.raises(CheckpointError, match="level_normalization"):
        load_model(path)


@pytest.mark.parametrize("loss", ["ikd", "cosine"])
def test_reverse_student_trains_saves_loads_and_exports(demo_root, tmp_path, loss) -> None:
    spec = DataSpec("demo", "demo_texture", str(demo_root))
    train_ds, test_ds = build_datasets(spec, 64)
    cfg = TrainConfig(image_size=64, epochs=1, batch_size=4, lr=1e-3, student="reverse", loss=loss)
    result = train(train_ds, test_ds, cfg, out_path=tmp_path / "rd.safetensors", category="demo_texture",
                   data_info=spec.to_dict())
    assert result.metadata["train_config"]["student"] == "reverse"
    assert result.metadata["train_config"]["loss"] == loss
    assert result.metadata["levels"] == [1, 2, 3] and result.metadata["channels"] == [24, 40, 112]
    assert np.isfinite(result.history[-1]["loss"])
    model, meta = load_model(result.checkpoint)
    assert model.student_kind == "reverse"
    again = evaluate_model(model, test_ds, torch.device("cpu")).outputs
    assert torch.allclose(again["maps"], result.test_outputs["maps"], rtol=1e-4, atol=1e-6)
    onnx_file = tmp_path / "rd.onnx"
    assert main(["export", "--checkpoint", str(result.checkpoint), "--out", str(onnx_file)]) == 0
    images = sorted((Path(demo_root) / "demo_texture" / "test").rglob("*.png"))[:3]
    scale = meta["score_normalization"]["threshold"] - meta["score_normalization"]["lo"]
    for a, b in zip(Predictor(model, meta).predict(images), OnnxPredictor(onnx_file).predict(images), strict=True):
        assert np.abs(a.anomaly_map - b.anomaly_map).max() / scale < 1e-3


def test_a_forward_student_checkpoint_is_not_loaded_as_a_reverse_one(lever_run, tmp_path) -> None:
    result, _ = lever_run
    meta = read_metadata(result.checkpoint)
    meta["train_config"] = {**meta["train_config"], "student": "reverse"}
    path = save_checkpoint(tmp_path / "swapped.safetensors", result.model.student.state_dict(), meta)
    with pytest.raises(CheckpointError, match="reverse student"):
        load_model(path)


def test_denoising_student_sees_anomalies_and_learns_the_clean_features(demo_root, tmp_path, monkeypatch) -> None:
    from ikd_core.torch_model import IKDModel

    seen = []
    real_features = IKDModel._features

    def spy(self, x, x_student=None):
        if self.training:
            seen.append((x.clone(), None if x_student is None else x_student.clone()))
        return real_features(self, x, x_student)

    monkeypatch.setattr(IKDModel, "_features", spy)
    spec = DataSpec("demo", "demo_texture", str(demo_root))
    train_ds, _ = build_datasets(spec, 64)
    cfg = TrainConfig(image_size=64, epochs=1, batch_size=4, lr=1e-3, denoise=True)
    result = train(train_ds, None, cfg, out_path=tmp_path / "dn.safetensors", category="demo_texture")
    assert result.metadata["train_config"]["denoise"] is True
    assert seen and all(xs is not None for _, xs in seen)
    changed = [bool((x != xs).any()) for x, xs in seen]
    assert any(changed)  # some images of the batches carry a synthetic anomaly (p = 0.5 per image)
    model, _ = load_model(result.checkpoint)
    assert model.student_kind == "forward"


def test_level_normalisation_needs_additive_fusion_and_fits_the_model(lever_run, tmp_path) -> None:
    with pytest.raises(ValueError, match="sum"):
        TrainConfig(level_norm=True, combine="product")
    result, _ = lever_run
    meta = read_metadata(result.checkpoint)
    product = {**meta, "train_config": {**meta["train_config"], "combine": "product"}}
    with pytest.raises(CheckpointError, match="combine 'sum'"):
        validate_metadata(product, "x.safetensors")
    for bad in ({"train_config": {**meta["train_config"], "sigma": "wide"}},
                {"score_normalization": {**meta["score_normalization"], "threshold": 10**400}}):
        with pytest.raises(CheckpointError):
            validate_metadata({**meta, **bad}, "x.safetensors")
    two = {**meta, "level_normalization": {"lo": [0.0, 0.0], "hi": [1.0, 1.0]}}  # the model has 3 levels
    path = save_checkpoint(tmp_path / "two.safetensors", result.model.student.state_dict(), two)
    with pytest.raises(CheckpointError, match="3"):
        load_model(path)


def test_the_runtime_refuses_a_malformed_top_k(lever_run) -> None:
    import json

    from ikd_core.runtime import EXPORT_FORMAT, META_JSON_KEY, RuntimeModelError, parse_metadata

    result, _ = lever_run
    meta = {**result.metadata, "train_config": {**result.metadata["train_config"], "score_topk": "many"}}
    with pytest.raises(RuntimeModelError, match="score_topk"):
        parse_metadata({"format": EXPORT_FORMAT, META_JSON_KEY: json.dumps(meta)}, "m.onnx")


def test_the_ood_ratio_is_scale_free_trains_the_student_and_leaves_batch_norm_alone() -> None:
    from ikd_core.data.anomaly_synthesis import AnomalySynthesizer
    from ikd_core.torch_model import IKDModel

    torch.manual_seed(0)
    model = IKDModel("efficientnet_lite0").train()
    x = torch.randn(4, 3, 64, 64)
    textures = AnomalySynthesizer().foreign_images(2, 64, 64, torch.Generator().manual_seed(0))
    assert textures.shape == (2, 3, 64, 64) and textures.min() >= 0 and textures.max() <= 1
    assert textures.std() > 0.01 and not torch.equal(textures[0], textures[1])
    t, s, ratio = model(x, None, textures)
    assert len(t) == len(s) == 3 and ratio.ndim == 0 and ratio > 0
    norms = [m for m in model.student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    s_raw = [f.detach() for f in model._student_raw(x)]
    before = [m.running_mean.clone() for m in norms]
    with torch.no_grad():
        one = model.ood_ratio(textures, s_raw)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, norms, strict=True))  # the OOD pass moved none
    assert all(m.training for m in norms)  # and left training mode on
    # scale-free: the ratio of the outputs' mean squares, 1 on the batch itself (shrinking every output cannot
    # meet the penalty)
    model.student.eval()
    with torch.no_grad():
        ood = model._student_raw(textures)
        ref = model._student_raw(x)
        same = model.ood_ratio(textures, ref)
        want = torch.stack([o.pow(2).mean() / f.pow(2).mean() for o, f in zip(ood, ref, strict=True)]).mean()
        assert same == pytest.approx(float(want), rel=1e-5)
        assert model.ood_ratio(x, ref) == pytest.approx(1.0, rel=1e-5)  # in-distribution images: ratio 1
    assert torch.isfinite(one)
    model.train()
    model.student.zero_grad()
    model(x, None, textures)[2].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.parameters())


def test_the_ood_penalty_is_a_train_option_recorded_and_checked(demo_root, tmp_path) -> None:
    with pytest.raises(ValueError, match="ood_penalty"):
        TrainConfig(ood_penalty=-1.0)
    out = tmp_path / "ood.safetensors"
    assert main(["train", "--data", "demo", "--data-root", str(demo_root), "--category", "demo_texture",
                 "--image-size", "64", "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--ood-penalty", "0.5",
                 "--student", "reverse", "--out", str(out)]) == 0
    meta = read_metadata(out)
    assert meta["train_config"]["ood_penalty"] == 0.5 and meta["train_config"]["student"] == "reverse"
    model, _ = load_model(out)  # training-only: the model and its export are those of the student kind
    assert model.student_kind == "reverse"
    for bad in ("high", -0.5, float("inf")):
        with pytest.raises(CheckpointError, match="ood_penalty"):
            validate_metadata({**meta, "train_config": {**meta["train_config"], "ood_penalty": bad}}, "x.safetensors")
