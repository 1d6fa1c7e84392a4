"""Public mode in a real browser: two visitors (two Playwright browser contexts, so two Gradio sessions) never see
each other's uploaded or trained checkpoints, inspected images, examples, results or GIFs, and a visitor's workspace
is removed when their page closes.

One launch of the app with ``IKD_PUBLIC=1`` (in-process, 127.0.0.1, temporary folders) and one Debian chromium with
contexts ``a`` and ``b``. Visitor A uploads, inspects, trains and exports; after every step visitor B's page is
checked. Besides explicit checks of B's widgets, a MutationObserver in every page reports each secret string (A's
checkpoint, category, image and trained-checkpoint names) that ever enters that page's DOM, so a value shown to B
for a moment and replaced is caught too; visitor A's page is the positive control (it must report them all).

The tests run in file order and share the two visitors. Skipped when ``/usr/bin/chromium`` is missing.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

import pytest  # noqa: E402
from browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, dropdown_options  # noqa: E402
from browser import choose as _choose  # noqa: E402
from browser import set_number as _set_number  # noqa: E402
from browser import tab as _tab  # noqa: E402
from conftest import STUDIO_CKPT as CKPT  # noqa: E402
from conftest import run_studio  # noqa: E402
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from ikd_core.checkpoint import save_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CKPT_BOX = "Checkpoint (the shipped ones and yours)"  # the dropdown's label in public mode

#: Visitor A's things. The trained checkpoint is of the demo_object category: no shipped checkpoint has its name.
A_CKPT = "visitor_a_secret.safetensors"
A_CATEGORY = "a_secret_category"
A_IMAGE = "a_private_image.png"
A_TRAINED = "demo_object-efficientnet_lite0.safetensors"
SECRETS = (Path(A_CKPT).stem, A_CATEGORY, Path(A_IMAGE).stem, Path(A_TRAINED).stem)

#: Reports every secret that enters the DOM (added nodes, text, attributes) to Python through ``ikdSeen``.
WATCH_JS = """
(() => {
  const secrets = SECRETS_JSON;
  const seen = new Set();
  const scan = (s) => {
    if (!s) return;
    for (const k of secrets) if (!seen.has(k) && s.includes(k)) { seen.add(k); window.ikdSeen(k); }
  };
  const start = () => {
    scan(document.documentElement.outerHTML);
    new MutationObserver((muts) => {
      for (const m of muts) {
        if (m.type === "attributes") scan(m.target.getAttribute(m.attributeName));
        else if (m.type === "characterData") scan(m.target.data);
        else for (const n of m.addedNodes) scan(n.nodeType === 1 ? n.outerHTML : n.textContent);
      }
    }).observe(document.documentElement, {subtree: true, childList: true, characterData: true, attributes: true});
  };
  if (document.documentElement) start(); else document.addEventListener("DOMContentLoaded", start);
})();
""".replace("SECRETS_JSON", json.dumps(list(SECRETS)))


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint):
    """The app in public mode on a free local port, with a tiny 64-px demo set and checkpoint in temporary folders."""
    with run_studio(tmp_path_factory.mktemp("studio_public_browser"), tiny_checkpoint, {"IKD_PUBLIC": "1"}) as s:
        yield s


def _visitor(browser, studio, name: str) -> SimpleNamespace:
    """A browser context of its own (cookies, storage, so its own Gradio session) with one page; its requests and
    the secrets its DOM ever held are recorded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    v = SimpleNamespace(name=name, context=context, requests=[], seen=set(), closed=False)
    context.on("request", lambda r: v.requests.append(r.url))
    context.expose_function("ikdSeen", lambda key: v.seen.add(key))
    context.add_init_script(WATCH_JS)
    v.page = context.new_page()
    v.page.set_default_timeout(TIMEOUT_MS)
    _load(v.page, studio)
    return v


def _load(page: Page, studio) -> None:
    page.goto(studio.url)
    expect(page.locator("#ikd-active")).to_contain_text(CKPT)


@pytest.fixture(scope="module")
def visitors(studio):
    ARTIFACTS.mkdir(exist_ok=True)
    expect.set_options(timeout=30_000)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        a, b = _visitor(browser, studio, "a"), _visitor(browser, studio, "b")
        yield SimpleNamespace(a=a, b=b, state={})
        for v in (a, b):
            if not v.closed:
                v.context.close()
        browser.close()


# ------------------------------------------------------------------------------------------ helpers
def _checkpoint_options(page: Page) -> list[str]:
    _tab(page, "Model")
    return dropdown_options(page, CKPT_BOX)


def _refresh_list(page: Page) -> list[str]:
    """Click "Refresh list" and return the options once the server's answer has arrived."""
    _tab(page, "Model")
    with page.expect_response(lambda r: "/queue/join" in r.url):  # the event is sent; the dropdown is pending
        page.get_by_role("button", name="Refresh list").click()
    # the dropdown's status tracker hides again once the answer is applied
    expect(page.locator("#ikd-ckpt [data-testid=status-tracker]")).to_have_class(re.compile(r"\bhide\b"))
    return _checkpoint_options(page)


def _shipped(studio) -> set[str]:
    return {p.name for p in studio.pretrained.glob("*.safetensors")}


def _workspaces(studio) -> list[Path]:
    base = studio.work / "workspaces"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def _holder(studio, filename: str) -> Path:
    """The one workspace that holds a file called ``filename`` (anywhere inside it)."""
    found = [ws for ws in _workspaces(studio) if any(ws.rglob(filename))]
    assert len(found) == 1, f"{filename} is in {len(found)} workspaces: {found}"
    return found[0]


def _assert_b_sees_nothing_of_a(v, extra: tuple[str, ...] = ()) -> None:
    """Visitor B's page, now and at any time so far (the DOM watcher), names nothing of visitor A's."""
    page = v.page
    for tab, sel in (("Inspect", "#ikd-active"), ("Model", "#ikd-ckpt-info")):
        _tab(page, tab)
        expect(page.locator(sel)).to_contain_text(CKPT)  # B's own active model, described
        text = page.locator(sel).inner_text()
        assert not any(s in text for s in SECRETS), f"{sel} of visitor B: {text!r}"
        html = page.content()
        for secret in (*SECRETS, A_CKPT, A_IMAGE, A_TRAINED, *extra):
            assert secret not in html, f"visitor B's page holds {secret!r} (on the {tab} tab)"
    assert page.get_by_role("combobox", name=CKPT_BOX).input_value() == CKPT
    assert not v.seen, f"visitor B's page held {sorted(v.seen)} at some point"
    assert not [u for u in v.requests if any(s in u for s in SECRETS)], "visitor B requested one of A's files"


def _wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``cond`` (a condition on the server's folders) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting until {what}")
        time.sleep(0.1)


def _run_training(page: Page, done_text: str) -> None:
    """Click Train and wait for ``done_text`` in the progress; an error toast fails at once, with its text."""
    progress = page.locator("#ikd-progress")
    page.locator("#ikd-train").click()
    # this run's progress replaces the last run's text (the queue timer shown over it is not enough)
    expect(progress).not_to_contain_text(done_text, timeout=120_000)
    toast = page.locator(".toast-body.error")
    deadline = time.monotonic() + 240
    while done_text not in progress.inner_text():
        if toast.count():
            pytest.fail(f"training failed in the browser: {toast.first.inner_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{done_text!r} did not appear; progress: {progress.inner_text()!r}")
        page.wait_for_timeout(200)  # polls the page; the loop ends on the text, not on a time


# ------------------------------------------------------------------------------------------ tests
def test_both_visitors_start_with_the_shipped_checkpoints_only(studio, visitors) -> None:
    shipped = _shipped(studio)
    assert shipped == {CKPT}
    for v in (visitors.a, visitors.b):
        assert set(_checkpoint_options(v.page)) == shipped
    assert len(_workspaces(studio)) == 2, "one workspace per visitor"
    _assert_b_sees_nothing_of_a(visitors.b)


def test_uploaded_checkpoint_is_only_the_uploaders(studio, visitors, tiny_checkpoint, tmp_path: Path) -> None:
    a, b = visitors.a.page, visitors.b.page
    forged = save_checkpoint(tmp_path / A_CKPT, tiny_checkpoint.model.student.state_dict(),
                             {**tiny_checkpoint.metadata, "category": A_CATEGORY})
    _tab(a, "Model")
    a.locator("#ikd-ckpt-upload input[type=file]").set_input_files(str(forged))
    expect(a.get_by_role("combobox", name=CKPT_BOX)).to_have_value(A_CKPT)
    expect(a.locator("#ikd-ckpt-info")).to_contain_text(A_CATEGORY)
    assert A_CKPT in _checkpoint_options(a)
    _tab(a, "Inspect")
    expect(a.locator("#ikd-active")).to_contain_text(A_CKPT)
    expect(a.locator("#ikd-active")).to_contain_text(A_CATEGORY)

    # on the server: in A's workspace only; the shipped folder is untouched
    visitors.state["a_ws"] = _holder(studio, A_CKPT)
    assert _shipped(studio) == {CKPT}

    # B: the list from the server, the widgets, the DOM over time; then a fresh page (a new session) as well
    assert set(_refresh_list(b)) == {CKPT}
    _tab(b, "Inspect")
    _assert_b_sees_nothing_of_a(visitors.b)
    b.reload()
    _load(b, studio)
    assert set(_refresh_list(b)) == {CKPT}
    _assert_b_sees_nothing_of_a(visitors.b)
    assert visitors.state["a_ws"].is_dir(), "B's reload left A's workspace alone"


def test_inspected_image_and_results_are_only_the_uploaders(studio, visitors, tmp_path: Path) -> None:
    a, b = visitors.a.page, visitors.b.page
    src = sorted((studio.demo / "demo_texture" / "test" / "hole").glob("*.png"))[0]
    image = tmp_path / A_IMAGE
    shutil.copy(src, image)
    _tab(a, "Inspect")
    a.locator("#ikd-inspect-files input[type=file]").set_input_files(str(image))
    expect(a.locator("#ikd-table")).to_contain_text(A_IMAGE)
    expect(a.locator("#ikd-verdict textarea")).not_to_have_value("")
    expect(a.locator("#ikd-results img")).to_have_count(1)
    expect(a.locator("#ikd-examples img").first).to_be_visible()

    _tab(b, "Inspect")
    expect(b.locator("#ikd-examples img").first).to_be_visible()  # B's own examples (the shipped model's test set)
    expect(b.locator("#ikd-results img")).to_have_count(0)
    expect(b.locator("#ikd-table")).not_to_contain_text(Path(A_IMAGE).stem)
    expect(b.locator("#ikd-verdict textarea")).to_have_value("")
    srcs = [img.get_attribute("src") or "" for img in b.locator("#ikd-examples img, #ikd-results img").all()]
    assert srcs and not [s for s in srcs if any(k in s for k in SECRETS)], srcs
    # B inspects an image of its own: B's results hold it and nothing of A's
    mine = tmp_path / "b_own_image.png"
    shutil.copy(src, mine)
    b.locator("#ikd-inspect-files input[type=file]").set_input_files(str(mine))
    expect(b.locator("#ikd-table")).to_contain_text(mine.name)
    expect(b.locator("#ikd-results img")).to_have_count(1)
    expect(b.locator("#ikd-table")).not_to_contain_text(Path(A_IMAGE).stem)
    _assert_b_sees_nothing_of_a(visitors.b)
    expect(a.locator("#ikd-table")).not_to_contain_text(mine.name)  # and the other way round


def test_trained_checkpoint_is_only_the_trainers(studio, visitors) -> None:
    a, b = visitors.a.page, visitors.b.page
    _tab(a, "Model")
    a.get_by_role("radio", name="Demo").check()
    _choose(a, "Category", "demo_object")
    _set_number(a, "#ikd-image-size input[type=number]", 64)
    a.locator("#ikd-epochs input").fill("1")
    a.locator("#ikd-batch input").fill("4")
    _run_training(a, f"Checkpoint {A_TRAINED} saved; the active model is still")
    expect(a.locator("#ikd-progress")).to_contain_text("Done")
    a.locator("#ikd-use-new").click()  # A had an active model: the new one becomes active when A chooses it
    expect(a.get_by_role("combobox", name=CKPT_BOX)).to_have_value(A_TRAINED)
    assert {A_TRAINED, A_CKPT, CKPT} <= set(_checkpoint_options(a))
    assert _holder(studio, A_TRAINED) == visitors.state["a_ws"], "trained into A's own workspace"
    assert _shipped(studio) == {CKPT}

    assert set(_refresh_list(b)) == {CKPT}
    _assert_b_sees_nothing_of_a(visitors.b)


def test_exported_gif_is_only_the_exporters(studio, visitors) -> None:
    a, b = visitors.a.page, visitors.b.page
    _tab(a, "Export GIF")
    a.locator("#ikd-gif").click()
    expect(a.locator("#ikd-gif-info")).to_contain_text("1 frames (1 of your images)")
    link = a.locator("#ikd-gif-file a[download]").first
    expect(link).to_be_visible()
    expect(a.locator("#ikd-gif-preview img")).to_be_visible()
    gif = Path(urlparse(link.get_attribute("href") or "").path).name
    assert gif.startswith(Path(A_TRAINED).stem) and gif.endswith(".gif"), gif
    assert _holder(studio, gif) == visitors.state["a_ws"], "exported into A's own workspace"
    visitors.state["gif"] = gif

    _tab(b, "Export GIF")
    expect(b.locator("#ikd-gif")).to_be_visible()
    expect(b.locator("#ikd-gif-info")).to_have_text("")
    expect(b.locator("#ikd-gif-file a[download]")).to_have_count(0)
    expect(b.locator("#ikd-gif-preview img")).to_have_count(0)
    _assert_b_sees_nothing_of_a(visitors.b, extra=(gif,))


def test_training_never_shadows_a_shipped_checkpoint(studio, visitors) -> None:
    a = visitors.a.page
    _tab(a, "Model")
    _choose(a, "Category", "demo_texture")  # the default category, the one of the shipped checkpoint
    _set_number(a, "#ikd-image-size input[type=number]", 64)
    a.locator("#ikd-epochs input").fill("1")
    _run_training(a, "saved; the active model is still")
    expect(a.locator("#ikd-progress")).to_contain_text("Done")
    name = re.search(r"Checkpoint (\S+\.safetensors) saved", a.locator("#ikd-progress").inner_text()).group(1)
    assert name != Path(A_TRAINED).name, "this run's checkpoint"
    a.locator("#ikd-use-new").click()
    expect(a.get_by_role("combobox", name=CKPT_BOX)).to_have_value(name)
    options = _checkpoint_options(a)
    assert _shipped(studio) == {CKPT}, "the shipped folder is never written"
    assert name != CKPT and {name, CKPT} <= set(options), f"trained: {name!r}; A's list: {options}"


def test_closing_a_removes_only_as_workspace(studio, visitors) -> None:
    a, b = visitors.a, visitors.b
    # the DOM watcher works: A's own page showed every secret (the positive control of B's empty record)
    assert a.seen == set(SECRETS), f"visitor A's page showed {sorted(a.seen)} of {SECRETS}"
    for v in (a, b):
        _tab(v.page, "Model")
        v.page.screenshot(path=str(ARTIFACTS / f"public-visitor-{v.name}.png"), full_page=True)
    a_ws = visitors.state["a_ws"]
    others = [ws for ws in _workspaces(studio) if ws != a_ws]
    assert a_ws.is_dir() and others, "A's workspace and B's exist before A leaves"

    a.context.close()
    a.closed = True
    _wait_until(lambda: not a_ws.exists(), 60, "A's workspace is removed after A's page closed")
    assert all(ws.is_dir() for ws in others), "B's workspace stays"
    assert _shipped(studio) == {CKPT}, "the shipped checkpoints stay"
    assert a_ws.name not in {ws.id for ws in studio.app.ctx.workspaces.workspaces()}
    # B still works
    assert set(_refresh_list(b.page)) == {CKPT}
    _assert_b_sees_nothing_of_a(b, extra=(visitors.state.get("gif", A_TRAINED),))


def test_no_request_to_other_hosts(studio, visitors) -> None:
    for v in (visitors.a, visitors.b):
        assert v.requests, f"no requests were recorded for visitor {v.name}"
        web = [u for u in v.requests if urlparse(u).scheme in ("http", "https", "ws", "wss")]
        hosts = {urlparse(u).netloc for u in web}
        assert hosts == {studio.netloc}, f"visitor {v.name} requested other hosts: {sorted(hosts - {studio.netloc})}"
        others = [u for u in v.requests if urlparse(u).scheme not in ("http", "https", "ws", "wss", "data", "blob")]
        assert not others, others
