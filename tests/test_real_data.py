"""The real-image bench writer (benchmarks/real_data.py): layout, exact masks, disjoint splits, determinism."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.real_data import (
    REGIONS,
    TEXTURE_DEFECTS,
    BenchSizes,
    build_real_bench,
    has_pixel_masks,
    plant_defect,
    region_box,
)
from ikd_core.data.mvtec import MVTecDataset

SIZES = BenchSizes(n_train=6, n_good=3, n_defect=5)


def _fake_elpv(root: Path) -> Path:
    """A tiny stand-in for the elpv-dataset package's data folder (labels.csv + images/)."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(80):
        kind = "mono" if i % 2 else "poly"
        prob = (1.0, 0.0, 0.0, 0.3333333333333333)[(i // 2) % 4]  # per kind: 10 defective, 20 good, 10 unsure
        name = f"images/cell{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / name)
        lines.append(f"{name}  {prob}  {kind}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {"brick": data.brick()[::2, ::2], "gravel": data.gravel()[::2, ::2]}  # 256 px: fast


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, photos) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("real")
    elpv = _fake_elpv(tmp_path_factory.mktemp("elpv"))
    cats = build_real_bench(root, seed=3, sizes=SIZES, crop=64, elpv_dir=elpv, photos=photos)
    return root, cats


def _digest(path: str | Path) -> str:
    return hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest()


def test_layout_loads_with_mvtec_dataset(bench) -> None:
    root, cats = bench
    assert cats == ["real_elpv_mono", "real_elpv_poly", "real_skimage_brick", "real_skimage_gravel"]
    for split_root in ("test", "dev"):
        for cat in cats:
            train = MVTecDataset(root / split_root, cat, "train", image_size=32)
            test = MVTecDataset(root / split_root, cat, "test", image_size=32)
            assert len(train) == SIZES.n_train
            assert sum(s.label == 0 for s in test.samples) == SIZES.n_good
            assert sum(s.label == 1 for s in test.samples) == SIZES.n_defect
            item = test[len(test) - 1]
            assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 32, 32)
    types = {s.defect_type for s in MVTecDataset(root / "test", "real_skimage_brick", "test").samples}
    assert types == {"good", *TEXTURE_DEFECTS}
    assert not has_pixel_masks(root, "real_elpv_mono") and has_pixel_masks(root, "real_skimage_brick")
    assert "CC BY-NC-SA 4.0" in (root / "SOURCES.md").read_text()


def test_train_shared_and_splits_disjoint(bench) -> None:
    root, cats = bench
    for cat in cats:
        train = {_digest(p) for p in sorted((root / "test" / cat / "train" / "good").glob("*.png"))}
        assert train == {_digest(p) for p in sorted((root / "dev" / cat / "train" / "good").glob("*.png"))}
        test = {_digest(p) for p in (root / "test" / cat / "test").rglob("*.png")}
        dev = {_digest(p) for p in (root / "dev" / cat / "test").rglob("*.png")}
        assert not (train & test) and not (train & dev) and not (test & dev), cat
    # Texture crops: each window lies inside its split's region, and the regions do not overlap.
    with (root / "manifest.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["source"] == "skimage"]
    assert rows
    for r in rows:
        subset = "train" if r["file"].startswith("train/") else r["root"]
        y0, y1, x0, x1 = region_box((256, 256), subset)
        y, x, w = int(r["y"]), int(r["x"]), int(r["window"])
        assert y0 <= y and y + w <= y1 and x0 <= x and x + w <= x1, r
    boxes = [region_box((256, 256), s) for s in REGIONS]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert min(a[1], b[1]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[2], b[2])
    # ELPV: the cells of train / dev / test are different files.
    with (root / "manifest.csv").open() as fh:
        elpv = [r for r in csv.DictReader(fh) if r["source"] == "elpv" and r["category"] == "real_elpv_poly"]
    by_subset: dict[str, set[str]] = {}
    for r in elpv:
        key = "train" if r["file"].startswith("train/") else r["root"]
        by_subset.setdefault(key, set()).add(r["origin"])
    assert not (by_subset["train"] & by_subset["test"]) and not (by_subset["test"] & by_subset["dev"])


@pytest.mark.parametrize("kind", TEXTURE_DEFECTS)
def test_masks_exact(kind: str, photos) -> None:
    rng = np.random.default_rng(0)
    for i in range(4):
        img = photos["brick"][i * 40 : i * 40 + 96, 10:106].copy()
        out, mask = plant_defect(kind, img, rng, photos["gravel"])
        changed = out != img
        assert mask.any() and changed.any()
        assert not (changed & ~mask).any(), "pixels changed outside the mask"
        assert changed[mask].mean() > 0.3, "the mask is much larger than the change"


def test_written_masks_match_images(bench) -> None:
    root, _ = bench
    cat_dir = root / "test" / "real_skimage_gravel"
    for kind in TEXTURE_DEFECTS:
        for img_path in sorted((cat_dir / "test" / kind).glob("*.png")):
            mask = np.asarray(Image.open(cat_dir / "ground_truth" / kind / f"{img_path.stem}_mask.png")) > 0
            assert mask.shape == (64, 64) and 0 < mask.mean() < 0.5


def test_deterministic_by_seed(tmp_path: Path, photos) -> None:
    small = BenchSizes(n_train=3, n_good=2, n_defect=2)
    one = {"brick": photos["brick"]}
    build_real_bench(tmp_path / "a", seed=5, sources=["skimage"], sizes=small, crop=48, photos=one)
    build_real_bench(tmp_path / "b", seed=5, sources=["skimage"], sizes=small, crop=48, photos=one)
    build_real_bench(tmp_path / "c", seed=6, sources=["skimage"], sizes=small, crop=48, photos=one)

    def digests(root: Path) -> list[tuple[str, str]]:
        return [(p.relative_to(root).as_posix(), _digest(p)) for p in sorted(root.rglob("*.png"))]

    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert digests(tmp_path / "a") != digests(tmp_path / "c")


def test_real_bench_runs_each_kind_of_method_and_reports_mean_and_std(bench, tmp_path) -> None:
    from benchmarks.real_bench import build_report, run_one

    root, cats = bench
    cat = next(c for c in cats if c.startswith("real_skimage"))
    runs = [run_one(root / "test", cat, method, seed, minutes=0.02, timing=seed == 0, image_size=64)
            for method in ("stfpm", "ikd+all", "patchcore") for seed in (0, 1)]
    for r in runs:
        assert 0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["au_pro"] <= 1.0, r
    assert all("inference_ms" in r for r in runs if r["seed"] == 0 and r["method"] != "patchcore")
    for r in runs:  # the verdict at the fitted threshold: no held-out good image is above it, the shares add up
        if r["method"] == "patchcore":
            assert "good_right" not in r
            continue
        assert r["holdout_scores"] and max(r["holdout_scores"]) <= r["threshold"] + 1e-6, r
        labels, scores = np.array(r["test_labels"]), np.array(r["test_scores"])
        assert r["good_right"] == pytest.approx(np.mean(scores[labels == 0] < r["threshold"]))
        assert r["defective_right"] == pytest.approx(np.mean(scores[labels == 1] >= r["threshold"]))
    info = {"split": "test", "minutes": 0.02, "seeds": [0, 1], "command": "test", "machine": "m", "load": "0"}
    report = build_report(runs, info, candidates=["ikd+all", "stfpm"])
    assert f"| {cat} | ikd+all |" in report and " ± " in report and "| patchcore |" in report
    assert report.index("## Goals for `ikd+all`") < report.index("## Goals for `stfpm`")  # one section each
    goals = report.split("## Goals for `ikd+all`")[1].split("## Goals for")[0]
    assert "vs stfpm" in goals and "vs patchcore on skimage" in goals
    verdicts = report.split("## Verdict at the fitted threshold")[1].split("##")[0]
    assert "| stfpm |" in verdicts and "| patchcore |" not in verdicts


def test_verdict_section_averages_seeds_then_categories() -> None:
    import torch

    from benchmarks.real_bench import verdict, verdict_section

    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    v = verdict(0.5, torch.tensor([0.1, 0.4]), torch.tensor([0.1, 0.2, 0.3, 0.6, 0.7, 0.4]), labels)
    assert (v["good_right"], v["defective_right"]) == (0.75, 0.5) and v["test_labels"] == labels.tolist()
    rows = [{"category": c, "method": "m", "seed": s, "good_right": g, "defective_right": b}
            for c, s, g, b in (("a", 0, 1.0, 0.5), ("a", 1, 0.5, 0.7), ("b", 0, 1.0, 1.0))]
    lines = verdict_section(rows, ["m", "other"])
    assert "| m | 0.75 / 0.60 | 1.00 / 1.00 | 0.88 / 0.80 | 3 |" in lines and not any("other" in x for x in lines)
    assert verdict_section([{"category": "a", "method": "m", "seed": 0}], ["m"]) == []


def test_epoch_matched_mode_takes_each_methods_measured_rate_or_its_kinds(tmp_path) -> None:
    import json

    from benchmarks.real_bench import KD_METHODS, build_report, epoch_rates, matched_epochs

    def run(method: str, epochs: float, minutes: float = 1.0) -> dict:
        return {"category": "c", "method": method, "seed": 0, "minutes": minutes, "epochs": epochs,
                "image_auroc": 0.5, "pixel_auroc": 0.5, "au_pro": 0.5}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"runs": [run("ikd", 5.0), run("ikd", 3.0, 0.5), run("ikd+reverse", 10.0),
                                      run("patchcore", 1.0)]}))
    b.write_text(json.dumps({"runs": [run("ikd+ood", 2.5), run("ikd+reverse+denoise", 6.0)]}))
    rates = epoch_rates([a, b])
    assert rates == {"ikd": 5.5, "ikd+reverse": 10.0, "ikd+ood": 2.5, "ikd+reverse+denoise": 6.0}
    assert matched_epochs("ikd", rates, 3) == 16  # 16.5 rounds to even
    assert matched_epochs("stfpm", rates, 3) == 16  # no rate: its kind's (forward, no denoising, no penalty)
    assert matched_epochs("rd", rates, 2) == 20
    assert matched_epochs("ikd+all", rates, 1) == 3  # reverse + denoise at 6.0, times the penalty's 2.5 / 5.5
    with pytest.raises(SystemExit, match="ikd\\+denoise"):
        matched_epochs("ikd+denoise", rates, 3)
    assert set(KD_METHODS) >= {"ikd+ood", "ikd+reverse+denoise", "ikd+denoise+score", "ikd+denoise+ood",
                               "ikd+denoise+seg"}
    info = {"split": "dev", "minutes": 3, "seeds": [0], "command": "c", "machine": "m", "load": "0",
            "epochs_like": [str(a)]}
    assert "**Epoch-matched**" in build_report([run("ikd", 16)], info)
    # a timed report resumed with --epochs-like names the matched runs
    timed = {**info, "epochs_like": []}
    assert "Epoch-matched runs" not in build_report([run("ikd", 16)], timed)
    report = build_report([run("ikd", 16), {**run("ikd+denoise", 9), "epochs_matched": [str(a)]}], timed)
    assert "**Epoch-matched runs**: `ikd+denoise` trained" in report and str(a) in report


def test_the_benchs_ikd_is_the_papers_method_whatever_the_cpu_recipes_default() -> None:
    from benchmarks.real_bench import KD_METHODS, cpu_paper_settings

    base = cpu_paper_settings(256)
    assert (base["denoise"], base["student"], base["combine"], base["batch_size"]) == (False, "forward", "product", 8)
    assert base["segment"] is False
    assert cpu_paper_settings(256, **KD_METHODS["ikd+denoise"])["denoise"] is True


def test_au_pro_by_defect_scores_each_type_against_the_good_images() -> None:
    import torch

    from benchmarks.real_bench import au_pro_by_defect, build_report

    masks = torch.zeros(4, 1, 16, 16)
    masks[1, :, 4:8, 4:8] = 1
    masks[2, :, 8:12, 8:12] = 1
    maps = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.1
    maps[1] += masks[1]  # the scratch is found, the hole is not
    by = au_pro_by_defect({"maps": maps, "masks": masks}, ["good", "scratch", "hole", "good"])
    assert set(by) == {"scratch", "hole"} and by["scratch"] > 0.95 and by["hole"] < 0.5
    row = {"category": "real_skimage_c", "method": "ikd+denoise+seg", "seed": 0, "minutes": 1, "epochs": 1.0,
           "image_auroc": 0.5, "pixel_auroc": 0.5, "au_pro": 0.5, "au_pro_by_defect": by}
    info = {"split": "dev", "minutes": 1, "seeds": [0], "command": "c", "machine": "m", "load": "0"}
    report = build_report([row, {**row, "method": "ikd", "au_pro_by_defect": {}}], info)
    assert "## AU-PRO by defect type" in report
    assert f"| ikd+denoise+seg | {by['hole']:.3f} | {by['scratch']:.3f} | 1 |" in report


def test_method_inference_times_each_method_in_interleaved_rounds(bench) -> None:
    from benchmarks.method_inference import build_report, time_methods

    root, cats = bench
    cat = next(c for c in cats if c.startswith("real_skimage"))
    times = time_methods(root / "test", cat, ["ikd", "ikd+denoise+fuse+dscore"], rounds=2, n_images=3,
                         image_size=64)
    assert set(times) == {"ikd", "ikd+denoise+fuse+dscore"} and all(len(v) == 2 and min(v) > 0
                                                                   for v in times.values())
    report = build_report({"ikd": [10.0, 12.0], "fused": [15.0, 16.0]}, "cmd", cat)
    assert "| ikd | 11.0 | 10.0, 12.0 | 1.00x |" in report and "| fused | 15.5 | 15.0, 16.0 | 1.41x |" in report


def _run(cat: str, method: str, seed: int, image: float, au_pro: float) -> dict:
    return {"category": cat, "method": method, "seed": seed, "minutes": 3.0, "epochs": 10.0,
            "image_auroc": image, "pixel_auroc": 0.8, "au_pro": au_pro}


def test_decide_pairs_seeds_and_names_the_winner_of_every_budget(tmp_path: Path) -> None:
    from benchmarks.decide import decide, main, shared_seeds

    cats = ("real_elpv_mono", "real_skimage_grass")
    # "a" leads on both metrics at both budgets on the shared seeds 0, 1; its seed-2 run (which "b" lacks) is worse
    # than b's every run and must not count
    three = [_run(c, m, s, v, v) for c in cats for s in (0, 1)
             for m, v in (("a", 0.9 + 0.01 * s), ("b", 0.85))] + [_run(cats[0], "a", 2, 0.1, 0.1)]
    assert shared_seeds(three, ["a", "b"]) == [0, 1]
    ten = [{**r, "minutes": 10.0} for r in three if r["seed"] < 2]
    d = decide({"3 min": three, "10 min": ten}, ["a", "b"])
    assert d["overall"] == "a" and d["budgets"]["3 min"]["means"]["a"]["image_auroc"] == pytest.approx(0.905)
    first, second, gaps = d["budgets"]["3 min"]["gaps"]["au_pro"]
    assert (first, second) == ("a", "b") and gaps == pytest.approx([0.05, 0.06])

    # "b" leads on AU-PRO at 10 minutes: no one wins that budget, and so no one wins every budget
    ten_split = [{**r, "au_pro": 0.99} if r["method"] == "b" else r for r in ten]
    d = decide({"3 min": three, "10 min": ten_split}, ["a", "b"])
    assert d["budgets"]["3 min"]["winner"] == "a" and d["budgets"]["10 min"]["winner"] is None
    assert d["overall"] is None

    for label, runs in (("3", three), ("10", ten_split)):
        (tmp_path / f"{label}.json").write_text(json.dumps({"info": {"minutes": float(label)}, "runs": runs}))
    out = tmp_path / "decision.md"
    main([str(tmp_path / "3.json"), str(tmp_path / "10.json"), "--candidates", "a", "b", "--out", str(out)])
    report = out.read_text()
    assert "Winner: `a`" in report and "Winner: none" in report and "no candidate wins every budget" in report
    assert "| a | **0.905** | **0.800** | **0.905** |" in report
    with pytest.raises(SystemExit, match="no runs of c"):
        decide({"3 min": three}, ["a", "c"])


def test_decide_up_to_the_seeds_spread(tmp_path: Path) -> None:
    """A lead smaller than the seeds' spread does not count: "b" has the better mean image AUROC (by 0.006, while the
    per-seed differences swing by about 0.03), "a" leads AU-PRO by 0.04 on every seed; the strict rule names no winner,
    the rule up to the spread names "a". With one seed nothing is beyond the spread: no choice."""
    from benchmarks.decide import beats, build_report, clearly_ahead, decide

    assert clearly_ahead([0.04, 0.05, 0.03]) and not clearly_ahead([0.03, -0.03, 0.006])
    assert not clearly_ahead([0.5]) and not clearly_ahead([-0.04, -0.05])
    cats = ("real_elpv_mono", "real_skimage_grass")
    swing = (0.03, -0.03, -0.006)  # b - a on image AUROC per seed: -0.026, +0.034, +0.010 (mean +0.006, std 0.030)
    runs = [r for c in cats for s in range(3) for r in (
        _run(c, "a", s, 0.85, 0.74), _run(c, "b", s, 0.85 - swing[s] + 0.004, 0.70),
        _run(c, "stfpm", s, 0.80, 0.68), _run(c, "patchcore", s, 0.84, 0.60))]
    assert beats(runs, "a", "b", [0, 1, 2]) and not beats(runs, "b", "a", [0, 1, 2])
    d = decide({"3 min": runs, "10 min": runs}, ["b", "a"])
    assert d["budgets"]["3 min"]["winner"] is None and d["overall"] is None
    assert d["unbeaten"] == ["a"] and d["choice"] == "a"
    report = build_report(d, "decide")
    assert "no candidate wins every budget" in report and "the bench's choice: `a`" in report
    assert "`b` is beaten beyond the seeds' spread by `a`" in report and "### Goals for `a`" in report
    one = [r for r in runs if r["seed"] == 2]  # b leads image AUROC there, a AU-PRO: no strict winner either
    d = decide({"3 min": one}, ["b", "a"])
    assert d["overall"] is None and d["unbeaten"] == ["b", "a"] and d["choice"] is None
    assert "the bench cannot tell them apart" in build_report(d, "decide")
