"""Hostile load: the public-mode app's memory and a normal visitor's latency while strangers attack it over HTTP.

    python -m benchmarks.attack_load [--out benchmarks/REPORT.md] [--quick] [--keep]

Starts ``python app.py`` in public mode (``IKD_PUBLIC=1``, ``OMP_NUM_THREADS=2`` like a CPU-basic Space) on a free
127.0.0.1 port, with ``pretrained/``, data, work and Gradio temporary folders in a temporary directory (the shipped
demo checkpoints copied in). A thread samples the resident set of the server process and its children (psutil,
every 50 ms). Every request goes through the HTTP API, each attacker a separate ``gradio_client.Client`` (a
separate visitor):

- (a) ``/export_gif`` with 32 uploaded 8192x8192 PNGs (small files: one colour) as the ``files`` argument;
- (b) ``/inspect`` with 64 8192x8192 PNGs in one request;
- (c) ``/inspect`` with 64 3968x3968 (15.7 MP, just under the 16 MP cap) PNGs: decoded, then downscaled;
- (d) ``/import_checkpoint`` of a checkpoint declaring ``image_size`` 2048;
- (e) ``/train`` with an uploaded zip of 40 8192x8192 PNGs.

Phase 0 times a normal one-image inspect on the idle server; phase 1 sends each attack alone (peak RSS above
idle, wall time, what the client got); phase 2 has 8 hostile visitors (a mix of (a), (b), (c)) send their attack
again and again for a fixed time while a 9th, normal visitor inspects one distinct demo test image about every
second (its latency: upload + queue + inference + download). Every PNG sent carries a unique text chunk, so no
upload or prediction is served from a cache. The run is bounded (``--quick``: under 5 min, else under 15) and
writes the ``## Hostile load (public mode)`` section of ``benchmarks/REPORT.md``, keeping the other sections.
Exit status 1 when a goal is missed or the server died.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .app_server import AppServer, distinct_images
from .report import REPORT, ROOT, command_line, machine_lines, utc_now, write_section

CKPT = "demo_texture-efficientnet_lite0.safetensors"
HEADING = "## Hostile load (public mode)"
MARKER = "<!-- hostile-load -->"
MB = 1024**2
SINGLE_BOUND_MB = 2048  # the stated bound: peak RSS above idle for any single request
CONCURRENT_BOUND_MB = 2 * SINGLE_BOUND_MB
LATENCY_GOAL_S = 2.0
ATTACKS = {
    "a": "/export_gif, 32 x 8192^2 PNG as files",
    "b": "/inspect, 64 x 8192^2 PNG",
    "c": "/inspect, 64 x 3968^2 PNG (15.7 MP)",
    "d": "/import_checkpoint, image_size 2048",
    "e": "/train, zip of 40 x 8192^2 PNG",
}
HOSTILE_MIX = "aabbcccc"  # phase 2: one letter per hostile visitor


# --------------------------------------------------------------------------- crafted files
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


class PngFactory:
    """Constant-colour PNGs of one size: the pixels are compressed once; each file differs by a ``tEXt`` chunk."""

    def __init__(self, side: int, rgb: bool) -> None:
        channels = 3 if rgb else 1
        row = b"\x00" + bytes([90, 140, 200][:channels]) * side
        comp = zlib.compressobj(9)
        parts = [comp.compress(row * 256) for _ in range(side // 256)]
        parts += [comp.compress(row * (side % 256)), comp.flush()]
        self.head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2 if rgb else 0,
                                                                         0, 0, 0))
        self.tail = _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
        self.side = side

    def data(self, nonce: str) -> bytes:
        return self.head + _chunk(b"tEXt", b"nonce\x00" + nonce.encode()) + self.tail

    def files(self, folder: Path, n: int, nonce: str) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for i in range(n):
            p = folder / f"{nonce}-{i:02d}.png"
            p.write_bytes(self.data(f"{nonce}-{i}"))
            out.append(p)
        return out


def forged_checkpoint(src: Path, out: Path) -> Path:
    """The shipped checkpoint with its metadata claiming ``image_size`` 2048."""
    from ikd_core.checkpoint import load_student_state, read_metadata, save_checkpoint

    meta = {k: v for k, v in read_metadata(src).items() if k not in ("format", "version")}
    return save_checkpoint(out, load_student_state(src), {**meta, "image_size": 2048})


def bomb_zip(factory: PngFactory, out: Path, n: int = 40) -> Path:
    """A training upload: ``n`` distinct 8192x8192 PNGs under ``good/``."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n):
            zf.writestr(f"good/{i:02d}.png", factory.data(f"zip-{i}"))
    return out


# --------------------------------------------------------------------------- memory
class RssSampler:
    """Resident set (bytes) of a process and all its children, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def rss(self) -> int:
        import psutil

        total = 0
        with contextlib.suppress(psutil.Error):
            total += self.proc.memory_info().rss
            for child in self.proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = self.rss()
            with self._lock:
                self.samples.append((time.monotonic(), value))

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def peak(self, t0: float, t1: float) -> int:
        with self._lock:
            vals = [v for t, v in self.samples if t0 <= t <= t1]
        return max(vals, default=self.rss())

    def idle(self, seconds: float = 2.0) -> int:
        """Median RSS over the next ``seconds`` (call it when nothing runs)."""
        t0 = time.monotonic()
        time.sleep(seconds)
        with self._lock:
            vals = [v for t, v in self.samples if t >= t0]
        return int(np.median(vals)) if vals else self.rss()


# --------------------------------------------------------------------------- requests
@dataclass
class Call:
    """One request: wall time and what the client got."""

    attack: str
    start: float
    end: float
    ok: bool
    got: str
    queued: float | None = None  # seconds from submitting to the start of processing (upload + queue)
    upload: float | None = None  # seconds from submitting to joining Gradio's queue (the files' upload)

    @property
    def in_queue(self) -> float | None:
        """Seconds in Gradio's queue (joined, not yet processing)."""
        return None if self.queued is None or self.upload is None else self.queued - self.upload

    @property
    def wall(self) -> float:
        return self.end - self.start


def _short(text: object, n: int = 110) -> str:
    s = " ".join(str(text).split())
    return (s[: n - 3] + "...") if len(s) > n else s


def _queue_wait(job: Any, t0: float, timeout: float, poll: float) -> tuple[float | None, float | None]:
    """Seconds from ``t0`` until ``job`` joins Gradio's queue, and until its processing starts (polled)."""
    from gradio_client.utils import Status

    before = (Status.STARTING, Status.SENDING_DATA)
    joined = None
    while time.monotonic() - t0 < timeout and not job.done():
        code = None
        with contextlib.suppress(Exception):
            code = job.status().code
        if code is not None and code not in before and joined is None:
            joined = time.monotonic() - t0
        if code is not None and code not in (*before, Status.JOINING_QUEUE, Status.IN_QUEUE):
            return joined, time.monotonic() - t0
        time.sleep(poll)
    return joined, None


def call(client: Any, attack: str, args: tuple[Any, ...], api: str, timeout: float, watch: bool = False) -> Call:
    """Submit a request and wait at most ``timeout`` seconds for its result (then cancel it), recording when it
    joined Gradio's queue and when its processing began (``watch``: polled more often)."""
    from gradio_client.exceptions import AppError

    t0 = time.monotonic()
    job = client.submit(*args, api_name=api)
    upload, queued = _queue_wait(job, t0, timeout, 0.02 if watch else 0.05)
    try:
        out = job.result(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        return Call(attack, t0, time.monotonic(), True, _short(f"result: {_describe(api, out)}"), queued, upload)
    except AppError as exc:
        return Call(attack, t0, time.monotonic(), False, _short(f"error: {exc}"), queued, upload)
    except TimeoutError:
        with contextlib.suppress(Exception):
            job.cancel()
        return Call(attack, t0, time.monotonic(), False, f"no answer within {timeout:.0f} s (cancelled)")
    except Exception as exc:  # noqa: BLE001 - the server may have died: recorded, the run goes on
        return Call(attack, t0, time.monotonic(), False, _short(f"{type(exc).__name__}: {exc}"))


def _describe(api: str, out: Any) -> str:
    if api == "/inspect":
        rows = (out[6] or {}).get("data", []) if isinstance(out[6], dict) else out[6]
        return f"{len(rows or [])} images scored, verdict of the first: {out[5]}"
    if api == "/export_gif":
        return str(out[2])
    return _short(out, 60)


class Attacker:
    """One hostile visitor: builds fresh files for each attempt of its attack and sends it."""

    def __init__(self, url: str, attack: str, tmp: Path, pngs: dict[str, PngFactory], forged: Path, bomb: Path,
                 name: str) -> None:
        from gradio_client import Client

        self.client = Client(url, verbose=False, download_files=False)
        self.attack, self.tmp, self.pngs, self.forged, self.bomb, self.name = attack, tmp, pngs, forged, bomb, name
        self.count = 0

    def args(self) -> tuple[tuple[Any, ...], str]:
        from gradio_client import handle_file

        self.count += 1
        nonce = f"{self.name}-{self.count}"
        folder = self.tmp / "attacks" / nonce
        if self.attack == "a":
            files = [handle_file(str(p)) for p in self.pngs["8k"].files(folder, 32, nonce)]
            return (CKPT, 32, 2, 768, 0.5, 0.5, "jet", files), "/export_gif"
        if self.attack in "bc":
            factory = self.pngs["8k" if self.attack == "b" else "6k"]
            files = [handle_file(str(p)) for p in factory.files(folder, 64, nonce)]
            return (files, CKPT, 0.5, 0.5, "jet", False), "/inspect"
        if self.attack == "d":
            return ([handle_file(str(self.forged))], CKPT), "/import_checkpoint"
        return ("Upload good images", None, "", "", "", [handle_file(str(self.bomb))], "bomb", "efficientnet_lite0",
                64, 1, 4, 1e-3), "/train"

    def once(self, timeout: float) -> Call:
        args, api = self.args()
        result = call(self.client, self.attack, args, api, timeout)
        shutil.rmtree(self.tmp / "attacks" / f"{self.name}-{self.count}", ignore_errors=True)
        return result


class NormalVisitor:
    """The 9th visitor: a one-image inspect of a distinct demo test image about every ``period`` seconds."""

    def __init__(self, url: str, images: list[Path], downloads: Path, period: float = 1.0) -> None:
        from gradio_client import Client

        self.client = Client(url, verbose=False, download_files=str(downloads))
        self.images, self.period = images, period
        self.calls: list[Call] = []
        self._next = 0

    def one(self, timeout: float = 60.0) -> Call:
        from gradio_client import handle_file

        img = self.images[self._next % len(self.images)]
        self._next += 1
        c = call(self.client, "normal", ([handle_file(str(img))], CKPT, 0.5, 0.5, "jet", False), "/inspect", timeout,
                 watch=True)
        self.calls.append(c)
        return c

    def loop(self, stop: threading.Event, deadline: float) -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            t0 = time.monotonic()
            self.one()
            stop.wait(max(0.0, self.period - (time.monotonic() - t0)))


def latency_stats(calls: list[Call]) -> dict[str, float]:
    """Count, p50, p95 and max wall time of the calls that got a result."""
    lat = np.array([c.wall for c in calls if c.ok], dtype=np.float64)
    if not lat.size:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    return {"n": int(lat.size), "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
            "max": float(lat.max())}


# --------------------------------------------------------------------------- phases
@dataclass
class Single:
    """Phase 1: one attack alone; memory in MB (idle absolute, the others above idle)."""

    attack: str
    call: Call
    idle_mb: float
    peak_mb: float
    after_mb: float


@dataclass
class Concurrent:
    """Phase 2: the hostile visitors' and the normal visitor's requests; memory in MB as in :class:`Single`."""

    duration: float
    idle_mb: float
    peak_mb: float
    after_mb: float
    hostile: list[Call] = field(default_factory=list)
    normal: list[Call] = field(default_factory=list)
    wall: float = 0.0


def phase_single(make: Callable[[str, str], Attacker], sampler: RssSampler, attack: str, timeout: float) -> Single:
    """One attack from a new visitor on the idle server."""
    attacker = make(attack, f"solo-{attack}")
    idle = sampler.idle(2.0)
    c = attacker.once(timeout)
    time.sleep(0.5)
    peak = sampler.peak(c.start, time.monotonic())
    after = sampler.idle(1.5)
    return Single(attack, c, idle / MB, (peak - idle) / MB, (after - idle) / MB)


def phase_concurrent(make: Callable[[str, str], Attacker], sampler: RssSampler, normal: NormalVisitor,
                     duration: float, drain: float) -> Concurrent:
    """8 hostile visitors repeat their attack for ``duration`` s (in-flight ones get ``drain`` s more) while the
    normal visitor inspects one image about every second."""
    attackers = [make(a, f"h{i}-{a}") for i, a in enumerate(HOSTILE_MIX)]
    idle = sampler.idle(2.0)
    res = Concurrent(duration, idle / MB, 0.0, 0.0)
    t0 = time.monotonic()
    stop_at, hard = t0 + duration, t0 + duration + drain
    lock, stop = threading.Lock(), threading.Event()
    first_normal = len(normal.calls)

    def hostile(att: Attacker) -> None:
        while time.monotonic() < stop_at:
            c = att.once(timeout=max(5.0, hard - time.monotonic()))
            with lock:
                res.hostile.append(c)

    threads = [threading.Thread(target=hostile, args=(a,), name=f"hostile-{a.name}") for a in attackers]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the hostile requests are queued first
    nt = threading.Thread(target=normal.loop, args=(stop, stop_at), name="normal")
    nt.start()
    for t in threads:
        t.join(max(1.0, hard + 10 - time.monotonic()))
    stop.set()
    nt.join(70)
    res.wall = time.monotonic() - t0
    res.peak_mb = (sampler.peak(t0, time.monotonic()) - idle) / MB
    res.after_mb = (sampler.idle(2.0) - idle) / MB
    res.normal = normal.calls[first_normal:]
    return res


# --------------------------------------------------------------------------- report
def _got(text: str) -> str:
    """Text safe in a Markdown table cell."""
    return text.replace("|", "/")


def section(command: str, machine: list[str], loads: tuple[str, str], baseline: list[Call],
            singles: list[Single], conc: Concurrent | None, verdicts: list[tuple[str, bool, str]],
            notes: list[str], mem: dict[str, float]) -> str:
    """The report section: setup, a table per phase, the goals and the measured causes of any miss."""
    base = latency_stats(baseline)
    lines = [
        HEADING, "", MARKER, "",
        f"- Command: `{command}`",
        *machine,
        f"- Date: {utc_now()}",
        f"- Load average (1 min) at start / end: {loads[0]} / {loads[1]}. The 2 cores are **shared** with other "
        "work on this machine, so wall times and latencies are pessimistic and vary from run to run; memory "
        "figures do not depend on it.",
        "- App: `python app.py`, `IKD_PUBLIC=1`, `OMP_NUM_THREADS=2`, 127.0.0.1, shipped demo checkpoints "
        f"(`{CKPT}`); RSS = the server process and its children (psutil, every 50 ms); \"above idle\" = peak minus "
        "the median RSS of the 2 s before the phase.",
        f"- Unloaded normal inspect (one 256-px demo image, {base['n']} requests): p50 {base['p50']:.2f} s, "
        f"max {base['max']:.2f} s.",
        f"- Resident set of the server: {mem.get('start', float('nan')):.0f} MB idle after start-up (model loaded, "
        f"one inspect done), {mem.get('end', float('nan')):.0f} MB idle at the end of the run. One 3968x3968 PNG "
        f"decoded as the app does (`load_inspect_image`, 1024 px) takes {mem.get('decode_s', float('nan')):.2f} s "
        "on this machine (outside the server, before it starts).",
        "",
        "### Phase 1: each attack alone (a new visitor each)",
        "",
        "| attack | request | wall (s) | idle RSS (MB) | peak above idle (MB) | resident after, above idle (MB) | "
        "what the client got |",
        "|:---|:---|---:|---:|---:|---:|:---|",
    ]
    for s in singles:
        lines.append(f"| ({s.attack}) | {ATTACKS[s.attack]} | {s.call.wall:.1f} | {s.idle_mb:.0f} | "
                     f"{s.peak_mb:.0f} | {s.after_mb:.0f} | {_got(s.call.got)} |")
    if conc is not None:
        st = latency_stats(conc.normal)
        failed_normal = [c for c in conc.normal if not c.ok]
        lines += [
            "",
            f"### Phase 2: 8 hostile visitors ({', '.join(f'({a})' for a in HOSTILE_MIX)}) for {conc.duration:.0f} s "
            "+ 1 normal visitor",
            "",
            "Each hostile visitor sends its attack again and again (fresh files each time) until the time is up; "
            "the normal visitor inspects one distinct demo test image about every second.",
            "",
            "| hostile requests | by attack (done / answered with a result) | idle RSS (MB) | peak above idle (MB) | "
            "peak above start-up idle (MB) | resident after, above idle (MB) | normal requests | normal failed | "
            "normal p50 (s) | normal p95 (s) | normal max (s) | wall (s) |",
            "|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        by = ", ".join(f"({a}) {sum(c.attack == a for c in conc.hostile)} / "
                       f"{sum(c.attack == a and c.ok for c in conc.hostile)}" for a in sorted(set(HOSTILE_MIX)))
        lines.append(f"| {len(conc.hostile)} | {by} | {conc.idle_mb:.0f} | {conc.peak_mb:.0f} | "
                     f"{conc.peak_mb + conc.idle_mb - mem.get('start', conc.idle_mb):.0f} | {conc.after_mb:.0f} "
                     f"| {len(conc.normal)} | {len(failed_normal)} | {st['p50']:.2f} | {st['p95']:.2f} | "
                     f"{st['max']:.2f} | {conc.wall:.0f} |")
        walls = {a: [c.wall for c in conc.hostile if c.attack == a] for a in sorted(set(HOSTILE_MIX))}
        lines += ["", "Hostile request wall times in phase 2: " + "; ".join(
            f"({a}) median {np.median(w):.1f} s, max {max(w):.1f} s" for a, w in walls.items() if w) + "."]
        if failed_normal:
            lines.append(f"Normal failures: {len(failed_normal)}, e.g. {_got(failed_normal[0].got)}.")
        lines.append("")
        lines.append("Where the time went (median / max seconds): upload = submit to joining Gradio's queue, queue = "
                     "joined to processing started, processing = the rest (image gate turns, inference, rendering, "
                     "download of the results).")
        lines += ["", "| visitor | requests | upload | queue | processing |", "|:---|---:|---:|---:|---:|"]
        groups = [("normal", [c for c in conc.normal if c.ok])]
        groups += [(f"hostile ({a})", [c for c in conc.hostile if c.attack == a]) for a in sorted(set(HOSTILE_MIX))]
        for name, calls in groups:
            timed = [c for c in calls if c.queued is not None and c.upload is not None]
            if timed:
                cols = [[c.upload or 0.0 for c in timed], [c.in_queue or 0.0 for c in timed],
                        [c.wall - (c.queued or 0.0) for c in timed]]
                lines.append(f"| {name} | {len(timed)} | " + " | ".join(
                    f"{np.median(v):.1f} / {max(v):.1f}" for v in cols) + " |")
    lines += ["", "### Goals", "", "| goal | measured | result |", "|:---|:---|:---|"]
    if conc is not None:
        notes = [*cause_notes(conc, mem), *notes]
    lines += [f"| {g} | {m} | {'**pass**' if ok else '**FAIL**'} |" for g, ok, m in verdicts]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def cause_notes(conc: Concurrent, mem: dict[str, float]) -> list[str]:
    """Where the normal visitor's time went, and memory kept after the attacks, from the measurements."""
    out = []
    timed = [c for c in conc.normal if c.ok and c.queued is not None and c.upload is not None]
    slow = [c for c in timed if c.wall > LATENCY_GOAL_S]
    if slow:
        total = sum(c.wall for c in slow)
        share = {k: 100 * sum(f(c) for c in slow) / total for k, f in (
            ("upload", lambda c: c.upload or 0.0), ("queue", lambda c: c.in_queue or 0.0),
            ("processing", lambda c: c.wall - (c.queued or 0.0)))}
        worst = max(slow, key=lambda c: c.wall)
        out.append(
            f"- Latency goal missed: {len(slow)} of {len(timed)} answered normal requests took over "
            f"{LATENCY_GOAL_S:g} s (unloaded: p50 {mem.get('base_p50', float('nan')):.2f} s). Of their time "
            f"{share['upload']:.0f} % was upload, "
            f"{share['queue']:.0f} % Gradio's queue and {share['processing']:.0f} % processing; the slowest "
            f"({worst.wall:.1f} s) spent {worst.in_queue or 0.0:.1f} s in the queue and "
            f"{worst.wall - (worst.queued or 0.0):.1f} s in processing. `/inspect` admits up to "
            "`IKD_INSPECT_CONCURRENCY` (16) requests at once, so a one-image request no longer waits in Gradio's "
            "queue for whole hostile requests; each image then takes one turn (decode + forward pass) at a FIFO gate "
            "of 2 slots, behind at most one image of each running request. What remains is the CPU itself: the "
            "normal request's turn, its upload and its rendering share the same 2 cores with the hostile requests' "
            f"decodes of images just under the pixel cap ({mem.get('decode_s', float('nan')):.2f} s each alone), "
            "their uploads and their rendering.")
    kept = mem.get("end", float("nan")) - mem.get("start", float("nan"))
    if kept > 512:
        out.append(f"- Resident memory is not given back: {kept:.0f} MB more than at start-up stayed resident once "
                   "the attacks had ended (the prediction cache is bounded at 256 MB by default).")
    return out


def write_report(out: Path, text: str) -> None:
    """Replace this script's section of ``out`` (or append it), leaving every other byte as it was."""
    write_section(out, HEADING, text)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Prepare the files, start the app, run the phases, write the report; 1 when a goal is missed."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.attack_load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPORT))
    p.add_argument("--quick", action="store_true", help="shorter phase 2 and timeouts (under 5 min in all)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (app log)")
    args = p.parse_args(argv)
    command = command_line("attack_load", sys.argv[1:] if argv is None else argv)
    budget = 290.0 if args.quick else 870.0
    t_begin = time.monotonic()
    duration, drain, single_timeout = (30.0, 40.0, 45.0) if args.quick else (120.0, 120.0, 120.0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    loads = [f"{os.getloadavg()[0]:.1f}", ""]

    from ikd_core.data.synthetic import ensure_demo_dataset

    tmp = Path(tempfile.mkdtemp(prefix="ikd-attack-"))
    pretrained, data = tmp / "pretrained", tmp / "data"  # the app's folders (AppServer)
    pretrained.mkdir()
    for f in (ROOT / "pretrained").glob("*"):
        shutil.copy(f, pretrained / f.name)
    print(f"preparing files in {tmp}", flush=True)
    demo_root = ensure_demo_dataset(data / "demo")
    sources = sorted((demo_root / "demo_texture" / "test").glob("*/*.png"))
    normal_images = distinct_images(sources, 400, tmp / "normal")
    pngs = {"8k": PngFactory(8192, rgb=False), "6k": PngFactory(3968, rgb=True)}
    forged = forged_checkpoint(pretrained / CKPT, tmp / "forged" / "huge.safetensors")
    bomb = bomb_zip(pngs["8k"], tmp / "bomb.zip")
    sizes = {k: len(f.data("x")) // 1024 for k, f in pngs.items()}
    print(f"PNG sizes: 8192^2 {sizes['8k']} KB, 3968^2 {sizes['6k']} KB", flush=True)

    from ikd_core.service import load_inspect_image

    probe = pngs["6k"].files(tmp / "probe", 1, "probe")[0]
    t0 = time.monotonic()
    load_inspect_image(probe, max_side=1024, max_pixels=40_000_000)
    mem: dict[str, float] = {"decode_s": time.monotonic() - t0}
    print(f"one 3968^2 PNG decoded in {mem['decode_s']:.2f} s", flush=True)

    app = AppServer(tmp, env={"IKD_PUBLIC": "1", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}, drop=["SPACE_ID"])
    url, proc = app.url, app.proc
    sampler: RssSampler | None = None
    singles: list[Single] = []
    conc: Concurrent | None = None
    baseline: list[Call] = []
    notes: list[str] = []
    try:
        app.wait_ready(180)
        sampler = RssSampler(proc.pid).start()

        def make(attack: str, name: str) -> Attacker:
            return Attacker(url, attack, tmp, pngs, forged, bomb, name)

        normal = NormalVisitor(url, normal_images, tmp / "downloads")
        for _ in range(4):  # the first one warms the model up; it is not counted
            baseline.append(normal.one())
        baseline = baseline[1:]
        mem["base_p50"] = latency_stats(baseline)["p50"]
        mem["start"] = sampler.idle(2.0) / MB
        print(f"unloaded normal inspect: {[round(c.wall, 2) for c in baseline]}", flush=True)
        for attack in "abcde":
            left = budget - (time.monotonic() - t_begin) - duration - drain - 60
            if left < 10:
                notes.append(f"- attack ({attack}) not sent alone: the run's time budget was spent")
                continue
            s = phase_single(make, sampler, attack, min(single_timeout, left))
            singles.append(s)
            print(f"({attack}) {s.call.wall:.1f} s, peak +{s.peak_mb:.0f} MB, after +{s.after_mb:.0f} MB: "
                  f"{s.call.got}", flush=True)
            if proc.poll() is not None:
                raise RuntimeError(f"the server died during attack ({attack}) (status {proc.returncode})")
        left = budget - (time.monotonic() - t_begin) - 30
        conc = phase_concurrent(make, sampler, normal, min(duration, left / 2), min(drain, left / 2))
        st = latency_stats(conc.normal)
        print(f"phase 2: {len(conc.hostile)} hostile requests, peak +{conc.peak_mb:.0f} MB, normal p50 "
              f"{st['p50']:.2f} s max {st['max']:.2f} s ({len(conc.normal)} requests)", flush=True)
    except Exception as exc:  # noqa: BLE001 - reported; what was measured is still written
        notes.append(f"- The run stopped early: {_short(exc, 300)}")
        print(f"PROBLEM: {exc}", file=sys.stderr)
    finally:
        if sampler is not None:
            with contextlib.suppress(Exception):
                mem["end"] = sampler.idle(2.0) / MB
            sampler.stop()
        alive = app.stop()
    loads[1] = f"{os.getloadavg()[0]:.1f}"
    if not alive:
        notes.append(f"- The server was not running at the end (exit status {proc.returncode}); see the app log.")

    verdicts: list[tuple[str, bool, str]] = []
    if singles:
        worst = max(singles, key=lambda s: s.peak_mb)
        verdicts.append((f"any single request: peak RSS <= {SINGLE_BOUND_MB} MB above idle",
                         worst.peak_mb <= SINGLE_BOUND_MB and len(singles) == 5,
                         f"worst ({worst.attack}) +{worst.peak_mb:.0f} MB ({len(singles)} of 5 attacks sent)"))
        for a, limit in (("d", 10.0), ("e", 10.0)):
            s = next((s for s in singles if s.attack == a), None)
            if s is not None:
                verdicts.append((f"({a}) refused, within {limit:.0f} s", not s.call.ok and s.call.wall <= limit,
                                 f"{'refused' if not s.call.ok else 'accepted'} in {s.call.wall:.1f} s"))
    if conc is not None:
        st = latency_stats(conc.normal)
        failed = sum(not c.ok for c in conc.normal)
        above_start = conc.peak_mb + conc.idle_mb - mem.get("start", conc.idle_mb)
        verdicts.append((f"8 concurrent hostile requests: peak RSS <= {CONCURRENT_BOUND_MB} MB above idle",
                         max(conc.peak_mb, above_start) <= CONCURRENT_BOUND_MB,
                         f"+{conc.peak_mb:.0f} MB above the phase's idle, +{above_start:.0f} MB above start-up idle"))
        verdicts.append((f"normal visitor meanwhile: every inspect answers within {LATENCY_GOAL_S:g} s",
                         st["n"] > 0 and failed == 0 and st["max"] <= LATENCY_GOAL_S,
                         f"p50 {st['p50']:.2f} s, max {st['max']:.2f} s, {failed} failed of {len(conc.normal)}"))
    else:
        verdicts.append(("phase 2 (8 hostile + 1 normal visitor)", False, "not run"))
    verdicts.append(("the server survives", alive, "running at the end" if alive else "died"))
    text = section(command, machine_lines(), (loads[0], loads[1]), baseline, singles, conc, verdicts, notes, mem)
    out = Path(args.out)
    write_report(out, text)
    print(text)
    print(f"report written to {out}; {time.monotonic() - t_begin:.0f} s in all")
    passed = all(ok for _, ok, _ in verdicts)
    if args.keep or not passed:
        print(f"kept {tmp} (app log: {tmp / 'app.log'})")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
