"""Training: progress reports, cancel, NaN guard, held-out normalisation, predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ikd_core.data.sources import DataSpec, build_datasets
from ikd_core.predict import Predictor, render
from ikd_core.train import Progress, TrainConfig, TrainingError, fit_normalization, split_holdout, train


@pytest.fixture(scope="module")
def datasets(demo_root: Path):
    return build_datasets(DataSpec("demo", "demo_object", str(demo_root)), 64)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"image_size": 64, "epochs": 1, "batch_size": 4, "lr": 1e-3, **kw})


def test_progress_reports(datasets) -> None:
    seen: list[Progress] = []
    result = train(datasets[0], None, _cfg(epochs=2), callback=seen.append)
    steps = [p for p in seen if p.phase == "train"]
    assert len(steps) == 2 * steps[0].steps_per_epoch
    assert steps[-1].fraction == 1.0 and steps[-1].images_per_sec > 0 and steps[-1].eta_s == 0
    assert all(np.isfinite(p.loss) for p in steps)
    assert [p.phase for p in seen][-1] == "done"
    assert result.metrics == {} and result.metadata["epochs_completed"] == 2


def test_cancel_writes_nothing(datasets, tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    calls = iter(range(100))
    result = train(datasets[0], None, _cfg(epochs=3), out_path=out, should_stop=lambda: next(calls) >= 2)
    assert result.cancelled and result.checkpoint is None
    assert list(tmp_path.iterdir()) == []


def test_nan_loss_stops_and_keeps_previous_checkpoint(datasets, tmp_path: Path, tiny_checkpoint,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "keep.safetensors"
    out.write_bytes(Path(tiny_checkpoint.checkpoint).read_bytes())
    before = out.read_bytes()
    monkeypatch.setattr("ikd_core.loss.IKDLoss.forward", lambda self, t, s, **kw: torch.tensor(float("nan")))
    with pytest.raises(TrainingError, match="NaN|nan"):
        train(datasets[0], None, _cfg(), out_path=out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.safetensors"]


def test_time_limit_stops_within_an_epoch(datasets) -> None:
    result = train(datasets[0], None, _cfg(epochs=50, max_minutes=1e-9))
    assert result.metadata["stopped_early"] and result.metadata["epochs_completed"] < 1
    assert len(result.history) == 1  # the limit is checked before every step, after the first


def test_holdout_split_is_seeded_and_disjoint() -> None:
    a, b = split_holdout(50, 0.1, seed=1)
    assert len(b) == 5 and not set(a) & set(b) and sorted(a + b) == list(range(50))
    assert split_holdout(50, 0.1, seed=1) == (a, b) and split_holdout(50, 0.1, seed=2) != (a, b)


def test_fit_normalization_threshold_above_good_scores() -> None:
    maps = torch.rand(10, 16, 16)
    norm = fit_normalization(maps, k=3.0)
    scores = maps.flatten(1).amax(1)
    assert norm["threshold"] >= scores.max().item()
    assert norm["threshold"] >= scores.mean().item() + 3 * scores.std().item() - 1e-9
    assert norm["lo"] == pytest.approx(maps.median().item(), abs=1e-6)


def test_predictor_matches_training_maps_and_renders(tiny_checkpoint, demo_root: Path) -> None:
    from ikd_core.data.mvtec import MVTecDataset

    predictor = Predictor.from_checkpoint(tiny_checkpoint.checkpoint)
    samples = MVTecDataset(demo_root, "demo_texture", "test", 64).samples
    idx = next(i for i, s in enumerate(samples) if s.label == 1)
    path = samples[idx].path
    (pred,) = predictor.predict([path])
    assert pred.anomaly_map.shape == (64, 64)
    # The reloaded checkpoint scores the image exactly as the model did at the end of training.
    expected = tiny_checkpoint.test_outputs
    assert pred.score == pytest.approx(expected["scores"][idx].item(), rel=1e-5)
    np.testing.assert_allclose(pred.anomaly_map, expected["maps"][idx].numpy(), rtol=1e-4, atol=1e-6)
    assert pred.norm_score == pytest.approx(float(np.clip(0.5 * (pred.score - pred.lo) / (pred.threshold - pred.lo),
                                                          0, 1)))
    assert pred.is_anomalous(0.0) and not pred.is_anomalous(1.01)
    pics = render(path, pred, norm_threshold=0.5, alpha=0.4)
    assert pics["overlay"].shape == (64, 64, 3) and pics["overlay"].dtype == np.uint8
    assert set(np.unique(pics["mask"])) <= {0, 255}
    tiled = Predictor(predictor.model, predictor.metadata, tile=True).predict([path])[0]
    assert tiled.anomaly_map.shape == (64, 64)


def test_ablation_configs_train(datasets) -> None:
    for cfg in (_cfg(gamma=0.0), _cfg(hard_mining=False), _cfg(combine="sum", feature_pool=True)):
        result = train(datasets[0], datasets[1], cfg)
        assert np.isfinite(result.metadata["final_loss"])
        assert set(result.metrics) >= {"image_auroc", "pixel_auroc", "pixel_f1_max", "au_pro"}
