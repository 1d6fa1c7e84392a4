"""A GIF of live inspection, recorded in Chromium with its fake camera fed a clip of demo test images.

    python scripts/live_gif.py [--out assets/live.gif] [--seconds 16]

Writes a Y4M clip (good and defective demo test images at 256 px, each held ~2 s), starts the app on a free local
port with a temporary demo set, opens the Live tab in Chromium (``--use-fake-device-for-media-stream
--use-file-for-fake-video-capture=CLIP``), starts the webcam stream and records every new overlay the page shows
into the GIF (and a screenshot of the tab to ``assets/screenshots/live.png``). :func:`write_y4m` is also used by
``tests/test_live_browser.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def rgb_to_yuv420(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-range BT.601 (JPEG) Y, U, V planes of an even-sized uint8 RGB image; chroma averaged over 2 x 2."""
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = -0.168736 * r - 0.331264 * g + 0.5 * b + 128.0
    v = 0.5 * r - 0.418688 * g - 0.081312 * b + 128.0
    h, w = y.shape

    def sub(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    def u8(c: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(c), 0, 255).astype(np.uint8)

    return u8(y), u8(sub(u)), u8(sub(v))


def write_y4m(frames: list[Any], path: str | Path, fps: int = 10) -> Path:
    """Write uint8 RGB frames (one size, even sides) as an uncompressed 4:2:0 Y4M clip (Chromium's fake camera)."""
    path = Path(path)
    h, w = np.asarray(frames[0]).shape[:2]
    if h % 2 or w % 2:
        raise ValueError("Y4M 4:2:0 needs even sides")
    with path.open("wb") as fh:
        fh.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            fh.write(b"FRAME\n")
            for plane in rgb_to_yuv420(np.asarray(frame)[..., :3]):
                fh.write(plane.tobytes())
    return path


def demo_clip(tmp: Path, hold_s: int = 2, fps: int = 10) -> list[np.ndarray]:
    """Good and defective demo test images at 256 px (good, hole, good, scratch, good, stain), each held ``hold_s``."""
    from PIL import Image

    from ikd_core.data.synthetic import generate_demo_dataset

    root = generate_demo_dataset(tmp, categories=("demo_texture",), n_train=1, n_test_good=3, n_test_defect=1,
                                 image_size=256, seed=0)
    test = Path(root) / "demo_texture" / "test"
    names = [("good", "000"), ("hole", "000"), ("good", "001"), ("scratch", "000"), ("good", "002"), ("stain", "000")]
    images = [np.asarray(Image.open(test / d / f"{n}.png").convert("RGB")) for d, n in names]
    return [im for im in images for _ in range(hold_s * fps)]


def record(out: Path, screenshot: Path | None, seconds: float, gif_fps: float) -> tuple[int, float]:
    """Stream the clip through the app in Chromium; write the overlays the app sent as a GIF. Returns
    (frames in the GIF, the app's mean frames per second while recording)."""
    import os
    import shutil
    import sys
    import tempfile
    import time
    from types import SimpleNamespace

    repo = Path(__file__).resolve().parents[1]
    for p in (repo, repo / "tests"):
        sys.path.insert(0, str(p))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from conftest import run_studio  # the tests' launcher: the app with its folders in a temporary directory
    from playwright.sync_api import sync_playwright

    from ikd_core.visualize import save_gif

    shipped = SimpleNamespace(checkpoint=str(repo / "pretrained" / "demo_texture-efficientnet_lite0.safetensors"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clip = write_y4m(demo_clip(tmp / "demo"), tmp / "clip.y4m")
        (tmp / "studio").mkdir()
        with run_studio(tmp / "studio", shipped) as studio:
            from ui import live_tab

            sent: list[tuple[float, np.ndarray]] = []
            real = live_tab.annotate

            def keep(image: np.ndarray, *args: object) -> np.ndarray:
                out_image = real(image, *args)  # type: ignore[arg-type]
                sent.append((time.monotonic(), out_image.copy()))
                return out_image

            live_tab.annotate = keep  # type: ignore[assignment]
            try:
                with sync_playwright() as pw:
                    browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
                        "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                        "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={clip}"])
                    page = browser.new_context(viewport={"width": 1400, "height": 900},
                                               permissions=["camera"]).new_page()
                    page.set_default_timeout(120_000)
                    page.goto(studio.url)
                    page.locator("#ikd-active").get_by_text("demo_texture").wait_for()
                    page.get_by_role("tab", name="Live").click()
                    cam = page.locator("#ikd-live-cam")
                    cam.get_by_text("Click to Access Webcam").click()
                    cam.locator("video").wait_for()
                    cam.get_by_role("button", name="capture photo").click()
                    page.locator("#ikd-live-fps").get_by_text("frames/s").wait_for()
                    sent.clear()
                    time.sleep(seconds)
                    if screenshot is not None:
                        screenshot.parent.mkdir(parents=True, exist_ok=True)
                        page.screenshot(path=str(screenshot))
                    cam.get_by_role("button", name="capture photo").click()
                    browser.close()
            finally:
                live_tab.annotate = real  # type: ignore[assignment]
            shutil.rmtree(tmp / "studio", ignore_errors=True)
    if len(sent) < 2:
        raise SystemExit("no frames came back from the live stream")
    fps = (len(sent) - 1) / (sent[-1][0] - sent[0][0])
    step = 1.0 / gif_fps  # one GIF frame per step of wall time: the GIF plays at the speed it was seen
    frames, t = [], sent[0][0]
    for when, image in sent:
        if when >= t:
            frames.append(image)
            t += step
    save_gif(frames, out, fps=gif_fps)
    return len(frames), fps


def main(argv: list[str] | None = None) -> int:
    import argparse

    repo = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=repo / "assets" / "live.gif")
    p.add_argument("--screenshot", type=Path, default=repo / "assets" / "screenshots" / "live.png")
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--gif-fps", type=float, default=4.0)
    args = p.parse_args(argv)
    n, fps = record(args.out, args.screenshot, args.seconds, args.gif_fps)
    print(f"{args.out}: {n} frames, {args.out.stat().st_size / 1e6:.2f} MB; the app served {fps:.1f} frames/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
