"""The app in a subprocess for the load tests (``load_test``, ``attack_load``): ``python app.py`` on a free
127.0.0.1 port with its folders in a temporary directory, and request images that no cache has seen."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .report import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until the app at ``url`` answers ``gradio_api/info``; raises when it exits or ``timeout`` passes."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with status {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "gradio_api/info", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the app did not answer within {timeout:.0f} s")


class AppServer:
    """``python app.py`` started on a free 127.0.0.1 port, its ``pretrained/``, data, work and Gradio temporary
    folders under ``tmp``, its output in ``tmp/app.log``; ``env`` adds variables, ``drop`` removes some."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None, drop: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        full = {**os.environ, **(env or {}), "IKD_PRETRAINED_DIR": str(tmp / "pretrained"),
                "IKD_DATA_DIR": str(tmp / "data"), "IKD_WORK_DIR": str(tmp / "work"),
                "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(self.port),
                "GRADIO_TEMP_DIR": str(tmp / "gradio")}
        for key in drop:
            full.pop(key, None)
        self.log_path = tmp / "app.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=full, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> None:
        wait_ready(self.url, self.proc, timeout)

    def stop(self) -> bool:
        """Terminate the app (kill it after 30 s); whether it was still running."""
        alive = self.proc.poll() is None
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        if self.proc.poll() is None:
            self.proc.kill()
        self._log.close()
        return alive


def distinct_images(sources: Sequence[str | os.PathLike[str]], n: int, out_dir: str | os.PathLike[str]) -> list[Path]:
    """``n`` PNGs made from ``sources`` in turn, each with one pixel changed, so no two have the same bytes
    (the app caches predictions per uploaded file, and Gradio stores uploads by content)."""
    import numpy as np
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bases = [np.asarray(Image.open(s).convert("RGB")) for s in sources]
    paths = []
    for i in range(n):
        arr = bases[i % len(bases)].copy()
        h, w, _ = arr.shape
        k = i // len(bases)
        arr[(k // w) % h, k % w] = [(i * 37) % 256, (i * 91) % 256, 255 - i % 256]
        p = out_dir / f"load-{i:04d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths
