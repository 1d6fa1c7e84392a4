"""A visitor's journey through a running IKD Studio, in Debian chromium (Playwright), each step timed.

Steps: (1) the page loads with the Inspect tab; (2) click the first example -> score, verdict and overlay (the
first-heatmap time, from the click); (3) upload a demo test image -> a new overlay; (4) train 1 epoch at 64 px
on the demo set -> "Done"; (5) Export GIF -> a GIF download. A screenshot per step goes to ``--artifacts``;
``--json`` receives the timings. Used by ``scripts/space_rehearsal.sh``; runs with the development python.

    python3 scripts/space_journey.py http://127.0.0.1:7860/ --data DATA_DIR --artifacts DIR --json out.json
    python3 scripts/space_journey.py --summary --journey out.json --install 123 ...   # markdown summary
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
STEP_TIMEOUT_MS = 180_000
#: the gallery's thumbnails (its first button is the "Download All" icon, not an example)
EXAMPLE = "#ikd-examples button.thumbnail-item"


class StepFailed(RuntimeError):
    """A journey step did not reach its expected state."""


# ------------------------------------------------------------------------------------------ page helpers
def _tab(page: Any, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _set_number(page: Any, selector: str, value: float) -> None:
    """Type ``value`` into a slider's number box and wait until the slider has it (typed again if a freshly
    shown tab dropped it)."""
    from playwright.sync_api import expect

    box = page.locator(selector)
    slider = page.locator(selector.replace("input[type=number]", "input[type=range]"))
    for attempt in range(3):
        box.fill(str(value))
        box.press("Enter")
        if not slider.count():
            return
        try:
            expect(slider).to_have_value(str(value), timeout=10_000)
            return
        except AssertionError:
            if attempt == 2:
                raise


def _error_toast(page: Any) -> str | None:
    toast = page.locator(".toast-body.error")
    return toast.first.inner_text() if toast.count() else None


def _wait(page: Any, cond: Callable[[], bool], what: str, timeout_s: float, poll_ms: int = 100) -> None:
    """Poll ``cond`` until true; fail at once on an error toast, or after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return
        err = _error_toast(page)
        if err:
            raise StepFailed(f"{what}: error toast: {err!r}")
        page.wait_for_timeout(poll_ms)
    raise StepFailed(f"{what}: not reached within {timeout_s:.0f} s")


def _inspect_state(page: Any) -> tuple[str, str, str | None]:
    """(score, verdict, overlay src) of the Inspect tab; empty strings / None while unset."""
    score = page.locator("#ikd-score input")
    verdict = page.locator("#ikd-verdict textarea")
    overlay = page.locator("#ikd-overlay img")
    return (score.input_value() if score.count() else "", verdict.input_value() if verdict.count() else "",
            overlay.first.get_attribute("src") if overlay.count() else None)


def _shown(page: Any) -> bool:
    """A result is on screen: verdict and overlay set (the score box reads 0 before any inspection)."""
    _, verdict, overlay = _inspect_state(page)
    return bool(verdict) and bool(overlay)


def _pick_upload(data: Path | None) -> Path:
    """A defective demo test image (the examples show others first), from the app's data folder."""
    if data is None:
        raise StepFailed("upload: no --data folder given")
    found = sorted(p for p in (data / "demo" / "demo_texture" / "test").glob("*/*.png") if p.parent.name != "good")
    if not found:
        raise StepFailed(f"upload: no demo test image under {data}/demo/demo_texture/test")
    return found[-1]


# ------------------------------------------------------------------------------------------ journey
def run_journey(url: str, artifacts: Path, data: Path | None, train_timeout: float) -> dict[str, Any]:
    """Run the five steps; return ``{"steps": [...], "ok": bool, ...}`` (stops at the first failed step)."""
    from playwright.sync_api import sync_playwright

    artifacts.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []
    result: dict[str, Any] = {"url": url, "steps": steps, "ok": False}
    own = urlparse(url).netloc
    foreign: set[str] = set()
    page_errors: list[str] = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(STEP_TIMEOUT_MS)
        page.on("request", lambda r: foreign.add(r.url.split("?")[0][:120])
                if urlparse(r.url).netloc not in (own, "") and not r.url.startswith("data:") else None)
        page.on("pageerror", lambda e: page_errors.append(str(e)))

        def step(n: int, name: str, fn: Callable[[], tuple[float, str]]) -> None:
            print(f"[journey] step {n}: {name} ...", flush=True)
            t0 = time.monotonic()
            try:
                seconds, detail = fn()
            except Exception as exc:  # noqa: BLE001 - report any failure as the step's
                seconds = time.monotonic() - t0
                shot = artifacts / f"step{n}-FAILED.png"
                page.screenshot(path=str(shot), full_page=True)
                steps.append({"n": n, "name": name, "seconds": round(seconds, 1), "ok": False,
                              "detail": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})
                print(f"[journey] step {n} FAILED after {seconds:.1f} s: {exc}\n[journey] screenshot {shot}",
                      flush=True)
                raise StepFailed(name) from exc
            page.screenshot(path=str(artifacts / f"step{n}-{name.split()[0].lower()}.png"), full_page=True)
            steps.append({"n": n, "name": name, "seconds": round(seconds, 1), "ok": True, "detail": detail})
            print(f"[journey] step {n}: {name}: {seconds:.1f} s  ({detail})", flush=True)

        def load() -> tuple[float, str]:
            t0 = time.monotonic()
            page.goto(url)
            _tab(page, "Inspect")
            page.locator(EXAMPLE).first.wait_for(state="visible")
            _wait(page, lambda: ".safetensors" in page.locator("#ikd-active").inner_text(), "active model", 120)
            active = page.locator("#ikd-active").inner_text().strip().replace("\n", " ")
            return time.monotonic() - t0, f"{page.locator(EXAMPLE).count()} examples; {active}"

        def example() -> tuple[float, str]:
            t0 = time.monotonic()
            page.locator(EXAMPLE).first.click()
            _wait(page, lambda: _shown(page), "example -> score, verdict, overlay", 180, poll_ms=50)
            seconds = time.monotonic() - t0
            score, verdict, _ = _inspect_state(page)
            result["first_heatmap_s"] = round(seconds, 1)
            return seconds, f"score {score}, verdict {verdict}"

        def upload() -> tuple[float, str]:
            # The upload joins the example in the file list; the detail pane stays on the first image, so the
            # uploaded one is then picked in "All images", as a visitor would.
            img = _pick_upload(data)
            before = _inspect_state(page)[2]
            table = page.locator("#ikd-table")
            t0 = time.monotonic()
            page.locator("#ikd-inspect-files input[type=file]").set_input_files(str(img))
            _wait(page, lambda: img.name in table.inner_text(), f"upload {img.name} -> row in the table", 180,
                  poll_ms=50)
            t_row = time.monotonic() - t0
            page.locator("#ikd-results button.thumbnail-item").last.click()
            _wait(page, lambda: _inspect_state(page)[2] not in (None, before) and _shown(page),
                  f"pick {img.name} in All images -> its overlay", 60, poll_ms=50)
            seconds = time.monotonic() - t0
            score, verdict, _ = _inspect_state(page)
            return seconds, (f"{img.parent.name}/{img.name}: table row after {t_row:.1f} s, then picked in All "
                             f"images; score {score}, verdict {verdict}")

        def train() -> tuple[float, str]:
            _tab(page, "Model")
            page.get_by_role("radio", name="Demo").check()
            _set_number(page, "#ikd-image-size input[type=number]", 64)
            page.locator("#ikd-epochs input").fill("1")
            page.locator("#ikd-batch input").fill("8")
            page.locator("#ikd-batch input").press("Tab")
            progress = page.locator("#ikd-progress")
            t0 = time.monotonic()
            page.locator("#ikd-train").click()
            _wait(page, lambda: "Done" in progress.inner_text(), "training -> Done", train_timeout, poll_ms=250)
            seconds = time.monotonic() - t0
            return seconds, " ".join(progress.inner_text().split())[:240]

        def gif() -> tuple[float, str]:
            _tab(page, "Export GIF")
            info = page.locator("#ikd-gif-info")
            t0 = time.monotonic()
            page.locator("#ikd-gif").click()
            _wait(page, lambda: "frames" in info.inner_text(), "Make GIF -> frames", 300, poll_ms=100)
            link = page.locator("#ikd-gif-file a").first
            link.wait_for(state="attached", timeout=30_000)
            href = link.get_attribute("href") or ""
            body = page.request.get(urljoin(url, href)).body()
            seconds = time.monotonic() - t0
            if not body.startswith(b"GIF8"):
                raise StepFailed(f"GIF download {href!r} does not start with GIF8 ({body[:8]!r})")
            (artifacts / "journey.gif").write_bytes(body)
            text = " ".join(info.inner_text().split())[:160]
            return seconds, f"{text}; download {len(body) / 1024:.0f} KB"

        try:
            step(1, "Page load (Inspect tab)", load)
            step(2, "Example -> heatmap", example)
            step(3, "Upload -> heatmap", upload)
            step(4, "Train 1 epoch (64 px, batch 8)", train)
            step(5, "Export GIF", gif)
            result["ok"] = True
        except StepFailed:
            pass
        finally:
            result["foreign_hosts"] = sorted(foreign)
            result["page_errors"] = page_errors[:10]
            context.close()
            browser.close()
    if foreign:
        print(f"[journey] note: requests to other hosts: {', '.join(sorted(foreign))}", flush=True)
    if page_errors:
        print(f"[journey] note: {len(page_errors)} page errors, first: {page_errors[0][:200]}", flush=True)
    return result


# ------------------------------------------------------------------------------------------ summary
def _cell(value: str) -> str:
    return value.replace("|", "\\|")


def summary(args: argparse.Namespace) -> str:
    """A markdown table of the rehearsal figures (install, serving, first heatmap, steps, peak RSS)."""
    journey: dict[str, Any] = {}
    if args.journey and Path(args.journey).is_file():
        journey = json.loads(Path(args.journey).read_text())

    def secs(v: str | float | None) -> str:
        try:
            return f"{float(v):.1f} s"  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return str(v) if v else "n/a"

    rows = [("Commit", args.commit[:12], "`git archive` of the commit: what a push to the Space carries"),
            ("Install (`pip install -r requirements.txt`, fresh venv)", secs(args.install), f"pip cache {args.cache}"),
            ("Time to serving (`python app.py` until `GET /` = 200)", secs(args.serve),
             "includes demo data + ready checkpoint warm-up"),
            ("First heatmap (click on an example)", secs(journey.get("first_heatmap_s")), "from the click")]
    for s in journey.get("steps", []):
        rows.append((f"Step {s['n']}: {s['name']}", secs(s["seconds"]) + ("" if s["ok"] else " FAILED"),
                     s.get("detail", "")))
    rows.append(("Peak RSS of the app (VmHWM)", args.rss, ""))
    rows.append(("Versions", args.versions, ""))
    lines = ["| Stage | Time | Note |", "|---|---:|---|"]
    lines += [f"| {_cell(a)} | {_cell(b)} | {_cell(c)} |" for a, b, c in rows]
    ok = journey.get("ok", False)
    lines.append("")
    lines.append(f"Journey: {'all steps passed' if ok else 'FAILED'}"
                 + (f"; requests to other hosts: {', '.join(journey['foreign_hosts'])}"
                    if journey.get("foreign_hosts") else "; no request left 127.0.0.1"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the journey against URL (exit 1 when a step fails), or print the summary with ``--summary``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", nargs="?", help="the running app, e.g. http://127.0.0.1:7860/")
    ap.add_argument("--artifacts", type=Path, default=Path("space-rehearsal-artifacts"))
    ap.add_argument("--json", type=Path, help="write the timings here")
    ap.add_argument("--data", type=Path, help="the app's IKD_DATA_DIR (the upload is a demo test image from it)")
    ap.add_argument("--train-timeout", type=float, default=1200.0)
    ap.add_argument("--summary", action="store_true", help="print the markdown summary instead")
    for flag in ("--commit", "--install", "--cache", "--serve", "--rss", "--versions", "--journey"):
        ap.add_argument(flag, default="")
    args = ap.parse_args(argv)
    if args.summary:
        print(summary(args))
        return 0
    if not args.url:
        ap.error("url is required (or --summary)")
    if not Path(CHROMIUM).is_file():
        print(f"{CHROMIUM} missing: apt-get install -y chromium", file=sys.stderr)
        return 2
    result = run_journey(args.url, args.artifacts, args.data, args.train_timeout)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print(f"[journey] {'all steps passed' if result['ok'] else 'FAILED'}", flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
