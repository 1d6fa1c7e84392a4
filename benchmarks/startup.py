"""Start-up benchmark: `python app.py` on a fresh data folder -> seconds until it serves, then seconds
for the first and second heatmap of an uploaded image (through gradio_client, like a browser upload).

    python -m benchmarks.startup
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .report import ROOT

PORT = 7871
CKPT = "demo_texture-efficientnet_lite0.safetensors"


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    with tempfile.TemporaryDirectory() as data, tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
               "GRADIO_SERVER_PORT": str(PORT), "IKD_DATA_DIR": data, "IKD_WORK_DIR": work}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            while time.perf_counter() - t0 < 120:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{PORT}/", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            serve = time.perf_counter() - t0
            from gradio_client import Client, handle_file

            client = Client(f"http://127.0.0.1:{PORT}/", verbose=False)
            times = []
            for image in (Path(data) / "demo/demo_texture/test/hole/000.png",
                          Path(data) / "demo/demo_texture/test/good/000.png"):
                t = time.perf_counter()
                out = client.predict([handle_file(str(image))], CKPT, 0.5, 0.5, "jet", False, api_name="/inspect")
                times.append((time.perf_counter() - t, out[5]))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"serving after {serve:.1f} s (fresh data folder: demo data generated and model loaded first)")
    print(f"first heatmap {times[0][0]:.2f} s ({times[0][1]}), second {times[1][0]:.2f} s ({times[1][1]})")


if __name__ == "__main__":
    main()
