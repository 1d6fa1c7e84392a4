"""Benchmark: exact fast context similarity loss vs the naive |H| x |H| Gram form.

Each case runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own.
Writes a markdown report.

    python benchmarks/csl.py --out benchmarks/CSL_REPORT.md [--sizes 1024 8192 32768 65536] [--channels 128 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _case(form: str, n: int, c: int, repeats: int) -> dict[str, float]:
    """Run inside the subprocess: time forward+backward of one form."""
    import resource

    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    from ikd_core.loss import context_similarity_loss, context_similarity_loss_naive

    fn = context_similarity_loss if form == "fast" else context_similarity_loss_naive
    g = torch.Generator().manual_seed(0)
    t = F.normalize(torch.randn(n, c, generator=g), dim=1)
    s0 = F.normalize(t + 0.1 * torch.randn(n, c, generator=g), dim=1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        s = s0.clone().requires_grad_(True)
        start = time.perf_counter()
        loss = fn(t, s)
        loss.backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": min(times), "peak_mb": (peak - base) / 1024, "loss": loss.item()}


def naive_bytes(n: int) -> int:
    """Bytes the naive form peaks at: about five n x n float32 matrices (measured at n = 8192)."""
    return 20 * n * n


def run(sizes: list[int], channels: list[int], repeats: int, mem_limit_gb: float) -> list[dict]:
    rows = []
    for c in channels:
        for n in sizes:
            for form in ("fast", "naive"):
                row = {"n": n, "C": c, "form": form}
                if form == "naive" and naive_bytes(n) > mem_limit_gb * 2**30:
                    row["skipped"] = f"needs ~{naive_bytes(n) / 2**30:.0f} GiB (limit {mem_limit_gb:g})"
                    rows.append(row)
                    print(row, flush=True)
                    continue
                code = (f"import json,sys; sys.path.insert(0,{str(ROOT / 'benchmarks')!r}); import csl; "
                        f"print(json.dumps(csl._case({form!r},{n},{c},{repeats})))")
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    row["skipped"] = f"failed: {out.stderr.strip().splitlines()[-1][:80]}"
                else:
                    row.update(json.loads(out.stdout.strip().splitlines()[-1]))
                rows.append(row)
                print(row, flush=True)
    return rows


def report(rows: list[dict], command: str) -> str:
    lines = [
        "# Context similarity loss: exact fast form vs naive Gram",
        "",
        f"Command: `{command}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}",
        "",
        "Forward + backward of the CSL on (n, C) float32 features (best of the repeats); peak memory is",
        "the growth of the subprocess's resident set during the timed calls.",
        "",
        "| n = abs(H) | C | fast s | naive s | speed-up | fast peak MB | naive peak MB | rel. diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["n"], r["C"], r["form"]): r for r in rows}
    for n, c in sorted({(r["n"], r["C"]) for r in rows}, key=lambda k: (k[1], k[0])):
        f, v = by[(n, c, "fast")], by[(n, c, "naive")]
        if "skipped" in v or "skipped" in f:
            naive_s = v.get("skipped", "")
            lines.append(f"| {n} | {c} | {f.get('seconds', float('nan')):.4f} | {naive_s} | - | "
                         f"{f.get('peak_mb', float('nan')):.0f} | - | - |")
            continue
        rel = abs(f["loss"] - v["loss"]) / abs(v["loss"])
        lines.append(f"| {n} | {c} | {f['seconds']:.4f} | {v['seconds']:.4f} | {v['seconds'] / f['seconds']:.0f}x | "
                     f"{f['peak_mb']:.0f} | {v['peak_mb']:.0f} | {rel:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 8192, 32768, 65536])
    p.add_argument("--channels", type=int, nargs="+", default=[128, 256])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--naive-mem-limit-gb", type=float, default=12.0,
                   help="skip naive cases whose n x n matrices would exceed this")
    p.add_argument("--out", default="benchmarks/CSL_REPORT.md")
    args = p.parse_args()
    rows = run(args.sizes, args.channels, args.repeats, args.naive_mem_limit_gb)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    Path(args.out).write_text(report(rows, command))
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"report written to {args.out}")


if __name__ == "__main__":
    main()
