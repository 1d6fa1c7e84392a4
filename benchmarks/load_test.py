"""Load test: inspection requests from several API clients while a training run goes on in the same app.

    python -m benchmarks.load_test [--clients 8] [--requests 200] [--time-limit 900] [--out benchmarks/REPORT.md]

Starts ``python app.py`` on 127.0.0.1 (a free port) with ``pretrained/``, data, work and Gradio temporary
folders in a temporary directory and the repository's ``pretrained/demo_texture-efficientnet_lite0.safetensors``
copied in (where it is missing, a tiny 64-px checkpoint is trained first and the report says so). Through the
API it starts one training run (demo data, 64 px, more epochs than the test lasts), waits for its first
progress report, then ``--clients`` ``gradio_client`` clients send ``--requests`` inspection requests in all
(a bounded loop, stopped early at ``--time-limit`` seconds), each with a different demo test image (one pixel
changed per request) so that every request runs the model instead of hitting the prediction cache. Every
request's latency is recorded, with whether the training run was still going when it completed.

The run fails (exit status 1) when a request failed, was not sent, or completed after training had ended;
training is then stopped through the API, which must leave ``pretrained/`` byte for byte as it was. The
numbers (p50 / p95 / max latency, counts) replace the load-test section of ``benchmarks/REPORT.md`` (its
heading and the ``<!-- load-test -->`` marker, then the numbers); the other sections are kept byte for byte (the
report is created with just this section where it does not exist yet). This is a benchmark, not a timed test:
``tests/test_hardening.py`` runs a reduced version (2 clients x 5 requests) as a behaviour test.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .app_server import AppServer, distinct_images
from .report import (
    LOAD_TEST_HEADING,
    LOAD_TEST_MARKER,
    REPORT,
    ROOT,
    command_line,
    machine_lines,
    utc_now,
    write_section,
)

CKPT = "demo_texture-efficientnet_lite0.safetensors"


# --------------------------------------------------------------------------- the load
@dataclass
class RequestRecord:
    index: int
    client: int
    start: float  # time.monotonic()
    end: float
    error: str | None
    training_running: bool

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass
class LoadResult:
    requested: int
    records: list[RequestRecord] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def failures(self) -> list[RequestRecord]:
        return [r for r in self.records if r.error is not None]

    @property
    def not_sent(self) -> int:
        return self.requested - len(self.records)

    @property
    def during_training(self) -> int:
        return sum(r.training_running for r in self.records)

    def latencies(self) -> np.ndarray:
        return np.array([r.latency for r in self.records if r.error is None], dtype=np.float64)

    def stats(self) -> dict[str, float]:
        lat = self.latencies()
        if not lat.size:
            return {"p50": float("nan"), "p95": float("nan"), "max": float("nan"), "mean": float("nan")}
        return {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                "max": float(lat.max()), "mean": float(lat.mean())}

    def problems(self) -> list[str]:
        """Why the run does not pass: failures, requests not sent, requests that completed after training."""
        out = [f"request {r.index} (client {r.client}) failed: {r.error}" for r in self.failures]
        if self.not_sent:
            out.append(f"{self.not_sent} of {self.requested} requests not sent within the time limit")
        late = [r.index for r in self.records if not r.training_running]
        if late:
            out.append(f"{len(late)} requests completed after training had ended (e.g. request {late[0]})")
        return out


def run_load(url: str, images: Sequence[str | os.PathLike[str]], ckpt: str, clients: int, requests: int,
             time_limit: float, training_running: Callable[[], bool]) -> LoadResult:
    """``requests`` calls of ``/inspect`` (image ``i`` for request ``i``) from ``clients`` threads with one
    ``gradio_client.Client`` each, stopped early after ``time_limit`` seconds."""
    from gradio_client import Client, handle_file

    conns = [Client(url, verbose=False) for _ in range(clients)]
    result = LoadResult(requested=requests)
    lock = threading.Lock()
    counter = iter(range(requests))
    t_start = time.monotonic()
    deadline = t_start + time_limit

    def worker(k: int) -> None:
        client = conns[k]
        while True:
            with lock:
                if time.monotonic() > deadline:
                    return
                i = next(counter, None)
            if i is None:
                return
            t0 = time.monotonic()
            err = None
            try:
                out = client.predict([handle_file(str(images[i % len(images)]))], ckpt, 0.5, 0.5, "jet",
                                     api_name="/inspect")
                if out[5] not in ("normal", "anomalous"):
                    err = f"unexpected verdict {out[5]!r}"
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and reported
                err = f"{type(exc).__name__}: {exc}"
            t1 = time.monotonic()
            running = training_running()
            with lock:
                result.records.append(RequestRecord(i, k, t0, t1, err, running))

    threads = [threading.Thread(target=worker, args=(k,), name=f"load-client-{k}") for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall_s = time.monotonic() - t_start
    result.records.sort(key=lambda r: r.index)
    return result


# --------------------------------------------------------------------------- training through the API
def train_args(epochs: int, image_size: int = 64, batch_size: int = 8) -> tuple[Any, ...]:
    """``/train`` arguments: the demo texture, efficientnet_lite0."""
    return ("Demo", "demo_texture", "", "", "", [], "", "efficientnet_lite0", image_size, epochs, batch_size, 1e-3)


_PROGRESS = re.compile(r"epoch (\d+/\d+) · step (\d+/\d+)")


def wait_for_progress(job: Any, timeout: float) -> str:
    """The first progress text of a submitted ``/train`` job that reports a training step."""
    deadline = time.monotonic() + timeout
    while True:
        texts = [str(o[0]) for o in job.outputs() if o]
        hit = next((t for t in reversed(texts) if _PROGRESS.search(t)), None)
        if hit:
            return hit
        if job.done():
            raise RuntimeError(f"training ended before reporting progress: {job.result()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no training progress within {timeout:.0f} s")
        time.sleep(0.2)


def last_progress(job: Any) -> str:
    texts = [str(o[0]) for o in job.outputs() if o and _PROGRESS.search(str(o[0]))]
    return texts[-1] if texts else ""


def epoch_of(progress: str) -> str:
    m = _PROGRESS.search(progress)
    return f"epoch {m.group(1)}, step {m.group(2)}" if m else "?"


# --------------------------------------------------------------------------- the app's folders
def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def tiny_checkpoint(out: Path, demo_root: Path) -> Path:
    from ikd_core.data.sources import DataSpec, build_datasets
    from ikd_core.train import TrainConfig, train

    spec = DataSpec("demo", "demo_texture", str(demo_root))
    train_ds, test_ds = build_datasets(spec, 64)
    cfg = TrainConfig(image_size=64, epochs=1, batch_size=4, lr=1e-3)
    return train(train_ds, test_ds, cfg, out_path=out, category="demo_texture", data_info=spec.to_dict()).checkpoint


# --------------------------------------------------------------------------- report
def section(result: LoadResult, args: argparse.Namespace, command: str, ckpt_note: str, training: dict[str, str],
            machine: list[str]) -> str:
    st = result.stats()
    ok = len(result.records) - len(result.failures)
    lines = [
        LOAD_TEST_HEADING,
        "",
        LOAD_TEST_MARKER,
        "",
        f"- Command: `{command}`",
        *machine,
        f"- Date: {utc_now()}",
        f"- App: `python app.py` on 127.0.0.1 (queue: inspection 2 at a time, training 1), {ckpt_note}",
        f"- Meanwhile: one training run through `/train` (demo_texture, efficientnet_lite0, {args.train_size} px, "
        f"batch 8, {args.epochs} epochs), from {training['start']} when the load began to {training['end']} "
        "when it ended; stopped through `/stop` afterwards, `pretrained/` unchanged byte for byte",
        f"- Load: {args.clients} `gradio_client` clients, {result.requested} `/inspect` requests in all (each one "
        "distinct 256-px demo test image, so every request runs the model; latency = upload + queue + "
        f"inference + rendering + download of the results), time limit {args.time_limit:.0f} s",
        "",
        "| requests | succeeded | failed | not sent | completed during training | p50 (s) | p95 (s) | max (s) | "
        "mean (s) | wall (s) | requests/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {result.requested} | {ok} | {len(result.failures)} | {result.not_sent} | {result.during_training} | "
        f"{st['p50']:.2f} | {st['p95']:.2f} | {st['max']:.2f} | {st['mean']:.2f} | {result.wall_s:.1f} | "
        f"{ok / result.wall_s if result.wall_s else 0:.2f} |",
        "",
        "Result: " + ("**pass** (no request failed; all completed while training was running)." if not
                      result.problems() else "**FAIL**: " + "; ".join(result.problems()[:5])),
    ]
    return "\n".join(lines) + "\n"


def write_report(out: Path, text: str) -> None:
    """Put ``text`` (a whole load-test section) in place of the report's load-test section, keeping the rest."""
    write_section(out, LOAD_TEST_HEADING, text)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load_test", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--time-limit", type=float, default=900.0, help="seconds for all requests (then stop sending)")
    p.add_argument("--train-size", type=int, default=64, help="image size of the training run (px)")
    p.add_argument("--epochs", type=int, default=1000, help="epochs of the training run (more than the test lasts)")
    p.add_argument("--checkpoint", default=str(ROOT / "pretrained" / CKPT))
    p.add_argument("--out", default=str(REPORT))
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (app log, images)")
    args = p.parse_args(argv)
    command = command_line("load_test", sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from gradio_client import Client

    from ikd_core.data.synthetic import ensure_demo_dataset

    tmp = Path(tempfile.mkdtemp(prefix="ikd-load-"))
    pretrained, data = tmp / "pretrained", tmp / "data"  # the app's folders (AppServer)
    pretrained.mkdir()
    print(f"preparing demo data and checkpoint in {tmp}", flush=True)
    demo_root = ensure_demo_dataset(data / "demo")
    src = Path(args.checkpoint)
    if src.is_file():
        shutil.copy(src, pretrained / CKPT)
        if src.with_suffix(".json").is_file():
            shutil.copy(src.with_suffix(".json"), (pretrained / CKPT).with_suffix(".json"))
        ckpt_note = f"checkpoint `{src.relative_to(ROOT) if src.is_relative_to(ROOT) else src}` copied in"
    else:
        tiny_checkpoint(pretrained / CKPT, demo_root)
        ckpt_note = f"`{src}` missing, so a tiny 64-px checkpoint trained for 1 epoch was used"
    sources = sorted((demo_root / "demo_texture" / "test").glob("*/*.png"))
    images = distinct_images(sources, args.requests, tmp / "images")
    before = snapshot(pretrained)

    app = AppServer(tmp)
    url = app.url
    problems: list[str] = []
    try:
        app.wait_ready(180)
        trainer = Client(url, verbose=False)
        job = trainer.submit(*train_args(args.epochs, args.train_size), api_name="/train")
        first = wait_for_progress(job, 300)
        print(f"training runs ({epoch_of(first)}); sending {args.requests} requests from {args.clients} clients",
              flush=True)
        result = run_load(url, images, CKPT, args.clients, args.requests, args.time_limit, lambda: not job.done())
        training = {"start": epoch_of(first), "end": epoch_of(last_progress(job))}
        problems += result.problems()
        if job.done():
            problems.append(f"training ended during the load test: {job.result()}")
        trainer.predict(api_name="/stop")
        final = job.result(timeout=300)
        if "Stopped" not in str(final[0]):
            problems.append(f"training did not stop cleanly: {final[0]}")
        if snapshot(pretrained) != before:
            problems.append("pretrained/ changed")
    finally:
        app.stop()
    st = result.stats()
    print(f"{len(result.records)} requests, {len(result.failures)} failed, {result.during_training} during training; "
          f"p50 {st['p50']:.2f} s, p95 {st['p95']:.2f} s, max {st['max']:.2f} s, wall {result.wall_s:.1f} s")
    text = section(result, args, command, ckpt_note, training, machine_lines())
    if problems:
        text += "\n" + "\n".join(f"- {p}" for p in problems[:20]) + "\n"
    out = Path(args.out)
    write_report(out, text)
    print(f"report written to {out}")
    if args.keep or problems:
        print(f"kept {tmp} (app log: {tmp / 'app.log'})")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    for msg in problems:
        print("PROBLEM:", msg, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
