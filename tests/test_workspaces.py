"""The operator's path allowlist (AccessPolicy, KnownData) and per-visitor workspaces (quotas, time to live)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ikd_core import service
from ikd_core.data.sources import DataSpec
from ikd_core.errors import DataError, IKDError


def _paths(tmp_path: Path) -> service.StudioPaths:
    return service.StudioPaths(tmp_path / "pretrained", tmp_path / "data", tmp_path / "work")


@pytest.mark.parametrize(("env", "public"), [({}, False), ({"SPACE_ID": "a/b"}, True), ({"IKD_PUBLIC": "1"}, True),
                                             ({"SPACE_ID": "a/b", "IKD_PUBLIC": "0"}, False)])
def test_public_mode_from_the_environment(env: dict, public: bool) -> None:
    assert service.public_mode(env) is public


def test_public_policy_names_no_server_path(tmp_path: Path) -> None:
    policy = service.AccessPolicy.from_env(_paths(tmp_path), {"SPACE_ID": "a/b", "IKD_ALLOW_SERVER_PATHS": "1"})
    assert policy.public and not policy.server_paths
    with pytest.raises(DataError, match="server folders"):
        policy.server_folder("/etc")
    assert policy.mvtec_root("/somewhere/else") == tmp_path / "data" / "mvtec"
    with pytest.raises(DataError, match="not available"):
        policy.mvtec_destination()


def test_private_policy_writes_only_inside_the_data_folder(tmp_path: Path) -> None:
    policy = service.AccessPolicy.from_env(_paths(tmp_path), {})
    assert policy.server_folder("/srv/parts") == Path("/srv/parts")
    assert policy.mvtec_destination("") == tmp_path / "data" / "mvtec"
    assert policy.mvtec_destination(str(tmp_path / "data" / "other")) == tmp_path / "data" / "other"
    for outside in (str(tmp_path), "/", str(tmp_path / "data" / ".." / "elsewhere")):
        with pytest.raises(DataError, match="data folder"):
            policy.mvtec_destination(outside)
    off = service.AccessPolicy.from_env(_paths(tmp_path), {"IKD_ALLOW_SERVER_PATHS": "0"})
    with pytest.raises(DataError):
        off.server_folder("/srv/parts")


def test_test_data_never_comes_from_metadata_paths(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    policy = service.AccessPolicy.from_env(paths, {})
    demo = policy.test_spec({"data": {"kind": "demo", "category": "demo_object", "root": "/x"}})
    assert demo == DataSpec("demo", "demo_object", str(paths.demo_root))
    mvtec = policy.test_spec({"data": {"kind": "mvtec", "category": "bottle", "root": "/victim"}})
    assert mvtec == DataSpec("mvtec", "bottle", str(paths.mvtec_root))
    assert policy.test_spec({"data": {"kind": "mvtec", "category": "../etc", "root": "/"}}) is None
    assert policy.test_spec({"data": {"kind": "demo", "category": "../../x"}}) is None
    folder = {"data": {"kind": "folder", "category": "x", "good_dir": "/victim", "test_dir": "/victim/test"}}
    assert policy.test_spec(folder) is None
    assert policy.test_spec({"data": "nonsense"}) is None and policy.test_spec({}) is None
    # what this server recorded when it trained the checkpoint is found by content
    spec = DataSpec("folder", "parts", good_dir="/srv/parts/good", test_dir="/srv/parts/test")
    policy.known.record("abc", spec)
    assert policy.test_spec(folder, digest="abc") == spec
    assert policy.test_spec(folder, digest="other") is None
    public = service.AccessPolicy.from_env(paths, {"IKD_PUBLIC": "1"})
    assert public.test_spec(folder, digest="abc") is None, "no server folders in public mode"


def test_records_made_under_the_earlier_blake2b_digest_are_found_and_moved(tmp_path: Path) -> None:
    import hashlib

    from ikd_core.fileio import file_digest

    policy = service.AccessPolicy.from_env(_paths(tmp_path), {})
    ckpt = tmp_path / "old.safetensors"
    ckpt.write_bytes(b"a checkpoint trained before the digest became SHA-256")
    spec = DataSpec("folder", "parts", good_dir="/srv/parts/good", test_dir="/srv/parts/test")
    policy.known.record(hashlib.blake2b(ckpt.read_bytes()).hexdigest(), spec)
    folder = {"data": {"kind": "folder", "category": "parts"}}
    assert policy.test_spec(folder, digest=file_digest(ckpt)) is None, "the file is needed to find an old record"
    assert policy.test_spec(folder, digest=file_digest(ckpt), path=ckpt) == spec
    assert policy.known.lookup(file_digest(ckpt)) == spec, "moved to the SHA-256 key"


def test_workspaces_are_per_owner_with_quota_and_ttl(tmp_path: Path) -> None:
    removed: list[str] = []
    manager = service.WorkspaceManager(tmp_path / "work", tmp_path / "pretrained", public=True,
                                       quota=service.Quota(max_bytes=1000, max_checkpoints=1), ttl_s=60,
                                       on_remove=lambda ws: removed.append(ws.id))
    a, b = manager.get("alice"), manager.get("bob")
    assert a is manager.get("alice") and a is not b and a.root != b.root
    assert a.id not in "alice" and len(a.id) == 32, "server-issued, unguessable ids"
    assert manager.get("carol", create=False) is None
    with pytest.raises(IKDError):
        manager.get("")
    (a.pretrained / "one.safetensors").write_bytes(b"x" * 10)
    with pytest.raises(service.QuotaError, match="at most 1 checkpoints"):
        a.check_quota(extra_checkpoints=1)
    with pytest.raises(service.QuotaError, match="limited"):
        a.check_quota(extra_bytes=2000)
    b.check_quota(extra_bytes=500, extra_checkpoints=1)
    assert manager.close("alice") and not a.root.exists() and removed == [a.id]
    b.last_used -= 61
    assert manager.sweep() == [b.id] and not b.root.exists()
    assert manager.get("bob") is not b


def test_private_mode_shares_one_workspace_without_quota(tmp_path: Path) -> None:
    manager = service.WorkspaceManager(tmp_path / "work", tmp_path / "pretrained", public=False)
    ws = manager.get(None)
    assert ws is manager.get("anyone") and ws.shared and ws.pretrained == tmp_path / "pretrained"
    ws.check_quota(extra_bytes=10**12, extra_checkpoints=1000)
    assert not manager.close("anyone")


def test_stale_workspaces_of_an_earlier_run_are_removed(tmp_path: Path) -> None:
    old = tmp_path / "work" / "workspaces" / "dead"
    old.mkdir(parents=True)
    service.WorkspaceManager(tmp_path / "work", tmp_path / "pretrained", public=True)
    assert not old.exists()
