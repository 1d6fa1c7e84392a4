"""End to end through the CLI: demo-data -> train -> eval -> predict -> gif, and clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ikd_core", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


def test_demo_train_eval_predict_gif(workdir: Path) -> None:
    res = run("demo-data", "--out", "data/demo", "--categories", "demo_object", "--n-train", "10",
              "--image-size", "64", cwd=workdir)
    assert res.returncode == 0, res.stderr
    res = run("train", "--data", "demo", "--category", "demo_object", "--image-size", "64", "--epochs", "1",
              "--batch-size", "4", "--lr", "1e-3", "--quiet", cwd=workdir)
    assert res.returncode == 0, res.stderr
    ckpt = workdir / "pretrained" / "demo_object-efficientnet_lite0.safetensors"
    assert ckpt.is_file() and ckpt.with_suffix(".json").is_file()
    for name in ("Image AUROC", "Pixel AUROC", "Pixel F1-max", "AU-PRO"):
        assert name.lower() in res.stdout.lower()

    res = run("eval", "--checkpoint", str(ckpt), "--json", cwd=workdir)
    assert res.returncode == 0, res.stderr
    metrics = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(metrics) >= {"image_auroc", "pixel_auroc", "pixel_f1_max", "au_pro"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())

    images = sorted((workdir / "data/demo/demo_object/test").glob("*/000.png"))[:3]
    res = run("predict", "--checkpoint", str(ckpt), *map(str, images), "--out-dir", "pred", cwd=workdir)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3 and all(("normal" in ln) != ("anomalous" in ln) for ln in lines)
    overlay = iio.imread(workdir / "pred" / f"{images[0].stem}_overlay.png")
    assert overlay.shape == (64, 64, 3)

    res = run("gif", "--checkpoint", str(ckpt), "--out", "demo.gif", "--n", "4", "--fps", "4", cwd=workdir)
    assert res.returncode == 0, res.stderr
    frames = iio.imread(workdir / "demo.gif", index=None)
    assert frames.shape[0] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("predict", "--checkpoint", "missing.safetensors", "x.png"), "not found"),
        (("eval", "--checkpoint", "model.pt"), "only .safetensors"),
        (("train", "--data", "mvtec", "--category", "bottle", "--data-root", "nowhere"), "not found"),
        (("train", "--data", "mvtec", "--category", "../etc"), "category"),
        (("train", "--data", "folder", "--good-dir", "empty"), "empty|no images|not found"),
    ],
)
def test_errors_are_one_line_without_traceback(workdir: Path, args: tuple[str, ...], message: str) -> None:
    (workdir / "empty").mkdir(exist_ok=True)
    res = run(*args, cwd=workdir)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    import re

    assert re.search(message, lines[0], re.IGNORECASE), lines[0]


def test_help_lists_commands() -> None:
    res = run("--help", cwd=ROOT)
    assert res.returncode == 0
    for cmd in ("demo-data", "download", "train", "eval", "predict", "gif"):
        assert cmd in res.stdout


@pytest.mark.parametrize(("flags", "denoise", "segment", "batch"), [
    ((), False, (False, "head", "map"), 2), (("--recipe", "cpu"), True, (True, "fused", "distillation"), 8),
    (("--recipe", "cpu-denoise"), True, (False, "head", "map"), 8),
    # an explicit choice turns off what the recipe built on it, never another explicit choice
    (("--recipe", "cpu", "--no-denoise"), False, (False, "fused", "map"), 8),
    (("--recipe", "cpu", "--no-segment"), True, (False, "fused", "map"), 8),
    (("--recipe", "cpu", "--segment-map", "head"), True, (True, "head", "map"), 8),
    (("--recipe", "cpu", "--score-map", "map"), True, (True, "fused", "map"), 8),
    (("--recipe", "cpu", "--level-norm"), True, (False, "fused", "map"), 8),  # level norm is for a map without head
    (("--recipe", "cpu-denoise", "--segment", "--segment-map", "fused"), True, (True, "fused", "map"), 8),
    (("--denoise",), True, (False, "head", "map"), 2), (("--denoise", "--segment"), True, (True, "head", "map"), 2),
])
def test_the_recipe_sets_the_denoising_student_and_its_head_and_a_flag_overrides_them(flags, denoise, segment,
                                                                                    batch) -> None:
    from ikd_core.cli import _train_config, build_parser

    args = build_parser().parse_args(["train", "--data", "demo", "--category", "demo_object", *flags])
    cfg = _train_config(args)  # a head without the denoising student would be refused here
    assert (cfg.denoise, cfg.batch_size, cfg.loss, cfg.student) == (denoise, batch, "ikd", "forward")
    assert (cfg.segment, cfg.segment_map, cfg.score_map) == segment
