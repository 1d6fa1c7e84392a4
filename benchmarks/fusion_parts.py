"""What each part of the fused map does (issue 16): train the denoising student with the segmentation head
(``ikd+denoise+fuse`` of the real-image bench; the CPU recipe trains the same and scores the distillation part) and
evaluate, on the same trained model, the distillation map alone, the head's map alone and their fusion, so that a
goal the fused map misses can be traced to the part that misses it. Each part also gets the app's threshold (mean
+ 3 std of the held-out good images' scores, or their max: :func:`~ikd_core.calibration.fit_normalization`, on the
training run's own held-out images), and the report gives the share of good and of defective test images it calls
right.

    python -m benchmarks.fusion_parts --split dev --minutes 3 --out results/fusion_parts_dev.md

``--epochs N`` trains N epochs instead of a wall-clock budget (the epochs a bench run reached, on a machine of
another speed); the report then says so. ``--topk 66 655`` adds rows for the fused map scored by the mean of its k
highest pixels (``--score-topk``) instead of its maximum: the same maps, other image scores and thresholds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from benchmarks.real_bench import IMAGE_SIZE, KD_METHODS, METRICS, cpu_paper_settings, warm_up
from benchmarks.real_data import build_real_bench, has_pixel_masks
from benchmarks.report import command_line, machine_lines
from ikd_core.calibration import fit_normalization
from ikd_core.data.batching import split_holdout
from ikd_core.data.mvtec import MVTecDataset
from ikd_core.device import select_device
from ikd_core.evaluation import EVAL_BATCH_SIZE, evaluate_model, predict_maps
from ikd_core.metrics import image_auroc
from ikd_core.scoring import image_scores
from ikd_core.torch_model import IKDModel
from ikd_core.train import TrainConfig, train

PARTS = ("distillation", "head", "fused")


class FusionPart(nn.Module):
    """One part of a fused model's map, normalised by the model's held-out quantiles and blurred as the fused map
    is (``part``: one of :data:`PARTS`)."""

    def __init__(self, model: IKDModel, part: str) -> None:
        super().__init__()
        self.model, self.part = model, part

    def forward(self, x: Tensor) -> Tensor:
        if self.part == "fused":
            return self.model(x)
        k = PARTS.index(self.part)
        return self.model.anomaly_map.blur(self.model.fusion_parts(x)[:, k : k + 1], (x.shape[-2], x.shape[-1]))


def run_parts(root: Path, category: str, seed: int, minutes: float, epochs: int | None = None,
              topk: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Train ``ikd+denoise+fuse`` on ``category`` for ``minutes`` (or ``epochs``) and evaluate each part of its
    map; ``topk``: also the fused map scored by the mean of its k highest pixels, for each k."""
    device = select_device("auto")
    train_ds = MVTecDataset(root, category, "train", IMAGE_SIZE)
    test_ds = MVTecDataset(root, category, "test", IMAGE_SIZE)
    cfg = replace(TrainConfig(**cpu_paper_settings(IMAGE_SIZE)), epochs=epochs,
                  max_minutes=None if epochs else minutes, seed=seed,
                  **KD_METHODS["ikd+denoise+fuse"])
    result = train(train_ds, None, cfg, category=category, device=device)
    held_out = Subset(train_ds, split_holdout(len(train_ds), cfg.holdout_fraction, seed)[1])
    rows = []
    for part in PARTS:
        model = FusionPart(result.model, part)
        hold = predict_maps(model, DataLoader(held_out, batch_size=EVAL_BATCH_SIZE), device)
        evaluation = evaluate_model(model, test_ds, device)
        metrics = evaluation.metrics
        if not has_pixel_masks(root.parent, category):
            metrics = {**metrics, "pixel_auroc": math.nan, "au_pro": math.nan}
        row = {"category": category, "seed": seed, "part": part, "epochs": result.metadata["epochs_completed"],
               **{k: metrics.get(k, math.nan) for k in METRICS}}
        rows.append({**row, **verdicts(evaluation.outputs, fit_normalization(hold["maps"])["threshold"])})
        if part == "fused":
            rows += topk_rows(row, evaluation.outputs, hold["maps"], topk)
    return rows


def topk_rows(row: dict[str, Any], outputs: dict[str, Tensor], held_maps: Tensor,
              topk: tuple[int, ...]) -> list[dict[str, Any]]:
    """``row`` again for each k of ``topk``, with the image AUROC and verdicts of the same test maps (``outputs`` of
    :func:`~ikd_core.evaluation.predict_maps`) scored by the mean of their k highest pixels, at the threshold the
    held-out good ``held_maps`` give that score; the pixel metrics are the maps', unchanged."""
    rows = []
    for k in topk:
        scored = {**outputs, "scores": image_scores(outputs["maps"], k)}
        threshold = fit_normalization(held_maps, score_topk=k)["threshold"]
        rows.append({**row, "part": f"{row['part']}, top {k}",
                     "image_auroc": image_auroc(scored["scores"].numpy(), scored["labels"].numpy()),
                     **verdicts(scored, threshold)})
    return rows


def verdicts(outputs: dict[str, Tensor], threshold: float) -> dict[str, float]:
    """The share of good test images scored under ``threshold`` and of defective ones at or above it."""
    scores, labels = outputs["scores"], outputs["labels"]
    return {"good_right": float((scores[labels == 0] < threshold).float().mean()),
            "defective_right": float((scores[labels == 1] >= threshold).float().mean())}


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3f}"


def build_report(rows: list[dict[str, Any]], command: str, minutes: float, split: str,
                 epochs: int | None = None) -> str:
    """The markdown report: each category's three parts, then the mean over categories."""
    budget = f"{epochs} epochs" if epochs else f"{minutes:g} min"
    lines = [f"# The parts of the fused map ({split} split, {budget} per category)", "",
             f"Command: `{command}`", "", *machine_lines(), "",
             "One training per category (the fused segmentation head, `ikd+denoise+fuse`); each part evaluated on the "
             "same model: the distillation map and the head's map, each mapped by its held-out quantiles (0.9 -> 0, "
             "0.995 -> 0.1) and blurred as the fused map is, and the fused map (their sum). Image score: the map's "
             "maximum; in the rows 'fused, top k' the mean of the fused map's k highest pixels (at 256 px; the same "
             "maps, so the same pixel metrics). Good right / defective right: the share of good / defective test "
             "images called right at the part's threshold, fitted on the run's held-out good images as the app fits "
             "it (mean + 3 std of their scores, or their max).",
             "", "| category | seed | part | image AUROC | pixel AUROC | AU-PRO | good right | defective right | "
             "epochs |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['category']} | {r['seed']} | {r['part']} | {_fmt(r['image_auroc'])} | "
                     f"{_fmt(r['pixel_auroc'])} | "
                     f"{_fmt(r['au_pro'])} | {_fmt(r.get('good_right', math.nan))} | "
                     f"{_fmt(r.get('defective_right', math.nan))} | {r['epochs']:.1f} |")
    lines += ["", "## Mean over the categories (and seeds)", "",
              "| part | image AUROC | pixel AUROC | AU-PRO | good right | defective right |",
              "|---|---|---|---|---|---|"]
    for part in dict.fromkeys(r["part"] for r in rows):
        sel = [r for r in rows if r["part"] == part]
        means = []
        for k in (*METRICS, "good_right", "defective_right"):
            vals = [r[k] for r in sel if not math.isnan(r.get(k, math.nan))]
            means.append(_fmt(sum(vals) / len(vals)) if vals else "n/a")
        lines.append(f"| {part} | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fusion_parts", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/fusion_parts_dev.md")
    p.add_argument("--data", default="data/real_bench", help="bench root (built by benchmarks.real_data if missing)")
    p.add_argument("--split", choices=("test", "dev"), default="dev")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--epochs", type=int, help="train this many epochs instead of --minutes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--categories", nargs="+", help="default: all of the split")
    p.add_argument("--topk", type=int, nargs="*", default=[],
                   help="also score the fused map by the mean of its k highest pixels, for each k (at 256 px)")
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not (data / "bench.json").is_file():
        build_real_bench(data)
    root = data / args.split
    cats = args.categories or sorted(json.loads((data / "bench.json").read_text())["categories"])
    warm_up(root, cats)
    rows: list[dict[str, Any]] = []
    for seed, cat in itertools.product(args.seeds, cats):
        new = run_parts(root, cat, seed, args.minutes, args.epochs, tuple(args.topk))
        rows += new
        print(json.dumps(new), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.write_text(build_report(rows, command_line("fusion_parts", sys.argv[1:] if argv is None else argv),
                                args.minutes, args.split, args.epochs))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
