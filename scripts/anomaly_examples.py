"""A PNG grid of synthetic anomalies (DRAEM-style, for the DeSTSeg denoising student) on demo images.

    python scripts/anomaly_examples.py [--out assets/anomaly_synthesis.png] [--category demo_texture] [--seed 0]

Generates a small demo set (256 px) into a temporary folder, takes 8 training images, adds anomalies with
:class:`ikd_core.data.anomaly_synthesis.AnomalySynthesizer` (probability 1) and writes three rows: the clean images,
the images with their anomalies, and the masks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ikd_core.data.anomaly_synthesis import AnomalySynthesizer  # noqa: E402
from ikd_core.data.batching import normalize_uint8  # noqa: E402
from ikd_core.data.synthetic import generate_demo_dataset  # noqa: E402
from ikd_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, list_images  # noqa: E402

N_IMAGES = 8
SIZE = 256
GAP = 4


def _to_uint8(normalised: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) ImageNet-normalised -> (B, H, W, 3) uint8."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = (normalised * std + mean).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels (H, W) bool of a binary mask."""
    m = np.pad(mask, 1, mode="edge")
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def make_grid(category: str = "demo_texture", seed: int = 0) -> np.ndarray:
    """The (3 * SIZE + gaps, 8 * SIZE + gaps, 3) uint8 grid: clean, anomalous, mask."""
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_demo_dataset(
            tmp, categories=(category,), n_train=N_IMAGES, n_test_good=1, n_test_defect=1, image_size=SIZE
        )
        files = list_images(Path(root) / category / "train" / "good")[:N_IMAGES]
        batch = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
    images = normalize_uint8(batch)
    generator = torch.Generator().manual_seed(seed)
    augmented, masks = AnomalySynthesizer(probability=1.0)(images, generator)
    clean, anomalous = _to_uint8(images), _to_uint8(augmented)
    binary = masks[:, 0].numpy() > 0.5
    n = len(files)
    grid = np.full((3 * SIZE + 2 * GAP, n * SIZE + (n - 1) * GAP, 3), 255, dtype=np.uint8)
    for i in range(n):
        x = i * (SIZE + GAP)
        mask_tile = np.repeat(binary[i, :, :, None].astype(np.uint8) * 255, 3, axis=2)
        mask_tile[_outline(binary[i])] = (255, 0, 0)
        grid[:SIZE, x : x + SIZE] = clean[i]
        grid[SIZE + GAP : 2 * SIZE + GAP, x : x + SIZE] = anomalous[i]
        grid[2 * (SIZE + GAP) :, x : x + SIZE] = mask_tile
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("assets/anomaly_synthesis.png"))
    parser.add_argument("--category", default="demo_texture")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_grid(args.category, args.seed)).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
