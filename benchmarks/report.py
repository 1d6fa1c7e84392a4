"""What the benchmark reports share: their sections, the machine description and the command line.

``benchmarks/REPORT.md`` is written by several scripts, each owning one ``## `` section. Two ways to update it:

* :func:`split_report` / :func:`assemble` (``perf``, ``inference``): the report as a preamble and sections,
  written back in :data:`SECTION_ORDER` (sections not in it follow, in their order);
* :func:`replace_section` / :func:`write_section` (``live_fps``, ``load_test``, ``attack_load``): one section
  replaced in place (or appended), every other byte kept.

A ``## `` line inside a fenced code block is not a heading.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
REPORT = BENCH / "REPORT.md"
TITLE = "# IKD Studio performance report"

LOAD_TEST_MARKER = "<!-- load-test -->"
LOAD_TEST_HEADING = "## Load test (issue 5)"
GPU_HEADING = "## GPU"
LOOP_HEADING = "## Training throughput on real files"
BREAKDOWN_HEADING = "## Training step breakdown"
#: The order of the sections ``perf`` measures (and of those it keeps a place for) in REPORT.md.
SECTION_ORDER = ("## Context similarity loss", "## Training step", LOOP_HEADING, BREAKDOWN_HEADING, "## Inference",
                 LOAD_TEST_HEADING, GPU_HEADING)


# --------------------------------------------------------------------------- sections
def split_report(text: str, order: tuple[str, ...] = SECTION_ORDER) -> tuple[str, dict[str, str]]:
    """(preamble, {section key: text}) of an existing report; sections start at '## ' lines. A section's key is
    the longest heading of ``order`` its line starts with, else the whole line."""
    pre: list[str] = []
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    in_code = False
    for ln in text.splitlines():
        if ln.startswith("```"):
            in_code = not in_code
        if not in_code and ln.startswith("## "):
            # the longest known heading it starts with ("## Training step breakdown" is not "## Training step")
            key = max((k for k in order if ln.startswith(k)), key=len, default=ln)
            current = sections.setdefault(key, [])
        (pre if current is None else current).append(ln)
    return "\n".join(pre).rstrip() + "\n", {k: "\n".join(v).rstrip() + "\n" for k, v in sections.items()}


def assemble(preamble: str, sections: dict[str, str], order: tuple[str, ...] = SECTION_ORDER) -> str:
    """The report: the preamble, then the sections in ``order``, then the others."""
    keys = [k for k in order if k in sections] + [k for k in sections if k not in order]
    return "\n\n".join([preamble.strip(), *(sections[k].strip() for k in keys)]) + "\n"


def replace_section(report: str, heading: str, new_section: str) -> str:
    """``report`` with the section whose heading line starts with ``heading`` replaced by ``new_section`` (or
    ``new_section`` appended); the rest byte-identical."""
    lines = report.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.startswith(heading)), None)
    if start is None:
        sep = "" if not report or report.endswith("\n\n") else ("\n" if report.endswith("\n") else "\n\n")
        return report + sep + new_section
    end, in_code = len(lines), False
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("```"):
            in_code = not in_code
        if not in_code and lines[i].startswith("## "):
            end = i
            break
    tail = lines[end:]
    return "".join(lines[:start]) + new_section + ("\n" if tail else "") + "".join(tail)


def write_section(out: Path, heading: str, new_section: str) -> None:
    """:func:`replace_section` on the file ``out``; a missing report is created with the report's title."""
    old = out.read_text(encoding="utf-8") if out.is_file() else TITLE + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(replace_section(old, heading, new_section), encoding="utf-8")


# --------------------------------------------------------------------------- the run's description
def machine_lines() -> list[str]:
    """Markdown bullet lines: CPU, cores, torch threads, GPU and versions (``ikd_core.machine``)."""
    try:
        from ikd_core.machine import machine_info
        from ikd_core.machine import machine_lines as lines

        return lines(machine_info())
    except Exception as exc:  # noqa: BLE001 - the report must not depend on optional imports
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        return [f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; GPU: {gpu} "
                f"({type(exc).__name__} reading details)",
                f"- Versions: Python {platform.python_version()}, torch {torch.__version__}"]


def command_line(name: str, argv: list[str]) -> str:
    """The command that ran benchmark ``name`` with arguments ``argv``, as typed at the repository root."""
    return shlex.join(["python", "-m", f"benchmarks.{name}", *argv])


def utc_now() -> str:
    """'2025-01-31 12:34 UTC'."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def load_average() -> str:
    """The 1, 5 and 15-minute load averages ('1.02 0.98 0.77'), '-' where /proc/loadavg is not readable."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "-"


def called_right(scores: Any, labels: Any, threshold: float) -> tuple[float, float]:
    """(share of good images called good, share of defective images called defective) at ``threshold``: a score at
    or above it is a defect, as the app calls it. ``labels``: 0 good, 1 defective."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    return float(np.mean(s[y == 0] < threshold)), float(np.mean(s[y == 1] >= threshold))
