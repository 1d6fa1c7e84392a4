"""GIF export: one frame per chosen image, repeated images included."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio

from ikd_core.data.mvtec import MVTecDataset
from ikd_core.gif import make_gif, pick_samples
from ikd_core.predict import Predictor


def test_one_frame_per_image_even_when_repeated(tiny_checkpoint, demo_root: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(tiny_checkpoint.checkpoint)
    ds = MVTecDataset(demo_root, "demo_texture", "test", 64)
    picked = pick_samples(ds.samples, n=5, seed=0)
    assert len({s.defect_type for s in picked}) >= 3  # spread over defect types
    images = [s.path for s in picked] + [picked[-1].path]  # last image twice in a row
    masks = [s.mask_path for s in picked] + [picked[-1].mask_path]
    out = make_gif(predictor, images, tmp_path / "demo.gif", masks=masks, fps=4, size=320)
    frames = iio.imread(out, index=None)
    assert frames.shape[0] == 6
    assert frames.shape[2] == 320
