"""Screenshots of every tab of the IKD Studio app for the README.

    python scripts/screenshots.py [--out-dir assets/screenshots] [--image PATH]

Starts the app in-process on a free local port (folders from ``IKD_PRETRAINED_DIR`` / ``IKD_DATA_DIR`` /
``IKD_WORK_DIR``, default ``pretrained/``, ``data/``, ``runs/studio``), opens it in Debian chromium
(``/usr/bin/chromium``, or ``--chromium``), inspects a defective demo test image, makes a small GIF and writes
``model.png``, ``inspect.png`` and ``export_gif.png``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(REPO / "assets" / "screenshots"))
    parser.add_argument("--image", help="image to inspect (default: a defective demo test image)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="chromium executable")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--gif-images", type=int, default=4, help="test images in the GIF shown")
    args = parser.parse_args(argv)

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    from playwright.sync_api import expect, sync_playwright

    import ui
    from ikd_core.service import Settings

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    app = ui.build_app(Settings.from_env())
    app.ctx.ensure_demo_data()
    demo_image = app.settings.paths.demo_root / "demo_texture" / "test" / "hole" / "000.png"
    image = Path(args.image) if args.image else demo_image
    port = _free_port()
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    **app.launch_kwargs())
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.set_default_timeout(120_000)
            expect.set_options(timeout=120_000)  # a busy CPU loads the model in more than expect's 5 s
            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.locator("#ikd-active")).not_to_contain_text("loading")
            has_model = "none" not in page.locator("#ikd-active").inner_text()
            if not has_model:
                print("warning: no checkpoint in pretrained/; screenshots show the empty app", file=sys.stderr)

            page.get_by_role("tab", name="Inspect").click()
            if has_model:
                page.locator("#ikd-inspect-files input[type=file]").set_input_files(str(image))
                expect(page.locator("#ikd-verdict textarea")).not_to_have_value("")
                expect(page.locator("#ikd-overlay img")).to_be_visible()
            page.wait_for_timeout(500)
            page.screenshot(path=str(out / "inspect.png"), full_page=True)

            page.get_by_role("tab", name="Model").click()
            page.wait_for_timeout(500)
            page.screenshot(path=str(out / "model.png"), full_page=True)

            page.get_by_role("tab", name="Export GIF").click()
            if has_model:
                box = page.locator("#ikd-gif-n input[type=number]")
                box.fill(str(args.gif_images))
                box.press("Enter")
                page.locator("#ikd-gif").click()
                expect(page.locator("#ikd-gif-info")).to_contain_text("frames")
                expect(page.locator("#ikd-gif-preview img")).to_be_visible()
            page.wait_for_timeout(500)
            page.screenshot(path=str(out / "export_gif.png"), full_page=True)
            browser.close()
    finally:
        app.close()
    for name in ("model", "inspect", "export_gif"):
        print(out / f"{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
