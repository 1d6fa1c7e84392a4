"""Frame rate of the Live tab's processing path on the CPU.

    python -m benchmarks.live_fps [--threads 2] [--frames 60] [--out benchmarks/REPORT.md]

Times what the live handler does with one webcam frame (:func:`ui.live_tab.prepare_frame` of a 256 x 256 uint8 RGB
frame, the checkpoint's forward pass, the overlay with the predicted outline, the score/verdict/fps strip) for the
committed ``pretrained/demo_texture-efficientnet_lite0.safetensors`` (256 px), with torch eager and with the live
tab's ``auto`` predictor (onnxruntime), ``--threads`` threads. Frames alternate between a good and a defective demo
test image. Reports frames per second from the median and the 90th-percentile frame time, and writes the
``## Live frame rate`` section of ``--out`` (other sections are kept byte for byte), then prints it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .report import REPORT, ROOT, command_line, machine_lines, write_section

HEADING = "## Live frame rate"
CHECKPOINT = ROOT / "pretrained" / "demo_texture-efficientnet_lite0.safetensors"
SIZE = 256
GOAL_FPS = 10.0


def demo_frames(size: int = SIZE) -> list[Any]:
    """A good and a defective demo test image (generated, ``size`` px) as uint8 RGB arrays."""
    import numpy as np
    from PIL import Image

    from ikd_core.data.synthetic import generate_demo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = generate_demo_dataset(tmp, categories=("demo_texture",), n_train=1, n_test_good=1, n_test_defect=1,
                                     image_size=size, seed=0)
        test = Path(root) / "demo_texture" / "test"
        return [np.asarray(Image.open(test / d / "000.png").convert("RGB")) for d in ("good", "hole")]


def time_path(predictor: Any, frames: list[Any], n: int, warmup: int = 3) -> list[float]:
    """Seconds per frame of the live processing path, ``n`` frames after ``warmup``."""
    from ui import live_tab

    meter = live_tab.Meter()
    out = []
    for i in range(warmup + n):
        frame = frames[i % len(frames)]
        start = time.perf_counter()
        over, pred = live_tab.process_frame(lambda f: predictor.predict([f])[0], live_tab.prepare_frame(frame, SIZE),
                                            0.5, 0.5, "jet")
        live_tab.annotate(over, pred.norm_score, pred.is_anomalous(0.5), meter.tick(time.perf_counter()))
        if i >= warmup:
            out.append(time.perf_counter() - start)
    return out


def stats(times: list[float]) -> dict[str, float]:
    ts = sorted(times)
    p90 = ts[min(len(ts) - 1, round(0.9 * (len(ts) - 1)))]
    med = statistics.median(ts)
    return {"median_ms": 1000 * med, "p90_ms": 1000 * p90, "fps_median": 1 / med, "fps_p90": 1 / p90}


def section(results: dict[str, dict[str, float]], command: str, threads: int, n: int, load: str) -> str:
    lines = [
        HEADING,
        "",
        f"- Command: `{command}`",
        f"- What: the Live tab's path per frame (256 x 256 uint8 RGB frame in, overlay with outline and the "
        f"score/verdict/fps strip out; no decoding), `{CHECKPOINT.name}` at 256 px, {threads} threads unless noted, "
        f"{n} frames alternating a good and a defective demo image, after 3 warm-up frames",
        *machine_lines(),
        f"- Load average before the run: {load} (other work on the machine slows the figures)",
        f"- Goal: at least {GOAL_FPS:g} frames/s; measured {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC",
        "- The app serves the `auto` row on a CPU. In the browser add the webcam capture, JPEG encoding and the "
        "round trip; frames offered while one is processed are dropped. torch eager's threads slow down sharply "
        "when other processes share the cores (see the load average), hence its 1-thread row.",
        "",
        "| engine | median ms/frame | p90 ms/frame | fps (median) | fps (p90) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['fps_median']:.1f} | "
                     f"{r['fps_p90']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.live_fps", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--out", type=Path, default=REPORT)
    p.add_argument("--engines", nargs="+", default=["torch", "auto"], choices=["torch", "auto"])
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from ikd_core.predict import Predictor

    load = "n/a"
    if hasattr(os, "getloadavg"):
        load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    frames = demo_frames()
    results: dict[str, dict[str, float]] = {}
    for engine in args.engines:
        # torch eager also at 1 thread: its 2 OpenMP threads stall when another process holds one of the cores
        for threads in sorted({args.threads, 1}, reverse=True) if engine == "torch" else [args.threads]:
            torch.set_num_threads(threads)
            predictor = Predictor.from_checkpoint(CHECKPOINT, "cpu", backend=engine)
            label = f"{engine} ({predictor.backend}, {threads} thread{'s' if threads > 1 else ''})"
            results[label] = stats(time_path(predictor, frames, args.frames))
            print(f"{label}: {results[label]['fps_median']:.1f} fps median", flush=True)
    torch.set_num_threads(args.threads)
    command = command_line("live_fps", sys.argv[1:] if argv is None else argv)
    text = section(results, command, args.threads, args.frames, load)
    write_section(args.out, HEADING, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
