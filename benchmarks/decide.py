"""Issue 16's rule on defaults, applied to the real-image bench's reports: the candidate that wins on the test split
at every budget (3 **and** 10 minutes) becomes the CPU recipe.

    python -m benchmarks.decide results/real_bench_3min.json results/real_bench_10min.json \
        --candidates ikd+denoise ikd+denoise+fuse ikd+denoise+fuse+dscore --out results/decision.md

At each budget the candidates are compared on the seeds that every one of them ran on every category (paired: the
same seeds, so a lucky seed does not favour one method), on the bench mean (each category first averaged over those
seeds). A candidate wins a budget when it has the best mean of both of the goals' metrics, image AUROC and AU-PRO;
the report also gives, per seed, the difference between the two best on each metric, to show whether the gap is
larger than the seeds' spread.

Seeds move these means by a few hundredths, so the report also applies the rule up to the seeds' spread: ``a``
*beats* ``b`` when, on the paired per-seed differences, ``a`` leads on one deciding metric by more than their standard
deviation and ``b`` leads on none by that much (two seeds at least; one seed shows no spread, so it beats no one). The
candidate that no other beats at any budget is the bench's choice; where several are unbeaten, the bench
cannot tell them apart and the report says so. Each candidate's goals (:func:`benchmarks.real_bench.goals_section`)
follow.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.real_bench import METRICS, _method_means, goals_section, shared_seeds
from benchmarks.report import command_line

#: The metrics a winner must lead on (the issue's goals name these two; pixel AUROC is reported beside them).
DECIDING = ("image_auroc", "au_pro")


def budget_means(runs: list[dict[str, Any]], methods: list[str],
                 seeds: list[int]) -> dict[str, dict[str, float]]:
    """Per method, the bench mean of each metric over ``seeds`` (each category first averaged over them)."""
    rs = [r for r in runs if r["seed"] in seeds]
    cats = sorted({r["category"] for r in rs})
    return {m: _method_means(rs, m, cats) for m in methods}


def winner(means: dict[str, dict[str, float]]) -> str | None:
    """The method with the best mean on every metric of :data:`DECIDING`, or None when no one leads on all."""
    leaders = {max(means, key=lambda m: means[m][k]) for k in DECIDING}
    return leaders.pop() if len(leaders) == 1 else None


def seed_deltas(runs: list[dict[str, Any]], a: str, b: str, seeds: list[int], metric: str) -> list[float]:
    """Per seed, ``a``'s bench mean of ``metric`` minus ``b``'s (paired: the same seed and categories)."""
    per_seed = [budget_means(runs, [a, b], [s]) for s in seeds]
    return [p[a][metric] - p[b][metric] for p in per_seed]


def clearly_ahead(deltas: list[float]) -> bool:
    """Whether paired differences favour the first method by more than their spread: mean > 0 and mean > std
    (needs two seeds; one seed has no spread to compare with)."""
    return len(deltas) > 1 and statistics.mean(deltas) > 0 and statistics.mean(deltas) > statistics.stdev(deltas)


def beats(runs: list[dict[str, Any]], a: str, b: str, seeds: list[int]) -> bool:
    """``a`` is clearly ahead of ``b`` on some deciding metric and ``b`` on none (:func:`clearly_ahead`)."""
    ahead = {k: clearly_ahead(seed_deltas(runs, a, b, seeds, k)) for k in DECIDING}
    behind = {k: clearly_ahead(seed_deltas(runs, b, a, seeds, k)) for k in DECIDING}
    return any(ahead.values()) and not any(behind.values())


def decide(reports: dict[str, list[dict[str, Any]]], candidates: list[str]) -> dict[str, Any]:
    """Per budget (a report's label): the shared seeds, the means, the winner and the per-seed gaps between the two
    best on each deciding metric; ``overall``: the candidate that wins every budget, or None."""
    out: dict[str, Any] = {"budgets": {}}
    for label, runs in reports.items():
        missing = [m for m in candidates if not any(r["method"] == m for r in runs)]
        if missing:
            raise SystemExit(f"{label}: no runs of {', '.join(missing)}")
        seeds = shared_seeds(runs, candidates)
        if not seeds:
            raise SystemExit(f"{label}: no seed on which every candidate ran every category")
        means = budget_means(runs, candidates, seeds)
        gaps = {}
        for k in DECIDING:
            first, second = sorted(candidates, key=lambda m: means[m][k], reverse=True)[:2]
            gaps[k] = (first, second, seed_deltas(runs, first, second, seeds, k))
        beaten = {c: [o for o in candidates if o != c and beats(runs, o, c, seeds)] for c in candidates}
        out["budgets"][label] = {"seeds": seeds, "means": means, "winner": winner(means), "gaps": gaps,
                                 "beaten_by": beaten, "runs": runs}
    winners = {b["winner"] for b in out["budgets"].values()}
    out["overall"] = winners.pop() if len(winners) == 1 and None not in winners else None
    out["unbeaten"] = [c for c in candidates if not any(b["beaten_by"][c] for b in out["budgets"].values())]
    out["choice"] = out["overall"] or (out["unbeaten"][0] if len(out["unbeaten"]) == 1 else None)
    return out


def build_report(decision: dict[str, Any], command: str) -> str:
    """Markdown: a table per budget, the gaps between the two best, and the rule's verdict."""
    lines = ["# Decision on the CPU recipe (issue 16's rule)", "", f"Command: `{command}`", "",
             "A candidate wins a budget with the best bench mean of both image AUROC and AU-PRO, on the seeds that "
             "every candidate ran on every category (paired). The rule: the candidate that wins every budget "
             "becomes the CPU recipe. Up to the seeds' spread, A beats B when A leads one of them by more than the "
             "std of the per-seed differences and B leads neither by that much; the candidate no other beats at any "
             "budget is the bench's choice. The bench does not judge the app's verdict at its fitted threshold "
             "(`python -m benchmarks.demo_verdict`).", ""]
    for label, b in decision["budgets"].items():
        means = b["means"]
        best = {k: max(means, key=lambda m: means[m][k]) for k in METRICS}
        lines += [f"## {label}", "", f"Seeds {b['seeds']}.", "",
                  "| method | image AUROC | pixel AUROC | AU-PRO |", "|---|---:|---:|---:|"]
        for m, v in means.items():
            cells = [("n/a" if math.isnan(v[k]) else (f"**{v[k]:.3f}**" if best[k] == m else f"{v[k]:.3f}"))
                     for k in METRICS]
            lines.append(f"| {m} | {' | '.join(cells)} |")
        lines.append("")
        for k, (first, second, deltas) in b["gaps"].items():
            spread = ""
            if len(deltas) > 1:
                sd = statistics.stdev(deltas)
                spread = f", std {sd:.3f}" + ("; within the seeds' spread" if abs(statistics.mean(deltas)) < sd
                                               else "")
            lines.append(f"- {k}: `{first}` − `{second}` = {statistics.mean(deltas):+.3f} (per seed "
                         f"{', '.join(f'{d:+.3f}' for d in deltas)}{spread})")
        lines += ["", f"Winner: {'`' + b['winner'] + '`' if b['winner'] else 'none (no candidate leads on both)'}", ""]
        lines += [f"- `{c}` is beaten beyond the seeds' spread by " + (", ".join(f"`{o}`" for o in by) or "no one")
                  for c, by in b["beaten_by"].items()]
        for c in b["means"]:
            lines += [ln.replace("## Goals", "### Goals") for ln in goals_section(b["runs"], c)]
        lines.append("")
    lines.append("**Verdict**: " + (f"`{decision['overall']}` wins every budget." if decision["overall"]
                                    else "no candidate wins every budget."))
    unbeaten = decision["unbeaten"]
    lines.append("")
    lines.append("**Up to the seeds' spread**: " + (
        f"no other candidate beats {', '.join(f'`{c}`' for c in unbeaten)} at any budget"
        if unbeaten else "every candidate is beaten at some budget")
        + (f"; the bench's choice: `{decision['choice']}`." if decision["choice"]
           else "; the bench cannot tell them apart." if len(unbeaten) > 1 else "."))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", type=Path, help="real_bench JSON files, one per budget")
    p.add_argument("--candidates", nargs="+", required=True)
    p.add_argument("--out", type=Path, default=Path("results/decision.md"))
    args = p.parse_args(argv)
    reports = {}
    for f in args.reports:
        data = json.loads(f.read_text())
        reports[f"{data['info']['minutes']:g} min ({f.name})"] = data["runs"]
    command = command_line("decide", argv if argv is not None else sys.argv[1:])
    report = build_report(decide(reports, args.candidates), command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
