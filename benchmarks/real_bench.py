"""Real-image development bench (issue 16): IKD, a plain STFPM loop, PatchCore and the levers, side by side, at the
same wall-clock budget per category, with seeds, on real photographs (``benchmarks.real_data``).

    python -m benchmarks.real_bench --out results/real_bench.md                       # the reported test split
    python -m benchmarks.real_bench --split dev --out results/real_bench_dev.md       # tune here, never on test
    python -m benchmarks.real_bench --split dev --epochs-like results/real_bench.json --minutes 3 ...  # on a GPU

``--epochs-like FILE...`` trains each method for the epochs it reached per CPU minute in those runs (a method not
there: the rate of the run of its student kind, with or without ``--denoise`` and the penalty), times ``--minutes``:
an epoch-matched stand-in for the CPU budget, to explore on a lent GPU; the report says so.

Every run is appended to the JSON beside the report as it finishes, and ``--resume`` skips runs already there, so an
interrupted bench goes on where it stopped. The report is rebuilt from the JSON (``--report-only``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from benchmarks.real_data import build_real_bench, has_pixel_masks
from benchmarks.report import called_right
from ikd_core.backbones import build_teacher
from ikd_core.data.batching import split_holdout
from ikd_core.data.mvtec import MVTecDataset
from ikd_core.device import select_device
from ikd_core.evaluation import evaluate_model, predict_maps
from ikd_core.metrics import au_pro
from ikd_core.patchcore import PatchCore
from ikd_core.recipes import paper_method, recipe_settings
from ikd_core.train import TrainConfig, train

IMAGE_SIZE = 256
#: Knowledge-distillation methods: TrainConfig overrides on the CPU recipe's optimisation with the paper's method
#: (:func:`cpu_paper_settings`; "ikd" is the paper's loss whatever the recipe's default). ``patchcore`` is the
#: other baseline.
KD_METHODS: dict[str, dict[str, Any]] = {
    "stfpm": {"hard_mining": False, "gamma": 0.0},
    "ikd": {},
    "ikd+score": {"level_norm": True, "combine": "sum", "score_topk": 10},
    "ikd+reverse": {"student": "reverse"},
    "rd": {"student": "reverse", "loss": "cosine", "hard_mining": False, "gamma": 0.0, "combine": "sum"},
    "ikd+denoise": {"denoise": True},
    "ikd+ood": {"ood_penalty": 1.0},
    "ikd+reverse+denoise": {"student": "reverse", "denoise": True},
    "ikd+denoise+score": {"denoise": True, "level_norm": True, "combine": "sum", "score_topk": 10},
    "ikd+denoise+ood": {"denoise": True, "ood_penalty": 1.0},
    "ikd+denoise+seg": {"denoise": True, "segment": True},
    "ikd+denoise+fuse": {"denoise": True, "segment": True, "segment_map": "fused"},
    "ikd+denoise+fuse+dscore": {"denoise": True, "segment": True, "segment_map": "fused", "score_map": "distillation"},
    "ikd+all": {"student": "reverse", "denoise": True, "level_norm": True, "combine": "sum", "score_topk": 10,
                "ood_penalty": 1.0},
}
METHODS = ("stfpm", "ikd", "patchcore", *[m for m in KD_METHODS if m not in ("stfpm", "ikd")])
METRICS = ("image_auroc", "pixel_auroc", "au_pro")


def cpu_paper_settings(image_size: int, **method: Any) -> dict[str, Any]:
    """The CPU recipe's optimisation (batch, learning rate, schedule) with the paper's method, overridden by
    ``method``: the base of every knowledge-distillation method of the bench."""
    return {**recipe_settings("cpu", image_size=image_size), **paper_method(**method)}


class _PatchCoreMaps(nn.Module):
    """PatchCore as an eval-mode model: normalised batch -> (B, 1, S, S) maps (what evaluation expects)."""

    def __init__(self, core: PatchCore) -> None:
        super().__init__()
        self.core = core

    def forward(self, x: Tensor) -> Tensor:
        return self.core.maps(x)[:, None]


def inference_ms(checkpoint: Path, images: list[str], threads: int = 2) -> float:
    """Median ms per image of the app's default path (``Predictor`` backend auto: onnxruntime on the cached export
    on CPU) at batch 1 on ``threads`` threads, after one warm-up image."""
    from ikd_core.predict import Predictor

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        predictor = Predictor.from_checkpoint(checkpoint, "cpu", backend="auto")
        predictor.predict(images[:1])
        times = []
        for path in images:
            t0 = time.perf_counter()
            predictor.predict([path])
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(old)
    return round(statistics.median(times), 2)


def epoch_rates(files: list[Path]) -> dict[str, float]:
    """Mean epochs per minute of each method over the runs in the bench JSON ``files``."""
    per: dict[str, list[float]] = {}
    for f in files:
        for r in json.loads(f.read_text())["runs"]:
            if r["method"] in KD_METHODS and r.get("epochs"):
                per.setdefault(r["method"], []).append(r["epochs"] / r["minutes"])
    return {m: statistics.mean(v) for m, v in per.items()}


def matched_epochs(method: str, rates: dict[str, float], minutes: float) -> int:
    """The epochs ``method`` would reach in ``minutes`` of CPU at ``rates`` (epochs per minute). A method without a
    rate takes the mean rate of the measured methods with its student kind, denoising and penalty; failing that, of
    its kind without the penalty, times the penalty's measured slow-down (``ikd+ood`` over ``ikd``)."""
    def kind(m: str) -> tuple[Any, ...]:
        o = KD_METHODS[m]
        return (o.get("student", "forward"), o.get("denoise", False), o.get("segment", False),
                o.get("ood_penalty", 0.0) > 0)

    def same(k: tuple[Any, ...]) -> list[float]:
        return [r for m, r in rates.items() if kind(m) == k]

    rate = rates.get(method)
    k = kind(method)
    if rate is None and same(k):
        rate = statistics.mean(same(k))
    elif rate is None and k[3] and same(k[:3] + (False,)) and {"ikd", "ikd+ood"} <= rates.keys():
        rate = statistics.mean(same(k[:3] + (False,))) * rates["ikd+ood"] / rates["ikd"]
    if rate is None:
        raise SystemExit(f"--epochs-like: no measured rate for {method} or a method of its kind {k}")
    return max(1, round(rate * minutes))


def run_one(root: Path, category: str, method: str, seed: int, minutes: float,
            timing: bool = False, image_size: int = IMAGE_SIZE, epochs: int | None = None) -> dict[str, Any]:
    """Train (or fit) one method on one category within ``minutes`` (or for ``epochs``) and evaluate it on
    ``root``'s test split; ``timing``: also the inference time of the trained checkpoint (knowledge-distillation
    methods)."""
    train_ds = MVTecDataset(root, category, "train", image_size)
    test_ds = MVTecDataset(root, category, "test", image_size)
    device = select_device("auto")
    t0 = time.perf_counter()
    row: dict[str, Any] = {"category": category, "method": method, "seed": seed, "minutes": minutes}
    if method == "patchcore":
        torch.manual_seed(seed)
        core = PatchCore(build_teacher("efficientnet_lite0")[0], levels=(1, 2), seed=seed).to(device)
        core.fit(DataLoader(train_ds, batch_size=8))
        model: nn.Module = _PatchCoreMaps(core)
        row.update(fit_seconds=round(core.fit_seconds, 1), epochs=1.0)
    else:
        cfg = replace(TrainConfig(**cpu_paper_settings(image_size)), epochs=epochs,
                      max_minutes=None if epochs else minutes, seed=seed, **KD_METHODS[method])
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / f"{category}.safetensors"
            result = train(train_ds, None, cfg, out_path=ckpt if timing else None, category=category, device=device)
            if timing:
                row["inference_ms"] = inference_ms(ckpt, [s.path for s in test_ds.samples[:20]])
        model = result.model
        row.update(fit_seconds=result.metadata["train_seconds"], epochs=result.metadata["epochs_completed"])
    evaluation = evaluate_model(model, test_ds, device)
    if method != "patchcore":
        hold = split_holdout(len(train_ds), cfg.holdout_fraction, cfg.seed)[1]
        held = predict_maps(model, DataLoader(Subset(train_ds, hold), batch_size=8), device)["scores"]
        row.update(verdict(result.metadata["score_normalization"]["threshold"], held,
                           evaluation.outputs["scores"], evaluation.outputs["labels"]))
    metrics = evaluation.metrics
    if not has_pixel_masks(root.parent, category):
        metrics = {**metrics, "pixel_auroc": math.nan, "pixel_f1_max": math.nan, "au_pro": math.nan}
    else:
        row["au_pro_by_defect"] = au_pro_by_defect(evaluation.outputs, [s.defect_type for s in test_ds.samples])
    row.update({k: metrics.get(k, math.nan) for k in METRICS}, total_seconds=round(time.perf_counter() - t0, 1))
    return row


def verdict(threshold: float, holdout: Tensor, scores: Tensor, labels: Tensor) -> dict[str, Any]:
    """The app's verdict on the test split at the threshold fitted on the held-out good images: the shares of good
    and of defective images called right, and the scores behind it (to compare threshold rules afterwards)."""
    good_right, defective_right = called_right(scores, labels, threshold)
    return {"threshold": threshold, "good_right": good_right, "defective_right": defective_right,
            "holdout_scores": [round(float(v), 6) for v in holdout],
            "test_scores": [round(float(v), 6) for v in scores], "test_labels": [int(v) for v in labels]}


def au_pro_by_defect(outputs: dict[str, Tensor], defects: list[str]) -> dict[str, float]:
    """AU-PRO of each defect type on its images and all the good ones (``outputs`` of ``evaluate_model``, in the
    order of ``defects``)."""
    kinds = np.array(defects)
    out = {}
    for d in sorted(set(defects) - {"good"}):
        keep = torch.from_numpy((kinds == d) | (kinds == "good"))
        out[d] = round(au_pro(outputs["maps"][keep], outputs["masks"][keep]), 4)
    return out


def warm_up(root: Path, categories: list[str]) -> None:
    """Read every image of the runs once and train a throwaway model for a few seconds, before any clock starts: the
    first run of a process then pays no cold file cache or one-time kernel set-up (oneDNN primitives of every
    convolution shape, forward and backward) that the later runs do not."""
    for cat in categories:
        for split in ("train", "test"):
            ds = MVTecDataset(root, cat, split, IMAGE_SIZE)
            for i in range(len(ds)):
                ds[i]
    train_ds = MVTecDataset(root, categories[0], "train", IMAGE_SIZE)
    for student in ("forward", "reverse"):
        cfg = replace(TrainConfig(**cpu_paper_settings(IMAGE_SIZE, student=student)), epochs=None,
                      max_minutes=0.15)
        train(train_ds, None, cfg, device=select_device("auto"))


def _order(methods: list[str], seed_index: int) -> list[str]:
    """The methods rotated by the seed's index, so no method always runs first (or last) on a category."""
    k = seed_index % len(methods)
    return methods[k:] + methods[:k]


def _mean_std(values: list[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def build_report(runs: list[dict[str, Any]], info: dict[str, Any],
                 candidates: list[str] | tuple[str, ...] = ()) -> str:
    """Markdown: per category and method, mean ± std over seeds of each metric, epochs reached; then the bench mean
    and the goals of each of ``candidates``."""
    cats = sorted({r["category"] for r in runs})
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    seeds = sorted({r["seed"] for r in runs})
    lines = [f"# Real-image bench ({info['split']} split)", "",
             f"Command: `{info['command']}`. Budget {info['minutes']:g} min per run (training; PatchCore fits once), "
             f"{IMAGE_SIZE} px, efficientnet_lite0 teacher, seeds {seeds}; the methods' order rotates with the "
             "seed, and every image is read once before the first clock starts.", "",
             f"Machine: {info['machine']}; load average at the start {info['load']}. Pixel metrics are n/a where the "
             "source has no pixel masks (ELPV).", ""]
    if info.get("epochs_like"):
        lines[2] = (f"Command: `{info['command']}`. **Epoch-matched**, not timed: each method trains the epochs it "
                    f"reaches in {info['minutes']:g} CPU minutes at its rate in {', '.join(info['epochs_like'])}; "
                    f"{IMAGE_SIZE} px, efficientnet_lite0 teacher, seeds {seeds}.")
    else:
        lines[4:4] = _matched_note(runs, info["minutes"])
    lines += ["| category | method | image AUROC | pixel AUROC | AU-PRO | epochs | runs |",
              "|---|---|---|---|---|---|---|"]
    for cat in cats:
        for m in methods:
            rs = [r for r in runs if r["category"] == cat and r["method"] == m]
            if rs:
                cells = [_mean_std([r[k] for r in rs]) for k in METRICS]
                epochs = statistics.mean(r["epochs"] or 0 for r in rs)
                lines.append(f"| {cat} | {m} | {' | '.join(cells)} | {epochs:.1f} | {len(rs)} |")
    lines += ["", "## Mean over the categories", "",
              "Inference: median ms per image of the app's default path (onnxruntime on the export, batch 1, 2 "
              "threads), timed once per category (its first run).", "",
              "| method | image AUROC | pixel AUROC | AU-PRO | inference ms | categories |",
              "|---|---|---|---|---|---|"]
    for m in methods:
        per_cat = {}
        for cat in cats:
            rs = [r for r in runs if r["category"] == cat and r["method"] == m]
            if rs:
                per_cat[cat] = {k: statistics.mean(r[k] for r in rs) for k in METRICS}
        cells = [_mean_std([v[k] for v in per_cat.values()]).split(" ± ")[0] for k in METRICS]
        ms = [r["inference_ms"] for r in runs if r["method"] == m and "inference_ms" in r]
        cells.append(f"{statistics.median(ms):.1f}" if ms else "n/a")
        lines.append(f"| {m} | {' | '.join(cells)} | {len(per_cat)} |")
    lines += defect_section(runs, methods)
    lines += verdict_section(runs, methods)
    for candidate in candidates:
        lines += goals_section(runs, candidate)
    return "\n".join(lines) + "\n"


def _matched_note(runs: list[dict[str, Any]], minutes: float) -> list[str]:
    """A line on the runs of a timed report that were epoch-matched (``--epochs-like`` on a resumed report)."""
    matched = [r for r in runs if r.get("epochs_matched")]
    if not matched:
        return []
    methods = sorted({r["method"] for r in matched}, key=METHODS.index)
    files = sorted({f for r in matched for f in r["epochs_matched"]})
    return [f"**Epoch-matched runs**: {', '.join(f'`{m}`' for m in methods)} trained, instead of a wall-clock budget, "
            f"the epochs their method (or, without runs of its own, the mean of its kind) reaches in {minutes:g} CPU "
            f"minutes at its rate in {', '.join(files)}, so that a faster machine does not favour them; no inference "
            "time is taken on such runs.", ""]


def defect_section(runs: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """AU-PRO by defect type (runs that recorded it), mean over the categories and seeds that have it."""
    rows = [r for r in runs if r.get("au_pro_by_defect")]
    if not rows:
        return []
    defects = sorted({d for r in rows for d in r["au_pro_by_defect"]})
    cats = sorted({r["category"] for r in rows})
    lines = ["", "## AU-PRO by defect type", "",
             f"Each defect type's images with all the good ones, mean over {', '.join(cats)} and the seeds (runs "
             "that recorded it). `contamination` (another photo through a Perlin-noise blob) is the planted defect "
             "closest to the synthetic anomalies that the denoising student and the segmentation head train on.", "",
             f"| method | {' | '.join(defects)} | runs |", "|---|" + "---|" * (len(defects) + 1)]
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        if rs:
            cells = [_mean_std([r["au_pro_by_defect"].get(d, math.nan) for r in rs]).split(" ± ")[0]
                     for d in defects]
            lines.append(f"| {m} | {' | '.join(cells)} | {len(rs)} |")
    return lines


def verdict_section(runs: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """The verdict at the fitted threshold (runs that recorded it): per category and method, the shares of good and
    of defective test images called right, mean over seeds; then their means over the categories."""
    rows = [r for r in runs if "good_right" in r]
    if not rows:
        return []
    cats = sorted({r["category"] for r in rows})
    lines = ["", "## Verdict at the fitted threshold", "",
             "The threshold the checkpoint fitted on its held-out good training images (10 %; max(mean + 3 std, max) "
             "of their scores, the app's 0.5): the share of the test split's good images called good and of its "
             "defective images called defective, mean over the seeds that recorded it (good right / defective "
             "right).", "", f"| method | {' | '.join(cats)} | mean | runs |", "|---|" + "---|" * (len(cats) + 2)]
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        if not rs:
            continue
        cells, goods, bads = [], [], []
        for c in cats:
            cr = [r for r in rs if r["category"] == c]
            if not cr:
                cells.append("n/a")
                continue
            g, b = statistics.mean(r["good_right"] for r in cr), statistics.mean(r["defective_right"] for r in cr)
            goods.append(g)
            bads.append(b)
            cells.append(f"{g:.2f} / {b:.2f}")
        lines.append(f"| {m} | {' | '.join(cells)} | {statistics.mean(goods):.2f} / {statistics.mean(bads):.2f} | "
                     f"{len(rs)} |")
    return lines


def _method_means(runs: list[dict[str, Any]], method: str, cats: list[str]) -> dict[str, float]:
    """Mean over ``cats`` (each first averaged over its seeds) of each metric, NaN-aware."""
    out = {}
    for k in METRICS:
        vals = [statistics.mean(r[k] for r in runs if r["category"] == c and r["method"] == method)
                for c in cats if any(r["category"] == c and r["method"] == method for r in runs)]
        vals = [v for v in vals if not math.isnan(v)]
        out[k] = statistics.mean(vals) if vals else math.nan
    return out


def shared_seeds(runs: list[dict[str, Any]], methods: list[str]) -> list[int]:
    """Seeds on which every method in ``methods`` ran every category of ``runs``."""
    cats = {r["category"] for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    have = {(r["category"], r["method"], r["seed"]) for r in runs}
    return [s for s in seeds if all((c, m, s) in have for c in cats for m in methods)]


def goals_section(runs: list[dict[str, Any]], candidate: str) -> list[str]:
    """Issue 16's goals for ``candidate``: vs plain STFPM on the bench mean (+0.03 image AUROC, +0.05 AU-PRO), not
    below PatchCore on any source, inference within 1.5x of today's default (``ikd``)."""
    cats = sorted({r["category"] for r in runs})
    if not any(r["method"] == candidate for r in runs):
        return []
    cand, stfpm = _method_means(runs, candidate, cats), _method_means(runs, "stfpm", cats)
    lines = ["", f"## Goals for `{candidate}`", "", "| goal | measured | met |", "|---|---|---|"]
    for k, need in (("image_auroc", 0.03), ("au_pro", 0.05)):
        d = cand[k] - stfpm[k]
        if math.isnan(d):
            lines.append(f"| {k} vs stfpm ≥ +{need} | n/a (no stfpm runs here) | n/a |")
            continue
        shared = shared_seeds(runs, [candidate, "stfpm"])  # paired: seeds both ran on every category
        deltas = [(s, _method_means([r for r in runs if r["seed"] == s], candidate, cats)[k]
                   - _method_means([r for r in runs if r["seed"] == s], "stfpm", cats)[k]) for s in shared]
        per_seed = ", ".join(f"seed {s}: {v:+.3f}" for s, v in deltas) if len(deltas) > 1 else ""
        lines.append(f"| {k} vs stfpm ≥ +{need} | {d:+.3f} ({cand[k]:.3f} vs {stfpm[k]:.3f}"
                     f"{'; ' + per_seed if per_seed else ''}) | {'yes' if d >= need else 'no'} |")
    for source in sorted({c.split("_")[1] for c in cats}):
        scats = [c for c in cats if c.split("_")[1] == source]
        a, b = _method_means(runs, candidate, scats), _method_means(runs, "patchcore", scats)
        if not math.isnan(b["image_auroc"]):
            d = a["image_auroc"] - b["image_auroc"]
            lines.append(f"| image AUROC vs patchcore on {source} ≥ 0 | {d:+.3f} ({a['image_auroc']:.3f} vs "
                         f"{b['image_auroc']:.3f}) | {'yes' if d >= 0 else 'no'} |")
    ms = {m: [r["inference_ms"] for r in runs if r["method"] == m and "inference_ms" in r] for m in (candidate, "ikd")}
    if ms[candidate] and ms["ikd"]:
        ratio = statistics.median(ms[candidate]) / statistics.median(ms["ikd"])
        lines.append(f"| inference ≤ 1.5x ikd | {ratio:.2f}x | {'yes' if ratio <= 1.5 else 'no'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.real_bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/real_bench.md")
    p.add_argument("--data", default="data/real_bench", help="bench root (built by benchmarks.real_data if missing)")
    p.add_argument("--split", choices=("test", "dev"), default="test")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--categories", nargs="+", help="default: all of the bench")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--epochs-like", nargs="+", type=Path, metavar="JSON",
                   help="epoch-matched mode: each method's epochs per CPU minute in these bench JSONs x --minutes")
    p.add_argument("--resume", action="store_true", help="skip runs already in the JSON")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the JSON")
    p.add_argument("--candidate", nargs="+", default=["ikd+reverse"],
                   help="the methods whose goals the report checks (default: the one chosen on the dev split)")
    args = p.parse_args(argv)
    out, data = Path(args.out), Path(args.data)
    store = out.with_suffix(".json")
    saved = json.loads(store.read_text()) if store.is_file() and (args.resume or args.report_only) else {}
    runs: list[dict[str, Any]] = saved.get("runs", [])
    if saved and not args.report_only and (saved["info"]["split"], saved["info"]["minutes"]) != (args.split,
                                                                                               args.minutes):
        p.error(f"{store} holds runs of the {saved['info']['split']} split at {saved['info']['minutes']:g} min; "
                "resume with the same --split and --minutes, or write another --out")
    this = "python -m benchmarks.real_bench " + " ".join(argv if argv is not None else os.sys.argv[1:])
    info = saved.get("info") or {
        "split": args.split, "minutes": args.minutes, "seeds": args.seeds,
        "command": this,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads"
                   + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
        "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "epochs_like": [str(f) for f in args.epochs_like or []]}
    if saved and not args.report_only and this not in info["command"].split("`, then `"):
        info["command"] += f"`, then `{this}"  # a resumed report names every command that made its runs
    rates = epoch_rates(args.epochs_like) if args.epochs_like else None
    if not args.report_only:
        if not (data / "bench.json").is_file():
            build_real_bench(data)
        root = data / args.split
        cats = args.categories or sorted(json.loads((data / "bench.json").read_text())["categories"])
        done = {(r["category"], r["method"], r["seed"]) for r in runs}
        warm_up(root, cats)
        for i, seed in enumerate(args.seeds):
            for cat in cats:
                for method in _order(list(args.methods), i):
                    if (cat, method, seed) in done:
                        continue
                    epochs = matched_epochs(method, rates, args.minutes) if rates and method != "patchcore" else None
                    timing = not rates and not any("inference_ms" in r for r in runs
                                                   if (r["category"], r["method"]) == (cat, method))
                    runs.append(run_one(root, cat, method, seed, args.minutes, timing=timing, epochs=epochs))
                    if epochs:
                        runs[-1]["epochs_matched"] = [str(f) for f in args.epochs_like]
                    print(json.dumps(runs[-1]), flush=True)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    store.write_text(json.dumps({"info": info, "runs": runs}, indent=1))
    out.write_text(build_report(runs, info, args.candidate))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
