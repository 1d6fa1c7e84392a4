"""Every benchmark and script answers ``--help`` with its usage: a help text argparse cannot format (a bare ``%`` in
it, as the demo verdict's variant names "... (20 % held out)" had) crashed ``--help`` with a TypeError."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted(p for folder in ("benchmarks", "scripts") for p in (REPO / folder).glob("*.py")
               if "def main(argv" in p.read_text(encoding="utf-8"))


def test_the_tools_are_found() -> None:
    names = {p.name for p in TOOLS}
    assert {"real_bench.py", "demo_verdict.py", "screenshots.py"} <= names, names


@pytest.mark.parametrize("path", TOOLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_help_prints_the_usage(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"{path.parent.name}.{path.stem}" if path.parent.name == "benchmarks" else f"_script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0 and out.getvalue().startswith("usage:"), out.getvalue()[:200]
