"""A public deployment attacked as an attacker would: through the HTTP API (``gradio_client``), with crafted files.

The app runs in public mode (``IKD_PUBLIC=1``, as ``SPACE_ID`` does on a Space): every ``gradio_client.Client`` is a
separate visitor with its own workspace. Each test reproduces an attack that worked before public mode existed and
checks that it no longer does, and that the server keeps serving others. A second launch in private mode checks the
cases that must hold there too (paths from checkpoint metadata, MVTec AD destinations).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from conftest import run_studio  # noqa: E402
from PIL import Image  # noqa: E402
from test_app_api import CKPT  # noqa: E402

from ikd_core.checkpoint import save_checkpoint  # noqa: E402

ENV = {"IKD_PUBLIC": "1", "IKD_WORKSPACE_CHECKPOINTS": "3", "IKD_MAX_FILE_SIZE": "20mb"}


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("studio_public")
    with run_studio(root, tiny_checkpoint, ENV) as s:
        yield s


def _client(studio):
    from gradio_client import Client

    return Client(studio.url, verbose=False)


@pytest.fixture(scope="module")
def alice(studio):
    return _client(studio)


@pytest.fixture(scope="module")
def bob(studio):
    return _client(studio)


def _good(studio) -> Path:
    return sorted((studio.demo / "demo_texture" / "test" / "good").glob("*.png"))[0]


def _inspect(client, images, ckpt=CKPT, threshold=0.5, alpha=0.5, cmap="jet"):
    from gradio_client import handle_file

    return client.predict([handle_file(str(p)) for p in images], ckpt, threshold, alpha, cmap, 0,
                          api_name="/inspect")


def _serves(studio, client) -> None:
    out = _inspect(client, [_good(studio)])
    assert out[5] in ("normal", "anomalous")


def _forged(tiny_checkpoint, folder: Path, name: str, **meta) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(folder / name, tiny_checkpoint.model.student.state_dict(),
                           {**tiny_checkpoint.metadata, **meta})


def _upload_ckpt(client, path: Path, current: str = CKPT):
    from gradio_client import handle_file

    return client.predict([handle_file(str(path))], current, api_name="/import_checkpoint")


def _names(client, current: str = CKPT) -> set[str]:
    listed = client.predict(current, api_name="/list_checkpoints")
    return {c[1] for c in listed["choices"]}


def _secret_images(root: Path) -> Path:
    """Another visitor's images, or any server folder: what an attacker wants to read."""
    folder = root / "secret"
    for sub in ("good", "crack"):
        (folder / "test" / sub).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / "test" / sub / f"secret_{sub}.png")
    (folder / "train").mkdir(exist_ok=True)
    Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / "train" / "secret.png")
    return folder


def _assert_no_secret(outputs) -> None:
    assert "secret" not in json.dumps(outputs, default=str)


# ------------------------------------------------------------------------------------------ 1. paths in metadata
def test_checkpoint_metadata_opens_no_folder(studio, alice, tiny_checkpoint, tmp_path: Path) -> None:
    from gradio_client.exceptions import AppError

    secret = _secret_images(tmp_path)
    forged = _forged(tiny_checkpoint, tmp_path / "up", "pathy.safetensors",
                     data={"kind": "folder", "category": "x", "good_dir": str(secret / "train"),
                           "test_dir": str(secret / "test")})
    dropdown, info, _ = _upload_ckpt(alice, forged)
    name = dropdown["value"]
    out = alice.predict(name, api_name="/checkpoint_info")
    assert not out[2], "no examples from the metadata's folder"
    _assert_no_secret(out)
    with pytest.raises(AppError, match="no test set"):
        alice.predict(name, 3, 2, 256, 0.5, 0.5, "jet", [], api_name="/export_gif")
    forged_mvtec = _forged(tiny_checkpoint, tmp_path / "up", "rooty.safetensors",
                           data={"kind": "mvtec", "category": "secret", "root": str(tmp_path)})
    name = _upload_ckpt(alice, forged_mvtec)[0]["value"]
    out = alice.predict(name, api_name="/checkpoint_info")
    _assert_no_secret(out)


# ------------------------------------------------------------------------------------------ 2. MVTec destinations
def test_public_mode_takes_no_mvtec_path(studio, alice, tmp_path: Path) -> None:
    from gradio_client.exceptions import AppError

    victim = tmp_path / "victim"
    (victim / "bottle").mkdir(parents=True)
    (victim / "bottle" / "keep.txt").write_text("precious")
    with pytest.raises(AppError, match="not available"):
        alice.predict(str(victim), "", "bottle", api_name="/get_mvtec")
    with pytest.raises(AppError):
        alice.predict(str(victim), str(victim), "bottle", api_name="/get_mvtec")
    assert (victim / "bottle" / "keep.txt").read_text() == "precious"


# ------------------------------------------------------------------------------------------ 4. inspect limits
def test_inspect_takes_a_bounded_number_of_images(studio, alice, tmp_path: Path) -> None:
    src = _good(studio)
    many = []
    for i in range(studio.app.settings.max_inspect_images + 4):
        p = tmp_path / f"img{i}.png"
        Image.open(src).rotate(i).save(p)
        many.append(p)
    out = _inspect(alice, many)
    assert len(out[6]["data"]) == studio.app.settings.max_inspect_images


def test_checkpoint_beyond_trainable_size_is_refused(studio, alice, tiny_checkpoint, tmp_path: Path) -> None:
    from gradio_client.exceptions import AppError

    before = _names(alice)
    big = _forged(tiny_checkpoint, tmp_path, "huge.safetensors", image_size=2048)
    with pytest.raises(AppError, match="image size"):
        _upload_ckpt(alice, big)
    assert _names(alice) == before


# ------------------------------------------------------------------------------------------ 5. name races
def test_training_name_is_reserved_against_uploads(studio, alice, tiny_checkpoint, tmp_path: Path) -> None:
    job = alice.submit("Demo", "demo_object", "", "", "", [], "", "efficientnet_lite0", 64, 500, 4, 1e-3,
                       api_name="/train")
    deadline = time.monotonic() + 120
    while not any("epoch" in str(o[0]) for o in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), "no training progress"
        time.sleep(0.2)
    reserved = "demo_object-efficientnet_lite0.safetensors"
    same = _forged(tiny_checkpoint, tmp_path, reserved)
    name = _upload_ckpt(alice, same)[0]["value"]
    assert name != reserved, "an upload never takes the name a run has reserved"
    alice.predict(api_name="/stop")
    assert "Stopped" in job.result(timeout=120)[0]
    assert name in _names(alice)


# ------------------------------------------------------------------------------------------ 6. quotas
def test_workspace_quota_and_isolation(studio, bob, tiny_checkpoint, tmp_path: Path) -> None:
    from gradio_client.exceptions import AppError

    carol = _client(studio)
    shipped = {p.name for p in studio.pretrained.glob("*.safetensors")}
    assert _names(carol) == shipped
    added = []
    with pytest.raises(AppError, match="at most 3 checkpoints"):
        for i in range(4):
            added.append(_upload_ckpt(carol, _forged(tiny_checkpoint, tmp_path, f"q{i}.safetensors"))[0]["value"])
    assert len(added) == 3 and _names(carol) - shipped == set(added)
    # the shipped checkpoints are read-only and shared; nobody else sees alice's
    assert {p.name for p in studio.pretrained.glob("*.safetensors")} == shipped
    assert _names(bob) == shipped
    with pytest.raises(AppError, match="not found"):
        _inspect(bob, [_good(studio)], ckpt=added[0])
    # carol downloads hers (to upload it again later)
    files = carol.predict(added[0], api_name="/download_checkpoint")
    assert sorted(Path(f).suffix for f in files) == [".json", ".safetensors"]


# ------------------------------------------------------------------------------------------ 7. HTML from metadata
@pytest.mark.parametrize("category", ['<img src="http://127.0.0.1:9/track.png">', "a`b) **x** [l](http://e)"])
def test_metadata_strings_are_inert(studio, bob, tiny_checkpoint, tmp_path: Path, category: str) -> None:
    path = _forged(tiny_checkpoint, tmp_path, "html.safetensors", category=category)
    _, info, _ = _upload_ckpt(bob, path)
    name = bob.predict(CKPT, api_name="/list_checkpoints")["choices"]
    label = bob.predict([n for _, n in name if n.startswith("html")][0], api_name="/checkpoint_info")[1]
    from markdown_it import MarkdownIt

    for text in (info, label):
        html = MarkdownIt("commonmark", {"html": True}).render(text)
        assert "<img" not in html and "<a " not in html and "<strong>x</strong>" not in html, html


# ------------------------------------------------------------------------------------------ 8. metadata types
@pytest.mark.parametrize("meta", [{"metrics": [1, 2, 3]}, {"data": {"kind": "mvtec", "category": "x", "root": 123}},
                                  {"category": "pad" + "x" * 1_500_000}])
def test_bad_metadata_leaves_nothing(studio, bob, tiny_checkpoint, tmp_path: Path, meta: dict) -> None:
    from gradio_client.exceptions import AppError

    before = _names(bob)
    path = _forged(tiny_checkpoint, tmp_path, "bad.safetensors", **meta)
    with pytest.raises(AppError):
        _upload_ckpt(bob, path)
    assert _names(bob) == before
    bob.predict(CKPT, api_name="/checkpoint_info")
    _serves(studio, bob)


# ------------------------------------------------------------------------------------------ 9. zip cost
def test_pixel_bomb_zip_is_refused_before_decoding(studio, bob, tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    big = tmp_path / "big.png"
    Image.new("L", (8192, 8192), 0).save(big, optimize=True)
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):
            zf.write(big, f"good/{i}.png")
    t0 = time.monotonic()
    with pytest.raises(AppError, match="pixels"):
        bob.predict("Upload good images", None, "", "", "", [handle_file(str(archive))], "bomb", "efficientnet_lite0",
                    64, 1, 4, 1e-3, api_name="/train")
    assert time.monotonic() - t0 < 10, "refused from the headers, not after decoding 40 images"
    _serves(studio, bob)


# ------------------------------------------------------------------------------------------ 10. numbers and messages
def _raw_call(studio, api: str, data_json: str) -> str:
    """POST a hand-written JSON body (a raw ``NaN`` is not JSON that a client library sends) to ``/gradio_api/call``
    and return the event stream's text."""
    import httpx

    base = studio.url.rstrip("/")
    r = httpx.post(f"{base}/gradio_api/call/{api}", content=('{"data": ' + data_json + "}").encode(),
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    event = r.json()["event_id"]
    return httpx.get(f"{base}/gradio_api/call/{api}/{event}", timeout=120).text


def _uploaded(studio, path: Path) -> str:
    import httpx

    with path.open("rb") as fh:
        r = httpx.post(f"{studio.url.rstrip('/')}/gradio_api/upload", files={"files": (path.name, fh, "image/png")},
                       timeout=60)
    return r.json()[0]


@pytest.mark.parametrize(("threshold", "alpha", "cmap"), [("NaN", "0.5", "jet"), ("0.5", "Infinity", "jet"),
                                                          ("2.0", "0.5", "jet"), ("0.5", "0.5", "not-a-cmap")])
def test_non_finite_or_out_of_range_numbers_are_refused(studio, threshold: str, alpha: str, cmap: str) -> None:
    """``threshold=NaN`` used to turn a score of 1.0 into "normal"."""
    image = _uploaded(studio, sorted((studio.demo / "demo_texture" / "test" / "hole").glob("*.png"))[0])
    files = json.dumps([{"path": image, "meta": {"_type": "gradio.FileData"}}])
    text = _raw_call(studio, "inspect", f'[{files}, "{CKPT}", {threshold}, {alpha}, "{cmap}", 0]')
    assert "event: error" in text and "normal" not in text and "anomalous" not in text, text
    if threshold == "NaN":  # the one Gradio's slider check lets through: the engine names it
        assert "threshold" in text, text


@pytest.mark.parametrize("field", ["n", "fps", "width", "threshold"])
def test_gif_numbers_are_checked(studio, field: str) -> None:
    args = {"n": "2", "fps": "2", "width": "256", "threshold": "0.5"}
    args[field] = "NaN"
    text = _raw_call(studio, "export_gif", f'["{CKPT}", {args["n"]}, {args["fps"]}, {args["width"]}, '
                                           f'{args["threshold"]}, 0.5, "jet", []]')
    assert "event: error" in text and "ValueError" not in text, text
    assert "finite" in text or "number" in text, text


def test_errors_name_no_server_paths(studio, bob, tmp_path: Path) -> None:
    from gradio_client.exceptions import AppError

    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(AppError) as err:
        _inspect(bob, [junk])
    assert "junk.png" in str(err.value)
    for root in (str(studio.root), "/tmp/", str(tmp_path)):
        assert root not in str(err.value)


# ------------------------------------------------------------------------------------------ 11. stop authority
def test_stop_only_stops_the_callers_own_run(studio, bob) -> None:
    alice = _client(studio)  # a fresh workspace (the module's alice is at her quota by now)
    job = alice.submit("Demo", "demo_texture", "", "", "", [], "", "efficientnet_lite0", 64, 500, 4, 1e-3,
                       api_name="/train")
    deadline = time.monotonic() + 120
    while not any("epoch" in str(o[0]) for o in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), "no training progress"
        time.sleep(0.2)
    bob.predict(api_name="/stop")
    _client(studio).predict(api_name="/stop")
    n = len(job.outputs())
    deadline = time.monotonic() + 30
    while len(job.outputs()) < n + 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not job.done(), "another visitor's Stop does not end alice's run"
    alice.predict(api_name="/stop")
    assert "Stopped" in job.result(timeout=120)[0]


# ------------------------------------------------------------------------------------------ public mode offers
def test_public_mode_offers_no_server_folders(studio, alice) -> None:
    from gradio_client.exceptions import AppError

    from ui.data_panel import SRC_FOLDER, sources

    settings = studio.app.settings
    assert settings.public and not settings.allow_server_paths
    assert SRC_FOLDER not in sources(settings)
    assert SRC_FOLDER not in {v for _, v in studio.app.tabs.model.data.source.choices}
    with pytest.raises(AppError, match="server folders|not in the list of choices"):
        alice.predict("Folder on server", None, "", str(studio.demo / "demo_texture" / "train" / "good"), "", [],
                      "x", "efficientnet_lite0", 64, 1, 4, 1e-3, api_name="/train")


# ------------------------------------------------------------------------------------------ private mode
@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint, studio):
    with run_studio(tmp_path_factory.mktemp("studio_private"), tiny_checkpoint,
                    {"IKD_PUBLIC": "0", "IKD_ALLOW_SERVER_PATHS": "1"}) as s:
        yield s


def test_private_mode_metadata_paths_and_mvtec_destinations(private, tiny_checkpoint, tmp_path: Path) -> None:
    from gradio_client.exceptions import AppError

    client = _client(private)
    secret = _secret_images(tmp_path)
    forged = _forged(tiny_checkpoint, tmp_path / "up", "pathy.safetensors",
                     data={"kind": "folder", "category": "x", "good_dir": str(secret / "train"),
                           "test_dir": str(secret / "test")})
    name = _upload_ckpt(client, forged)[0]["value"]
    out = client.predict(name, api_name="/checkpoint_info")
    _assert_no_secret(out)
    # a download or extraction never deletes or writes outside the data folder
    victim = tmp_path / "victim"
    (victim / "bottle").mkdir(parents=True)
    (victim / "bottle" / "keep.txt").write_text("precious")
    archive = tmp_path / "mvtec.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("bottle/train/good/000.png", (secret / "train" / "secret.png").read_bytes())
        zf.writestr("sitecustomize.py", "raise SystemExit('owned')\n")
    with pytest.raises(AppError, match="data folder"):
        client.predict(str(victim), str(archive), "bottle", api_name="/get_mvtec")
    assert (victim / "bottle" / "keep.txt").read_text() == "precious"
    assert not (victim / "sitecustomize.py").exists()
