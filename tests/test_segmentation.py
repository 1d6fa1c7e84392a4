"""DeSTSeg's segmentation head (``--segment``): shapes, gradients, learning, metadata, export parity, runtime."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_export import _run_runtime

from ikd_core.checkpoint import load_student_state, read_metadata, save_checkpoint, validate_metadata
from ikd_core.cli import _train_config as cli_train_config
from ikd_core.cli import build_parser, main
from ikd_core.data.sources import DataSpec, build_datasets
from ikd_core.errors import CheckpointError
from ikd_core.evaluation import evaluate_model
from ikd_core.loading import load_model
from ikd_core.metrics import image_auroc
from ikd_core.predict import Predictor
from ikd_core.recipes import method_parts
from ikd_core.runtime import OnnxPredictor
from ikd_core.segmentation import SegmentationHead, segmentation_loss
from ikd_core.torch_model import SEGMENTER_PREFIX, IKDModel
from ikd_core.train import TrainConfig, train


def _features(n: int, channels: tuple[int, ...], size: int, gen: torch.Generator) -> list[torch.Tensor]:
    return [F.normalize(torch.randn(n, c, size >> i, size >> i, generator=gen), dim=1) for i, c in enumerate(channels)]


def test_the_head_learns_where_teacher_and_student_disagree() -> None:
    """Logits at the finest level; trained on masks where the student's features are the teacher's negated, the
    head separates those positions from the rest (pixel AUROC on fresh features and masks)."""
    gen = torch.Generator().manual_seed(0)
    channels = (8, 12, 16)
    head = SegmentationHead(channels, width=16)

    def batch() -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        t = _features(4, channels, 16, gen)
        mask = torch.zeros(4, 1, 64, 64)
        for b in range(4):
            y, x = torch.randint(0, 40, (2,), generator=gen).tolist()
            mask[b, :, y:y + 24, x:x + 24] = 1.0
        s = []
        for f in t:  # the student disagrees inside the mask (its features negated there), agrees elsewhere
            m = F.interpolate(mask, size=f.shape[-2:], mode="nearest")
            s.append(f * (1 - 2 * m))
        return t, s, mask

    t, s, mask = batch()
    logits = head(t, s)
    assert logits.shape == (4, 1, 16, 16)
    assert torch.sigmoid(logits).mean().item() == pytest.approx(0.05, abs=0.02)  # the prior of the output bias
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        t, s, mask = batch()
        loss = segmentation_loss(head(t, s), mask)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    head.eval()
    t, s, mask = batch()
    with torch.no_grad():
        prob = torch.sigmoid(head(t, s))
    target = F.adaptive_avg_pool2d(mask, 16) >= 0.5
    assert image_auroc(prob.flatten().numpy(), target.flatten().numpy()) > 0.95


def test_the_segmentation_loss_trains_the_head_only() -> None:
    model = IKDModel("efficientnet_lite0", segment=True).train()
    x = torch.randn(2, 3, 64, 64)
    x_aug = x.clone()
    x_aug[:, :, 16:48, 16:48] = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 16:48, 16:48] = 1
    t, s, seg = model(x, x_aug, None, mask)
    assert seg.ndim == 0 and torch.isfinite(seg)
    seg.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.segmenter.parameters())
    assert all(p.grad is None for p in model.student.parameters()), "the head's loss must not reach the student"
    assert all(p.grad is None for p in model.teacher.parameters())
    model.eval()
    with torch.no_grad():
        maps = model(x)
    assert maps.shape == (2, 1, 64, 64) and maps.min() >= 0 and maps.max() <= 1  # a blurred probability


def test_segment_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="needs denoise"):
        TrainConfig(segment=True)
    with pytest.raises(ValueError, match="level normalisation"):
        TrainConfig(segment=True, denoise=True, level_norm=True, combine="sum")
    args = build_parser().parse_args(["train", "--data", "demo", "--segment", "--denoise"])
    cfg = cli_train_config(args)
    assert (cfg.segment, cfg.denoise, cfg.segment_map) == (True, True, "head")
    assert cli_train_config(build_parser().parse_args(["train", "--data", "demo"])).segment is False
    with pytest.raises(ValueError, match="--no-segment"):
        cli_train_config(build_parser().parse_args(["train", "--data", "demo", "--recipe", "cpu", "--no-denoise",
                                                    "--segment"]))
    assert "segmentation head" in method_parts({"denoise": True, "segment": True})
    assert method_parts({"denoise": True}) == ["denoising student"]


def _seg_train(demo_root, tmp_path_factory: pytest.TempPathFactory, segment_map: str, score_map: str = "map"):
    spec = DataSpec("demo", "demo_texture", str(demo_root))
    train_ds, test_ds = build_datasets(spec, 64)
    out = tmp_path_factory.mktemp("seg") / f"seg-{segment_map}-{score_map}.safetensors"
    cfg = TrainConfig(image_size=64, epochs=2, batch_size=4, lr=1e-3, denoise=True, segment=True,
                      segment_map=segment_map, score_map=score_map)
    return train(train_ds, test_ds, cfg, out_path=out, category="demo_texture", data_info=spec.to_dict()), test_ds


@pytest.fixture(scope="module")
def seg_run(demo_root, tmp_path_factory: pytest.TempPathFactory):
    return _seg_train(demo_root, tmp_path_factory, "head")


@pytest.fixture(scope="module")
def fused_run(demo_root, tmp_path_factory: pytest.TempPathFactory):
    return _seg_train(demo_root, tmp_path_factory, "fused")


@pytest.fixture(scope="module")
def dscore_run(demo_root, tmp_path_factory: pytest.TempPathFactory):
    return _seg_train(demo_root, tmp_path_factory, "fused", "distillation")


def test_a_segment_run_saves_the_head_and_reloads_to_the_same_maps(seg_run) -> None:
    result, test_ds = seg_run
    assert result.metadata["train_config"]["segment"] is True
    state = load_student_state(result.checkpoint)
    head = {k for k in state if k.startswith(SEGMENTER_PREFIX)}
    assert head == {SEGMENTER_PREFIX + k for k in result.model.segmenter.state_dict()}
    assert len(state) == len(head) + len(result.model.student.state_dict())
    maps = result.test_outputs["maps"]
    assert maps.min() >= 0 and maps.max() <= 1
    model, _ = load_model(result.checkpoint)
    assert model.segmenter is not None
    again = evaluate_model(model, test_ds, torch.device("cpu")).outputs
    assert torch.allclose(again["maps"], maps, rtol=1e-4, atol=1e-6)
    # the head's output, not the distillation map
    x = torch.stack([test_ds[i]["image"] for i in range(2)])
    with torch.no_grad():
        t, s = model.features(x)
        assert not torch.allclose(model(x), model.anomaly_map(t, s, (64, 64)))


def test_segment_checkpoints_are_checked_on_loading(seg_run, tmp_path) -> None:
    result, _ = seg_run
    meta = read_metadata(result.checkpoint)
    with pytest.raises(CheckpointError, match="segment"):
        validate_metadata({**meta, "train_config": {**meta["train_config"], "segment": "yes"}}, "bad.safetensors")
    # the flag without the head's tensors, and the head's tensors without the flag
    no_head = save_checkpoint(tmp_path / "no_head.safetensors", result.model.student.state_dict(), meta)
    with pytest.raises(CheckpointError, match="segmentation head.*missing"):
        load_model(no_head)
    plain = {**meta, "train_config": {**meta["train_config"], "segment": False}}
    extra = save_checkpoint(tmp_path / "extra.safetensors", result.model.trainable_state_dict(), plain)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_model(extra)


def test_the_fused_map_sums_the_two_maps_mapped_by_their_held_out_quantiles(fused_run, tmp_path) -> None:
    result, test_ds = fused_run
    fusion = result.metadata["fusion_normalization"]
    assert fusion["quantiles"] == [0.9, 0.995] and all(h > lo for lo, h in zip(fusion["lo"], fusion["hi"],
                                                                                    strict=True))
    assert "fused with the distillation map" in ", ".join(method_parts(result.metadata["train_config"]))
    model, meta = load_model(result.checkpoint)
    assert model.segment_map == "fused"
    assert torch.allclose(model.fusion_lo, torch.tensor(fusion["lo"], dtype=torch.float32))
    x = torch.stack([test_ds[i]["image"] for i in range(3)])
    with torch.no_grad():
        parts = model.fusion_components(x)
        t, s = model.features(x)
        assert torch.allclose(parts[:, :1], model.anomaly_map.combine_levels(model.anomaly_map.level_maps(
            t, s, (64, 64))))
        lo, hi = torch.tensor(fusion["lo"])[None, :, None, None], torch.tensor(fusion["hi"])[None, :, None, None]
        want = model.anomaly_map.blur((0.1 * (parts - lo) / (hi - lo)).sum(1, keepdim=True), (64, 64))
        assert torch.allclose(model(x), want, atol=1e-6)
    # the quantiles are part of the model: a fused checkpoint without them is refused
    meta = dict(meta)
    del meta["fusion_normalization"]
    bare = save_checkpoint(tmp_path / "bare.safetensors", result.model.trainable_state_dict(), meta)
    with pytest.raises(CheckpointError, match="fusion_normalization"):
        load_model(bare)
    with pytest.raises(CheckpointError, match="fusion_normalization"):
        validate_metadata({**meta, "fusion_normalization": {"lo": [0.1], "hi": [0.2]}}, "bad.safetensors")


@pytest.mark.parametrize("run", ["seg_run", "fused_run"])
def test_the_heads_maps_stay_float32_under_autocast(run, request) -> None:
    """As the distillation map (tests/test_amp.py): the head's and the fused map are blurred in float32 under bf16
    autocast (CPU bf16 casts conv2d as CUDA AMP does), close to the float32 map."""
    result, test_ds = request.getfixturevalue(run)
    x = torch.stack([test_ds[i]["image"] for i in range(2)])
    with torch.no_grad():
        ref = result.model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = result.model(x)
    assert ref.dtype == amp.dtype == torch.float32
    assert torch.allclose(amp, ref, rtol=0.1, atol=0.05 * float(ref.abs().max()))


def test_the_parts_of_the_fused_map_add_up_to_it(fused_run) -> None:
    from benchmarks.fusion_parts import PARTS, FusionPart, build_report, verdicts

    result, test_ds = fused_run
    x = torch.stack([test_ds[i]["image"] for i in range(3)])
    with torch.no_grad():
        dist, head, fused = (FusionPart(result.model, p)(x) for p in PARTS)
    assert torch.allclose(dist + head, fused, atol=1e-6), "the blur is linear: the fused map is the parts' sum"
    assert not torch.allclose(dist, head) and head.abs().sum() > 0
    rows = [{"category": "c", "seed": 0, "part": p, "epochs": 2.0, "image_auroc": v, "pixel_auroc": v,
             "au_pro": float("nan") if p == "head" else v} for p, v in zip(PARTS, (0.5, 0.75, 1.0), strict=True)]
    rows[2].update(good_right=0.5, defective_right=1.0)
    report = build_report(rows, "python -m benchmarks.fusion_parts", 3, "dev")
    assert "| head | 0.750 | 0.750 | n/a | n/a | n/a |" in report
    assert "| c | 0 | fused | 1.000 | 1.000 | 1.000 | 0.500 | 1.000 | 2.0 |" in report
    assert "(dev split, 3 min per category)" in report
    assert "(test split, 42 epochs per category)" in build_report(rows, "c", 10, "test", epochs=42)
    out = {"scores": torch.tensor([0.1, 0.6, 0.4, 0.7, 0.9]), "labels": torch.tensor([0, 0, 1, 1, 1])}
    assert verdicts(out, 0.5) == pytest.approx({"good_right": 0.5, "defective_right": 2 / 3})


def test_topk_rows_rescore_the_same_maps() -> None:
    from benchmarks.fusion_parts import topk_rows

    # good test image 0 has one hot pixel; the defective ones a 4x4 patch of 0.5: the max ranks them wrong, the
    # mean of the 16 highest pixels right
    maps = torch.zeros(3, 8, 8)
    maps[0, 0, 0] = 1.0
    maps[1:, 2:6, 2:6] = 0.5
    held = torch.zeros(4, 8, 8)
    held[:, 0, :4] = torch.tensor([0.2, 0.3, 0.25, 0.35])[:, None]  # held-out good: a faint 4-pixel streak
    outputs = {"maps": maps, "scores": maps.flatten(1).amax(1), "labels": torch.tensor([0, 1, 1])}
    row = {"category": "c", "seed": 0, "part": "fused", "epochs": 2.0, "image_auroc": 0.0, "pixel_auroc": 0.7}
    (one, sixteen) = topk_rows(row, outputs, held, (1, 16))
    assert one["part"] == "fused, top 1" and one["image_auroc"] == 0.0 and one["pixel_auroc"] == 0.7
    # threshold max(mean + 3 std, max) of the held-out maxima 0.2-0.35: about 0.45, under the good image's 1.0
    assert one["good_right"] == 0.0 and one["defective_right"] == 1.0
    assert sixteen["part"] == "fused, top 16" and sixteen["image_auroc"] == 1.0
    assert sixteen["good_right"] == 1.0 and sixteen["defective_right"] == 1.0


@pytest.mark.parametrize("run", ["seg_run", "fused_run", "dscore_run"])
def test_a_segment_export_matches_torch_and_runs_without_torch(run, demo_root, tmp_path, request) -> None:
    result, _ = request.getfixturevalue(run)
    model, meta = load_model(result.checkpoint)
    images = sorted((Path(demo_root) / "demo_texture" / "test").rglob("*.png"))[::2]
    onnx_file = tmp_path / "seg.onnx"
    assert main(["export", "--checkpoint", str(result.checkpoint), "--out", str(onnx_file)]) == 0
    norm = meta["score_normalization"]
    scale = norm["threshold"] - norm["lo"]
    map_scale = norm.get("map_threshold", norm["threshold"]) - norm.get("map_lo", norm["lo"])
    ref = Predictor(model, meta).predict(images)
    for a, b in zip(ref, OnnxPredictor(onnx_file).predict(images), strict=True):
        assert np.abs(a.anomaly_map - b.anomaly_map).max() / map_scale < 1e-3
        assert abs(a.score - b.score) / scale < 1e-3
        assert (a.map_threshold, a.map_lo) == (b.map_threshold, b.map_lo)
    res = _run_runtime(sys.executable, onnx_file, images, tmp_path / "maps.npz")
    assert res.returncode == 0, res.stderr
    data = np.load(tmp_path / "maps.npz")
    rows = [json.loads(line) for line in res.stdout.strip().splitlines()]
    for i, (p, row) in enumerate(zip(ref, rows, strict=True)):
        assert np.abs(data[f"map_{i}"] - p.anomaly_map).max() / map_scale < 1e-3
        assert abs(data["scores"][i] - p.score) / scale < 1e-3
        assert row["verdict"] == ("anomalous" if p.is_anomalous() else "normal")


def test_the_score_from_the_distillation_map_is_checked() -> None:
    with pytest.raises(ValueError, match="needs the fused map"):
        TrainConfig(denoise=True, segment=True, score_map="distillation")
    with pytest.raises(ValueError, match="needs the fused map"):
        TrainConfig(score_map="distillation")
    with pytest.raises(ValueError, match="score_map"):
        TrainConfig(score_map="head")
    args = build_parser().parse_args(["train", "--data", "demo", "--recipe", "cpu", "--segment", "--segment-map",
                                      "fused", "--score-map", "distillation"])
    assert cli_train_config(args).score_map == "distillation"
    assert cli_train_config(build_parser().parse_args(["train", "--data", "demo"])).score_map == "map"
    assert "score from the distillation map" in method_parts({"denoise": True, "segment": True,
                                                              "segment_map": "fused", "score_map": "distillation"})


def test_the_score_can_come_from_the_distillation_part_of_the_fused_map(dscore_run, demo_root) -> None:
    """``score_map="distillation"``: the map stays the fused one, the image score and its threshold come from the
    distillation part (normalised and blurred as in the fusion), and the map keeps a threshold of its own."""
    result, test_ds = dscore_run
    model, meta = load_model(result.checkpoint)
    assert (model.score_map, model.map_channels) == ("distillation", 2)
    x = torch.stack([test_ds[i]["image"] for i in range(3)])
    with torch.no_grad():
        out = model(x)
        parts = model.fusion_parts(x)
    assert out.shape == (3, 2, 64, 64)
    assert torch.allclose(out[:, :1], model.anomaly_map.blur(parts.sum(1, keepdim=True), (64, 64)), atol=1e-6)
    assert torch.allclose(out[:, 1:], model.anomaly_map.blur(parts[:, :1], (64, 64)), atol=1e-6)
    # evaluation scores the distillation part and measures the pixels on the fused map
    res = result.test_outputs
    assert torch.equal(res["scores"], res["score_maps"].flatten(1).amax(1))
    assert not torch.allclose(res["scores"], res["maps"].flatten(1).amax(1))
    # two scales, each fitted on the held-out images' own maps: no held-out score above its threshold
    norm = meta["score_normalization"]
    assert norm["threshold"] >= norm["holdout_score_max"] and norm["map_threshold"] > norm["map_lo"]
    assert norm["map_threshold"] != pytest.approx(norm["threshold"])
    images = sorted((Path(demo_root) / "demo_texture" / "test").rglob("*.png"))[:4]
    predictor = Predictor(model, meta)
    raw = predictor.maps(np.stack([_array(p, 64) for p in images]))
    assert raw.shape == (4, 2, 64, 64)
    for pred, batch in zip(predictor.predict(images), raw, strict=True):
        assert pred.score == pytest.approx(float(batch[1].max()), rel=1e-5)
        assert (pred.threshold, pred.map_threshold) == (norm["threshold"], norm["map_threshold"])
        want = np.clip(0.5 * (pred.anomaly_map - norm["map_lo"]) / (norm["map_threshold"] - norm["map_lo"]), 0, 1)
        assert np.allclose(pred.norm_map, want, atol=1e-6)
    # tile mode: both scales fitted on tiles too
    tile = meta["tile_normalization"]
    assert tile["map_threshold"] > tile["map_lo"] and tile["threshold"] > tile["lo"]
    tiled = Predictor(model, meta, tile=True).predict(images[:1])[0]
    assert (tiled.threshold, tiled.map_threshold) == (tile["threshold"], tile["map_threshold"])


def _array(path: Path, size: int) -> np.ndarray:
    from ikd_core.data.transforms import image_to_array, load_image

    return image_to_array(load_image(path), size)


def test_a_distillation_score_checkpoint_is_checked(dscore_run) -> None:
    from ikd_core.runtime import RuntimeModelError, parse_metadata

    meta = read_metadata(dscore_run[0].checkpoint)
    norm = meta["score_normalization"]
    for bad in ({**norm, "map_threshold": norm["map_lo"] - 1}, {**norm, "map_lo": float("nan")},
                {**norm, "map_threshold": "high"}):
        with pytest.raises(CheckpointError, match="map_"):
            validate_metadata({**meta, "score_normalization": bad}, "bad.safetensors")
        with pytest.raises(CheckpointError, match="map_"):
            validate_metadata({**meta, "tile_normalization": {**meta["tile_normalization"], **{
                k: v for k, v in bad.items() if k.startswith("map_")}}}, "bad.safetensors")
    with pytest.raises(CheckpointError, match="threshold"):
        validate_metadata({**meta, "tile_normalization": {**meta["tile_normalization"], "threshold": -1e9}}, "b")
    tcfg = meta["train_config"]
    with pytest.raises(CheckpointError, match="score_map"):
        validate_metadata({**meta, "train_config": {**tcfg, "score_map": "head"}}, "bad.safetensors")
    with pytest.raises(CheckpointError, match="fused map"):
        validate_metadata({**meta, "train_config": {**tcfg, "segment_map": "head"}}, "bad.safetensors")
    props = {"format": "ikd-studio-onnx/1", "ikd": json.dumps({**meta, "score_normalization": {**norm,
                                                                                              "map_lo": "low"}})}
    with pytest.raises(RuntimeModelError, match="malformed"):
        parse_metadata(props, "bad.onnx")


def test_the_head_leaves_the_student_as_the_denoising_student_trains_it(dscore_run, demo_root, tmp_path) -> None:
    """The CPU recipe's student is the denoising student's: the head's loss never reaches it and draws none of its
    random numbers, so at one seed and one number of epochs the two students are equal, and the CPU recipe's score
    (the distillation part of the fused map) ranks images as the denoising student's score does."""
    result, test_ds = dscore_run
    spec = DataSpec("demo", "demo_texture", str(demo_root))
    train_ds, _ = build_datasets(spec, 64)
    cfg = TrainConfig(image_size=64, epochs=2, batch_size=4, lr=1e-3, denoise=True)
    plain = train(train_ds, test_ds, cfg, out_path=tmp_path / "denoise.safetensors", category="demo_texture",
                  data_info=spec.to_dict())
    with_head, alone = result.model.student.state_dict(), plain.model.student.state_dict()
    assert with_head.keys() == alone.keys()
    assert all(torch.equal(with_head[k], alone[k]) for k in alone), "the head changed the student's training"
    # the same ranking of the test images: the score is the denoising student's through an increasing affine map
    a, b = result.test_outputs["scores"].double(), plain.test_outputs["scores"].double()
    slope = (a.max() - a.min()) / (b.max() - b.min())
    assert slope > 0 and torch.allclose(a, a.min() + slope * (b - b.min()), rtol=1e-3, atol=1e-6)
