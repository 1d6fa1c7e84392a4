"""The Live tab's handler: frames in, overlay with outline, score, verdict and frame rate out; frames dropped while
one is processed; checked inputs; the API endpoint; the benchmark's report merge."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from conftest import run_studio
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "pretrained" / "demo_texture-efficientnet_lite0.safetensors"
LIVE_CKPT = "live-demo_texture-efficientnet_lite0.safetensors"


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint):
    """The app, with the shipped 256-px demo checkpoint added under another name (it tells good from defective), on
    the app's default backend (``auto``: onnxruntime where it reproduces torch)."""
    with run_studio(tmp_path_factory.mktemp("studio_live"), tiny_checkpoint, {"IKD_BACKEND": "auto"}) as s:
        shutil.copy(SHIPPED, s.pretrained / LIVE_CKPT)
        shutil.copy(SHIPPED.with_suffix(".json"), (s.pretrained / LIVE_CKPT).with_suffix(".json"))
        yield s


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Demo test images at 256 px (the shipped checkpoint's size): one good, two defective."""
    from ikd_core.data.synthetic import generate_demo_dataset

    root = generate_demo_dataset(tmp_path_factory.mktemp("live_demo"), categories=("demo_texture",), n_train=1,
                                 n_test_good=1, n_test_defect=1, image_size=256, seed=0)
    test = Path(root) / "demo_texture" / "test"
    return {d: np.asarray(Image.open(test / d / "000.png").convert("RGB")) for d in ("good", "hole", "scratch")}


def _live():
    from ui import live_tab

    return live_tab


def test_prepare_frame_shapes_and_limits() -> None:
    lt = _live()
    big = np.zeros((480, 640, 3), np.uint8)
    assert lt.prepare_frame(big, 256).shape == (192, 256, 3)
    assert lt.prepare_frame(np.zeros((100, 50), np.uint8), 256).shape == (100, 50, 3)
    assert lt.prepare_frame(np.zeros((64, 64, 4), np.uint8), 256).shape == (64, 64, 3)
    for bad in (np.zeros((4, 4, 2), np.uint8), np.zeros((5000, 10, 3), np.uint8), np.zeros(3, np.uint8)):
        with pytest.raises(gr.Error):
            lt.prepare_frame(bad)


def test_meter_is_a_rolling_average() -> None:
    m = _live().Meter()
    assert m.tick(0.0) == 0.0
    for i in range(1, 30):
        fps = m.tick(i * 0.1)
    assert fps == pytest.approx(10.0)
    assert len(m.times) == _live().FPS_WINDOW and m.frames == 30


def test_good_reads_normal_defective_reads_anomalous(studio, frames) -> None:
    from ikd_core.predict import Predictor, render

    lt, tab = _live(), studio.app.tabs.live
    want = Predictor.from_checkpoint(studio.pretrained / LIVE_CKPT, "cpu", backend="auto")
    meter = None
    for name, frame in frames.items():
        over, score, verdict, rate, meter = tab.live_frame(frame, LIVE_CKPT, 0.5, 0.5, "jet", meter)
        pred = want.predict([frame])[0]
        assert verdict == ("normal" if name == "good" else "anomalous"), (name, score)
        assert score == pytest.approx(pred.norm_score, abs=1e-4)
        assert over.shape == frame.shape and over.dtype == np.uint8
        h = frame.shape[0] - lt.strip_height(frame.shape[0])  # above the text strip: Inspect's overlay and outline
        ref = render(frame, pred, 0.5, 0.5, "jet")["overlay"]
        assert np.mean(over[:h] != ref[:h]) < 0.002
        assert "frames/s" in rate
    assert meter.frames == 3 and meter.dropped == 0


def test_a_frame_arriving_while_one_is_processed_is_dropped(studio, frames) -> None:
    lt, tab = _live(), studio.app.tabs.live
    meter = lt.Meter()
    assert tab.busy.acquire(blocking=False)
    try:
        out = tab.live_frame(frames["good"], LIVE_CKPT, 0.5, 0.5, "jet", meter)
    finally:
        tab.busy.release()
    assert all(isinstance(o, type(gr.skip())) for o in out[:4]) and out[4] is meter
    assert meter.dropped == 1 and meter.frames == 0


def test_dropping_bounds_latency_under_a_burst(studio, frames) -> None:
    """Eight frames at once: the ones that find the handler busy return at once (dropped), none waits its turn."""
    lt, tab = _live(), studio.app.tabs.live
    tab.live_frame(frames["good"], LIVE_CKPT, 0.5, 0.5, "jet", None)  # loaded
    results: list[tuple] = []
    barrier = threading.Barrier(8)

    def one() -> None:
        barrier.wait()
        results.append(tab.live_frame(frames["hole"], LIVE_CKPT, 0.5, 0.5, "jet", lt.Meter()))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    done = [r for r in results if isinstance(r[0], np.ndarray)]
    dropped = [r for r in results if r[4].dropped]
    assert len(results) == 8 and len(done) >= 1 and len(done) + len(dropped) == 8
    assert len(dropped) >= 1


def test_on_a_gpu_frames_go_through_ui_gpu_as_pickles(studio, frames, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where there is a GPU (ZeroGPU: a worker process) a frame goes to ``ui.gpu.predict_on_device`` as a plain array
    and its prediction comes back as a pickle."""
    import pickle

    from ui import gpu

    real, sent = gpu.predict_on_device, []

    def across(path: str, images: list[np.ndarray]) -> list:
        sent.append(pickle.loads(pickle.dumps((path, images))))
        return pickle.loads(pickle.dumps(real(path, images)))

    monkeypatch.setattr(gpu, "has_gpu", lambda: True)
    monkeypatch.setattr(gpu, "predict_on_device", across)
    _, score, verdict, _, _ = studio.app.tabs.live.live_frame(frames["hole"], LIVE_CKPT, 0.5, 0.5, "jet", None)
    assert verdict == "anomalous" and score >= 0.5
    assert len(sent) == 1 and isinstance(sent[0][0], str) and sent[0][1][0].shape == (256, 256, 3)


@pytest.mark.parametrize(("args", "text"), [
    ((float("nan"), 0.5, "jet"), "threshold"),
    ((0.5, 2.0, "jet"), "opacity"),
    ((0.5, 0.5, "nope"), "colormap"),
])
def test_numbers_and_colormap_are_checked(studio, frames, args, text) -> None:
    with pytest.raises(gr.Error, match=text):
        studio.app.tabs.live.live_frame(frames["good"], LIVE_CKPT, *args, None)


def test_unknown_or_path_checkpoint_is_refused(studio, frames) -> None:
    for name in ("nope.safetensors", "../pretrained/" + LIVE_CKPT, str(studio.pretrained / LIVE_CKPT)):
        with pytest.raises(gr.Error):
            studio.app.tabs.live.live_frame(frames["good"], name, 0.5, 0.5, "jet", None)


def test_live_endpoint_through_the_api(studio, frames, tmp_path: Path) -> None:
    """An API client streams a frame to ``/live`` (gradio_client cannot read stream events: raw HTTP + SSE) and
    gets the overlay, score, verdict and frame rate back as the stream's first output."""
    import io
    import json

    import httpx

    path = tmp_path / "hole.png"
    Image.fromarray(frames["hole"]).save(path)
    with httpx.Client(base_url=studio.url, timeout=120) as http:
        with path.open("rb") as fh:
            uploaded = http.post("gradio_api/upload", files={"files": fh}).json()[0]
        frame = {"path": uploaded, "meta": {"_type": "gradio.FileData"}}
        event_id = http.post("gradio_api/call/live", json={"data": [frame, LIVE_CKPT, 0.5, 0.5, "jet"]}).json()[
            "event_id"]
        out = None
        with http.stream("GET", f"gradio_api/call/live/{event_id}") as resp:
            kind = None
            for line in resp.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind in ("generating", "complete", "error"):
                    out = (kind, json.loads(line[5:]))
                    break
        http.post(f"gradio_api/stream/{event_id}/close")
        assert out is not None and out[0] != "error", out
        over, score, verdict, rate = out[1][:4]  # (the meter state comes back as null)
        assert out[1][4:] in ([], [None]), out[1][4:]
        assert verdict == "anomalous" and score >= 0.5 and "frames/s" in rate
        image = Image.open(io.BytesIO(http.get(over["url"]).content))
    assert image.size == (256, 256)


def test_benchmark_merge_keeps_other_sections() -> None:
    from benchmarks import live_fps
    from benchmarks.report import replace_section

    def merge(report: str, new_section: str) -> str:
        return replace_section(report, live_fps.HEADING, new_section)

    report = "# R\n\n## A\n\nx  \n\n```\n## not a heading\n```\n\n## B\ny\n"
    new = live_fps.HEADING + "\n\nfirst\n"
    once = merge(report, new)
    assert once.startswith(report) and once.endswith(new)
    twice = merge(once, live_fps.HEADING + "\n\nsecond\n")
    assert twice == report + "\n" + live_fps.HEADING + "\n\nsecond\n"
    middle = "# R\n\n" + live_fps.HEADING + "\n\nold\n\n## B\ny\n"
    assert merge(middle, new) == "# R\n\n" + new + "\n## B\ny\n"
