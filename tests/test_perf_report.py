"""benchmarks/: the performance report keeps what a run did not measure; the paired training step."""

from __future__ import annotations

from pathlib import Path

from benchmarks import measure, perf
from benchmarks.report import BREAKDOWN_HEADING, GPU_HEADING, LOAD_TEST_HEADING, LOAD_TEST_MARKER, split_report


def test_perf_report_keeps_unmeasured_sections(tmp_path: Path) -> None:
    """benchmarks.perf: --append-gpu adds a GPU section (headings demoted) and keeps the rest, the load-test
    marker stays, and a re-run replaces only what it measured."""
    report = tmp_path / "REPORT.md"
    report.write_text("# IKD Studio performance report\n\n- Command: `old`\n\n## Training step\n\nold train table\n\n"
                      f"{LOAD_TEST_HEADING}\n\n{LOAD_TEST_MARKER}\n| p50 | 12 ms |\n")
    gpu = tmp_path / "gpu_report.md"
    gpu.write_text("# GPU check: NVIDIA H200\n\n- Command: `x`\n\n## nvidia-smi\n\n```text\n## not a heading\n```\n\n"
                   "## Training step (AMP)\n\n| a | b |\n")
    assert perf.main(["--append-gpu", str(gpu), "--out", str(report)]) == 0
    text = report.read_text()
    assert "- Command: `old`" in text and "old train table" in text  # nothing measured: all kept
    assert "| p50 | 12 ms |" in text and text.count(LOAD_TEST_MARKER) == 1
    assert "## GPU: NVIDIA H200" in text and "### Training step (AMP)" in text and "\n## not a heading" in text
    assert text.index("## Training step") < text.index(LOAD_TEST_HEADING) < text.index("## GPU")
    _, sections = split_report(text)
    assert set(sections) == {"## Training step", LOAD_TEST_HEADING, GPU_HEADING}
    # a heading that extends another ("## Training step breakdown") is its own section, kept in place
    _, sections = split_report(f"# r\n\n## Training step\n\nsteps\n\n{BREAKDOWN_HEADING}\n\nphases\n")
    assert sections == {"## Training step": "## Training step\n\nsteps\n",
                        BREAKDOWN_HEADING: f"{BREAKDOWN_HEADING}\n\nphases\n"}


def test_perf_train_step_pairs_both_forms_and_reports_a_reference_that_cannot_run() -> None:
    """perf's paired step (benchmarks.measure): both losses measured on one model, the same hard-set sizes with
    AHSM off (every position), and a reference too big for its memory limit is reported, not run."""
    r = measure.train_step_case("efficientnet_lite0", 2, steps=2, warmup=0, image_size=64)
    for form in ("fast", "naive"):
        assert r[form]["images_per_s"] > 0 and r[form]["loss_ms"] > 0
    lo, hi = r["speedup_range"]
    assert lo <= r["speedup"] <= hi
    everything = [2 * 16 * 16, 2 * 8 * 8, 2 * 4 * 4]  # strides 4, 8, 16 at 64 px, batch 2
    off = measure.train_step_case("efficientnet_lite0", 2, steps=1, warmup=0, image_size=64, hard_mining=False,
                                  naive_max_gb=20 * 300**2 / 2**30)  # room for |H| <= 300: levels 1 and 2 only
    assert off["fast"]["hard_sizes"] == everything
    assert "|H| = 512" in off["naive"]["skipped"] and "speedup" not in off
