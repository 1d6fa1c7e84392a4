"""The real timm / Hugging Face hub path of teacher weight resolution, against a fake hub on loopback.

What timm asks of the hub when it downloads resnet18 weights (timm 1.0.31,
huggingface_hub 2.4.0): timm looks for the safetensors alternative of ``pytorch_model.bin`` first,
``hf_hub_download("timm/resnet18.a1_in1k", "model.safetensors", revision=None)``, i.e.

0. ``GET {HF_ENDPOINT}/api/agent-harnesses`` once per process (user-agent "agent" detection, cached
   a day in ``HF_HOME/.agent_harnesses.json``; any failure is swallowed). No ``api/models/...`` call.
1. ``HEAD {HF_ENDPOINT}/timm/resnet18.a1_in1k/resolve/main/model.safetensors``; redirects are only
   followed on the hub's own origin. The hub answers an LFS file with ``302`` to a CDN plus
   ``X-Repo-Commit`` (required: the snapshot folder), ``X-Linked-Etag`` (the blob's sha256, preferred
   over ``ETag``: the blob's file name) and ``X-Linked-Size`` (a redirect's ``Content-Length`` is
   ignored). No ``X-Xet-Hash`` header => a plain HTTP download, no Xet.
2. ``GET`` of the ``Location`` (the CDN): ``200`` with ``Content-Length`` and the bytes.

A later resolution of revision ``main`` repeats the HEAD and reuses the cached blob. A HEAD answered
500/502/503/504 is retried with backoff (1+2+4+8+8 s) before failing, so that case is not run here;
a dropped connection fails at once, and so does a download answered 500.

``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are read when huggingface_hub is imported, so resolution runs
in fresh interpreters: one online run that walks through the server modes (it switches them with a
control URL and moves the HF cache aside between them), and one offline run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from ikd_core.backbones import FeatureExtractor, state_fingerprint

ROOT = Path(__file__).resolve().parents[1]
REPO = "timm/resnet18.a1_in1k"
FILENAME = "model.safetensors"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE_PATH = f"/{REPO}/resolve/main/{FILENAME}"
LITE0_PATH = "/timm/efficientnet_lite0.ra_in1k/resolve/main/model.safetensors"
CONTROL = "/_fake/mode/"
REGISTRY = {"standardEnvVars": [], "harnesses": {}}


def _tensor_sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


@dataclass(frozen=True)
class Served:
    """The safetensors file the fake hub serves and what a loader of it must see."""

    blob: bytes
    sha256: str
    marker: str  # sha256 of conv1.weight
    fingerprint: str  # state_fingerprint of the full state dict
    body_fingerprint: str  # state_fingerprint of the tensors the resnet18 teacher uses


@pytest.fixture(scope="module")
def served() -> Served:
    """A randomly initialised timm resnet18 state dict with a seeded marker in ``conv1.weight``."""
    import timm
    from safetensors.torch import save

    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    gen = torch.Generator().manual_seed(20240611)
    state["conv1.weight"] = torch.randn(state["conv1.weight"].shape, generator=gen)
    state = {k: v.contiguous() for k, v in state.items()}
    blob = save(state)
    body_keys = FeatureExtractor("resnet18").body.state_dict().keys()
    return Served(
        blob=blob,
        sha256=hashlib.sha256(blob).hexdigest(),
        marker=_tensor_sha(state["conv1.weight"]),
        fingerprint=state_fingerprint(state),
        body_fingerprint=state_fingerprint({k: state[k] for k in body_keys}),
    )


class FakeHub:
    """Two loopback servers: the hub and the CDN it redirects LFS files to.

    ``mode``: ``"ok"``; ``"close"`` (every connection dropped without an answer); ``"500"`` (the hub
    resolves, the download answers 500). ``GET {hub}/_fake/mode/<mode>`` switches it. ``requests``:
    (mode, server, method, path, user agent); ``connections``: TCP connections either server accepted.
    """

    def __init__(self, served: Served) -> None:
        self.blob = served.blob
        self.sha256 = served.sha256
        self.mode = "ok"
        self.requests: list[tuple[str, str, str, str, str]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []
        self.hub_url = self._start("hub")
        self.cdn_url = self._start("cdn")

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc: object) -> None:
        for httpd, thread in self._servers:
            httpd.shutdown()
            httpd.server_close()
            thread.join(5)
            assert not thread.is_alive()

    def log(self, mode: str) -> list[tuple[str, str, str]]:
        """(server, method, path) of the requests made in ``mode``."""
        return [r[1:4] for r in self.requests if r[0] == mode]

    def _start(self, role: str) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                fake._answer(self, role, body=False)

            def do_GET(self) -> None:
                fake._answer(self, role, body=True)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request: object, client_address: object) -> bool:
                with fake._lock:
                    fake.connections += 1
                return True

        httpd = Server(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self._servers.append((httpd, thread))
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    def _answer(self, h: BaseHTTPRequestHandler, role: str, body: bool) -> None:
        path = h.path
        if role == "hub" and path.startswith(CONTROL):
            self.mode = path[len(CONTROL):]
            self._send(h, 200, {}, b"ok", body)
            return
        with self._lock:
            self.requests.append((self.mode, role, h.command, path, h.headers.get("User-Agent", "")))
        if self.mode == "close":
            h.close_connection = True  # no status line at all: the client sees a dropped connection
            return
        if role == "hub" and path == "/api/agent-harnesses":
            self._send(h, 200, {"Content-Type": "application/json"}, json.dumps(REGISTRY).encode(), body)
        elif role == "hub" and path == RESOLVE_PATH:
            self._send(h, 302, {
                "Location": f"{self.cdn_url}/blobs/{self.sha256}?signature=fake",
                "X-Repo-Commit": COMMIT,
                "ETag": '"' + "f" * 40 + '"',  # git oid of the LFS pointer: must lose to X-Linked-Etag
                "X-Linked-Etag": f'"{self.sha256}"',
                "X-Linked-Size": str(len(self.blob)),
            }, b"", body)
        elif role == "cdn" and path.split("?")[0] == f"/blobs/{self.sha256}":
            if self.mode == "500":
                self._send(h, 500, {}, b"Internal Server Error", body)
            else:
                self._send(h, 200, {"ETag": f'"{self.sha256}"', "Content-Type": "application/octet-stream"},
                           self.blob, body)
        else:
            self._send(h, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"Entry not found", body)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], content: bytes, body: bool) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(content)))
        h.end_headers()
        if body:
            h.wfile.write(content)


PRELUDE = """
import hashlib, json, os, urllib.request
import torch
torch.set_num_threads(1)
from ikd_core import backbones
from ikd_core.errors import WeightsError

CACHE = os.environ["HF_HUB_CACHE"]

def sha(t):
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()

def error_of(fn, *args):
    try:
        fn(*args)
    except WeightsError as exc:
        return str(exc)
    return "no error"

def mode(name, previous=None):
    if previous and os.path.isdir(CACHE):  # each mode starts with a cold HF cache
        os.rename(CACHE, CACHE + "-" + previous)
    urllib.request.urlopen(os.environ["HF_ENDPOINT"] + "/_fake/mode/" + name, timeout=5).read()

out = {}
"""


def _spawn(script: str, hub_url: str, tmp: Path, offline: bool) -> subprocess.Popen[bytes]:
    """Start ``script`` in a fresh interpreter against the fake hub (stdout / stderr to files in ``tmp``)."""
    drop = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(drop)}
    env.update(
        HF_ENDPOINT=hub_url,
        HF_HUB_OFFLINE="1" if offline else "0",
        HF_HOME=str(tmp / "hf_home"),
        HF_HUB_CACHE=str(tmp / "hub"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_ETAG_TIMEOUT="5",
        HF_HUB_DOWNLOAD_TIMEOUT="5",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        OMP_NUM_THREADS="1",
    )
    code = PRELUDE + textwrap.dedent(script) + "\nprint(json.dumps(out))\n"
    with open(tmp / "stdout", "wb") as stdout, open(tmp / "stderr", "wb") as stderr:
        return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=str(tmp), stdout=stdout, stderr=stderr)


def _result(proc: subprocess.Popen[bytes], tmp: Path) -> dict[str, object]:
    """Wait for a run of ``_spawn``; return the JSON it printed last."""
    try:
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, (tmp / "stderr").read_text(errors="replace")[-3000:]
    return json.loads((tmp / "stdout").read_text().strip().splitlines()[-1])


ONLINE = """
mode("ok")
state, source = backbones.resolve_teacher_state("resnet18")
teacher, hub_source, fingerprint = backbones.build_teacher("resnet18", "hub")
out["ok"] = {
    "reachable": backbones.hub_is_reachable(),
    "auto": [source, sha(state["conv1.weight"]), backbones.state_fingerprint(state)],
    "hub": [hub_source, sha(teacher.body.conv1.weight), fingerprint],
}
for name, previous in (("close", "ok"), ("500", "close")):
    mode(name, previous)
    out[name] = {
        "reachable": backbones.hub_is_reachable(),
        "auto": error_of(backbones.resolve_teacher_state, "resnet18"),
        "hub": error_of(backbones.build_teacher, "resnet18", "hub"),
        "lite0": backbones.resolve_teacher_state("efficientnet_lite0")[1],
    }
"""

OFFLINE = """
out["reachable"] = backbones.hub_is_reachable()
out["auto"] = error_of(backbones.resolve_teacher_state, "resnet18")
out["hub"] = error_of(backbones.build_teacher, "resnet18", "hub")
out["lite0"] = backbones.resolve_teacher_state("efficientnet_lite0")[1]
"""


@pytest.fixture(scope="module")
def runs(served: Served, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """{"online" | "offline": (printed results, the fake hub with its request log, tmp dir)}.

    Both interpreters run at once (their imports dominate the time), each against its own fake hub.
    """
    results = {}
    with FakeHub(served) as on, FakeHub(served) as off:
        tmp_on, tmp_off = tmp_path_factory.mktemp("hub_online"), tmp_path_factory.mktemp("hub_offline")
        procs = {"online": (_spawn(ONLINE, on.hub_url, tmp_on, offline=False), on, tmp_on),
                 "offline": (_spawn(OFFLINE, off.hub_url, tmp_off, offline=True), off, tmp_off)}
        try:
            for key, (proc, hub, tmp) in procs.items():
                results[key] = (_result(proc, tmp), hub, tmp)
        finally:
            for proc, _, _ in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return results


def test_hub_download_loads_served_weights(runs, served: Served) -> None:
    out, hub, tmp = runs["online"]
    ok = out["ok"]
    assert ok["reachable"] is True
    assert ok["auto"] == ["hub", served.marker, served.fingerprint]
    assert ok["hub"] == ["hub", served.marker, served.body_fingerprint]

    head = ("hub", "HEAD", RESOLVE_PATH)
    get = ("cdn", "GET", f"/blobs/{served.sha256}?signature=fake")
    # Each resolution asks the hub (revision "main" may have moved); the blob is downloaded once. The
    # agent-registry GET is skipped when telemetry is disabled (DO_NOT_TRACK...), so it is optional.
    registry = ("hub", "GET", "/api/agent-harnesses")
    assert [r for r in hub.log("ok") if r != registry] == [head, get, head]
    assert all(r[4].startswith("timm/") and "hf_hub/" in r[4] for r in hub.requests if r[3] != registry[2])

    repo = tmp / "hub-ok" / "models--timm--resnet18.a1_in1k"
    assert (repo / "refs" / "main").read_text() == COMMIT
    assert (repo / "blobs" / served.sha256).is_file()  # named by X-Linked-Etag, not ETag
    assert (repo / "snapshots" / COMMIT / FILENAME).read_bytes() == served.blob


@pytest.mark.parametrize("mode", ["close", "500"])
def test_broken_hub_names_ways_out(runs, mode: str) -> None:
    out, hub, _ = runs["online"]
    res = out[mode]
    assert res["reachable"] is True  # the TCP probe succeeds: the failure comes from the download
    message = res["auto"]
    assert "no ImageNet weights for teacher 'resnet18'" in message and "timm hub:" in message
    assert "local weights file" in message and "online" in message and "efficientnet_lite0" in message
    assert "cannot download resnet18 weights from the timm hub" in res["hub"]
    assert res["lite0"] == "packaged"
    log = hub.log(mode)
    assert ("hub", "HEAD", RESOLVE_PATH) in log and ("hub", "HEAD", LITE0_PATH) in log  # really asked
    if mode == "500":
        assert any(r[:2] == ("cdn", "GET") for r in log)


def test_offline_mode_sends_nothing(runs) -> None:
    out, hub, _ = runs["offline"]
    assert out["reachable"] is False
    assert "timm hub: offline" in out["auto"] and "efficientnet_lite0" in out["auto"]
    assert "cannot download resnet18 weights from the timm hub" in out["hub"]
    assert out["lite0"] == "packaged"
    assert hub.requests == [] and hub.connections == 0
