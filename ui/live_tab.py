"""The Live tab: the webcam streamed through the active model, with the overlay, predicted outline, score, verdict
and frame rate drawn on every frame.

Frames are dropped, never queued: the webcam captures a new frame only when the previous result has arrived,
Gradio keeps only the newest frame of a stream (a frame posted while one is processed replaces the waiting one),
the stream event runs one at a time (``concurrency_limit=1``) and a frame that reaches the handler while another is
being processed is skipped (:func:`live_frame` returns ``gr.skip()``). So the latency stays one processing time.

On the CPU frames go through an onnxruntime predictor (``backend="auto"``: the same maps as torch, faster); on a
GPU (ZeroGPU or CUDA) through :func:`ui.gpu.predict_on_device` (plain arrays in, a picklable prediction out).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import gradio as gr
import numpy as np

from ikd_core import service
from ikd_core.predictor_base import Prediction

from . import gpu
from . import state as S

#: Frames are scored at most this many pixels a side (downscaled first, keeping the aspect ratio).
LIVE_MAX_SIDE = int(os.environ.get("IKD_LIVE_MAX_SIDE") or 256)
#: Seconds a webcam stream may last before it stops (the user starts it again); one stream runs at a time.
LIVE_TIME_LIMIT = int(os.environ.get("IKD_LIVE_TIME_LIMIT") or (60 if S.PUBLIC else 600))
#: How often the browser offers a frame (seconds); it skips offers while a result is pending.
STREAM_EVERY = 0.05
#: Frames in the rolling frame-rate average.
FPS_WINDOW = 10
#: Largest frame accepted from a client (pixels a side) before downscaling.
MAX_FRAME_SIDE = 4096

_GREEN, _RED, _BG = (40, 200, 70), (230, 40, 40), (20, 20, 20)


def _load_auto(path: Path, device: str) -> Any:
    from ikd_core.predict import Predictor

    return Predictor.from_checkpoint(path, device, backend="auto")


#: CPU predictors of the live path (onnxruntime where it reproduces the torch maps), by checkpoint file.
PREDICTORS = service.PredictorCache(maxsize=2, loader=_load_auto)
#: Held while a frame is processed; a frame arriving meanwhile is dropped.
_BUSY = threading.Lock()


@dataclass
class Meter:
    """Rolling frame rate over the last :data:`FPS_WINDOW` frames (completion times), and the last processing time."""

    times: deque[float] = field(default_factory=lambda: deque(maxlen=FPS_WINDOW))
    dropped: int = 0
    frames: int = 0

    def tick(self, now: float) -> float:
        """Record a frame finished at ``now``; the frames per second over the window (0 until two frames)."""
        self.times.append(now)
        self.frames += 1
        if len(self.times) < 2 or self.times[-1] <= self.times[0]:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


def prepare_frame(frame: Any, max_side: int = LIVE_MAX_SIDE) -> np.ndarray:
    """A webcam frame as contiguous uint8 RGB, downscaled (area) so neither side exceeds ``max_side``."""
    arr = np.asarray(frame)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or min(arr.shape[:2]) < 1:
        raise gr.Error("a frame must be an RGB image")
    if max(arr.shape[:2]) > MAX_FRAME_SIDE:
        raise gr.Error(f"a frame may be at most {MAX_FRAME_SIDE} px a side")
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    arr = arr[..., :3]
    h, w = arr.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        arr = cv2.resize(arr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(arr)


def strip_height(h: int) -> int:
    """Height of the text strip :func:`annotate` draws on a frame ``h`` pixels high."""
    return max(14, h // 12)


def annotate(image: np.ndarray, score: float, anomalous: bool, fps: float | None) -> np.ndarray:
    """Draw a strip with the score, the verdict and the frame rate at the bottom of ``image`` (in place; returned)."""
    h, w = image.shape[:2]
    strip = strip_height(h)
    image[h - strip :] = (0.35 * image[h - strip :]).astype(np.uint8) + np.uint8(0.65 * _BG[0])
    text = f"{S.verdict_text(anomalous).upper()}  {score:.3f}" + (f"  {fps:.1f} fps" if fps else "")
    scale = 0.55 * strip / 22.0
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if tw > w - 8:
        scale *= (w - 8) / tw
    cv2.putText(image, text, (4, h - int(strip * 0.25)), cv2.FONT_HERSHEY_SIMPLEX, scale, _RED if anomalous else _GREEN,
                max(1, round(scale * 1.6)), cv2.LINE_AA)
    return image


def process_frame(
    predict: Any, frame: np.ndarray, threshold: float, alpha: float, cmap: str
) -> tuple[np.ndarray, Prediction]:
    """The live processing path of one prepared frame: ``predict(frame) -> Prediction``, then the overlay with the
    predicted outline (the same pictures as Inspect's ``render``)."""
    from ikd_core.visualize import draw_contours, overlay

    pred = predict(frame)
    norm = pred.norm_map
    over = draw_contours(overlay(frame, norm, alpha=alpha, cmap=cmap), norm >= threshold,
                         thickness=max(1, frame.shape[1] // 128))
    return over, pred


def frame_predictor(ckpt_path: Path) -> Any:
    """``frame -> Prediction`` for the live path: a GPU call where there is a GPU, else the CPU auto predictor."""
    if gpu.has_gpu():
        return lambda frame: gpu.predict_on_device(str(ckpt_path), [frame])[0]
    predictor = PREDICTORS.get(ckpt_path, "cpu")
    return lambda frame: predictor.predict([frame])[0]


def live_frame(
    frame: Any,
    ckpt: str,
    threshold: float,
    alpha: float,
    cmap: str,
    meter: Meter | None,
    request: gr.Request = None,  # type: ignore[assignment]
) -> tuple[Any, ...]:
    """One webcam frame -> (overlay with outline and a score/verdict/fps strip, score, verdict, fps text, meter)."""
    if frame is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), meter
    meter = meter if isinstance(meter, Meter) else Meter()
    if not _BUSY.acquire(blocking=False):  # another frame is being processed: drop this one
        meter.dropped += 1
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), meter
    try:
        threshold, alpha, cmap = S.checked_display(threshold, alpha, cmap)
        ckpt_path = S.resolve(ckpt, S.workspace(request))
        start = time.perf_counter()
        over, pred = process_frame(frame_predictor(ckpt_path), prepare_frame(frame), threshold, alpha, cmap)
        now = time.perf_counter()
        fps = meter.tick(now)
        bad = pred.is_anomalous(threshold)
        annotate(over, pred.norm_score, bad, fps)
    except Exception as exc:  # noqa: BLE001 - shown to the user, the server keeps serving
        raise S.err(exc) from exc
    finally:
        _BUSY.release()
    rate = f"**{fps:.1f} frames/s** (last {len(meter.times)} frames), {1000 * (now - start):.0f} ms per frame"
    return over, round(pred.norm_score, 4), S.verdict_text(bad), rate, meter


def build() -> SimpleNamespace:
    """Create this tab's components (inside ``gr.Tab``)."""
    gr.Markdown(
        "Stream your camera through the active model (Model tab); threshold, opacity and colormap are the Inspect "
        "tab's. Frames are scored at most "
        f"{LIVE_MAX_SIDE} px a side; frames that arrive while one is processed are dropped, so the picture never "
        f"lags. A stream stops after {LIVE_TIME_LIMIT} s."
    )
    with gr.Row():
        live_cam = gr.Image(
            sources=["webcam"], type="numpy", streaming=True, label="Camera", elem_id="ikd-live-cam", height=360,
            webcam_options=gr.WebcamOptions(mirror=False),
        )
        live_out = gr.Image(
            type="numpy", format="jpeg", label="Overlay + predicted outline", interactive=False, height=360,
            elem_id="ikd-live-overlay",
        )
    with gr.Row():
        live_score = gr.Number(None, label="Score (normalised)", precision=4, interactive=False,
                               elem_id="ikd-live-score")
        live_verdict = gr.Textbox(label="Verdict", interactive=False, elem_id="ikd-live-verdict")
        live_fps = gr.Markdown("", elem_id="ikd-live-fps")
    live_meter = gr.State(None)
    return SimpleNamespace(live_cam=live_cam, live_out=live_out, live_score=live_score, live_verdict=live_verdict,
                           live_fps=live_fps, live_meter=live_meter)


def wire(u: SimpleNamespace) -> None:
    """The stream event: frames with the active checkpoint and the Inspect tab's display settings."""
    u.live_cam.stream(
        live_frame,
        [u.live_cam, u.ckpt_dd, u.threshold, u.opacity, u.cmap, u.live_meter],
        [u.live_out, u.live_score, u.live_verdict, u.live_fps, u.live_meter],
        stream_every=STREAM_EVERY,
        time_limit=LIVE_TIME_LIMIT,
        concurrency_limit=1,
        concurrency_id="live",
        show_progress="hidden",
        api_name="live",
    )
