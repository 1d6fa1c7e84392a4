"""Training: progress reports, cancel, NaN guard, held-out normalisation, predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ikd_core.calibration import fit_normalization
from ikd_core.data.batching import split_holdout
from ikd_core.data.sources import DataSpec, build_datasets
from ikd_core.predict import Predictor, render
from ikd_core.train import Progress, TrainConfig, TrainingError, train


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


def test_fit_normalization_scales_the_map_and_the_score_maps_apart() -> None:
    """With ``score_maps`` the threshold is theirs and the map gets ``map_threshold`` / ``map_lo`` of its own; the
    same maps as score maps give the same values as without them."""
    gen = torch.Generator().manual_seed(0)
    maps, score_maps = torch.rand(10, 16, 16, generator=gen), 5 + torch.rand(10, 16, 16, generator=gen)
    norm = fit_normalization(maps, k=3.0, score_maps=score_maps)
    alone, scored = fit_normalization(maps, k=3.0), fit_normalization(score_maps, k=3.0)
    assert (norm["threshold"], norm["lo"]) == (scored["threshold"], scored["lo"])
    assert (norm["map_threshold"], norm["map_lo"]) == (alone["threshold"], alone["lo"])
    assert "map_threshold" not in alone
    tiles = fit_normalization([maps[:4], maps[4:]], k=3.0, score_maps=[score_maps[:4], score_maps[4:]])
    assert tiles["n_holdout"] == 10 and tiles["map_lo"] == pytest.approx(alone["lo"])


def test_tiles_average_every_channel_and_predictions_scale_the_map_on_its_own() -> None:
    from ikd_core.predictor_base import Prediction, Scale, predict_tiles
    from ikd_core.tiling import tiled_map

    x = np.random.default_rng(0).normal(size=(3, 48, 80)).astype(np.float32)

    def maps(batch: np.ndarray) -> np.ndarray:  # channel 1 = 3 x channel 0, each tile's own values
        m = batch[:, :1] ** 2
        return np.concatenate([m, 3 * m], axis=1)

    full = tiled_map(x, 32, maps)
    assert full.shape == (2, 48, 80) and np.allclose(full[1], 3 * full[0])
    assert np.allclose(tiled_map(x, 32, lambda b: maps(b)[:, :1])[0], full[0])
    pred = predict_tiles(maps, [Image.fromarray(np.zeros((48, 80, 3), np.uint8))], 32, Scale(2.0, 0.0, 1.0, 0.0))[0]
    assert pred.anomaly_map.shape == (48, 80) and pred.score == pytest.approx(float(pred.anomaly_map.max()) * 3)
    p = Prediction(np.array([[0.5, 1.0]], np.float32), 1.0, threshold=2.0, lo=0.0, map_threshold=1.0, map_lo=0.0)
    assert p.norm_score == pytest.approx(0.25) and np.allclose(p.norm_map, [[0.25, 0.5]])
    assert p.mask().tolist() == [[False, True]] and not p.is_anomalous()
    assert np.allclose(Prediction(p.anomaly_map, 1.0, 2.0, 0.0).norm_map, [[0.125, 0.25]])


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


# --------------------------------------------------------------------------- schedule, layout, cache
class _FakeClock:
    """A clock that only moves when the test moves it (one second per training step)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lr_factor_shapes() -> None:
    from ikd_core.train import lr_factor

    assert [lr_factor("constant", p) for p in (0.0, 0.5, 1.0)] == [1.0, 1.0, 1.0]
    assert lr_factor("cosine", 0.0) == 1.0 and lr_factor("cosine", 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("cosine", 0.5) == pytest.approx(0.5) and lr_factor("linear", 0.25) == 0.75
    assert lr_factor("linear", 2.0) == 0.0 and lr_factor("linear", -1.0) == 1.0
    with pytest.raises(ValueError):
        lr_factor("step", 0.5)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_budget_schedule_reaches_end_lr_at_the_deadline(datasets, monkeypatch: pytest.MonkeyPatch,
                                                        schedule: str) -> None:
    from ikd_core import train as train_mod

    clock = _FakeClock()
    monkeypatch.setattr(train_mod, "_clock", clock)
    seen: list[Progress] = []

    def tick() -> bool:  # polled once per step, before its work: every step takes one second
        clock.t += 1.0
        return False

    cfg = _cfg(epochs=None, max_minutes=10 / 60, schedule=schedule, lr=1e-2)
    result = train(datasets[0], None, cfg, callback=seen.append, should_stop=tick)
    lrs = [h["lr"] for h in result.history]
    # Ten one-second steps fit in the 10 s budget; each step's lr is the schedule at the time the step ends
    # (estimated from the previous step: the first one has no estimate and starts at the full lr).
    assert len(lrs) == 10 and result.metadata["stopped_early"]
    expected = [cfg.lr] + [cfg.lr * train_mod.lr_factor(schedule, (k + 1) / 10) for k in range(1, 10)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12, atol=1e-15)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-15) and all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    steps = [p for p in seen if p.phase == "train"]
    assert all(p.epochs == 0 for p in steps)  # time-bounded run: the fraction comes from the clock
    assert [p.fraction for p in steps] == pytest.approx([k / 10 for k in range(1, 11)])
    assert steps[-1].eta_s == 0.0 and steps[-1].lr == lrs[-1]
    assert result.metadata["train_config"]["schedule"] == schedule
    assert result.metadata["train_config"]["epochs"] is None


def test_schedule_over_planned_steps_without_budget(datasets) -> None:
    result = train(datasets[0], None, _cfg(epochs=2, schedule="cosine", lr=1e-2))
    lrs = [h["lr"] for h in result.history]
    n = len(lrs)
    assert result.metadata["epochs_completed"] == 2 and n >= 2 and not result.metadata["stopped_early"]
    from ikd_core.train import lr_factor

    np.testing.assert_allclose(lrs, [1e-2 * lr_factor("cosine", (k + 1) / n) for k in range(n)], atol=1e-15)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-15)


def test_constant_schedule_keeps_the_lr(datasets, monkeypatch: pytest.MonkeyPatch) -> None:
    from ikd_core import train as train_mod

    clock = _FakeClock()
    monkeypatch.setattr(train_mod, "_clock", clock)
    result = train(datasets[0], None, _cfg(epochs=None, max_minutes=4 / 60, schedule="constant"),
                   should_stop=lambda: bool(setattr(clock, "t", clock.t + 1.0)))
    assert [h["lr"] for h in result.history] == [1e-3] * 4


def test_epochs_optional_only_with_a_budget() -> None:
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(epochs=None)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="warm")
    from ikd_core.cli import _train_config, build_parser

    args = build_parser().parse_args(["train", "--category", "demo_object", "--max-minutes", "3"])
    cfg = _train_config(args)
    assert cfg.epochs is None and cfg.max_minutes == 3 and cfg.schedule == TrainConfig().schedule
    args = build_parser().parse_args(["train", "--category", "demo_object", "--schedule", "cosine"])
    assert _train_config(args).epochs == 50 and _train_config(args).schedule == "cosine"


def test_uint8_cache_gives_the_same_images(datasets) -> None:
    from ikd_core.data.batching import CachedDataset, collate_images, normalize_uint8, to_uint8

    base = datasets[0]
    cached = CachedDataset(base, keys=("image",), uint8=True)
    items = [cached[i] for i in range(3)]
    assert all(set(it) == {"image"} and it["image"].dtype == torch.uint8 for it in items)
    batch = collate_images(items)["image"]
    assert batch.dtype == torch.uint8
    ref = torch.stack([base[i]["image"] for i in range(3)])
    torch.testing.assert_close(normalize_uint8(batch), ref, rtol=0, atol=1e-5)
    cl = normalize_uint8(batch, torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, ref, rtol=0, atol=1e-5)
    # An image that is not 8-bit pixels stays float, and a mixed batch is float.
    odd = ref[0] + 0.3 / 255
    assert to_uint8(odd) is None
    mixed = collate_images([{"image": odd}, items[1]])["image"]
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, torch.stack([odd, ref[1]]), rtol=0, atol=1e-5)


def test_channels_last_gives_the_same_loss() -> None:
    from ikd_core.loss import IKDLoss
    from ikd_core.torch_model import IKDModel

    torch.manual_seed(0)
    model = IKDModel("efficientnet_lite0", "random").train()
    x = torch.randn(2, 3, 64, 64)
    losses, grads = [], []
    for fmt in (torch.contiguous_format, torch.channels_last):
        model = model.to(memory_format=fmt)
        model.student.zero_grad(set_to_none=True)
        t, s = model(x.contiguous(memory_format=fmt))
        loss = IKDLoss(len(t))(t, s)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.student.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)


def test_tile_threshold_is_fitted_on_held_out_tiles(tiny_checkpoint, demo_root: Path) -> None:
    """Tile mode has its own threshold, fitted on the held-out good images scored in tiles at native resolution, and
    the tiled predictor uses it (no held-out image is above it)."""
    from ikd_core.data.sources import DataSpec, build_datasets
    from ikd_core.predict import Predictor

    meta = tiny_checkpoint.metadata
    tn = meta["tile_normalization"]
    assert np.isfinite(tn["threshold"]) and tn["threshold"] > tn["lo"]
    assert tn["n_holdout"] == meta["score_normalization"]["n_holdout"]
    predictor = Predictor.from_checkpoint(tiny_checkpoint.checkpoint, tile=True)
    assert predictor.tile_calibrated
    train_ds, _ = build_datasets(DataSpec("demo", "demo_texture", str(demo_root)), 64)
    _, hold = split_holdout(len(train_ds), 0.1, 0)
    preds = predictor.predict([train_ds.samples[i].path for i in hold])
    assert all(p.threshold == tn["threshold"] and p.lo == tn["lo"] for p in preds)
    assert all(p.score <= tn["threshold"] for p in preds)
    whole = Predictor.from_checkpoint(tiny_checkpoint.checkpoint).predict([train_ds.samples[hold[0]].path])[0]
    assert whole.threshold == meta["score_normalization"]["threshold"]
