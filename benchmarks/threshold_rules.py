"""Threshold rules on held-out good scores, compared by the verdicts they give: for each recorded run (a real-bench run
or a demo-verdict checkpoint with its held-out and test scores), each rule fits a threshold on the run's held-out good
image scores alone, and the run's test images are called at it.

    python -m benchmarks.threshold_rules results/real_bench_dev_verdict.json results/demo_verdict_seeds.json \\
        --out results/threshold_rules.md

The app's rule today is ``max(mean + 3 std, max)`` (``ikd_core.calibration.fit_normalization``): above every held-out
good image. With few held-out images (the demo keeps 6) one hard good image among them sets it, which is what this
report measures against rules that a single image moves less.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .report import called_right, command_line, machine_lines


def _robust(s: np.ndarray, k: float = 3.0) -> float:
    """median + k robust standard deviations (1.4826 median absolute deviations)."""
    med = float(np.median(s))
    return med + k * 1.4826 * float(np.median(np.abs(s - med)))


#: Rules: held-out good scores (n,) -> threshold.
RULES: dict[str, Callable[[np.ndarray], float]] = {
    "max(mean + 3 std, max) (today)": lambda s: max(float(s.mean() + 3 * s.std(ddof=1)), float(s.max())),
    "mean + 3 std": lambda s: float(s.mean() + 3 * s.std(ddof=1)),
    "max": lambda s: float(s.max()),
    "median + 3 robust std": _robust,
    "max(median + 3 robust std, 2nd highest)": lambda s: max(_robust(s), float(np.sort(s)[-2])),
}


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """The runs of real-bench JSONs (``{"runs": [...]}``) and demo-verdict JSONs (a list; whole-image rows only)
    that recorded their held-out and test scores, as (source, method, seed, scores) rows."""
    out = []
    for path in paths:
        data = json.loads(path.read_text())
        for r in data["runs"] if isinstance(data, dict) else data:
            if "holdout_scores" not in r or r.get("mode", "whole") != "whole":
                continue
            out.append({"source": r["category"], "method": r.get("variant", r.get("method")), "seed": r["seed"],
                        "holdout": np.asarray(r["holdout_scores"], dtype=np.float64),
                        "scores": np.asarray(r["test_scores"], dtype=np.float64),
                        "labels": np.asarray(r["test_labels"])})
    return out


def calls(run: dict[str, Any], rule: Callable[[np.ndarray], float]) -> tuple[float, float]:
    """(good right, defective right) of ``run``'s test images at the threshold ``rule`` fits on its held-out scores."""
    return called_right(run["scores"], run["labels"], rule(run["holdout"]))


def build_report(runs: list[dict[str, Any]], command: str) -> str:
    """Per source and method: each rule's mean good right / defective right over the seeds, and how many seeds get
    80 % of both right; then each rule's mean over every source and method."""
    keys = sorted({(r["source"], r["method"]) for r in runs})
    names = list(RULES)
    lines = ["# Threshold rules on held-out good scores", "", f"- Command: `{command}`", *machine_lines(), "",
             "Each cell: good right / defective right at the threshold the rule fits on the run's held-out good "
             "scores, mean over the seeds, and (in brackets) the seeds with both ≥ 80 %.", "",
             f"| source | method | held-out n | seeds | {' | '.join(names)} |",
             "|---|---|---:|---:|" + "---|" * len(names)]
    overall: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for source, method in keys:
        rs = [r for r in runs if r["source"] == source and r["method"] == method]
        cells = []
        for n in names:
            gb = [calls(r, RULES[n]) for r in rs]
            g, b = statistics.mean(x[0] for x in gb), statistics.mean(x[1] for x in gb)
            overall[n].append((g, b))
            cells.append(f"{g:.2f} / {b:.2f} ({sum(x[0] >= 0.8 and x[1] >= 0.8 for x in gb)})")
        n_held = "–".join(sorted({str(len(r["holdout"])) for r in rs}))
        lines.append(f"| {source} | {method} | {n_held} | {len(rs)} | {' | '.join(cells)} |")
    lines += ["", "Mean over the rows above (good right / defective right):", "",
              "| rule | good right | defective right |", "|---|---:|---:|"]
    for n in names:
        lines.append(f"| {n} | {statistics.mean(x[0] for x in overall[n]):.3f} | "
                     f"{statistics.mean(x[1] for x in overall[n]):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.threshold_rules", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", type=Path, help="real_bench or demo_verdict JSONs with held-out scores")
    p.add_argument("--out", default="results/threshold_rules.md")
    args = p.parse_args(argv)
    runs = load_runs(args.inputs)
    if not runs:
        raise SystemExit("no run in these files recorded its held-out and test scores")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(runs, command_line("threshold_rules", sys.argv[1:] if argv is None else argv)))
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
