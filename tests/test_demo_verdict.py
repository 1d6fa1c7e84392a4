"""benchmarks.demo_verdict: the app's verdict at the fitted threshold, as the report states it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.demo_verdict import main

REPO = Path(__file__).resolve().parents[1]


def test_demo_verdict_reports_the_shipped_checkpoints_threshold_and_shares(tmp_path: Path) -> None:
    out = tmp_path / "verdict.md"
    main(["--categories", "demo_texture", "--variants", "denoising student (CPU recipe)", "--out", str(out),
          "--data-root", str(tmp_path / "demo")])  # made here: a clean clone has no data/
    rows = json.loads(out.with_suffix(".json").read_text())
    meta = json.loads((REPO / "pretrained" / "demo_texture-efficientnet_lite0.json").read_text())
    assert [r["mode"] for r in rows] == ["whole", "tile"]
    for r in rows:
        assert r["threshold"] == meta["score_normalization"]["threshold"]  # the app's fitted threshold, not refitted
        # the held-out images found again from the checkpoint's seed give back its threshold (app's rule, refitted)
        held = np.array(r["holdout_scores"])
        assert len(held) == meta["score_normalization"]["n_holdout"]
        assert max(held.mean() + 3 * held.std(ddof=1), held.max()) == pytest.approx(r["threshold"], rel=1e-4)
        assert len(r["test_scores"]) == len(r["test_labels"]) == r["n_good"] + r["n_defective"]
        assert r["n_good"] == 12 and r["n_defective"] > 0
        # the shipped demo texture is easy: the test split is called right at the app's threshold
        assert r["good_right"] >= 0.8 and r["defective_right"] >= 0.8 and r["image_auroc"] > 0.95
    report = out.read_text()
    assert "| demo_texture | denoising student (CPU recipe) | 0 | tile |" in report and "| yes |" in report
    assert "Over the seeds" not in report  # one seed: no summary


def test_seeds_train_to_their_own_checkpoints_and_are_summed_up() -> None:
    from benchmarks.demo_verdict import VARIANTS, checkpoint_name, summary_lines

    assert not any("," in v for v in VARIANTS), "--variants is a comma-separated list of these names"
    names = {checkpoint_name("demo_object", flags, seed) for flags in VARIANTS.values() for seed in (0, 1, 2)}
    assert len(names) == 3 * len(VARIANTS)  # no two runs write the same file
    rows = [{"category": "c", "variant": "v", "mode": "whole", "good_right": g, "defective_right": b}
            for g, b in ((1.0, 0.9), (0.8, 0.7), (0.9, 0.8))]
    assert summary_lines(rows)[-1] == "| c | v | whole | 3 | 0.90 | 0.80 | 2 of 3 |"
    assert summary_lines(rows[:1]) == []
