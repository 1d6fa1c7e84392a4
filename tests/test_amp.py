"""Mixed precision never reaches the anomaly maps: maps, threshold fit and metrics stay float32.

CPU bfloat16 autocast casts conv2d the way CUDA AMP does, so these tests reproduce the GPU path here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ikd_core.data.sources import DataSpec, build_datasets
from ikd_core.evaluation import evaluate_model
from ikd_core.loading import load_model

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained" / "demo_texture-efficientnet_lite0.safetensors"


def _bf16() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_map_under_bf16_autocast_is_float32_with_full_resolution() -> None:
    """The committed demo model at 256 px: under bf16 autocast the map is float32 and keeps (nearly) as many
    distinct values as in float32 (the old bf16 blur left ~544 of ~65k) and stays close to the fp32 map."""
    model, _ = load_model(PRETRAINED)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        with _bf16():
            amp = model(x)
    assert ref.dtype == torch.float32 and amp.dtype == torch.float32
    n_ref, n_amp = ref.unique().numel(), amp.unique().numel()
    assert n_amp >= 0.5 * n_ref, (n_amp, n_ref)
    # bf16 teacher / student features differ a little from fp32 ones; the map must still be the same map
    assert (amp - ref).abs().max().item() <= 0.05 * ref.max().item()


def test_evaluation_ignores_the_callers_autocast(demo_root: Path, tiny_checkpoint) -> None:
    """Hold-out fit, validation and metrics go through ``evaluation.predict_maps`` (no AMP argument): inside an
    autocast region the evaluation gives the fp32 maps exactly."""
    model = tiny_checkpoint.model
    _, test_ds = build_datasets(DataSpec("demo", "demo_texture", str(demo_root)), 64)
    ref = evaluate_model(model, test_ds, torch.device("cpu"), batch_size=4).outputs
    with _bf16():
        amp = evaluate_model(model, test_ds, torch.device("cpu"), batch_size=4).outputs
    assert amp["maps"].dtype == torch.float32
    torch.testing.assert_close(amp["maps"], ref["maps"], rtol=0, atol=0)
    torch.testing.assert_close(amp["scores"], ref["scores"], rtol=0, atol=0)
