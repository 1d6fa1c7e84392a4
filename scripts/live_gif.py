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
