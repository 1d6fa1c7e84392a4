"""GPU check for a lent machine (called by ``benchmarks/gpu_check.sh``): nvidia-smi, a one-minute AMP training run
checked against a float32 evaluation of its checkpoint, AMP training steps, inference latency and the CSL on the GPU,
as a markdown report.

    python -m benchmarks.gpu_check [--device cuda] [--quick] [--out FILE] [--budget-s 330] [--amp-minutes 1]

Writes ``$OUT/gpu_report.md`` when ``$OUT`` is set, else ``benchmarks/GPU_REPORT.md``; the report is rewritten
after every section, so a run stopped early keeps what it measured. Each section is guarded: one failure is
reported and the others still run. ``python -m benchmarks.perf --append-gpu FILE`` adds it to REPORT.md.

``--device cpu --quick`` is a smoke test of this script (64 px, tiny sizes), not a measurement.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network on the lent machine: never wait for the hub

import torch  # noqa: E402

from . import measure  # noqa: E402
from .report import BENCH, command_line, machine_lines, utc_now  # noqa: E402

BACKBONES = ("efficientnet_lite0", "hrnet_w32")


def default_out() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "gpu_report.md" if out else BENCH / "GPU_REPORT.md"


def nvidia_smi() -> str:
    try:
        res = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60, check=False)
        return (res.stdout or res.stderr).rstrip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi not available: {exc}"


class Report:
    def __init__(self, out: Path, header: list[str]) -> None:
        self.out = out
        self.header = header
        self.sections: list[str] = []
        self.errors: list[str] = []

    def add(self, text: str) -> None:
        self.sections.append(text.rstrip() + "\n")
        self.write()

    def write(self) -> None:
        parts = ["\n".join(self.header).rstrip() + "\n", *self.sections]
        if self.errors:
            parts.append("## Errors\n\n" + "\n".join(self.errors) + "\n")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text("\n".join(parts), encoding="utf-8")


def run_section(report: Report, name: str, fn: Callable[[], str], deadline: float) -> None:
    if time.monotonic() > deadline:
        report.errors.append(f"- {name}: skipped, the time budget was spent")
        report.write()
        print(f"{name}: skipped (time budget)", flush=True)
        return
    t0 = time.perf_counter()
    try:
        report.add(fn())
    except Exception as exc:  # noqa: BLE001 - one section's failure keeps the rest
        tb = traceback.format_exc().strip().splitlines()
        report.errors.append(f"- {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
                             f"  ```\n  " + "\n  ".join(tb[-6:]) + "\n  ```")
        report.write()
        print(f"{name} FAILED: {exc}", flush=True)
    print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_section(device: str, image_size: int, batch: int, steps: int, warmup: int, deadline: float) -> str:
    lines = [
        "## Training step (AMP)",
        "",
        f"Forward + backward + AdamW on random {image_size} px images, batch {batch}, device {device}"
        + (", bf16 autocast, float32 loss" if device.startswith("cuda") else "")
        + f"; our loss (fast CSL) and the reference (naive |H| x |H| Gram CSL) interleaved on the same model, "
        f"{steps} steps of each after {warmup} warm-up pair(s); img/s from the median step; speed-up = median over "
        "pairs of reference / ours [min - max]; loss ms = the loss alone, forward + backward. Peak memory "
        + ("(CUDA max_memory_allocated)" if device.startswith("cuda") else "(not measured in-process on CPU)")
        + ": a step above the allocation before it. abs(H): hard positions per level in the last step.",
        "",
        "| Backbone | Teacher | AHSM | ours img/s | reference img/s | speed-up | ours loss ms | reference loss ms | "
        "ours peak MB | reference peak MB | abs(H) per level |",
        "|:---|:---|:---|---:|---:|:---|---:|---:|---:|---:|:---|",
    ]
    cases = [(bb, True) for bb in BACKBONES] + [(BACKBONES[0], False)]
    for bb, hard in cases:
        ahsm = "on" if hard else "off"
        if time.monotonic() > deadline:
            lines.append(f"| {bb} | - | {ahsm} | skipped (time budget) | | | | | | | |")
            continue
        try:
            r = measure.train_step_case(bb, batch, device, steps=steps, warmup=warmup, amp=True, image_size=image_size,
                                     hard_mining=hard)
            f, n, cell, speedup = r["fast"], r["naive"], measure.step_cell, measure.speedup_text
            lines.append(f"| {bb} | {r['teacher']} | {ahsm} | {cell(f, 'images_per_s', '.1f')} | "
                         f"{cell(n, 'images_per_s', '.1f')} | {speedup(r)} | {cell(f, 'loss_ms', '.2f')} | "
                         f"{cell(n, 'loss_ms', '.2f')} | {cell(f, 'peak_mb', '.0f')} | {cell(n, 'peak_mb', '.0f')} | "
                         f"{', '.join(map(str, f.get('hard_sizes') or n.get('hard_sizes') or []))} |")
            if "skipped" in n:
                lines.append(f"| | | | reference: {n['skipped']} | | | | | | | |")
        except Exception as exc:  # noqa: BLE001 - reported in the row
            lines.append(f"| {bb} | - | {ahsm} | failed: {type(exc).__name__}: {str(exc)[:100]} | | | | | | | |")
        print(lines[-1], flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return "\n".join(lines)


def inference_section(device: str, image_size: int, batches: list[int], repeats: int, deadline: float) -> str:
    cuda = device.startswith("cuda")
    lines = [
        "## Inference latency",
        "",
        f"ms per image at {image_size} px on {device} (median of {repeats}): full model = teacher + student + "
        "anomaly map; floor = two teacher forwards; overhead = full / floor - 1 (float32).",
        "",
        "| Backbone | Batch | float32 ms/img | " + ("AMP bf16 ms/img | " if cuda else "")
        + "floor ms/img | overhead |",
        "|:---|---:|---:|" + ("---:|" if cuda else "") + "---:|---:|",
    ]
    for bb in BACKBONES:
        for batch in batches:
            if time.monotonic() > deadline:
                lines.append(f"| {bb} | {batch} | skipped (time budget) |" + (" |" if cuda else "") + " | |")
                continue
            try:
                warm = 1 if repeats < 5 else 3
                r = measure.inference_case(bb, batch, device, repeats=repeats, warmup=warm, image_size=image_size)
                amp = (measure.inference_case(bb, batch, device, repeats=repeats, warmup=warm, amp=True,
                                           image_size=image_size)["ms_per_image"] if cuda else None)
                over = r["ms_per_image"] / r["floor_ms_per_image"] - 1
                lines.append(f"| {bb} | {batch} | {r['ms_per_image']:.3f} | " + (f"{amp:.3f} | " if cuda else "")
                             + f"{r['floor_ms_per_image']:.3f} | {100 * over:+.0f} % |")
            except Exception as exc:  # noqa: BLE001 - reported in the row
                lines.append(f"| {bb} | {batch} | failed: {type(exc).__name__}: {str(exc)[:100]} |"
                             + (" |" if cuda else "") + " | |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def csl_section(device: str, fast_n: int, naive_n: int, repeats: int) -> str:
    lines = [
        "## Context similarity loss on the device",
        "",
        f"Forward + backward of the CSL on (n, C) float32 features on {device}, best of {repeats}; peak memory above "
        "the inputs" + (" (CUDA max_memory_allocated)." if device.startswith("cuda") else " (ru_maxrss growth)."),
        "",
        "| n = abs(H) | C | form | ms | peak MB | loss |",
        "|---:|---:|:---|---:|---:|---:|",
    ]
    for c in (128, 256):
        for form, n in (("fast", fast_n), ("naive", naive_n), ("fast", naive_n)):
            try:
                r = measure.csl_device_case(form, n, c, device, repeats=repeats)
                lines.append(f"| {n} | {c} | {form} | {1000 * r['seconds']:.3f} | {r['peak_mb']:.0f} | "
                             f"{r['loss']:.6g} |")
            except Exception as exc:  # noqa: BLE001 - reported in the row
                lines.append(f"| {n} | {c} | {form} | failed: {type(exc).__name__}: {str(exc)[:100]} | | |")
            print(lines[-1], flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return "\n".join(lines)


def amp_training_section(device: str, image_size: int, minutes: float) -> str:
    """A real training run with AMP (bf16 autocast on CUDA) for ``minutes`` on the demo texture, then the saved
    checkpoint evaluated again in float32: the maps, scores and threshold of the run must equal the fp32 ones (the
    maps, blur, threshold fit and metrics are always float32; a bf16 map would have a few hundred distinct values).
    """
    import tempfile

    from torch.utils.data import DataLoader, Subset

    from ikd_core.calibration import fit_normalization
    from ikd_core.checkpoint import load_student_state
    from ikd_core.data.batching import split_holdout
    from ikd_core.data.sources import DataSpec, build_datasets
    from ikd_core.data.synthetic import generate_demo_dataset
    from ikd_core.evaluation import evaluate_model
    from ikd_core.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        root = generate_demo_dataset(Path(tmp) / "demo", categories=("demo_texture",), image_size=image_size, seed=0)
        spec = DataSpec("demo", "demo_texture", str(root))
        train_ds, test_ds = build_datasets(spec, image_size)
        teacher = None if measure.teacher_for("efficientnet_lite0") == "packaged" else "random"
        cfg = TrainConfig(image_size=image_size, epochs=100_000, batch_size=8, lr=1e-2, max_minutes=minutes,
                          amp=True, device=device, teacher_weights=teacher)
        res = train(train_ds, test_ds, cfg, out_path=Path(tmp) / "amp.safetensors", category="demo_texture",
                    data_info=spec.to_dict())
        dev = torch.device(device)
        model = res.model
        model.student.load_state_dict(load_student_state(res.checkpoint))  # the saved checkpoint, in fp32
        model.float().eval()
        ref = evaluate_model(model, test_ds, dev).outputs
        _, hold_idx = split_holdout(len(train_ds), cfg.holdout_fraction, cfg.seed)
        hold = evaluate_model(model, Subset(train_ds, hold_idx), dev).outputs
        norm = res.metadata["score_normalization"]
        refit = fit_normalization(hold["maps"], cfg.threshold_k, score_maps=hold.get("score_maps"))
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            x = next(iter(DataLoader(test_ds, batch_size=1)))["image"].to(dev)
            under_amp = model(x)
    scale = norm["threshold"] - norm["lo"]
    run_maps = res.test_outputs["maps"]
    diff = (run_maps - ref["maps"]).abs().max().item() / scale
    thr_rel = abs(refit["threshold"] - norm["threshold"]) / scale
    same_verdicts = int(((res.test_outputs["scores"] >= norm["threshold"]) == (ref["scores"] >= norm["threshold"]))
                        .sum())
    distinct_run = run_maps[0].unique().numel()
    distinct_ref = ref["maps"][0].unique().numel()
    ok = diff <= 1e-3 and thr_rel <= 1e-3 and run_maps.dtype == torch.float32
    lines = [
        "## AMP training run vs float32 evaluation",
        "",
        f"`ikd_core.train.train` on the demo texture ({len(train_ds)} good images, {image_size} px, "
        "efficientnet_lite0, "
        f"teacher {res.metadata['teacher']['source']}), batch 8, lr 1e-2, AMP "
        f"({'bf16 autocast' if dev.type == 'cuda' else 'off: not CUDA'}), stopped by a {minutes:g}-minute limit; then "
        "the saved checkpoint evaluated again in float32 without autocast. Differences are in units of "
        "(threshold - lo), the span the verdicts use.",
        "",
        "| what | value |",
        "|:---|---:|",
        f"| epochs / images per s / train s | {res.metadata['epochs_completed']} / {res.metadata['images_per_sec']} / "
        f"{res.metadata['train_seconds']} |",
        f"| test metrics of the run | {', '.join(f'{k} {v:.4f}' for k, v in res.metrics.items())} |",
        f"| max abs(run map - fp32 map) / (threshold - lo), {len(test_ds)} test images | {diff:.2e} |",
        f"| abs(run threshold - fp32 refit) / (threshold - lo) | {thr_rel:.2e} |",
        f"| same verdicts | {same_verdicts} / {len(test_ds)} |",
        f"| map dtype of the run / distinct values in one map (run, fp32) | {run_maps.dtype} / {distinct_run}, "
        f"{distinct_ref} |",
        f"| a map computed under bf16 autocast: dtype, distinct values | {under_amp.dtype}, "
        f"{under_amp.unique().numel()} |",
        f"| check (both differences <= 1e-3, float32 maps) | {'pass' if ok else 'FAIL'} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="smoke test: 64 px, batch 2, tiny CSL sizes, 1 step")
    p.add_argument("--out", type=Path, default=None, help="default: $OUT/gpu_report.md, else benchmarks/GPU_REPORT.md")
    p.add_argument("--budget-s", type=float, default=330.0, help="skip what is left after this many seconds")
    p.add_argument("--amp-minutes", type=float, default=1.0, help="length of the AMP training run")
    args = p.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget_s
    out = args.out or default_out()
    note = measure.ensure_kornia()
    command = command_line("gpu_check", sys.argv[1:] if argv is None else argv)
    title = torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available() else "CPU"
    header = [
        f"# GPU check: {title}" + (" (smoke test, not a measurement)" if args.quick else ""),
        "",
        f"- Command: `{command}`",
        *machine_lines(),
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}; "
        f"bf16 supported: {torch.cuda.is_available() and torch.cuda.is_bf16_supported()}",
        f"- Date: {utc_now()}",
        *([f"- Note: {note}"] if note else []),
        "",
    ]
    report = Report(out, header)
    report.write()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        report.errors.append("- CUDA is not available to torch: nothing measured")
        report.write()
        print(f"CUDA not available; report written to {out}")
        return 1
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True

    smi = nvidia_smi()
    print(smi, flush=True)
    report.add("## nvidia-smi\n\n```text\n" + smi + "\n```")
    if args.quick:
        size, batch, steps, warmup, repeats, fast_n, naive_n = 64, 2, 1, 1, 1, 4096, 1024
    else:
        size, batch, steps, warmup, repeats, fast_n, naive_n = 256, 8, 10, 3, 20, 65536, 8192
    run_section(report, "amp-training", lambda: amp_training_section(
        args.device, size, args.amp_minutes if not args.quick else min(args.amp_minutes, 0.1)), deadline)
    run_section(report, "training", lambda: train_section(args.device, size, batch, steps, warmup, deadline),
                deadline)
    run_section(report, "inference", lambda: inference_section(args.device, size, [1, 16] if not args.quick else [1, 2],
                                                               repeats, deadline), deadline)
    run_section(report, "csl", lambda: csl_section(args.device, fast_n, naive_n, 3 if not args.quick else 1),
                deadline)
    report.header.insert(len(report.header) - 1, f"- Total time: {time.monotonic() - start:.0f} s")
    report.write()
    print(f"report written to {out} ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
