"""Training runs through the real dataset, DataLoader and ``train`` loop, for ``python -m benchmarks.perf
--sections loop``; prints one ``@@{json}`` line.

    python -m benchmarks.train_loop --interleave ROOT_OURS,ROOT_BEFORE --data-root data/demo

``--interleave``: three ``train`` loops in one process, steps taken in turn (round-robin, one loop at a time, each
in its own thread that waits for its turn after every step): ours (``ikd_core`` of the first root), the plain
loss in the same code, and the "before" loop (``ikd_core`` of the second root, an extracted older commit). Each
package is loaded under its own name, so the three run the very code of their commits; taking steps in turn
makes every round of three see the same machine load. A step's time runs from getting the turn to the end of
the step's progress report: fetching and collating the batch, normalising, forward, loss, backward, AdamW and
the loop's bookkeeping. Without ``--interleave``: one run of the ``ikd_core`` that ``import ikd_core`` finds
(the repository's, run from its root).

Plain = feature distillation as in STFPM: per level the mean over positions of |t - s|^2 of the normalised
features, weighted mean over levels; no AHSM, no CSL; everything else is the same code.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn


class PlainDistillationLoss(nn.Module):
    """STFPM: per level the mean over all positions of |t(p) - s(p)|^2; weighted mean over levels.
    Takes :class:`ikd_core.loss.IKDLoss`'s arguments (and ignores gamma, AHSM, alpha, beta)."""

    def __init__(self, num_levels: int, level_weights: Sequence[float] | None = None, *args: object,
                 **kwargs: object) -> None:
        super().__init__()
        weights = list(level_weights) if level_weights is not None else [1.0] * num_levels
        self.register_buffer("level_weights", torch.tensor(weights, dtype=torch.float32))
        self.margins = nn.ModuleList()

    def forward(self, teacher_feats: Sequence[Tensor], student_feats: Sequence[Tensor], **kwargs: object) -> Tensor:
        losses = torch.stack([(t.float() - s.float()).square().sum(dim=1).mean()
                              for t, s in zip(teacher_feats, student_feats, strict=True)])
        return (losses * self.level_weights).sum() / self.level_weights.sum()


def run(variant: str, data_root: str, category: str, epochs: int, image_size: int, batch: int, lr: float) -> dict:
    """Train ``epochs`` epochs; img/s over the whole run and over epochs 2.. (steady state: the image cache is
    full), from the loop's own Progress reports."""
    import ikd_core.train as train_mod
    from ikd_core.data.sources import DataSpec, build_datasets

    if variant == "plain":
        train_mod.IKDLoss = PlainDistillationLoss  # type: ignore[misc,assignment]
    train_ds, _ = build_datasets(DataSpec("demo", category, data_root), image_size)
    cfg = train_mod.TrainConfig(image_size=image_size, epochs=epochs, batch_size=batch, lr=lr)
    marks: list[tuple[int, int, float]] = []

    def on_progress(p: object) -> None:
        if p.phase == "train":  # type: ignore[attr-defined]
            marks.append((p.epoch, p.step, p.elapsed_s))  # type: ignore[attr-defined]

    t0 = time.perf_counter()
    result = train_mod.train(train_ds, None, cfg, callback=on_progress)
    wall = time.perf_counter() - t0
    meta = result.metadata
    steps = max(s for _, s, _ in marks)
    end_first = max(e for ep, _, e in marks if ep == 1)
    later = [m for m in marks if m[0] > 1]
    steady = len(later) * batch / (later[-1][2] - end_first) if later else None
    return {"variant": variant, "images_per_s": steady, "overall_images_per_s": meta["images_per_sec"],
            "train_s": meta["train_seconds"], "wall_s": wall, "steps_per_epoch": steps, "epochs": epochs,
            "final_loss": meta["final_loss"], "torch_threads": torch.get_num_threads(),
            "ikd_core": os.path.dirname(train_mod.__file__)}


def load_as(src_root: Path, name: str, tmp: Path) -> object:
    """``ikd_core`` of ``src_root`` imported as package ``name`` (a copy under ``tmp`` with its imports renamed)."""
    dest = tmp / name
    shutil.copytree(src_root / "ikd_core", dest, ignore=shutil.ignore_patterns("__pycache__"))
    for f in dest.rglob("*.py"):
        f.write_text(re.sub(r"\bikd_core\b", name, f.read_text(encoding="utf-8")), encoding="utf-8")
    # The package is registered from its folder, so its submodules are found there (the import path is unchanged).
    spec = importlib.util.spec_from_file_location(name, dest / "__init__.py", submodule_search_locations=[str(dest)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{name}.train")


class Turns:
    """Round-robin turns between named threads: one runs at a time."""

    def __init__(self, names: list[str]) -> None:
        self.cond = threading.Condition()
        self.names = list(names)
        self.cur = 0
        self.done: set[str] = set()

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.names[self.cur] == name)

    def next(self, name: str, finished: bool = False) -> None:
        with self.cond:
            if finished:
                self.done.add(name)
            if len(self.done) < len(self.names):
                self.cur = (self.cur + 1) % len(self.names)
                while self.names[self.cur] in self.done:
                    self.cur = (self.cur + 1) % len(self.names)
            self.cond.notify_all()


def interleave(roots: tuple[Path, Path], data_root: str, category: str, epochs: int, image_size: int, batch: int,
               lr: float) -> dict:
    """ours / plain / before, steps in turn; per loop the step times of epochs 2.. (the image cache full)."""
    tmp = Path(tempfile.mkdtemp(prefix="ikd-loops-"))
    try:
        mods = {"ours": load_as(roots[0], "ikd_ours", tmp), "plain": load_as(roots[0], "ikd_plain", tmp),
                "before": load_as(roots[1], "ikd_before", tmp)}
        mods["plain"].IKDLoss = PlainDistillationLoss
        names = list(mods)
        turns = Turns(names)
        times: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
        errors: dict[str, str] = {}

        def worker(name: str) -> None:
            mod = mods[name]
            sources = importlib.import_module(mod.__name__.rsplit(".", 1)[0] + ".data.sources")
            turns.wait(name)
            try:
                train_ds, _ = sources.build_datasets(sources.DataSpec("demo", category, data_root), image_size)
                cfg = mod.TrainConfig(image_size=image_size, epochs=epochs, batch_size=batch, lr=lr)
                start = [time.perf_counter()]

                def on_progress(p: object) -> None:
                    if p.phase != "train":  # type: ignore[attr-defined]
                        return
                    times[name].append((p.epoch, time.perf_counter() - start[0]))  # type: ignore[attr-defined]
                    turns.next(name)
                    turns.wait(name)
                    start[0] = time.perf_counter()

                mod.train(train_ds, None, cfg, callback=on_progress)
            except Exception as exc:  # noqa: BLE001 - reported
                errors[name] = f"{type(exc).__name__}: {exc}"
            finally:
                turns.next(name, finished=True)

        threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if errors:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in errors.items()))
    steady = {n: [sec for ep, sec in v if ep > 1] for n, v in times.items()}
    k = min(len(v) for v in steady.values())
    ratios = {n: [steady[n][i] / steady["ours"][i] for i in range(k)] for n in names if n != "ours"}
    return {
        "steps": k, "batch": batch, "epochs": epochs, "torch_threads": torch.get_num_threads(),
        "step_s": steady,
        "images_per_s": {n: batch / statistics.median(v) for n, v in steady.items()},
        "ours_over": {n: [statistics.median(r), min(r), max(r)] for n, r in ratios.items()},
        "steps_per_epoch": sum(1 for ep, _ in times["ours"] if ep == 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_loop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=("ours", "plain"), default="ours")
    p.add_argument("--data-root", default="data/demo")
    p.add_argument("--category", default="demo_texture")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--interleave", metavar="ROOT_OURS,ROOT_BEFORE",
                   help="ours, plain and before in one process, steps in turn (see the module docstring)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.interleave:
        ours, before = (Path(r) for r in a.interleave.split(","))
        res = interleave((ours, before), a.data_root, a.category, a.epochs, a.image_size, a.batch_size, a.lr)
        print("@@" + json.dumps(res), flush=True)
        return 0
    res = run(a.variant, a.data_root, a.category, a.epochs, a.image_size, a.batch_size, a.lr)
    print("@@" + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
