"""``python -m ikd_core benchmark`` (ikd_core.reproduce): tables equal the JSON, failures are isolated, checkpoints
are reused, GIFs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import pytest

import ikd_core.reproduce.run as bench
from ikd_core.reproduce.report import DASH, DEMO_LABEL, MVTEC_ORDER, PAPER_ROW, TABLES, column_title, paper_results
from ikd_core.reproduce.run import run_benchmark

TINY = {"backbone": "efficientnet_lite0", "epochs": 1, "image_size": 64, "batch_size": 4, "lr": 1e-3,
        "progress": False}


def table(md: str, title: str) -> dict[str, dict[str, str]]:
    """``{row label: {column: cell}}`` of the markdown table under ``## title``."""
    lines = md.split(f"## {title}\n", 1)[1].strip().splitlines()
    rows = []
    for ln in lines:
        if not ln.startswith("|"):
            break
        rows.append(ln)
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    out = {}
    for ln in rows[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        out[cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
    return out


def pct(v: float | None) -> str:
    return DASH if v is None else f"{100 * v:.2f}"


@pytest.fixture(scope="module")
def demo_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("bench")
    payload = run_benchmark(demo_root, data="demo", categories="all", name="demo", out=work / "results",
                            assets=work / "assets", pretrained_dir=work / "pretrained", **TINY)
    payload["work"] = work
    return payload


def test_tables_have_columns_and_equal_the_json(demo_run: dict) -> None:
    md = Path(demo_run["report"]).read_text()
    js = json.loads(Path(demo_run["json"]).read_text())
    assert DEMO_LABEL in md and js["label"] == DEMO_LABEL
    assert "python -m ikd_core benchmark" in md and "torch" in md and "CPU cores" in md
    results = {r["category"]: r for r in js["results"]}
    assert set(results) == {"demo_texture", "demo_object"}
    assert all(r["status"] == "ok" and r["trained"] for r in results.values())
    for metric, title in TABLES.items():
        rows = table(md, title)
        (label,) = rows  # no paper row for demo data
        row = rows[label]
        assert list(row) == ["Avg", "Demo Texture", "Demo Object"]
        for cat, r in results.items():
            assert row[column_title(cat)] == pct(r["metrics"][metric])
        assert row["Avg"] == pct(js["average"][metric])
    for r in results.values():
        assert r["train_seconds"] > 0 and f"{r['train_seconds']:.1f} s" in md


def test_curves_and_gif_per_category(demo_run: dict) -> None:
    work = demo_run["work"]
    for r in demo_run["results"]:
        cat = r["category"]
        for kind in ("roc", "pro"):
            png = work / "results" / "demo" / f"{cat}_{kind}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        frames = iio.imread(work / "assets" / f"{cat}.gif", index=None)
        assert frames.shape[0] == min(8, r["n_test"]) == r["gif_frames"]


def test_existing_checkpoint_is_evaluated_not_retrained(demo_run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from ikd_core.cli import main

    def no_train(*args, **kwargs):
        raise AssertionError("train must not be called when the checkpoint exists")

    monkeypatch.setattr(bench, "train", no_train)
    work = demo_run["work"]
    rc = main(["benchmark", "--data", "demo", "--data-root", demo_run["data_root"], "--categories", "demo_object",
               "--backbone", "efficientnet_lite0", "--image-size", "64", "--name", "again",
               "--out", str(work / "results"), "--assets", str(work / "assets2"),
               "--pretrained-dir", str(work / "pretrained"), "--quiet"])
    assert rc == 0
    js = json.loads((work / "results" / "again.json").read_text())
    (r,) = js["results"]
    assert r["status"] == "ok" and r["trained"] is False
    first = next(x for x in demo_run["results"] if x["category"] == "demo_object")
    assert r["metrics"] == pytest.approx(first["metrics"], abs=1e-5)
    md = (work / "results" / "again.md").read_text()
    row = table(md, TABLES["image_auroc"])["Ours (efficientnet_lite0)"]
    assert row["Demo Texture"] == DASH  # not run: empty, never invented
    # The Model line shows how the evaluated checkpoint was trained (TINY), not this command's defaults.
    model = next(ln for ln in md.splitlines() if ln.startswith("- Model:"))
    assert "existing checkpoints evaluated" in model
    assert "image size 64 px, epochs 1, batch size 4, lr 0.001" in model and "epochs 50" not in model
    assert r["settings"]["batch_size"] == 4
    assert (work / "assets2" / "demo_object.gif").is_file()


def test_retrain_and_failed_category(demo_run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """--retrain trains although checkpoints exist; a category whose training raises is reported, the rest
    complete. (Training is faked with the fixture's checkpoints to keep the test fast.)"""
    from ikd_core.loading import load_model
    from ikd_core.train import TrainResult

    work = demo_run["work"]
    calls = []

    def flaky_train(train_ds, test_ds, config, out_path, category, **kwargs):
        calls.append(category)
        if category == "demo_object":
            raise RuntimeError("simulated out of memory")
        model, meta = load_model(work / "pretrained" / f"{category}-efficientnet_lite0.safetensors")
        return TrainResult(model, meta, {}, checkpoint=out_path)

    monkeypatch.setattr(bench, "train", flaky_train)
    shutil.copytree(work / "pretrained", work / "pretrained3")  # both checkpoints exist
    payload = run_benchmark(demo_run["data_root"], data="demo", name="flaky", retrain=True, out=work / "results",
                            assets=work / "assets3", pretrained_dir=work / "pretrained3", **TINY)
    assert calls == ["demo_texture", "demo_object"]
    res = {r["category"]: r for r in payload["results"]}
    assert res["demo_texture"]["status"] == "ok" and res["demo_texture"]["trained"]
    assert res["demo_object"]["status"] == "failed"
    assert "simulated out of memory" in res["demo_object"]["error"]
    md = Path(payload["report"]).read_text()
    assert "## Failures" in md and "simulated out of memory" in md
    row = table(md, TABLES["pixel_auroc"])["Ours (efficientnet_lite0)"]
    assert row["Demo Object"] == DASH
    assert row["Demo Texture"] == pct(res["demo_texture"]["metrics"]["pixel_auroc"]) == row["Avg"]
    assert (work / "assets3" / "demo_texture.gif").is_file()
    assert not (work / "assets3" / "demo_object.gif").exists()
    # The retrained checkpoint was written with its metrics.
    from ikd_core.checkpoint import read_metadata

    meta = read_metadata(work / "pretrained3" / "demo_texture-efficientnet_lite0.safetensors")
    assert meta["metrics"] == pytest.approx(res["demo_texture"]["metrics"])


def test_mvtec_tables_have_paper_rows(demo_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MVTec layout (a demo category copied as 'bottle'): 15 columns, the paper's row, '–' for the rest."""
    root = tmp_path / "mvtec"
    shutil.copytree(Path(demo_run["data_root"]) / "demo_texture", root / "bottle")
    pre = tmp_path / "pretrained"
    pre.mkdir()
    src = demo_run["work"] / "pretrained" / "demo_texture-efficientnet_lite0"
    for ext in (".safetensors", ".json"):
        shutil.copy(src.with_suffix(ext), pre / f"bottle-efficientnet_lite0{ext}")
    monkeypatch.setattr(bench, "train", lambda *a, **k: pytest.fail("checkpoint exists"))
    payload = run_benchmark(root, data="mvtec", categories="bottle", name="mv", out=tmp_path / "results",
                            assets=tmp_path / "assets", pretrained_dir=pre, **TINY)
    md = Path(payload["report"]).read_text()
    assert DEMO_LABEL not in md
    paper = paper_results()
    (r,) = payload["results"]
    assert r["status"] == "ok"
    for metric, title in TABLES.items():
        rows = table(md, title)
        ours, ref = rows["Ours (efficientnet_lite0)"], rows[PAPER_ROW]
        assert list(ours) == ["Avg", *(column_title(c) for c in MVTEC_ORDER)]
        assert ours["Bottle"] == ours["Avg"] == pct(r["metrics"][metric])
        assert all(ours[column_title(c)] == DASH for c in MVTEC_ORDER if c != "bottle")
        if metric in ("pixel_auroc", "au_pro"):
            assert ref["Carpet"] == f"{paper['carpet'][metric]:.2f}"
            assert ref["Avg"] == f"{paper['bottle'][metric]:.2f}"  # same categories as ours
        else:
            assert set(ref.values()) == {DASH}


def test_progress_shows_category_epoch_and_eta(demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_benchmark(demo_root, data="demo", categories="demo_texture", name="p", out=tmp_path / "r",
                  assets=tmp_path / "a", pretrained_dir=tmp_path / "p", **{**TINY, "progress": True})
    err = capsys.readouterr().err
    assert "benchmark" in err and "demo_texture epoch 1/1" in err and "category ETA" in err


def test_the_model_line_names_the_levers_a_checkpoint_was_trained_with() -> None:
    from ikd_core.reproduce.report import settings_text

    paper = {"backbone": "efficientnet_lite0", "image_size": 256, "epochs": 60, "batch_size": 8, "lr": 0.01,
             "seed": 0, "student": "forward", "loss": "ikd", "denoise": False, "combine": "product", "score_topk": 1}
    assert settings_text(paper) == "backbone efficientnet_lite0, image size 256 px, epochs 60, batch size 8, " \
        "lr 0.01, seed 0"
    levers = settings_text({**paper, "denoise": True, "student": "reverse", "combine": "sum", "score_topk": 10})
    assert levers.endswith("reverse student, denoising student, sum of levels, score: mean of top 10")
