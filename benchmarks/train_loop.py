"""One training run through the real dataset, DataLoader and ``ikd_core.train.train`` loop, for
``benchmarks/perf.py --sections loop``; prints one ``@@{json}`` line.

    PYTHONPATH=<checkout> python benchmarks/train_loop.py --variant ours|plain --data-root data/demo

``ikd_core`` is imported from ``PYTHONPATH`` (perf.py points it at this checkout, or at an extracted copy of an
older commit for the "before" row). ``--variant plain`` swaps the IKD loss for plain feature distillation
(STFPM: mean over positions of |t - s|^2 of the normalised features, weighted mean over levels; no AHSM, no
CSL); everything else (model, data pipeline, loop, optimiser) is the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class PlainDistillationLoss(nn.Module):
    """STFPM: per level the mean over all positions of |t(p) - s(p)|^2; weighted mean over levels.
    Takes :class:`ikd_core.loss.IKDLoss`'s arguments (and ignores gamma, AHSM, alpha, beta)."""

    def __init__(self, num_levels: int, level_weights: Sequence[float] | None = None, *args: object,
                 **kwargs: object) -> None:
        super().__init__()
        weights = list(level_weights) if level_weights is not None else [1.0] * num_levels
        self.register_buffer("level_weights", torch.tensor(weights, dtype=torch.float32))
        self.margins = nn.ModuleList()

    def forward(self, teacher_feats: Sequence[Tensor], student_feats: Sequence[Tensor], **kwargs: object) -> Tensor:
        losses = torch.stack([(t.float() - s.float()).square().sum(dim=1).mean()
                              for t, s in zip(teacher_feats, student_feats, strict=True)])
        return (losses * self.level_weights).sum() / self.level_weights.sum()


def run(variant: str, data_root: str, category: str, epochs: int, image_size: int, batch: int, lr: float) -> dict:
    """Train ``epochs`` epochs; img/s over the whole run and over epochs 2.. (steady state: the image cache is
    full), from the loop's own Progress reports."""
    import ikd_core.train as train_mod
    from ikd_core.data.sources import DataSpec, build_datasets

    if variant == "plain":
        train_mod.IKDLoss = PlainDistillationLoss  # type: ignore[misc,assignment]
    train_ds, _ = build_datasets(DataSpec("demo", category, data_root), image_size)
    cfg = train_mod.TrainConfig(image_size=image_size, epochs=epochs, batch_size=batch, lr=lr)
    marks: list[tuple[int, int, float]] = []

    def on_progress(p: object) -> None:
        if p.phase == "train":  # type: ignore[attr-defined]
            marks.append((p.epoch, p.step, p.elapsed_s))  # type: ignore[attr-defined]

    t0 = time.perf_counter()
    result = train_mod.train(train_ds, None, cfg, callback=on_progress)
    wall = time.perf_counter() - t0
    meta = result.metadata
    steps = max(s for _, s, _ in marks)
    end_first = max(e for ep, _, e in marks if ep == 1)
    later = [m for m in marks if m[0] > 1]
    steady = len(later) * batch / (later[-1][2] - end_first) if later else None
    return {"variant": variant, "images_per_s": steady, "overall_images_per_s": meta["images_per_sec"],
            "train_s": meta["train_seconds"], "wall_s": wall, "steps_per_epoch": steps, "epochs": epochs,
            "final_loss": meta["final_loss"], "torch_threads": torch.get_num_threads(),
            "ikd_core": os.path.dirname(train_mod.__file__)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=("ours", "plain"), default="ours")
    p.add_argument("--data-root", default="data/demo")
    p.add_argument("--category", default="demo_texture")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res = run(a.variant, a.data_root, a.category, a.epochs, a.image_size, a.batch_size, a.lr)
    print("@@" + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
