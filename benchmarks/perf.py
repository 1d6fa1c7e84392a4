"""Performance report: context similarity loss, training step throughput, inference latency.

    python -m benchmarks.perf [--quick] [--device cpu|cuda] [--out benchmarks/REPORT.md]
    python -m benchmarks.perf --append-gpu gpu_report.md [--out benchmarks/REPORT.md]

Sections:

* CSL: the exact fast form vs the naive |H| x |H| Gram form (``benchmarks.csl``, one subprocess per case on
  CPU so the peak resident memory is its own; in-process with ``torch.cuda.max_memory_allocated`` on CUDA).
* Training step: images/s of forward + backward + AdamW for every backbone at 256 px, batch 2 and 8, with our
  loss and with a reference whose CSL is the naive Gram form, interleaved in one process (paired speed-up),
  the loss alone, peak memory above the built model; AHSM on (default) and off (every position hard).
* Training throughput on real files (``loop``): img/s of ``ikd_core.train.train`` on the demo PNGs through the
  dataset and DataLoader (``python -m benchmarks.train_loop --interleave``: steps in turn in one process) with our loss,
  with the plain STFPM loss in the same loop, and with the loop of the commit this branch left main at (``--base``).
* Training step breakdown (``breakdown``): ms per phase (data, teacher, student, loss, backward, optimiser) of the
  old and the new pipeline, interleaved in one process.
* Inference: ms per image of teacher + student + anomaly map at batch 1 and 16, and the floor of two teacher
  forwards, so the post-processing overhead shows.

Teachers are random-initialised where no ImageNet weights are available offline (the speed is the same).
Re-running keeps the sections it did not measure (e.g. an appended GPU section, load-test numbers) from the
existing report. ``--append-gpu FILE`` (a ``benchmarks.gpu_check`` report) adds or replaces the GPU section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .measure import (
    IMAGE_SIZE,
    csl_cpu_rows,
    csl_device_case,
    csl_table,
    ensure_kornia,
    fmt_value,
    inference_case,
    naive_limit_gb,
    speedup_text,
    step_cell,
    teacher_for,
    train_step_case,
)
from .report import (
    BREAKDOWN_HEADING,
    GPU_HEADING,
    LOAD_TEST_HEADING,
    LOAD_TEST_MARKER,
    LOOP_HEADING,
    REPORT,
    ROOT,
    SECTION_ORDER,
    assemble,
    command_line,
    load_average,
    machine_lines,
    split_report,
    utc_now,
)

QUICK_BACKBONES = ("efficientnet_lite0", "resnet18", "hrnet_w18")
BEFORE_TRAIN_SPEEDUP = "63beed2"  # main before the uint8 cache / channels_last change


def _in_subprocess(fn_name: str, kwargs: dict, threads: int, module: str = "benchmarks.measure") -> dict:
    """Run ``fn_name(**kwargs)`` of ``module`` in a fresh Python (its own ru_maxrss); raises on failure."""
    code = (f"import json, sys, torch; torch.set_num_threads({threads}); "
            f"from {module} import {fn_name}; print('@@' + json.dumps({fn_name}(**json.loads(sys.argv[1]))))")
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True, env=env,
                         check=False, cwd=ROOT)
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
    return f"_Measured {utc_now()} by `{command}`._"


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
        rows = csl_cpu_rows(sizes, channels, repeats, round(limit, 1))
    keep = "\n".join(csl_table(rows)).strip()
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
    in one process (``python -m benchmarks.train_loop --interleave``)."""
    import tempfile

    if not (Path(data_root) / "demo_texture" / "train" / "good").is_dir():
        subprocess.run([sys.executable, "-m", "ikd_core", "demo-data", "--out", data_root], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    with tempfile.TemporaryDirectory(prefix="ikd-base-") as tmp:
        base_rev = base_checkout(base, Path(tmp))
        load = load_average()
        cmd = [sys.executable, "-m", "benchmarks.train_loop", "--interleave", f"{ROOT},{tmp}", "--data-root",
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
        "and take their steps in turn (`python -m benchmarks.train_loop --interleave`: each loop in a thread that "
        "waits for its turn after every step; one runs at a time), so every round of three steps sees the same "
        "machine load. A step = from getting the turn to the end of its progress report (batch fetch and collate, "
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
    load = load_average()
    bd = _in_subprocess("step_breakdown_case", {"data_root": data_root}, threads, module="benchmarks.perf")
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
                     f"{100 * over:+.0f} % |" + (f" {fmt_value(r.get('amp_ms_per_image'), '.2f')} |" if cuda else ""))
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
    """A gpu_check report as the GPU section: its title dropped, its '## ' headings demoted to '### '."""
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


def preamble(command: str, device: str, threads: int) -> str:
    gpu = ""
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = f" on {torch.cuda.get_device_name(0)}"
    return "\n".join([
        "# IKD Studio performance report",
        "",
        f"- Command: `{command}`",
        f"- Device: {device}{gpu}; torch threads {threads}",
        *machine_lines(),
        f"- Date: {utc_now()}",
        "",
        "Sections not measured by this command are kept from the previous report (each says when and how it "
        "was measured).",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="3 backbones (efficientnet_lite0, resnet18, hrnet_w18), fewer repeats")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=str(REPORT))
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
    command = command_line("perf", sys.argv[1:] if argv is None else argv)
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
