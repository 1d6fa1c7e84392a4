"""The Live tab in a real browser: Chromium's fake camera plays a clip of demo test images (good, defective, good,
defective, each held 2 s); the stream must show ``normal`` for good frames and ``anomalous`` for defective ones,
with new overlays arriving; with a slow model, frames are dropped (not queued) and nothing runs after Stop.

The clip uses demo test images generated at 256 px, the size of the shipped checkpoint the app serves here: the
64-px test set upscaled to 256 px reads anomalous throughout (blurred texture), so it cannot tell the verdicts apart.
Skipped when ``/usr/bin/chromium`` is missing.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import itertools  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from browser import ARTIFACTS, CHROMIUM, TIMEOUT_MS  # noqa: E402
from conftest import STUDIO_CKPT as CKPT  # noqa: E402
from conftest import run_studio  # noqa: E402
from PIL import Image  # noqa: E402
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "pretrained" / "demo_texture-efficientnet_lite0.safetensors"
sys.path.insert(0, str(REPO / "scripts"))
from live_gif import write_y4m  # noqa: E402

sys.path.remove(str(REPO / "scripts"))

CLIP_FPS, HOLD_S = 10, 2
# Waits until the verdict reads ``want`` with an overlay shown, and returns the verdict, score and overlay read in
# that same JavaScript turn (so all three are of one frame, even when the stream moves on right after).
READ_WHEN_JS = """want => {
  const verdict = document.querySelector('#ikd-live-verdict textarea')?.value;
  const src = document.querySelector('#ikd-live-overlay img')?.getAttribute('src');
  if (verdict !== want || !src) return null;
  return {verdict, src, score: document.querySelector('#ikd-live-score input').value};
}"""


def clip_frames(tmp: Path) -> list[np.ndarray]:
    """Good, hole, good, scratch demo test images at 256 px, each held :data:`HOLD_S` seconds."""
    from ikd_core.data.synthetic import generate_demo_dataset

    root = generate_demo_dataset(tmp, categories=("demo_texture",), n_train=1, n_test_good=2, n_test_defect=1,
                                 image_size=256, seed=0)
    test = Path(root) / "demo_texture" / "test"
    names = [("good", "000"), ("hole", "000"), ("good", "001"), ("scratch", "000")]
    images = [np.asarray(Image.open(test / d / f"{n}.png").convert("RGB")) for d, n in names]
    return [im for im in images for _ in range(CLIP_FPS * HOLD_S)]


def fake_camera_args(clip: Path) -> list[str]:
    return ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={clip}"]


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint):
    """The app, serving the shipped 256-px demo checkpoint as its active one."""
    with run_studio(tmp_path_factory.mktemp("studio_live_browser"), tiny_checkpoint) as s:
        shutil.copy(SHIPPED, s.pretrained / CKPT)
        shutil.copy(SHIPPED.with_suffix(".json"), (s.pretrained / CKPT).with_suffix(".json"))
        yield s


@pytest.fixture(scope="module")
def page(studio, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("clip")
    clip = write_y4m(clip_frames(tmp), tmp / "clip.y4m", fps=CLIP_FPS)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=fake_camera_args(clip))
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, permissions=["camera"])
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        pg.goto(studio.url)
        expect(pg.locator("#ikd-active")).to_contain_text(CKPT)
        yield pg
        context.close()
        browser.close()


def start_stream(page: Page) -> None:
    """Open the Live tab, grant the (fake) webcam and press its record button."""
    page.get_by_role("tab", name="Live").click()
    cam = page.locator("#ikd-live-cam")
    access = cam.get_by_text("Click to Access Webcam")
    if access.is_visible():  # the first time on this page (granted once, it stays granted)
        access.click()
    expect(cam.locator("video")).to_be_visible()
    button = cam.get_by_role("button", name="capture photo")  # Gradio's record button; it reads "Stop" while on
    expect(button).not_to_contain_text("Stop")
    button.click()
    expect(button).to_contain_text("Stop")


def stop_stream(page: Page) -> None:
    button = page.locator("#ikd-live-cam").get_by_role("button", name="capture photo")
    button.click()
    expect(button).not_to_contain_text("Stop")


def test_live_tab_renders_with_the_webcam(page: Page) -> None:
    page.get_by_role("tab", name="Live").click()
    expect(page.locator("#ikd-live-cam").get_by_text("Click to Access Webcam")).to_be_visible()
    expect(page.locator("#ikd-live-overlay")).to_be_visible()
    expect(page.locator("#ikd-live-verdict")).to_be_visible()


def test_verdict_follows_the_camera_and_overlays_arrive(page: Page) -> None:
    start_stream(page)
    try:
        seen = []
        for want in ("anomalous", "normal", "anomalous", "normal"):  # each good / defective stretch of the clip
            shown = page.wait_for_function(READ_WHEN_JS, arg=want).json_value()
            assert (float(shown["score"]) >= 0.5) == (want == "anomalous"), shown
            seen.append(shown["src"])
        expect(page.locator("#ikd-live-overlay img")).to_be_visible()
        # A new overlay for each stretch. Gradio names a cached image by the hash of its bytes and the clip loops
        # over identical frames, so two readings of the same stretch image (one loop apart) share a URL; but two
        # readings in a row are of different stretches (the verdict changed), so their overlays must differ.
        assert all(a != b for a, b in itertools.pairwise(seen)), seen
        expect(page.locator("#ikd-live-fps")).to_contain_text("frames/s")
        page.screenshot(path=str(ARTIFACTS / "live-tab.png"), full_page=True)
    finally:
        stop_stream(page)


def test_frames_are_dropped_not_queued(page: Page, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model taking 0.3 s per frame while the camera offers 20 frames/s: about one frame per 0.3 s is processed
    and nothing is processed after Stop (a queue would keep draining a backlog)."""
    from ui import live_tab

    delay, calls, lock = 0.3, [], threading.Lock()
    real = live_tab.process_frame

    def slow(*args, **kwargs):
        time.sleep(delay)
        with lock:
            calls.append(time.monotonic())
        return real(*args, **kwargs)

    monkeypatch.setattr(live_tab, "process_frame", slow)
    start_stream(page)
    fps = page.locator("#ikd-live-fps")
    expect(fps).to_contain_text("frames/s")
    first = len(calls)
    t0 = time.monotonic()
    expect(page.locator("#ikd-live-verdict textarea")).not_to_have_value(
        page.locator("#ikd-live-verdict textarea").input_value())  # the clip moved on: a few seconds of streaming
    stop_stream(page)
    stopped_at, elapsed = len(calls), time.monotonic() - t0
    page.wait_for_timeout(2000)  # time for a backlog to show; not a synchronisation point
    assert len(calls) - stopped_at <= 1, "frames were processed after Stop: they were queued"
    assert stopped_at - first <= elapsed / delay + 2  # one frame at a time, none waiting its turn
