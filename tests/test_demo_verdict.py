"""benchmarks.demo_verdict: the app's verdict at the fitted threshold, as the report states it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.demo_verdict import CPU_RECIPE, VARIANTS, main

REPO = Path(__file__).resolve().parents[1]


def test_demo_verdict_reports_the_shipped_checkpoints_threshold_and_shares(tmp_path: Path) -> None:
    out = tmp_path / "verdict.md"
    main(["--categories", "demo_texture", "--variants", CPU_RECIPE, "--out", str(out),
          "--data-root", str(tmp_path / "demo")])  # made here: a clean clone has no data/
    rows = json.loads(out.with_suffix(".json").read_text())
    meta = json.loads((REPO / "pretrained" / "demo_texture-efficientnet_lite0.json").read_text())
    assert [r["mode"] for r in rows] == ["whole", "tile"]
    for r in rows:
        assert r["threshold"] == meta["score_normalization"]["threshold"]  # the app's fitted threshold, not refitted
        assert r["train_s"] == meta["train_seconds"] and r["epochs"] == meta["epochs_completed"]
        # the held-out images found again from the checkpoint's seed give back its threshold (app's rule, refitted)
        held = np.array(r["holdout_scores"])
        assert len(held) == meta["score_normalization"]["n_holdout"]
        assert max(held.mean() + 3 * held.std(ddof=1), held.max()) == pytest.approx(r["threshold"], rel=1e-4)
        assert len(r["test_scores"]) == len(r["test_labels"]) == r["n_good"] + r["n_defective"]
        assert r["n_good"] == 12 and r["n_defective"] > 0
        # the shipped demo texture is easy: the test split is called right at the app's threshold
        assert r["good_right"] >= 0.8 and r["defective_right"] >= 0.8 and r["image_auroc"] > 0.95
    report = out.read_text()
    assert f"| demo_texture | {CPU_RECIPE} | 0 | tile |" in report and "| yes |" in report
    assert "Over the seeds" not in report  # one seed: no summary


def test_seeds_train_to_their_own_checkpoints_and_are_summed_up() -> None:
    from benchmarks.demo_verdict import checkpoint_name, summary_lines

    assert not any("," in v for v in VARIANTS), "--variants is a comma-separated list of these names"
    names = {checkpoint_name("demo_object", flags, seed) for flags in VARIANTS.values() for seed in (0, 1, 2)}
    assert len(names) == 3 * len(VARIANTS)  # no two runs write the same file
    rows = [{"category": "c", "variant": "v", "mode": "whole", "good_right": g, "defective_right": b}
            for g, b in ((1.0, 0.9), (0.8, 0.7), (0.9, 0.8))]
    assert summary_lines(rows)[-1] == "| c | v | whole | 3 | 0.90 | 0.80 | 2 of 3 |"
    assert summary_lines(rows[:1]) == []


def test_n_train_writes_a_larger_demo_set_and_does_not_read_the_shipped_checkpoint(tmp_path: Path) -> None:
    import shutil

    from benchmarks.demo_verdict import checkpoint_name

    runs = tmp_path / "runs"
    runs.mkdir()
    # stands in for a run trained on the larger set (--reuse)
    ckpt = runs / checkpoint_name("demo_texture", VARIANTS[CPU_RECIPE], 0)
    for suffix in (".safetensors", ".json"):
        shutil.copy(REPO / "pretrained" / f"demo_texture-efficientnet_lite0{suffix}", ckpt.with_suffix(suffix))
    out, data = tmp_path / "verdict.md", tmp_path / "demo_n7"
    main(["--categories", "demo_texture", "--variants", CPU_RECIPE, "--n-train", "7",
          "--data-root", str(data), "--runs", str(runs), "--reuse", "--out", str(out)])
    assert len(list((data / "demo_texture" / "train" / "good").glob("*.png"))) == 7
    rows = json.loads(out.with_suffix(".json").read_text())
    assert rows and all(r["command"].startswith("python -m ikd_core train --data demo --data-root " + str(data))
                        for r in rows)  # trained on the set written here, not the shipped checkpoint
    assert all(len(r["holdout_scores"]) >= 1 for r in rows)  # held-out images found in the 7-image set
    assert f"- Good training images: demo_texture 7 (under {data};" in out.read_text()
