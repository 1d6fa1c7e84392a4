"""Synthetic anomalies of the denoising student (DRAEM-style Perlin masks and blending)."""

from __future__ import annotations

import pytest
import torch

from ikd_core.data.anomaly_synthesis import AnomalySynthesizer, perlin_masks, perlin_noise
from ikd_core.data.batching import normalize_uint8


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(b: int = 4, h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    pixels = torch.randint(0, 256, (b, 3, h, w), generator=_gen(seed), dtype=torch.uint8)
    return normalize_uint8(pixels)


def test_perlin_noise_shape_range_and_smoothness():
    random_scales = perlin_noise(16, 128, 96, generator=_gen())
    assert random_scales.shape == (16, 128, 96) and random_scales.dtype == torch.float32
    assert random_scales.abs().max() <= 1.05 and random_scales.std() > 0.1
    noise = perlin_noise(8, 128, 96, scale=(4, 8), generator=_gen(), max_rotation=90.0)
    assert noise.abs().max() <= 1.05 and noise.max() > 0.5 and noise.min() < -0.5
    # Neighbouring pixels differ little compared with the range (lattice cells are 32 x 12 px here).
    span = float(noise.max() - noise.min())
    dy = (noise[:, 1:] - noise[:, :-1]).abs()
    dx = (noise[:, :, 1:] - noise[:, :, :-1]).abs()
    assert max(float(dx.max()), float(dy.max())) < 0.25 * span
    assert max(float(dx.mean()), float(dy.mean())) < 0.03 * span


@pytest.mark.parametrize("scale", [(3, 5), (1, 1), torch.tensor([[2, 7], [16, 1]])])
def test_perlin_noise_any_scale_any_size(scale):
    noise = perlin_noise(2, 37, 50, scale=scale, generator=_gen(), max_rotation=45.0)
    assert noise.shape == (2, 37, 50) and torch.isfinite(noise).all()


def test_perlin_masks_binary_nonempty_and_area_bounds():
    masks = perlin_masks(64, 64, 64, generator=_gen(1), min_area=0.01, max_area=0.4)
    assert masks.shape == (64, 1, 64, 64) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    area = masks.mean(dim=(1, 2, 3))
    assert (area >= 0.01 - 1e-6).all() and (area <= 0.4 + 1e-6).all()
    # DRAEM-like: mostly a few percent of the image, not all blobs of the same size.
    assert 0.01 < float(area.mean()) < 0.2
    assert float(area.std()) > 0.0


def test_perlin_masks_deterministic():
    a = perlin_masks(4, 48, 48, generator=_gen(5))
    b = perlin_masks(4, 48, 48, generator=_gen(5))
    c = perlin_masks(4, 48, 48, generator=_gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_synthesizer_shapes_and_unchanged_outside_mask():
    images = _batch()
    out, masks = AnomalySynthesizer(probability=1.0)(images, _gen())
    assert out.shape == images.shape and out.dtype == images.dtype
    assert masks.shape == (4, 1, 64, 64) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    outside = (masks == 0).expand_as(images)
    assert torch.equal(out[outside], images[outside])
    assert not torch.equal(out, images)
    assert (masks.flatten(1).sum(1) > 0).all()


def test_synthesizer_probability_zero_is_identity():
    images = _batch()
    out, masks = AnomalySynthesizer(probability=0.0)(images, _gen())
    assert torch.equal(out, images)
    assert masks.sum() == 0


def test_synthesizer_probability_one_every_mask_nonempty():
    out, masks = AnomalySynthesizer(probability=1.0)(_batch(b=32, h=32, w=32), _gen(3))
    assert (masks.flatten(1).sum(1) > 0).all()


def test_synthesizer_mixed_batch_leaves_clean_images_alone():
    images = _batch(b=32, h=32, w=32)
    out, masks = AnomalySynthesizer(probability=0.5)(images, _gen(4))
    clean = masks.flatten(1).sum(1) == 0
    assert 0 < int(clean.sum()) < 32
    assert torch.equal(out[clean], images[clean])


def test_synthesizer_deterministic_by_seed():
    images = _batch()
    synth = AnomalySynthesizer(probability=1.0)
    a, ma = synth(images, _gen(7))
    b, mb = synth(images, _gen(7))
    c, mc = synth(images, _gen(8))
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert not torch.equal(a, c)


def test_synthesizer_uint8_input_and_single_image():
    pixels = torch.randint(0, 256, (1, 3, 40, 56), generator=_gen(), dtype=torch.uint8)
    out, masks = AnomalySynthesizer(probability=1.0)(pixels, _gen())
    assert out.dtype == torch.uint8 and out.shape == pixels.shape
    outside = (masks == 0).expand_as(pixels)
    assert torch.equal(out[outside], pixels[outside])
    assert masks.sum() > 0


def test_synthesizer_beta_one_keeps_image():
    images = _batch()
    out, masks = AnomalySynthesizer(probability=1.0, beta_range=(1.0, 1.0))(images, _gen())
    assert masks.sum() > 0
    torch.testing.assert_close(out, images)


def test_synthesizer_rejects_bad_arguments():
    with pytest.raises(ValueError):
        AnomalySynthesizer(probability=1.5)
    with pytest.raises(ValueError):
        AnomalySynthesizer(beta_range=(0.9, 0.1))
    with pytest.raises(ValueError):
        AnomalySynthesizer()(torch.zeros(2, 1, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_synthesizer_cuda_matches_cpu():
    images = _batch()
    cpu, mcpu = AnomalySynthesizer(probability=1.0)(images, _gen(2))
    gpu, mgpu = AnomalySynthesizer(probability=1.0)(images.cuda(), _gen(2))
    assert gpu.device.type == "cuda"
    # Same draws (CPU generator); masks may differ only at pixels whose noise is at the threshold.
    assert (mgpu.cpu() != mcpu).float().mean() < 1e-3
    same = (mgpu.cpu() == mcpu).expand_as(images)
    torch.testing.assert_close(gpu.cpu()[same], cpu[same], atol=1e-3, rtol=0)
