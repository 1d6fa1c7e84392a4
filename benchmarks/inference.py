"""Inference engines on CPU: ms per image at batch 1 and 16 for torch eager, channels_last, torch.compile,
onnxruntime and OpenVINO, with each engine's maps compared to eager.

    python -m benchmarks.inference [--checkpoint CK] [--threads 2] [--out benchmarks/REPORT.md] [--quick]

Every (engine, batch) case runs in its own subprocess, one after another, so no engine's threads (onnxruntime
spins its workers after a run unless told not to; OpenVINO keeps a pool) run beside another's timing. The
report gets (or replaces) the section ``## CPU inference engines``; its other sections are kept (as
``benchmarks.perf`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .report import ROOT, assemble, command_line, machine_lines, split_report, utc_now

HEADING = "## CPU inference engines"
DEFAULT_CKPT = ROOT / "pretrained" / "demo_texture-efficientnet_lite0.safetensors"
BATCHES = (1, 16)
# (key, label, note)
CASES: tuple[tuple[str, str, str], ...] = (
    ("eager", "torch eager (today's `Predictor`)", "`model(x)` under `no_grad`"),
    ("eager_1t", "torch eager, 1 thread", "no OpenMP barriers between the ~200 small ops: shows how much of "
     "eager's time is waiting for a descheduled second thread when other processes share the cores"),
    ("teacher", "teacher alone, torch eager", "one network, for the batch effect"),
    ("channels_last", "torch eager, channels_last", "model and input in channels_last"),
    ("compile", "torch.compile (inductor)", "default mode, static shapes; compile time excluded"),
    ("ort", "onnxruntime, whole batch in one run", "the `export` graph, CPU provider (`OnnxEngine` session options)"),
    ("ort_mb1", "onnxruntime, one image per run", "`OnnxEngine` default (micro-batch 1)"),
    ("openvino", "OpenVINO, f32", "IR from the ONNX export; precision hint f32 (its CPU default may be bf16)"),
    ("predict_torch", "`Predictor.predict`, backend torch", "end to end: PIL images in, `Prediction`s out"),
    ("predict_auto", "`Predictor.predict`, backend auto (CLI default)", "end to end, onnxruntime on the cached export"),
)


# --------------------------------------------------------------------------- one case (in a subprocess)
CONV_OPS = {"mkldnn_convolution", "_slow_conv2d_forward", "_convolution", "convolution"}
ELEMENTWISE_OPS = {"native_batch_norm", "clamp", "clamp_", "hardtanh", "hardtanh_"}


def _inputs(batch: int, size: int, seed: int = 0) -> Any:
    """Normalised synthetic demo-texture images, good and defective (``ikd_core.export.sample_batch``)."""
    from ikd_core.export import sample_batch

    return sample_batch(size, batch, seed)


def _time(fn: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run_case(case: str, batch: int, checkpoint: str, onnx_path: str, ov_path: str, threads: int, repeats: int,
             maps_out: str) -> dict:
    """Time one engine at one batch size; save its maps of the deterministic batch to ``maps_out``."""
    import numpy as np
    import torch

    torch.set_num_threads(1 if case in ("eager_1t", "profile") else threads)
    from ikd_core.loading import load_model
    from ikd_core.predict import Predictor

    model, meta = load_model(checkpoint, "cpu")
    size = int(meta["image_size"])
    x = _inputs(batch, size)
    info: dict[str, Any] = {}
    if case == "profile":  # where eager's time goes (1 thread: no scheduling noise from barriers)
        from torch.profiler import profile

        largest = [0]

        def record(_module: Any, _inputs: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                largest[0] = max(largest[0], out.numel() * out.element_size() // batch)

        hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
        with torch.no_grad():
            model(x)
            for h in hooks:
                h.remove()
            with profile() as prof:
                model(x)
        ops = {e.key.removeprefix("aten::"): e.self_cpu_time_total / 1000 / batch for e in prof.key_averages()}
        return {"case": case, "batch": batch, "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])[:4]),
                "total": sum(ops.values()), "largest_activation_bytes": largest[0],
                "conv": sum(v for k, v in ops.items() if k in CONV_OPS),
                "elementwise": sum(v for k, v in ops.items() if k in ELEMENTWISE_OPS)}
    maps: Callable[[], Any]
    if case in ("eager", "eager_1t", "channels_last", "compile", "teacher"):
        net: Callable[[torch.Tensor], Any] = model
        if case == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        if case == "teacher":
            net = model.teacher
        if case == "compile":
            net = torch.compile(model)
            t0 = time.perf_counter()
            with torch.no_grad():
                net(x)
            info["compile_s"] = time.perf_counter() - t0

        def maps() -> Any:
            with torch.no_grad():
                out = net(x)
            return None if case == "teacher" else out[:, 0].numpy()
    elif case in ("ort", "ort_mb1"):
        from ikd_core.runtime import OnnxEngine

        engine = OnnxEngine(onnx_path, threads=threads, micro_batch=batch if case == "ort" else 1)
        xn = x.numpy()

        def maps() -> Any:
            return engine.maps(xn)
    elif case == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(ov_path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                            "PERFORMANCE_HINT": "LATENCY",
                                                            "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        xn = x.numpy()

        def maps() -> Any:
            return request.infer({0: xn})[0][:, 0].copy()
    elif case in ("predict_torch", "predict_auto"):
        from PIL import Image

        from ikd_core.data.transforms import denormalize

        pred = Predictor.from_checkpoint(checkpoint, "cpu", backend=case.removeprefix("predict_"))
        info["backend"] = pred.backend
        images = [Image.fromarray(denormalize(im)) for im in x]

        def maps() -> Any:
            return np.stack([p.anomaly_map for p in pred.predict(images, batch_size=16)])
    else:
        raise ValueError(case)
    times = _time(maps, repeats, warmup=2)
    out = maps()
    if out is not None:
        np.save(maps_out, np.asarray(out, dtype=np.float32))
    norm = meta["score_normalization"]
    return {"case": case, "batch": batch, "ms_per_image": 1000 * statistics.median(times) / batch,
            "ms_range": [1000 * min(times) / batch, 1000 * max(times) / batch], "repeats": repeats,
            "threshold": float(norm["threshold"]), "lo": float(norm["lo"]), "image_size": size, **info}


# --------------------------------------------------------------------------- driver
def _subprocess(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.inference", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:200]}
    return json.loads(lines[-1])


def versions() -> str:
    import importlib.metadata as md

    parts = []
    for name in ("torch", "onnx", "onnxruntime", "openvino"):
        try:
            parts.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            parts.append(f"{name} not installed")
    return ", ".join(parts)


def l2_cache_bytes() -> int:
    """Size of one core's L2 cache (Linux sysfs), 0 if unknown."""
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                return int(size.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
        except (OSError, ValueError):
            continue
    return 0


def batch_effect(prof: list[dict], ms: Callable[[str, int], float | None]) -> str:
    """Why eager slows down per image at batch 16, from the profile: the convolutions and the separate
    elementwise passes (batch norm, ReLU6 clamp) over activations that no longer fit the L2 cache."""

    conv = [r["conv"] for r in prof]
    elem = [r["elementwise"] for r in prof]
    l2 = l2_cache_bytes()
    act = prof[0]["largest_activation_bytes"] / 2**20  # per image, measured by forward hooks
    parts = [
        f"Batch effect of torch eager: in the 1-thread profile the convolutions take {conv[0]:.0f} -> {conv[1]:.0f} ms "
        f"and the separate batch-norm and clamp (ReLU6) passes {elem[0]:.0f} -> {elem[1]:.0f} ms per image from "
        f"batch 1 to {prof[1]['batch']}. These ops are memory-bound: the largest activation is {act:.1f} MB per "
        f"image, {act * prof[1]['batch']:.0f} MB at batch {prof[1]['batch']}"
        + (f", against an L2 cache of {l2 / 2**20:g} MiB per core" if l2 else "")
        + f", so at batch {prof[1]['batch']} every pass streams from main memory."
    ]
    whole1, whole16, auto1, auto16 = ms("ort", 1), ms("ort", 16), ms("predict_auto", 1), ms("predict_auto", 16)
    if whole1 and whole16:
        parts.append(f"The exported graph folds batch norm and ReLU6 into the convolutions (onnxruntime on the "
                     f"whole batch: b16 / b1 = {whole16 / whole1:.2f}).")
    if auto1 and auto16:
        parts.append(f"The default path runs one image per call (b16 / b1 = {auto16 / auto1:.2f}).")
    return " ".join(parts)


def section(results: dict[tuple[str, int], dict], export: dict, command: str, threads: int, checkpoint: str,
            when: str, load: tuple[float, float], rounds: int) -> str:
    import torch

    torch.set_num_threads(threads)

    def ms(case: str, batch: int) -> float | None:
        r = results.get((case, batch), {})
        return r.get("ms_per_image")

    def diff(case: str) -> str:
        r = results.get((case, 16), {})
        return "-" if r.get("diff") is None else f"{r['diff']:.1e}"

    lines = [
        HEADING, "",
        f"_Measured {when} by `{command}`._", "",
        *machine_lines(),
        f"- Load average (1 min) before / after the run: {load[0]:.2f} / {load[1]:.2f} (other processes on "
        "the cores slow every engine; torch eager most)",
        f"- {versions()}; {threads} threads for every engine (torch `set_num_threads`, onnxruntime "
        "`intra_op_num_threads`, threads spinning within a run and stopped at its end "
        "(`session.force_spinning_stop`), OpenVINO `INFERENCE_NUM_THREADS`)",
        f"- Model: `{Path(checkpoint).name}` (efficientnet_lite0 teacher + student + anomaly map + blur), "
        f"{results.get(('eager', 1), {}).get('image_size', 256)} px; export to ONNX "
        f"{export.get('onnx_s', float('nan')):.1f} s, OpenVINO {export.get('openvino_s', float('nan')):.1f} s",
        "",
        f"ms per image: median over timed runs (after 2 warm-up runs) of one call on the whole batch / batch size, "
        f"each (engine, batch) in its own fresh process, one at a time; the fastest of {rounds} round-robin "
        "round(s) (torch.compile: one round). Speed-up: today's eager ms/img at the same "
        "batch / this engine's. Map diff: max |map - eager map| / (threshold - lo) on the batch of 16 synthetic "
        "demo-texture images, good and defective (the parity bound is 1e-3).",
        "",
        "| Engine | b1 ms/img | b16 ms/img | b16 / b1 | speed-up b1 | speed-up b16 | map diff | notes |",
        "|:---|---:|---:|---:|---:|---:|---:|:---|",
    ]
    base1, base16 = ms("eager", 1), ms("eager", 16)
    for key, label, note in CASES:
        a, b = ms(key, 1), ms(key, 16)
        errors = [f"b{bt}: {results[(key, bt)]['error']}" for bt in BATCHES if "error" in results.get((key, bt), {})]
        extra = list(errors)
        if key == "compile":
            cs = [f"{results[(key, bt)]['compile_s']:.0f} s" for bt in BATCHES
                  if "compile_s" in results.get((key, bt), {})]
            if cs:
                extra.append("compile " + " / ".join(cs))
        if key.startswith("predict_"):
            be = {results[(key, bt)].get("backend") for bt in BATCHES if "backend" in results.get((key, bt), {})}
            if be:
                extra.append("ran on " + ", ".join(sorted(be)))
        cells = [
            label,
            "-" if a is None else f"{a:.1f}",
            "-" if b is None else f"{b:.1f}",
            "-" if a is None or b is None else f"{b / a:.2f}",
            "-" if a is None or base1 is None or key == "teacher" else f"{base1 / a:.2f}x",
            "-" if b is None or base16 is None or key == "teacher" else f"{base16 / b:.2f}x",
            "-" if key in ("eager", "teacher") else diff(key),
            "; ".join([note, *extra]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    prof = [results.get(("profile", bt), {}) for bt in BATCHES]
    if all("ops" in r for r in prof):
        per_batch = [f"batch {r['batch']}: total {r['total']:.0f} ms (" + ", ".join(
            f"{k.removeprefix('aten::')} {v:.0f}" for k, v in r["ops"].items()) + ")" for r in prof]
        lines += ["", "Where torch eager's time goes (torch.profiler self CPU time per image, 1 thread, top ops): "
                  + "; ".join(per_batch) + "."]
        lines += ["", batch_effect(prof, ms)]
    if max(load) > threads:
        lines += ["", f"Caution: the load average exceeded the {threads} threads used, so other processes shared the "
                  "cores: the table measures contention as much as the engines (torch eager, with an OpenMP barrier "
                  "after each of its small ops, suffers most). Rerun on an idle machine for the engines alone."]
    auto1, auto16 = ms("predict_auto", 1), ms("predict_auto", 16)
    torch1 = ms("predict_torch", 1)
    lines.append("")
    if auto1 and auto16 and torch1:
        r1, r16 = (results[("predict_auto", b)].get("rounds", []) for b in BATCHES)
        if auto16 <= auto1:
            batch_goal = "met"
        elif r1 and r16 and min(r16) <= max(r1):
            batch_goal = (f"not met by {100 * (auto16 / auto1 - 1):.0f} %, within the spread of the rounds: b1 "
                          f"{min(r1):.1f}-{max(r1):.1f}, b16 {min(r16):.1f}-{max(r16):.1f} ms/img, the same work per "
                          "image at both batch sizes")
        else:
            batch_goal = "not met"
        lines.append(f"Goals (default path = `Predictor.predict`, backend auto): speed-up over today's eager "
                     f"`Predictor.predict` at batch 1 {torch1 / auto1:.2f}x (goal 2.5x: "
                     f"{'met' if torch1 / auto1 >= 2.5 else 'not met'}); batch 16 / batch 1 time per image "
                     f"{auto16 / auto1:.2f} (goal at most 1.00: {batch_goal}).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="report to update (its other sections are kept); default: print the section")
    p.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run, not for the report)")
    p.add_argument("--cases", help="comma-separated subset of: " + ",".join(k for k, _, _ in CASES))
    p.add_argument("--rounds", type=int, default=3,
                   help="run every case this many times, round-robin; report the fastest round (least disturbed)")
    p.add_argument("--compile-timeout", type=float, default=600, help="seconds allowed per torch.compile case")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--onnx", help=argparse.SUPPRESS)
    p.add_argument("--ov", help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, help=argparse.SUPPRESS)
    p.add_argument("--maps-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:  # worker
        print(json.dumps(run_case(args.case, args.batch, args.checkpoint, args.onnx, args.ov, args.threads,
                                  args.repeats, args.maps_out)))
        return 0

    import numpy as np

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = command_line("inference", sys.argv[1:] if argv is None else argv)
    wanted = args.cases.split(",") if args.cases else [k for k, _, _ in CASES]
    when = utc_now()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        env_cache = os.environ.get("IKD_CACHE_DIR")
        os.environ["IKD_CACHE_DIR"] = str(Path(tmp) / "cache")  # predict_auto exports into a fresh cache
        export: dict[str, float] = {}
        onnx_path, ov_path = Path(tmp) / "model.onnx", Path(tmp) / "model.xml"
        for fmt, path in (("onnx", onnx_path), ("openvino", ov_path)):
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "ikd_core", "export", "--checkpoint", args.checkpoint,
                                "--format", fmt, "--out", str(path)], capture_output=True, text=True, cwd=ROOT)
            if r.returncode == 0:
                export[f"{fmt}_s"] = time.perf_counter() - t0
            else:
                print(f"{fmt} export failed: {r.stderr.strip()[-300:]}", file=sys.stderr)
        results: dict[tuple[str, int], dict] = {}
        for rnd in range(args.rounds):
            for key in wanted:
                if key == "compile" and rnd > 0:
                    continue  # minutes of compilation per process: one round
                for batch in BATCHES:
                    repeats = (3 if batch == 1 else 1) if args.quick else (20 if batch == 1 else 3)
                    maps_out = Path(tmp) / f"{key}-{batch}.npy"
                    res = _subprocess(["--case", key, "--batch", str(batch), "--checkpoint", args.checkpoint,
                                       "--onnx", str(onnx_path), "--ov", str(ov_path), "--threads",
                                       str(args.threads), "--repeats", str(repeats), "--maps-out", str(maps_out)],
                                      timeout=args.compile_timeout if key == "compile" else 600)
                    prev = results.get((key, batch))
                    if "ms_per_image" in res:
                        res["rounds"] = [*(prev or {}).get("rounds", []), res["ms_per_image"]]
                        res["ms_per_image"] = min(res["rounds"])
                    if prev is None or "ms_per_image" in res:
                        results[(key, batch)] = res
                    print(f"round {rnd + 1} {key:14s} b{batch:<2d} " + (
                        f"{res['rounds'][-1]:.1f} ms/img" if "ms_per_image" in res else res.get("error", "")),
                        flush=True)
        if "eager" in wanted:
            for batch in BATCHES:
                results[("profile", batch)] = _subprocess(["--case", "profile", "--batch", str(batch), "--checkpoint",
                                                           args.checkpoint, "--threads", "1"], timeout=600)
        ref = Path(tmp) / "eager-16.npy"
        for (key, batch), res in results.items():
            mp = Path(tmp) / f"{key}-{batch}.npy"
            if batch == 16 and ref.is_file() and mp.is_file() and "threshold" in res:
                res["diff"] = float(np.abs(np.load(mp) - np.load(ref)).max()) / max(res["threshold"] - res["lo"],
                                                                                  1e-12)
        if env_cache is None:
            os.environ.pop("IKD_CACHE_DIR", None)
        else:
            os.environ["IKD_CACHE_DIR"] = env_cache
    text = section(results, export, command, args.threads, args.checkpoint, when, (load0, os.getloadavg()[0]),
                   args.rounds)
    if not args.out:
        print(text)
        return 0
    out = Path(args.out)
    pre, sections = split_report(out.read_text(encoding="utf-8")) if out.is_file() else ("# Report\n", {})
    key = next((k for k in sections if k.startswith(HEADING)), HEADING)
    sections[key] = text
    out.write_text(assemble(pre, sections), encoding="utf-8")
    print(f"section {HEADING!r} written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
