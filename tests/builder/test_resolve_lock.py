import json

import pytest

from builder.errors import LockError, OfflineMissingError, ResolveError
from builder.gitcache import GitCache
from builder.lock import build_lock, check, dumps, read_lock, write_lock
from builder.resolve import resolve_spec
from builder.spec import load_spec


def resolve(world, offline=False):
    spec = load_spec(world.spec())
    return spec, resolve_spec(spec, GitCache(world.cfg.git_cache), offline=offline)


def test_refs_resolve_to_full_shas(world):
    spec = load_spec(world.spec(nodes=[
        {"repo": world.node_a.url, "ref": "v1"},            # annotated tag → peeled commit
        {"repo": world.node_b.url, "ref": "v2"},            # lightweight tag
        {"repo": world.node_c.url, "ref": "dev"},           # branch
        {"name": "c-short", "repo": world.node_c.url, "commit": world.node_c.sha("v1")[:10]},  # short commit
        {"name": "c-head", "repo": world.node_c.url},       # default: remote HEAD
    ]))
    res = resolve_spec(spec, GitCache(world.cfg.git_cache), offline=False)
    assert res.comfy == world.comfy.sha("v0.2")
    assert res.nodes == {"node-a": world.node_a.sha("v1"), "node-b": world.node_b.sha("v2"),
                         "node-c": world.node_c.sha("dev"), "c-short": world.node_c.sha("v1"),
                         "c-head": world.node_c.sha("main")}


def test_missing_ref_commit_and_unreachable_repo_reported_together(world, tmp_path):
    spec = load_spec(world.spec(nodes=[
        {"repo": world.node_a.url, "ref": "v3"},
        {"repo": world.node_b.url, "commit": "deadbeef" * 5},
        {"repo": f"file://{tmp_path}/nowhere/repo.git"},
    ]))
    with pytest.raises(ResolveError) as info:
        resolve_spec(spec, GitCache(world.cfg.git_cache), offline=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert "ref 'v3' not found in" in msg and "did you mean 'v1', 'v2'?" in msg
    assert f"commit {'deadbeef' * 5} not found in {world.node_b.url}" in msg
    assert "custom_nodes[2] repo: cannot reach" in msg and "nowhere/repo.git" in msg


def test_offline_resolve_uses_cache_or_lists_everything_missing(world):
    with pytest.raises(OfflineMissingError) as info:
        resolve(world, offline=True)
    assert len(info.value.missing) == 4 and "no cached mirror" in str(info.value)
    cache = GitCache(world.cfg.git_cache)
    for repo in (world.comfy, world.node_a, world.node_b, world.node_c):
        cache.fetch(repo.url)
    spec, online = resolve(world)
    _, offline = resolve(world, offline=True)
    assert online == offline


def test_lock_check_fresh_stale_and_corrupt(world):
    spec, res = resolve(world)
    path = world.cfg.lock_path("demo")
    assert check(spec, read_lock(path)) == (False, "no lock yet")
    write_lock(path, build_lock(spec, res))
    assert check(spec, read_lock(path))[0] is True
    changed = load_spec(world.spec(python_packages=["tinybar"]))
    fresh, reason = check(changed, read_lock(path))
    assert not fresh and "spec changed" in reason
    path.write_text(path.read_text()[:-20])
    with pytest.raises(LockError, match="is corrupt .*run `version.py resolve demo`"):
        read_lock(path)
    path.write_text(json.dumps({"lock_version": 1, "comfy": {"commit": "x"}}))
    with pytest.raises(LockError, match="comfy.commit is not a 40-hex SHA"):
        read_lock(path)


def test_lock_has_no_absolute_paths_or_timestamps(world):
    spec, res = resolve(world)
    text = dumps(build_lock(spec, res)).decode()
    assert str(world.cfg.cache_root) not in text and str(world.tmp / "target") not in text
    assert json.loads(text)["spec_digest"] == spec.digest
    assert list(json.loads(text)) == sorted(json.loads(text))
