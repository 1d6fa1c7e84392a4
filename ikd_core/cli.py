"""Command line: ``python -m ikd_core {demo-data,download,train,eval,predict,export,gif,benchmark}``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import IKDError

PRETRAINED_DIR = Path("pretrained")


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=("demo", "mvtec", "folder"), default="demo" if required else None,
                   help="demo: synthetic set generated offline; mvtec: MVTec AD under --data-root; "
                        "folder: your own images (--good-dir, optional --test-dir/--mask-dir)")
    g.add_argument("--category", help="MVTec AD or demo category (e.g. bottle, demo_texture)")
    g.add_argument("--data-root", help="root folder of MVTec AD (default data/mvtec) or the demo set "
                                       "(default data/demo)")
    g.add_argument("--good-dir", help="folder data: a folder of good images")
    g.add_argument("--test-dir", help="folder data: test images (flat, or good/ + <defect>/ subfolders)")
    g.add_argument("--mask-dir", help="folder data: masks named like the test images")


def _data_spec(args: argparse.Namespace, fallback: dict | None = None):
    from .data.sources import DataSpec

    if args.data is None and fallback:
        spec = DataSpec.from_dict(fallback)
        if args.data_root:
            spec.root = args.data_root
        return spec
    kind = args.data or "demo"
    category = args.category or ("demo_texture" if kind == "demo" else "custom" if kind == "folder" else None)
    if category is None:
        raise IKDError("--category is required with --data mvtec (e.g. --category bottle)")
    return DataSpec(kind, category, args.data_root, args.good_dir, args.test_dir, args.mask_dir)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from .data.synthetic import DEMO_CATEGORIES, generate_demo_dataset

    cats = tuple(args.categories.split(",")) if args.categories else DEMO_CATEGORIES
    root = generate_demo_dataset(args.out, categories=cats, n_train=args.n_train, image_size=args.image_size,
                                 seed=args.seed)
    print(f"demo data for {', '.join(cats)} written to {root}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .data.download import MVTEC_URL, download_mvtec

    root = download_mvtec(args.data_root, url=args.url or MVTEC_URL, sha256=args.sha256, archive=args.archive)
    print(f"MVTec AD ready under {root}")
    return 0


def _train_config(args: argparse.Namespace):
    from .recipes import recipe_settings
    from .train import TrainConfig

    settings = recipe_settings(
        args.recipe, image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        schedule=args.schedule, student=args.student, loss=args.loss, denoise=args.denoise, segment=args.segment,
        segment_map=args.segment_map, score_map=args.score_map,
        level_norm=args.level_norm or None, combine=args.combine or ("sum" if args.level_norm else None),
        score_topk=args.score_topk, ood_penalty=args.ood_penalty)
    if args.epochs is None and args.max_minutes is not None:
        settings["epochs"] = None  # until the time limit
    return TrainConfig(
        backbone=args.backbone, weight_decay=args.weight_decay, gamma=0.0 if args.no_csl else args.gamma,
        hard_mining=not args.no_ahsm, level_weights=tuple(args.level_weights) if args.level_weights else None,
        sigma=args.sigma, feature_pool=args.feature_pool, seed=args.seed, device=args.device,
        amp=not args.no_amp, num_workers=args.num_workers, val_every=args.val_every,
        teacher_weights=args.teacher_weights, max_minutes=args.max_minutes,
        holdout_fraction=args.holdout_fraction, channels_last=not args.no_channels_last, **settings,
    )


def cmd_train(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from .data.sources import build_datasets, default_checkpoint_name
    from .device import select_device
    from .distributed import init_from_env, is_distributed_env
    from .metrics import format_metrics_table
    from .train import train

    spec = _data_spec(args)
    cfg = _train_config(args)
    train_ds, test_ds = build_datasets(spec, cfg.image_size)
    out = Path(args.out) if args.out else PRETRAINED_DIR / default_checkpoint_name(spec.category, cfg.backbone)
    rank, device = 0, None
    if is_distributed_env():  # started by torchrun
        device = select_device(cfg.device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        rank, world = init_from_env(device)
        if rank == 0:
            print(f"distributed training: {world} processes, global batch {world * cfg.batch_size}")
    bar = tqdm(total=cfg.epochs, unit="epoch", desc=f"train {spec.category}", disable=args.quiet or rank != 0)

    def on_progress(p) -> None:
        if p.phase == "train":
            bar.set_postfix(loss=f"{p.loss:.4f}", img_s=f"{p.images_per_sec:.1f}", eta=f"{p.eta_s:.0f}s",
                            refresh=False)
            if p.step == p.steps_per_epoch:
                bar.update(1)
        else:
            bar.set_description(f"{p.phase} {spec.category}")

    result = train(train_ds, test_ds, cfg, out_path=out, category=spec.category, data_info=spec.to_dict(),
                   callback=on_progress, device=device)
    bar.close()
    if rank != 0:
        return 0
    meta = result.metadata
    print(f"trained {meta['epochs_completed']} epochs in {meta['train_seconds']:.1f} s "
          f"({meta['images_per_sec']} images/s on {meta['device']}); checkpoint: {result.checkpoint}")
    if result.metrics:
        print(format_metrics_table(result.metrics, title=f"{spec.category} ({cfg.backbone})"))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .data.sources import build_datasets
    from .device import select_device
    from .evaluation import evaluate_model
    from .loading import load_model
    from .metrics import format_metrics_table

    device = select_device(args.device)
    model, meta = load_model(args.checkpoint, device)
    spec = _data_spec(args, fallback=meta.get("data"))
    _, test_ds = build_datasets(spec, int(meta["image_size"]))
    if test_ds is None:
        raise IKDError("this data has no test set to evaluate on (give --test-dir)")
    metrics = evaluate_model(model, test_ds, device, batch_size=args.batch_size).metrics
    if args.json:
        print(json.dumps(metrics))
    else:
        print(format_metrics_table(metrics, title=f"{spec.category} ({meta['backbone']}): {args.checkpoint}"))
    return 0


def _predictor(args: argparse.Namespace):
    """Predictor for ``--model FILE.onnx`` (onnxruntime, no torch model) or ``--checkpoint`` (``--backend``)."""
    if args.model:
        from .runtime import OnnxPredictor

        if args.backend == "torch":
            raise IKDError("--backend torch needs --checkpoint; an exported --model runs with onnxruntime")
        return OnnxPredictor(args.model, tile=args.tile)
    from .device import select_device
    from .predict import Predictor

    return Predictor.from_checkpoint(args.checkpoint, select_device(args.device), tile=args.tile,
                                     backend=args.backend)


def cmd_predict(args: argparse.Namespace) -> int:
    from PIL import Image

    from .predict import render

    predictor = _predictor(args)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in args.images:
        try:
            (pred,) = predictor.predict([path])
        except IKDError as exc:
            print(f"{path}\terror: {exc}")
            failures += 1
            continue
        verdict = "anomalous" if pred.is_anomalous(args.threshold) else "normal"
        pics = render(path, pred, norm_threshold=args.threshold, alpha=args.alpha, cmap=args.cmap)
        target = out_dir / f"{Path(path).stem}_overlay.png"
        Image.fromarray(pics["overlay"]).save(target)
        print(f"{path}\tscore {pred.norm_score:.3f}\t{verdict}\t{target}")
    return 1 if failures else 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.format, args.out, teacher_weights=args.teacher_weights)
    print(f"{args.format} export of {args.checkpoint} written to {out}")
    return 0


def cmd_gif(args: argparse.Namespace) -> int:
    from .data.sources import build_datasets
    from .device import select_device
    from .gif import make_gif, pick_samples
    from .predict import Predictor

    predictor = Predictor.from_checkpoint(args.checkpoint, select_device(args.device))
    if args.images:
        images, masks = list(args.images), None
    else:
        spec = _data_spec(args, fallback=predictor.metadata.get("data"))
        _, test_ds = build_datasets(spec, predictor.image_size)
        if test_ds is None:
            raise IKDError("no test images: give IMAGE files or a data set with a test split")
        picked = pick_samples(test_ds.samples, args.n, args.seed)
        images, masks = [s.path for s in picked], [s.mask_path for s in picked]
    out = make_gif(predictor, images, args.out, masks=masks, fps=args.fps, size=args.size,
                   norm_threshold=args.threshold, alpha=args.alpha, cmap=args.cmap)
    print(f"{len(images)} frames written to {out}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    import shlex

    from .reproduce.run import run_benchmark

    as_typed = sys.argv[0].endswith("__main__.py")
    payload = run_benchmark(
        args.data_root, data=args.data, categories=args.categories, backbone=args.backbone, epochs=args.epochs,
        image_size=args.image_size, batch_size=args.batch_size, lr=args.lr, name=args.name, retrain=args.retrain,
        out=args.out, assets=args.assets, pretrained_dir=args.pretrained_dir, device=args.device,
        teacher_weights=args.teacher_weights, progress=not args.quiet,
        invoked="python -m ikd_core " + shlex.join(sys.argv[1:]) if as_typed else None,
    )
    failed = [r["category"] for r in payload["results"] if r["status"] != "ok"]
    print(f"report: {payload['report']} ({len(payload['results']) - len(failed)} ok"
          + (f", failed: {', '.join(failed)})" if failed else ")"))
    return 1 if failed else 0


def _add_train_parser(sub: Any) -> None:
    from .backbones import BACKBONES
    from .recipes import RECIPE_NOTES, RECIPES
    from .segmentation import SCORE_MAPS
    from .train import LOSSES, SCHEDULES, STUDENTS

    p = sub.add_parser("train", help="train a student; writes pretrained/<category>-<backbone>.safetensors")
    _add_data_args(p)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="paper",
                   help="settings for what is not given (default: paper): "
                        + "; ".join(f"{name}: {note}" for name, note in RECIPE_NOTES.items()))
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="efficientnet_lite0")
    p.add_argument("--teacher-weights", help="local teacher weights file, or hub / packaged (default: auto)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--epochs", type=int, help="recipe's by default; optional with --max-minutes (then: until the "
                                              "time is up)")
    p.add_argument("--batch-size", type=int, help="per process (torchrun: global = N x this)")
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--gamma", type=float, default=1.0, help="context similarity loss weight")
    p.add_argument("--no-csl", action="store_true", help="ablation: context similarity loss off")
    p.add_argument("--no-ahsm", action="store_true", help="ablation: hard sample mining off")
    p.add_argument("--level-weights", type=float, nargs="+", help="one weight per feature level")
    p.add_argument("--student", choices=STUDENTS, help="forward (paper) or reverse (RD4AD decoder from a one-class "
                                                       "bottleneck of the teacher's levels)")
    p.add_argument("--loss", choices=LOSSES, help="ikd (AHSM + CSL) or cosine (RD4AD's per-level 1 - cos)")
    p.add_argument("--denoise", action=argparse.BooleanOptionalAction,
                   help="denoising student: it sees a synthetic anomaly and must output the clean image's features "
                        "(default: the recipe's; cpu: on, paper: off)")
    p.add_argument("--segment", action=argparse.BooleanOptionalAction,
                   help="DeSTSeg's segmentation head, trained on the denoising student's synthetic anomalies; its "
                        "output is the anomaly map (needs --denoise; default: the recipe's, off in both)")
    p.add_argument("--segment-map", choices=("head", "fused"),
                   help="with --segment: the head's map (DeSTSeg's) or its sum with the distillation map, "
                        "each normalised on held-out images (0.9 quantile -> 0, 0.995 -> 0.1); default: head")
    p.add_argument("--score-map", choices=SCORE_MAPS,
                   help="with --segment-map fused: take the image score (and its threshold) on the fused map or on "
                        "its distillation part (the map shown stays the fused one); default: map")
    p.add_argument("--ood-penalty", type=float, metavar="W",
                   help="EfficientAD's penalty: weight of the student's output on foreign textures, relative to its "
                        "output on the training images (0 = off)")
    p.add_argument("--combine", choices=("product", "sum"), help="fusion of the levels' maps")
    p.add_argument("--level-norm", action="store_true",
                   help="normalise each level's map on held-out images (0.9 quantile -> 0, 0.995 -> 0.1) before "
                        "fusion (with --combine sum, the default with this option)")
    p.add_argument("--score-topk", type=int, help="image score: max (1) or mean of the k highest pixels")
    p.add_argument("--feature-pool", action="store_true", help="3x3 average pooling of features")
    p.add_argument("--sigma", type=float, default=4.0,
                   help="Gaussian blur of the anomaly map in px (ours; the official code has none: 0)")
    p.add_argument("--holdout-fraction", type=float, default=0.1,
                   help="good training images kept aside to fit the threshold")
    p.add_argument("--val-every", type=int, default=0, help="evaluate every N epochs")
    p.add_argument("--max-minutes", type=float, help="stop training after this many minutes")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="learning rate: constant (paper, recipes' default) or cosine / linear decay to 0 at the end "
                        "of the run (the time budget, or the planned steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--no-channels-last", action="store_true",
                   help="contiguous (NCHW) layout instead of channels_last (always so under torchrun)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--out", help="checkpoint path (default pretrained/<category>-<backbone>.safetensors)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _add_model_parsers(sub: Any) -> None:
    """eval, predict, export and gif: the commands that use a trained checkpoint."""
    p = sub.add_parser("eval", help="evaluate a checkpoint on a test set and print the metrics")
    p.add_argument("--checkpoint", required=True)
    _add_data_args(p, required=False)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="score images and write overlay images")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a .safetensors checkpoint")
    src.add_argument("--model", help="an exported .onnx file (run with onnxruntime)")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                   help="with --checkpoint: auto (onnxruntime on a cached export on CPU when installed, else "
                        "torch), torch (eager) or onnx")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out-dir", default="predictions")
    p.add_argument("--threshold", type=float, default=0.5, help="normalised threshold (0.5 = fitted)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument("--cmap", default="jet")
    p.add_argument("--tile", action="store_true", help="tile large images at native resolution")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a checkpoint to one ONNX / OpenVINO graph (model + anomaly map)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", choices=("onnx", "openvino"), default="onnx")
    p.add_argument("--out", required=True, help="output file (.onnx; openvino: .xml, with its .bin beside it)")
    p.add_argument("--teacher-weights", help="the teacher weights file the checkpoint was trained with")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("gif", help="make a demo GIF: test images with heatmaps, overlays and ground truth")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="*", help="image files (default: test images of the checkpoint's data)")
    _add_data_args(p, required=False)
    p.add_argument("--out", required=True, help="output .gif")
    p.add_argument("--n", type=int, default=8, help="number of test images (frames)")
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--size", type=int, help="frame width in pixels")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--cmap", default="jet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_gif)


def build_parser() -> argparse.ArgumentParser:
    from .backbones import BACKBONES

    parser = argparse.ArgumentParser(
        prog="python -m ikd_core",
        description="IKD Studio: unsupervised anomaly segmentation with Informative Knowledge Distillation.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="generate the synthetic demo set (MVTec layout) offline")
    p.add_argument("--out", default="data/demo", help="output root (default data/demo)")
    p.add_argument("--categories", help="comma-separated demo categories (default: all)")
    p.add_argument("--n-train", type=int, default=60)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("download", help="download and extract MVTec AD (or extract a local archive)")
    p.add_argument("--data-root", default="data/mvtec")
    p.add_argument("--archive", help="an already-downloaded mvtec_anomaly_detection.tar.xz")
    p.add_argument("--url", help="archive URL (the official link moves from time to time)")
    p.add_argument("--sha256", help="expected SHA-256 of the archive")
    p.set_defaults(func=cmd_download)

    _add_train_parser(sub)

    _add_model_parsers(sub)

    p = sub.add_parser("benchmark", help="train + evaluate categories; write results/<name>.md/.json, curves, GIFs")
    p.add_argument("--data-root", help="MVTec AD root (default data/mvtec) or demo root (default data/demo)")
    p.add_argument("--data", choices=("mvtec", "demo"), default="mvtec")
    p.add_argument("--categories", default="all", help="all, or comma-separated categories")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="hrnet_w32")
    p.add_argument("--teacher-weights", help="local teacher weights file, or hub / packaged (default: auto)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--name", help="report name (default <data>-<backbone>-<size>px-<epochs>ep)")
    p.add_argument("--retrain", action="store_true", help="train even where a checkpoint exists")
    p.add_argument("--out", default="results", help="folder for <name>.md, <name>.json and <name>/ curves")
    p.add_argument("--assets", default="assets", help="folder for <category>.gif")
    p.add_argument("--pretrained-dir", default=str(PRETRAINED_DIR), help="checkpoints <category>-<backbone>")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line and return 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (IKDError, OSError, ValueError) as exc:
        if args.debug or os.environ.get("IKD_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
