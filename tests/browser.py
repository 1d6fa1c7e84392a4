"""What the browser tests share: Debian's Chromium (the module is skipped without it), its launch flags and the
helpers that drive Gradio by role (tabs, slider number boxes, dropdowns)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
TIMEOUT_MS = 90_000
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def require_chromium() -> None:
    """Skip the calling test module when Debian's chromium is not installed (never `playwright install`)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"browser tests need Debian chromium at {CHROMIUM} (apt-get install chromium)",
                    allow_module_level=True)


require_chromium()

from playwright.sync_api import Page, expect  # noqa: E402


def tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def set_number(page: Page, selector: str, value: float) -> None:
    """Type ``value`` into a slider's number box and wait until the slider itself has it. Typed again if the
    value was lost (a box typed into while a freshly shown tab still mounts keeps its old value)."""
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


def fetch_png(page: Page, selector: str) -> np.ndarray:
    """The PNG an ``<img>`` shows, as the server sent it (pixels compared exactly)."""
    src = page.locator(selector).get_attribute("src")
    img = Image.open(io.BytesIO(page.request.get(src).body()))
    assert img.format == "PNG"
    return np.asarray(img.convert("RGB"))


def open_dropdown(page: Page, combobox: str) -> None:
    """Open the option list of the dropdown labelled ``combobox`` (found by its ARIA role)."""
    box = page.get_by_role("combobox", name=combobox)
    box.blur()  # the list opens on focus: start from an unfocused box
    box.click()
    try:
        expect(page.get_by_role("option").first).to_be_visible(timeout=3000)
    except AssertionError:
        box.press("ArrowDown")
        expect(page.get_by_role("option").first).to_be_visible()


def choose(page: Page, combobox: str, option: str) -> None:
    """Pick ``option`` in the dropdown labelled ``combobox``, by ARIA roles (combobox, option)."""
    open_dropdown(page, combobox)
    page.get_by_role("option", name=option, exact=True).click()
    expect(page.get_by_role("combobox", name=combobox)).to_have_value(option)


def dropdown_options(page: Page, combobox: str) -> list[str]:
    """The options of the dropdown labelled ``combobox`` (the list is closed again)."""
    open_dropdown(page, combobox)
    names = [o.get_attribute("aria-label") for o in page.get_by_role("option").all()]
    box = page.get_by_role("combobox", name=combobox)
    box.press("Escape")
    box.blur()
    return names
