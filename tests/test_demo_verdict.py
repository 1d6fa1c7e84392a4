"""benchmarks.demo_verdict: the app's verdict at the fitted threshold, as the report states it."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.demo_verdict import main

REPO = Path(__file__).resolve().parents[1]


def test_demo_verdict_reports_the_shipped_checkpoints_threshold_and_shares(tmp_path: Path) -> None:
    out = tmp_path / "verdict.md"
    main(["--categories", "demo_texture", "--variants", "denoising student (CPU recipe)", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())
    meta = json.loads((REPO / "pretrained" / "demo_texture-efficientnet_lite0.json").read_text())
    assert [r["mode"] for r in rows] == ["whole", "tile"]
    for r in rows:
        assert r["threshold"] == meta["score_normalization"]["threshold"]  # the app's fitted threshold, not refitted
        assert r["n_good"] == 12 and r["n_defective"] > 0
        # the shipped demo texture is easy: the test split is called right at the app's threshold
        assert r["good_right"] >= 0.8 and r["defective_right"] >= 0.8 and r["image_auroc"] > 0.95
    report = out.read_text()
    assert "| demo_texture | denoising student (CPU recipe) | tile |" in report and "| yes |" in report
