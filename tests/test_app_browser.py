"""The Gradio app in a real browser (Playwright + Debian chromium): upload -> exact overlay pixels, threshold,
training (demo and uploaded zip), GIF download, screenshots of every tab, and no request to other hosts.

Skipped when ``/usr/bin/chromium`` is missing. The app runs in-process on 127.0.0.1 with its folders in a
temporary directory (``IKD_PRETRAINED_DIR``, ``IKD_DATA_DIR``, ``IKD_WORK_DIR``).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, dropdown_options  # noqa: E402
from browser import choose as _choose  # noqa: E402
from browser import fetch_png as _fetch_png  # noqa: E402
from browser import set_number as _set_number  # noqa: E402
from browser import tab as _tab  # noqa: E402
from conftest import STUDIO_CKPT as CKPT  # noqa: E402
from conftest import run_studio  # noqa: E402
from PIL import Image  # noqa: E402
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint):
    """The app on a free local port, with a tiny 64-px demo set and checkpoint in temporary folders."""
    with run_studio(tmp_path_factory.mktemp("studio_browser"), tiny_checkpoint) as s:
        yield s


@pytest.fixture(scope="module")
def browser_page(studio):
    """One page for the whole module; every request it makes is recorded in ``page.requests``."""
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=30_000)
        page.goto(studio.url)
        expect(page.locator("#ikd-active")).to_contain_text(CKPT)
        yield SimpleNamespace(page=page, requests=requests)
        context.close()
        browser.close()


@pytest.fixture()
def ui(browser_page, request: pytest.FixtureRequest) -> Page:
    """The shared page; a full-page screenshot goes to test-artifacts/ when the test fails."""
    failed_before = request.session.testsfailed
    yield browser_page.page
    if request.session.testsfailed > failed_before:
        browser_page.page.screenshot(path=str(ARTIFACTS / f"failed-{request.node.name}.png"), full_page=True)


def _checkpoint_options(page: Page) -> list[str]:
    return dropdown_options(page, "Checkpoint (in pretrained/)")


# ------------------------------------------------------------------------------------------ tests
def test_upload_shows_exact_overlay_score_and_verdict(studio, ui: Page) -> None:
    from ikd_core.predict import Predictor, render

    _tab(ui, "Inspect")
    img = sorted((studio.demo / "demo_texture" / "test" / "hole").glob("*.png"))[0]
    ui.locator("#ikd-inspect-files input[type=file]").set_input_files(str(img))
    verdict = ui.locator("#ikd-verdict textarea")
    expect(verdict).not_to_have_value("")
    expect(ui.locator("#ikd-overlay img")).to_be_visible()
    expect(ui.locator("#ikd-gt img")).to_be_visible()  # a defective test image: ground truth shown

    pred = Predictor.from_checkpoint(studio.pretrained / CKPT).predict([str(img)])[0]
    want = render(str(img), pred, 0.5, 0.5, "jet")
    np.testing.assert_array_equal(_fetch_png(ui, "#ikd-overlay img"), want["overlay"])
    np.testing.assert_array_equal(_fetch_png(ui, "#ikd-heatmap img"), want["heatmap"])
    score = float(ui.locator("#ikd-score input").input_value())
    assert score == pytest.approx(pred.relative_score, abs=1e-4)
    assert verdict.input_value() == ("anomalous" if pred.norm_score >= 0.5 else "normal")
    expect(ui.locator("#ikd-table")).to_contain_text(img.name)


def test_threshold_moves_verdict_and_colormap_by_role(studio, ui: Page) -> None:
    from ikd_core.predict import Predictor, render

    verdict = ui.locator("#ikd-verdict textarea")
    expect(verdict).not_to_have_value("")
    score = float(ui.locator("#ikd-score input").input_value())
    flipped, back = ("normal", "anomalous") if score >= 0.5 else ("anomalous", "normal")
    _set_number(ui, "#ikd-threshold input[type=number]", round(score + 0.05, 2) if score >= 0.5
                else round(max(0.0, score - 0.05), 2))
    expect(verdict).to_have_value(flipped)
    _set_number(ui, "#ikd-threshold input[type=number]", 0.5)
    expect(verdict).to_have_value(back)

    old_src = ui.locator("#ikd-overlay img").get_attribute("src")
    _choose(ui, "Colormap", "inferno")
    expect(ui.locator("#ikd-overlay img")).not_to_have_attribute("src", old_src)
    img = sorted((studio.demo / "demo_texture" / "test" / "hole").glob("*.png"))[0]
    pred = Predictor.from_checkpoint(studio.pretrained / CKPT).predict([str(img)])[0]
    np.testing.assert_array_equal(_fetch_png(ui, "#ikd-overlay img"), render(str(img), pred, 0.5, 0.5,
                                                                               "inferno")["overlay"])
    _choose(ui, "Colormap", "jet")


def test_snapshot_source_is_inspected(studio, ui: Page, tmp_path: Path) -> None:
    """The camera / paste / drop image beside the file upload is inspected like an uploaded file (here through its
    upload source; the webcam source is the same component, fed by Chromium's fake camera in test_live_browser)."""
    _tab(ui, "Inspect")
    snap = tmp_path / "zz_snapshot.png"
    snap.write_bytes(sorted((studio.demo / "demo_texture" / "test" / "good").glob("*.png"))[1].read_bytes())
    ui.locator("#ikd-snapshot input[type=file]").set_input_files(str(snap))
    expect(ui.locator("#ikd-table")).to_contain_text("zz_snapshot")
    expect(ui.locator("#ikd-verdict textarea")).not_to_have_value("")


def test_model_change_reinspects_with_the_new_model(studio, ui: Page) -> None:
    """Nothing shown belongs to another model than the active one: switching models re-inspects the image on
    screen, and the score and heatmap equal the new model's own."""
    import shutil

    from ikd_core.predict import Predictor, render

    other = "other-model.safetensors"
    committed = REPO / "pretrained" / CKPT  # a different model: 256 px, trained for minutes
    shutil.copy(committed, studio.pretrained / other)
    shutil.copy(committed.with_suffix(".json"), (studio.pretrained / other).with_suffix(".json"))
    img = sorted((studio.demo / "demo_texture" / "test" / "hole").glob("*.png"))[1]
    _tab(ui, "Model")
    ui.get_by_role("button", name="Refresh list").click()
    _choose(ui, "Checkpoint (in pretrained/)", CKPT)
    _tab(ui, "Inspect")
    ui.locator("#ikd-inspect-files input[type=file]").set_input_files(str(img))
    expect(ui.locator("#ikd-table")).to_contain_text(img.name)
    before = ui.locator("#ikd-score input").input_value()
    for name in (other, CKPT):
        pred = Predictor.from_checkpoint(studio.pretrained / name).predict([str(img)])[0]
        _tab(ui, "Model")
        _choose(ui, "Checkpoint (in pretrained/)", name)
        _tab(ui, "Inspect")
        expect(ui.locator("#ikd-active")).to_contain_text(name)
        expect(ui.locator("#ikd-score input")).to_have_value(f"{pred.relative_score:.4f}".rstrip("0").rstrip("."),
                                                            timeout=60_000)
        want = render(str(img), pred, 0.5, 0.5, "jet")["heatmap"]
        np.testing.assert_array_equal(_fetch_png(ui, "#ikd-heatmap img"), want)
    assert ui.locator("#ikd-score input").input_value() == before


def test_example_gallery_runs_inspection(studio, ui: Page, tmp_path: Path) -> None:
    """A click on an example thumbnail (not the gallery's own buttons) replaces the images and inspects it."""
    _tab(ui, "Inspect")
    marker = tmp_path / "zz_marker.png"
    marker.write_bytes(sorted((studio.demo / "demo_texture" / "test" / "good").glob("*.png"))[0].read_bytes())
    ui.locator("#ikd-inspect-files input[type=file]").set_input_files(str(marker))
    expect(ui.locator("#ikd-table")).to_contain_text("zz_marker")
    # examples carry captions: their defect type (test sub-folder) and file name
    expect(ui.locator("#ikd-examples")).to_contain_text("good/")
    ui.locator("#ikd-examples button.thumbnail-item").first.click()
    expect(ui.locator("#ikd-table")).not_to_contain_text("zz_marker")
    expect(ui.locator("#ikd-table")).to_contain_text(".png")
    expect(ui.locator("#ikd-verdict textarea")).not_to_have_value("")


def _run_training(page: Page, done_text: str) -> None:
    """Click Train and wait for ``done_text`` in the progress; an error toast fails at once, with its text."""
    page.locator("#ikd-train").click()
    progress = page.locator("#ikd-progress")
    toast = page.locator(".toast-body.error")
    for _ in range(600):
        if done_text in progress.inner_text():
            return
        if toast.count():
            pytest.fail(f"training failed in the browser: {toast.first.inner_text()}")
        page.wait_for_timeout(200)
    pytest.fail(f"{done_text!r} did not appear; progress: {progress.inner_text()!r}")


def _train_settings(page: Page) -> None:
    _set_number(page, "#ikd-image-size input[type=number]", 64)
    page.locator("#ikd-epochs input").fill("1")
    page.locator("#ikd-batch input").fill("4")


def test_training_progress_loss_plot_and_stop(studio, ui: Page) -> None:
    _tab(ui, "Model")
    ui.get_by_role("radio", name="Demo").check()
    _train_settings(ui)
    ui.locator("#ikd-epochs input").fill("500")
    before = sorted(p.name for p in studio.pretrained.iterdir())
    ui.locator("#ikd-train").click()
    progress = ui.locator("#ikd-progress")
    expect(progress).to_contain_text("epoch", timeout=120_000)
    for part in ("loss", "images/s", "ETA"):
        expect(progress).to_contain_text(part)
    expect(ui.locator("#ikd-progress .ikd-bar")).to_be_visible()
    # the loss curve is an interactive LinePlot (Vega), drawn while the run goes on
    expect(ui.locator("#ikd-loss canvas, #ikd-loss svg").first).to_be_visible(timeout=60_000)
    ui.screenshot(path=str(ARTIFACTS / "model-training.png"), full_page=True)
    stop = ui.locator("#ikd-stop-discard")
    expect(stop).to_be_enabled()
    expect(ui.locator("#ikd-stop")).to_be_enabled()
    stop.click()
    expect(progress).to_contain_text("Stopped", timeout=60_000)
    expect(progress).to_contain_text("Nothing was saved")
    expect(stop).to_be_disabled()
    assert sorted(p.name for p in studio.pretrained.iterdir()) == before, "a discarded run leaves no file"


def test_training_error_marks_only_the_progress(studio, ui: Page) -> None:
    """A refused run (no teacher weights offline) shows its error on the progress, not on the checkpoint or plots."""
    _tab(ui, "Model")
    _choose(ui, "Backbone (teacher)", "hrnet_w32 (as in the paper)")
    ui.locator("#ikd-train").click()
    expect(ui.locator(".toast-body.error").first).to_contain_text("no ImageNet weights")
    for unrelated in ("#ikd-ckpt", "#ikd-loss", "#ikd-metrics", "#ikd-compare"):
        assert "error" not in ui.locator(unrelated).evaluate("el => el.innerHTML").lower(), unrelated
    assert "error" in ui.locator("#ikd-progress").evaluate("el => el.innerHTML").lower()
    ui.locator(".toast-body.error").first.locator("xpath=..").locator("button").first.click()
    _choose(ui, "Backbone (teacher)", "efficientnet_lite0 (default, works offline)")


def test_tiny_training_shows_progress_metrics_and_new_checkpoint(studio, ui: Page) -> None:
    _tab(ui, "Model")
    ui.get_by_role("radio", name="Demo").check()
    _choose(ui, "Category", "demo_texture")
    _train_settings(ui)
    new = "demo_texture-efficientnet_lite0-2.safetensors"
    _run_training(ui, f"Checkpoint {new} saved; the active model is still {CKPT}")
    expect(ui.locator("#ikd-progress")).to_contain_text("Done")
    table = ui.locator("#ikd-metrics table")
    expect(table).to_be_visible()
    for label in ("Image AUROC", "Pixel AUROC", "Pixel F1-max", "AU-PRO"):
        expect(table).to_contain_text(label)
    assert (studio.pretrained / new).is_file()
    # the new model beside the active one, both measured on the same test set; the active one stays
    compare = ui.locator("#ikd-compare")
    expect(compare).to_contain_text("New model vs active model")
    expect(compare.locator("table")).to_contain_text("Image AUROC")
    expect(compare.locator("th").nth(1)).to_have_text("New")
    expect(compare.locator("th").nth(2)).to_have_text("Active")
    box = ui.get_by_role("combobox", name="Checkpoint (in pretrained/)")
    expect(box).to_have_value(CKPT)
    assert new in _checkpoint_options(ui)
    ui.screenshot(path=str(ARTIFACTS / "model-after-training.png"), full_page=True)
    use = ui.locator("#ikd-use-new")
    expect(use).to_be_visible()
    use.click()
    expect(box).to_have_value(new)
    expect(use).to_be_hidden()
    expect(ui.locator("#ikd-ckpt-info")).to_contain_text("64 px")
    expect(ui.locator("#ikd-active")).to_contain_text(new)
    # back to the first checkpoint, by role
    _choose(ui, "Checkpoint (in pretrained/)", CKPT)
    expect(ui.locator("#ikd-active")).to_contain_text(CKPT)


def test_training_on_uploaded_zip(studio, ui: Page) -> None:
    good = sorted((studio.demo / "demo_texture" / "train" / "good").glob("*.png"))[:6]
    z = studio.root / "parts.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in good:
            zf.write(p, f"good/{p.name}")
    _tab(ui, "Model")
    ui.get_by_role("radio", name="Upload good images").check()
    upload = ui.locator("#ikd-train-upload")
    expect(upload).to_be_visible()
    upload.locator("input[type=file]").set_input_files(str(z))
    expect(upload.locator("a[download]")).to_contain_text("KB")  # uploaded: the server holds the file
    _train_settings(ui)
    name = "parts-efficientnet_lite0.safetensors"
    _run_training(ui, f"Checkpoint {name} saved; the active model is still")
    assert (studio.pretrained / name).is_file()
    expect(ui.locator("#ikd-metrics")).to_contain_text("no labelled test set")
    expect(ui.locator("#ikd-compare")).to_contain_text("compare them on your own images")
    assert name in _checkpoint_options(ui)
    _choose(ui, "Checkpoint (in pretrained/)", CKPT)
    expect(ui.locator("#ikd-active")).to_contain_text(CKPT)
    ui.get_by_role("radio", name="Demo").check()


def test_missing_mvtec_shows_download_panel(studio, ui: Page) -> None:
    _tab(ui, "Model")
    ui.get_by_role("radio", name="MVTec AD").check()
    panel = ui.get_by_text("MVTec AD not found under")
    expect(panel).to_be_visible()
    expect(ui.get_by_role("button", name="Download / use")).to_be_visible()
    _choose(ui, "Category", "bottle")
    ui.screenshot(path=str(ARTIFACTS / "model-mvtec-missing.png"), full_page=True)
    ui.get_by_role("radio", name="Demo").check()
    expect(panel).to_be_hidden()
    expect(ui.get_by_role("combobox", name="Category")).to_have_value("demo_texture")


def test_gif_download_has_one_frame_per_image(studio, ui: Page, tmp_path: Path) -> None:
    _tab(ui, "Export GIF")
    _set_number(ui, "#ikd-gif-n input[type=number]", 3)
    ui.locator("#ikd-gif").click()
    # the images on the Inspect tab (earlier tests left one there) come first; else the model's test images
    expect(ui.locator("#ikd-gif-info")).to_contain_text("of your images")
    frames = int(ui.locator("#ikd-gif-info").inner_text().split(" frames")[0].split()[-1])
    link = ui.locator("#ikd-gif-file a[download]").first
    with ui.expect_download() as info:
        link.click()
    out = tmp_path / "out.gif"
    info.value.save_as(out)
    with Image.open(out) as im:
        assert im.format == "GIF" and im.n_frames == frames >= 1
    expect(ui.locator("#ikd-gif-preview img")).to_be_visible()


def test_screenshot_of_each_tab(ui: Page) -> None:
    for tab, name in (("Model", "model"), ("Inspect", "inspect"), ("Export GIF", "export_gif")):
        _tab(ui, tab)
        ui.wait_for_timeout(300)
        path = ARTIFACTS / f"tab-{name}.png"
        ui.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000


def test_no_request_to_other_hosts(studio, browser_page) -> None:
    hosts = {urlparse(u).netloc for u in browser_page.requests if urlparse(u).scheme in ("http", "https", "ws",
                                                                                            "wss")}
    assert browser_page.requests, "no requests were recorded"
    assert hosts == {studio.netloc}, f"requests to other hosts: {sorted(hosts - {studio.netloc})}"
    others = [u for u in browser_page.requests if urlparse(u).scheme not in ("http", "https", "ws", "wss", "data",
                                                                             "blob")]
    assert not others, others
