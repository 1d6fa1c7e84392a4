"""benchmarks.threshold_rules: each rule refitted on a run's held-out scores, and the verdicts it gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.threshold_rules import RULES, calls, load_runs, main

TODAY = "max(mean + 3 std, max) (today)"


def test_todays_rule_is_the_apps_fit() -> None:
    from ikd_core.calibration import fit_normalization

    scores = np.array([0.2, 0.25, 0.22, 0.6, 0.21, 0.24])
    maps = torch.zeros(len(scores), 8, 8, dtype=torch.float64)
    maps[:, 3, 3] = torch.from_numpy(scores)  # each map's max is its image score
    assert RULES[TODAY](scores) == pytest.approx(fit_normalization(maps.float())["threshold"], rel=1e-6)


def test_one_hard_good_image_moves_the_robust_rules_less() -> None:
    easy = np.array([0.20, 0.21, 0.22, 0.23, 0.24, 0.25])
    hard = np.array([0.20, 0.21, 0.22, 0.23, 0.24, 0.60])
    for name in ("median + 3 robust std", "max(median + 3 robust std, 2nd highest)"):
        assert RULES[name](hard) - RULES[name](easy) < 0.5 * (RULES[TODAY](hard) - RULES[TODAY](easy)), name
    assert RULES["max"](hard) == 0.60


def test_runs_of_both_benches_are_read_and_called_at_each_rule(tmp_path: Path) -> None:
    held = [0.1, 0.2, 0.3]
    bench = {"runs": [{"category": "real_a", "method": "m", "seed": 0, "holdout_scores": held,
                       "test_scores": [0.05, 0.5, 0.25, 0.9], "test_labels": [0, 0, 1, 1]},
                      {"category": "real_a", "method": "patchcore", "seed": 0}]}  # no scores: left out
    demo = [{"category": "demo_object", "variant": "v", "seed": 1, "mode": mode, "holdout_scores": held,
             "test_scores": [0.1, 0.9], "test_labels": [0, 1]} for mode in ("whole", "tile")]
    (tmp_path / "b.json").write_text(json.dumps(bench))
    (tmp_path / "d.json").write_text(json.dumps(demo))
    runs = load_runs([tmp_path / "b.json", tmp_path / "d.json"])
    assert [(r["source"], r["method"], r["seed"]) for r in runs] == [("real_a", "m", 0), ("demo_object", "v", 1)]
    assert calls(runs[0], RULES["max"]) == (0.5, 0.5)  # threshold 0.3: 0.05 good, 0.5 not; 0.9 found, 0.25 not
    out = tmp_path / "r.md"
    main([str(tmp_path / "b.json"), str(tmp_path / "d.json"), "--out", str(out)])
    report = out.read_text()
    assert "| real_a | m | 3 | 1 | " in report and f"| {TODAY} |" in report
