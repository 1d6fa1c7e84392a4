"""Benchmark: exact fast context similarity loss vs the naive |H| x |H| Gram form.

Each case runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own.
Writes a markdown report.

    python -m benchmarks.csl --out benchmarks/CSL_REPORT.md [--sizes 1024 8192 32768 65536] [--channels 128 256]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .measure import csl_cpu_rows, csl_table
from .report import command_line, machine_lines


def report(rows: list[dict], command: str) -> str:
    lines = [
        "# Context similarity loss: exact fast form vs naive Gram",
        "",
        f"- Command: `{command}`",
        *machine_lines(),
        "",
        *csl_table(rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.csl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 8192, 32768, 65536])
    p.add_argument("--channels", type=int, nargs="+", default=[128, 256])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--naive-mem-limit-gb", type=float, default=12.0,
                   help="skip naive cases whose n x n matrices would exceed this")
    p.add_argument("--out", default="benchmarks/CSL_REPORT.md")
    args = p.parse_args(argv)
    rows = csl_cpu_rows(args.sizes, args.channels, args.repeats, args.naive_mem_limit_gb)
    command = command_line("csl", sys.argv[1:] if argv is None else argv)
    Path(args.out).write_text(report(rows, command))
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"report written to {args.out}")


if __name__ == "__main__":
    main()
