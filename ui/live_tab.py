"""The Live tab: the webcam streamed through the active model, with the overlay, predicted outline, score, verdict
and frame rate drawn on every frame.

Frames are dropped, never queued: the webcam captures a new frame only when the previous result has arrived,
Gradio keeps only the newest frame of a stream (a frame posted while one is processed replaces the waiting one),
the stream event runs one at a time (``concurrency_limit=1``) and a frame that reaches the handler while another is
being processed is skipped (:func:`live_frame` returns ``gr.skip()``). So the latency stays one processing time.

On the CPU frames go through an onnxruntime predictor (``backend="auto"``: the same maps as torch, faster); on a
GPU (ZeroGPU or CUDA) through :func:`ui.gpu.predict_on_device` (plain arrays in, a picklable prediction out). Both
use the app's one predictor cache, with the app's backend (``IKD_BACKEND``, default ``auto``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import gradio as gr
import numpy as np

from ikd_core.predictor_base import Prediction

from . import gpu
from .common import checked_display, verdict_text
from .context import AppContext

if TYPE_CHECKING:
    from .inspect_tab import InspectTab

#: Frames are scored at most this many pixels a side by default (``IKD_LIVE_MAX_SIDE``; downscaled first, keeping the
#: aspect ratio). A stream lasts at most ``IKD_LIVE_TIME_LIMIT`` seconds (the user starts it again).
LIVE_MAX_SIDE = 256
#: How often the browser offers a frame (seconds); it skips offers while a result is pending.
STREAM_EVERY = 0.05
#: Frames in the rolling frame-rate average.
FPS_WINDOW = 10
#: Largest frame accepted from a client (pixels a side) before downscaling.
MAX_FRAME_SIDE = 4096

_GREEN, _RED, _BG = (40, 200, 70), (230, 40, 40), (20, 20, 20)


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
    text = f"{verdict_text(anomalous).upper()}  {score:.3f}" + (f"  {fps:.1f} fps" if fps else "")
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


class LiveTab:
    """The webcam stream through the active model; one frame is processed at a time (others are dropped)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        #: Held while a frame is processed; a frame arriving meanwhile is dropped.
        self.busy = threading.Lock()

    def frame_predictor(self, ckpt_path: Path) -> Any:
        """``frame -> Prediction``: a GPU call where there is a GPU, else the app's CPU predictor."""
        if gpu.has_gpu():
            return lambda frame: gpu.predict_on_device(str(ckpt_path), [frame])[0]
        predictor = self.ctx.cpu_predictor(ckpt_path)
        return lambda frame: predictor.predict([frame])[0]

    def live_frame(
        self,
        frame: Any,
        ckpt: str,
        threshold: float,
        alpha: float,
        cmap: str,
        meter: Meter | None,
        request: gr.Request = None,  # type: ignore[assignment]
    ) -> tuple[Any, ...]:
        """One webcam frame -> (overlay with outline and a score/verdict/fps strip, score, verdict, fps text,
        meter)."""
        if frame is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), meter
        meter = meter if isinstance(meter, Meter) else Meter()
        if not self.busy.acquire(blocking=False):  # another frame is being processed: drop this one
            meter.dropped += 1
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), meter
        try:
            threshold, alpha, cmap = checked_display(threshold, alpha, cmap)
            ckpt_path = self.ctx.resolve(ckpt, self.ctx.workspace(request))
            start = time.perf_counter()
            frame = prepare_frame(frame, self.ctx.settings.live_max_side)
            over, pred = process_frame(self.frame_predictor(ckpt_path), frame, threshold, alpha, cmap)
            now = time.perf_counter()
            fps = meter.tick(now)
            bad = pred.is_anomalous(threshold)
            annotate(over, pred.norm_score, bad, fps)
        except Exception as exc:  # noqa: BLE001 - shown to the user, the server keeps serving
            raise self.ctx.err(exc) from exc
        finally:
            self.busy.release()
        rate = f"**{fps:.1f} frames/s** (last {len(meter.times)} frames), {1000 * (now - start):.0f} ms per frame"
        return over, round(pred.norm_score, 4), verdict_text(bad), rate, meter

    def build(self) -> LiveTab:
        """Create this tab's components (inside ``gr.Tab``).

        Returns:
            This tab.
        """
        s = self.ctx.settings
        gr.Markdown(
            "Stream your camera through the active model (Model tab); threshold, opacity and colormap are the "
            "Inspect tab's. Frames are scored at most "
            f"{s.live_max_side} px a side; frames that arrive while one is processed are dropped, so the picture "
            f"never lags. A stream stops after {s.live_time_limit} s."
        )
        with gr.Row():
            self.live_cam = gr.Image(
                sources=["webcam"], type="numpy", streaming=True, label="Camera", elem_id="ikd-live-cam", height=360,
                webcam_options=gr.WebcamOptions(mirror=False),
            )
            self.live_out = gr.Image(
                type="numpy", format="jpeg", label="Overlay + predicted outline", interactive=False, height=360,
                elem_id="ikd-live-overlay",
            )
        with gr.Row():
            self.live_score = gr.Number(None, label="Score (normalised)", precision=4, interactive=False,
                                        elem_id="ikd-live-score")
            self.live_verdict = gr.Textbox(label="Verdict", interactive=False, elem_id="ikd-live-verdict")
            self.live_fps = gr.Markdown("", elem_id="ikd-live-fps")
        self.live_meter = gr.State(None)
        return self

    def wire(self, inspect: InspectTab) -> None:
        """The stream event: frames with the active checkpoint and the Inspect tab's display settings."""
        self.live_cam.stream(
            self.live_frame,
            [self.live_cam, inspect.ckpt_dd, inspect.threshold, inspect.opacity, inspect.cmap, self.live_meter],
            [self.live_out, self.live_score, self.live_verdict, self.live_fps, self.live_meter],
            stream_every=STREAM_EVERY,
            time_limit=self.ctx.settings.live_time_limit,
            concurrency_limit=1,
            concurrency_id="live",
            show_progress="hidden",
            api_name="live",
        )


def build(ctx: AppContext) -> LiveTab:
    """Create the Live tab's components (inside ``gr.Tab``).

    Args:
        ctx: The app's context.

    Returns:
        The tab, holding its components.
    """
    return LiveTab(ctx).build()
