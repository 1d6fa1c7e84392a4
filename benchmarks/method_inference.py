"""Inference time of the real-image bench's methods on one machine, side by side (issue 16's goal: within 1.5x of
``ikd``, the earlier default), for runs that took none (epoch-matched ones) or that ran on other machines.

    python -m benchmarks.method_inference --methods ikd ikd+denoise+fuse ikd+denoise+fuse+dscore \
        --out results/method_inference.md

Each method trains one short run on one category of the bench (inference time does not depend on how long it
trained), then every checkpoint is timed by ``benchmarks.real_bench.inference_ms`` (the app's default path:
onnxruntime on the export, batch 1, 2 threads) in interleaved rounds, so that a change in the machine's load falls
on every method alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from benchmarks.real_bench import IMAGE_SIZE, KD_METHODS, cpu_paper_settings, inference_ms
from benchmarks.real_data import build_real_bench
from benchmarks.report import command_line, machine_lines
from ikd_core.data.mvtec import MVTecDataset
from ikd_core.train import TrainConfig, train


def time_methods(root: Path, category: str, methods: list[str], rounds: int = 3, n_images: int = 20,
                 image_size: int = IMAGE_SIZE, epochs: int = 1) -> dict[str, list[float]]:
    """Median ms per image of each method, one value per round (the methods interleaved within a round)."""
    train_ds = MVTecDataset(root, category, "train", image_size)
    images = [s.path for s in MVTecDataset(root, category, "test", image_size).samples[:n_images]]
    times: dict[str, list[float]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = {}
        for m in methods:
            cfg = replace(TrainConfig(**cpu_paper_settings(image_size)), epochs=epochs, max_minutes=None,
                          **KD_METHODS[m])
            ckpts[m] = Path(tmp) / f"{m}.safetensors"
            train(train_ds, None, cfg, out_path=ckpts[m], category=category)
        for _ in range(rounds):
            for m in methods:
                times[m].append(inference_ms(ckpts[m], images))
    return times


def build_report(times: dict[str, list[float]], command: str, category: str, base: str = "ikd") -> str:
    """Markdown: per method the rounds' median ms, their spread and the ratio to ``base``."""
    med = {m: statistics.median(v) for m, v in times.items()}
    lines = ["# Inference time of the bench's methods (one machine)", "", f"Command: `{command}`", "",
             *machine_lines(), "",
             f"Median ms per image of the app's default path (onnxruntime on the export, batch 1, 2 threads) over "
             f"{len(next(iter(times.values())))} interleaved rounds of 20 test images of {category}.", "",
             f"| method | ms | rounds | vs {base} |", "|---|---:|---|---:|"]
    for m, v in times.items():
        ratio = f"{med[m] / med[base]:.2f}x" if base in med else "n/a"
        lines.append(f"| {m} | {med[m]:.1f} | {', '.join(f'{x:.1f}' for x in v)} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.method_inference", description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", choices=list(KD_METHODS), default=["ikd", "ikd+denoise+fuse+dscore"])
    p.add_argument("--data", default="data/real_bench", help="bench root (built by benchmarks.real_data if missing)")
    p.add_argument("--category", default="real_skimage_gravel")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="results/method_inference.md")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "bench.json").is_file():
        build_real_bench(data)
    methods = list(dict.fromkeys(["ikd", *args.methods]))
    times = time_methods(data / "test", args.category, methods, args.rounds)
    report = build_report(times, command_line("method_inference", list(argv if argv is not None else sys.argv[1:])),
                          args.category)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
