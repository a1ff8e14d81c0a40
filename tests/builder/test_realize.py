import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from builder.errors import InstallError, LockError, OfflineMissingError, TargetModifiedError
from builder.realize import RealizeOptions, realize, read_state
from builder.spec import load_spec

from .fixtures import git, make_venv, node_repo, site_versions

pytestmark = pytest.mark.slow  # realize into real venvs (git clones, pip)

REPO_ROOT = Path(__file__).resolve().parents[2]


def opts(world, python, **kw):
    return RealizeOptions(python=python, wheels_dir=world.wheels, **kw)


def tree_snapshot(home: Path) -> dict[str, int]:
    """mtime_ns of every file and dir under home (minus .git internals we never need)."""
    out = {}
    for p in sorted(home.rglob("*")):
        out[str(p.relative_to(home))] = p.stat().st_mtime_ns
    return out


def test_realize_then_second_realize_does_nothing(world, venv_python):
    spec = load_spec(world.spec())
    first = realize(world.cfg, spec, opts(world, venv_python))
    home = first.home
    assert home == world.tmp / "target" / "ComfyUI"
    kinds = [a.kind for a in first.plan.actions]
    assert kinds.count("clone") == 4 and "pip" in kinds
    assert (home / "main.py").read_text() == "print('fake ComfyUI v0.2')\n"
    assert git("rev-parse", "HEAD", cwd=home / "custom_nodes" / "node-a") == world.node_a.sha("v1")
    assert git("rev-parse", "HEAD", cwd=home / "custom_nodes" / "node-c") == world.node_c.sha("v2")
    assert git("status", "--porcelain", "--untracked-files=no", cwd=home / "custom_nodes" / "node-b") == ""
    versions = site_versions(venv_python)
    assert versions == {"tinyfoo": "1.1", "tinydep": "1.0", "tinybar": "2.0", "tinyextra": "0.3"}
    lock = json.loads(world.cfg.lock_path("demo").read_text())
    assert lock["pip"]["installed"] == {"tinybar": "2.0", "tinydep": "1.0", "tinyextra": "0.3", "tinyfoo": "1.1"}
    yaml_text = (home / "extra_model_paths.yaml").read_text()
    group = yaml.safe_load(yaml_text)["runpod_comfy_models"]
    assert group["base_path"] == str(world.cfg.models_dir) and group["checkpoints"] == "checkpoints"

    before = tree_snapshot(home)
    site = venv_python.parent.parent / "lib"
    site_before = tree_snapshot(site)
    lock_before = world.cfg.lock_path("demo").stat().st_mtime_ns
    second = realize(world.cfg, spec, opts(world, venv_python))
    assert second.plan.empty and second.done == []
    assert tree_snapshot(home) == before
    assert tree_snapshot(site) == site_before
    assert world.cfg.lock_path("demo").stat().st_mtime_ns == lock_before


def test_dry_run_prints_plan_and_changes_nothing(world, venv_python):
    spec = load_spec(world.spec())
    result = realize(world.cfg, spec, opts(world, venv_python, dry_run=True))
    lines = result.plan.lines()
    assert any(ln.startswith("clone ComfyUI ") for ln in lines)
    assert any(ln.startswith("pip") for ln in lines)
    assert not result.home.exists()
    assert not world.cfg.lock_path("demo").exists()
    assert site_versions(venv_python) == {}


def test_update_to_new_ref_and_local_modifications_refused_then_forced(world, venv_python):
    realize(world.cfg, load_spec(world.spec()), opts(world, venv_python))
    node = world.tmp / "target" / "ComfyUI" / "custom_nodes" / "node-a"
    (node / "__init__.py").write_text("# my local fix\n")
    (node / "user-notes.txt").write_text("untracked, kept\n")
    spec2 = load_spec(world.spec(nodes=[{"repo": world.node_a.url, "ref": "v2"},
                                        {"repo": world.node_b.url, "ref": "main"},
                                        {"repo": world.node_c.url, "commit": world.node_c.sha("v2")}]))
    with pytest.raises(LockError, match="stale .*version.py resolve demo"):
        realize(world.cfg, spec2, opts(world, venv_python))
    world.cfg.lock_path("demo").unlink()
    with pytest.raises(TargetModifiedError, match=f"{node} has local modifications: .*--force"):
        realize(world.cfg, spec2, opts(world, venv_python))
    assert (node / "__init__.py").read_text() == "# my local fix\n"
    assert git("rev-parse", "HEAD", cwd=node) == world.node_a.sha("v1")
    result = realize(world.cfg, spec2, opts(world, venv_python, force=True))
    assert [a.kind for a in result.plan.actions if a.kind in ("clone", "update")] == ["update"]
    assert git("rev-parse", "HEAD", cwd=node) == world.node_a.sha("v2")
    assert "saved by version.py realize --force" in git("stash", "list", cwd=node)
    assert (node / "user-notes.txt").read_text() == "untracked, kept\n"


def test_offline_realize_from_cache_and_missing_listed(world, venv_python, tmp_path):
    spec = load_spec(world.spec())
    realize(world.cfg, spec, opts(world, venv_python))
    other = world.with_env(COMFY_HOME=str(tmp_path / "t2" / "ComfyUI"), COMFY_OFFLINE="1")
    python2 = make_venv(tmp_path / "venv2")
    result = realize(other.cfg, spec, opts(other, python2))
    assert (result.home / "custom_nodes" / "node-c" / "__init__.py").exists()
    empty = world.with_env(COMFY_CACHE_ROOT=str(tmp_path / "empty-cache"), COMFY_HOME=str(tmp_path / "t3"))
    with pytest.raises(OfflineMissingError) as info:
        realize(empty.cfg, spec, opts(empty, python2, offline=True))
    assert len(info.value.missing) == 4 and "node-b" in str(info.value)
    assert not (tmp_path / "t3").exists()


def test_locks_are_byte_identical_across_targets(world, venv_python, tmp_path):
    spec_path = world.spec()
    a = world.with_env(COMFY_CACHE_ROOT=str(tmp_path / "cacheA"), COMFY_HOME=str(tmp_path / "A" / "ComfyUI"))
    b = world.with_env(COMFY_CACHE_ROOT=str(tmp_path / "cacheB"), COMFY_HOME=str(tmp_path / "elsewhere" / "B"))
    ra = realize(a.cfg, load_spec(spec_path), opts(a, venv_python))
    rb = realize(b.cfg, load_spec(spec_path), opts(b, make_venv(tmp_path / "venvB")))
    assert a.cfg.lock_path("demo").read_bytes() == b.cfg.lock_path("demo").read_bytes()
    for sub in ("", "custom_nodes/node-a", "custom_nodes/node-b", "custom_nodes/node-c"):
        assert git("rev-parse", "HEAD", cwd=ra.home / sub) == git("rev-parse", "HEAD", cwd=rb.home / sub)
        assert git("ls-files", "-s", cwd=ra.home / sub) == git("ls-files", "-s", cwd=rb.home / sub)


def test_leftover_incomplete_checkout_is_cleaned_and_completed(world, venv_python):
    spec = load_spec(world.spec())
    home = world.tmp / "target" / "ComfyUI"
    realize(world.cfg, spec, opts(world, venv_python))
    # Simulate a kill in the middle of cloning node-c: half a checkout beside the target, none at it.
    import shutil
    shutil.rmtree(home / "custom_nodes" / "node-c")
    half = home / "custom_nodes" / "node-c.1a2b3c4d.incomplete.disabled"
    (half / ".git").mkdir(parents=True)
    (half / "__init__.py").write_text("# half")
    site = venv_python.parent.parent / "lib"
    site_before = tree_snapshot(site)
    result = realize(world.cfg, spec, opts(world, venv_python))
    assert [a.kind for a in result.plan.actions] == ["clean", "clone", "pip", "bytecode"]
    assert tree_snapshot(site) == site_before  # requirements unchanged: no install ran
    assert not half.exists()
    assert git("rev-parse", "HEAD", cwd=home / "custom_nodes" / "node-c") == world.node_c.sha("v2")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["kill", "ctrl-c", "term"])
def test_killed_realize_completes_on_rerun(world, venv_python, tmp_path, sig):
    slow = node_repo(tmp_path / "slowrepo", "slow-node",
                     install_py="import os, pathlib, time\n"
                                "p = pathlib.Path('runs.txt'); p.write_text(p.read_text() + 'x' if p.exists() else 'x')\n"
                                "time.sleep(float(os.environ.get('SLOW_INSTALL', '0')))\n")
    world.spec(nodes=[{"repo": world.node_a.url, "ref": "v1"},
                      {"repo": slow.url, "ref": "v1", "run_install_py": True}])
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "version.py"), "realize", "demo", "--python",
           str(venv_python), "--wheels-dir", str(world.wheels)]
    node = world.tmp / "target" / "ComfyUI" / "custom_nodes" / "slow-node"
    proc = subprocess.Popen(cmd, env={**world.env, "SLOW_INSTALL": "60"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    runs = node / "runs.txt"
    while not (runs.exists() and runs.read_text() == "x"):  # created empty first: wait for its byte
        assert proc.poll() is None and time.monotonic() < deadline, "realize ended before install.py ran"
        time.sleep(0.05)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, sig)
        proc.wait()
    else:  # Ctrl-C / SIGTERM reach realize: it stops its child and says how to finish
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 1
    if sig != signal.SIGKILL:
        assert proc.stderr.read().strip().splitlines()[-1] == (
            "error: interrupted; run the same command again to complete")
    assert "slow-node" not in read_state(world.tmp / "target" / "ComfyUI").get("install_py", {})
    done = subprocess.run(cmd, env=world.env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "install_py slow-node" in done.stdout and "clone" not in done.stdout
    assert (node / "runs.txt").read_text() == "xx"
    again = subprocess.run(cmd, env=world.env, capture_output=True, text=True)
    assert "nothing to do" in again.stdout


def test_interrupted_in_place_update_is_finished_not_refused(world, venv_python):
    spec = load_spec(world.spec())
    realize(world.cfg, spec, opts(world, venv_python))
    home = world.tmp / "target" / "ComfyUI"
    node = home / "custom_nodes" / "node-a"
    # What a kill during `git checkout` leaves: half-updated files and our pending marker.
    state = read_state(home)
    state["pending"] = [str(node)]
    (home / ".version-state.json").write_text(json.dumps(state))
    (node / "__init__.py").write_text("half written")
    result = realize(world.cfg, spec, opts(world, venv_python))
    assert [a.kind for a in result.plan.actions][:1] == ["update"]
    assert git("status", "--porcelain", "--untracked-files=no", cwd=node) == ""  # __pycache__/ is untracked
    assert read_state(home)["pending"] == []


def test_failing_pip_install_is_one_line_and_retried_next_time(world, venv_python):
    world.spec(python_packages=["tinymissing==9.9"])
    spec = load_spec(world.versions / "demo.json")
    with pytest.raises(InstallError) as info:
        realize(world.cfg, spec, opts(world, venv_python))
    msg = str(info.value)
    assert "\n" not in msg and "tinymissing" in msg and f"add the missing wheels to {world.wheels}" in msg
    assert "pip_digest" not in read_state(world.tmp / "target" / "ComfyUI")
    plan = realize(world.cfg, spec, opts(world, venv_python, dry_run=True)).plan
    assert [a.kind for a in plan.actions] == ["pip", "extra_paths", "bytecode"]


def test_removed_node_is_deleted_and_pip_uses_lock_pins(world, venv_python):
    realize(world.cfg, load_spec(world.spec()), opts(world, venv_python))
    world.cfg.lock_path("demo").unlink()
    spec = load_spec(world.spec(nodes=[{"repo": world.node_a.url, "ref": "v1"}]))
    result = realize(world.cfg, spec, opts(world, venv_python))
    assert "remove_node node-b" in " ".join(result.done)
    assert not (result.home / "custom_nodes" / "node-b").exists()
    assert set(read_state(result.home)["nodes"]) == {"node-a"}


def test_models_inside_comfy_home_need_no_extra_paths_and_skip_models(world, venv_python):
    home = world.tmp / "target" / "ComfyUI"
    w = world.with_env(MODELS_DIR=str(home / "models"))
    spec = load_spec(world.spec(models=[{"source": "https://example.invalid/m.safetensors",
                                         "target_subdir": "checkpoints"}]))
    result = realize(w.cfg, spec, opts(w, venv_python, skip_models=True))
    assert "models" not in [a.kind for a in result.plan.actions]
    assert not (home / "extra_model_paths.yaml").exists()


def test_models_through_the_seam_are_locked_and_idempotent(world, venv_python, tmp_path):
    import hashlib
    blob = tmp_path / "src" / "tiny.safetensors"
    blob.parent.mkdir()
    blob.write_bytes(b"model-bytes" * 100)
    sha = hashlib.sha256(blob.read_bytes()).hexdigest()
    spec = load_spec(world.spec(models=[{"source": str(blob), "target_subdir": "checkpoints",
                                         "checksum": f"sha256:{sha}"}]))
    realize(world.cfg, spec, opts(world, venv_python))
    assert (world.cfg.models_dir / "checkpoints" / "tiny.safetensors").read_bytes() == blob.read_bytes()
    rec = json.loads(world.cfg.lock_path("demo").read_text())["models"][0]
    assert (rec["sha256"], rec["size"], rec["target"]) == (sha, 1100, "checkpoints/tiny.safetensors")
    assert realize(world.cfg, spec, opts(world, venv_python)).plan.empty


def test_lock_without_recorded_versions_only_records_them(world, venv_python):
    spec = load_spec(world.spec())
    realize(world.cfg, spec, opts(world, venv_python))
    path = world.cfg.lock_path("demo")
    recorded = json.loads(path.read_text())["pip"]["installed"]
    lock = json.loads(path.read_text())
    lock["pip"]["installed"] = None  # as `resolve` writes it
    path.write_text(json.dumps(lock))
    site = venv_python.parent.parent / "lib"
    before = tree_snapshot(site)
    result = realize(world.cfg, spec, opts(world, venv_python))
    assert [a.kind for a in result.plan.actions] == ["record_pip"]
    assert tree_snapshot(site) == before
    assert json.loads(path.read_text())["pip"]["installed"] == recorded
    assert realize(world.cfg, spec, opts(world, venv_python)).plan.empty


def test_installed_packages_are_pinned_not_replaced(world, venv_python):
    from builder.pip_install import InstallRequest, find_installer, install
    install(find_installer(), InstallRequest(python=venv_python, requirement_files=(), packages=("tinyfoo==1.0",),
                                             constraints=(), wheels_dir=world.wheels))
    spec = load_spec(world.spec(nodes=[], python_packages=["tinyfoo>=1.1"], options={"pin_installed": ["tinyfoo"]}))
    with pytest.raises(InstallError, match=r"tinyfoo stay at their installed versions \(options.pin_installed\)"):
        realize(world.cfg, spec, opts(world, venv_python))
    assert site_versions(venv_python)["tinyfoo"] == "1.0"
    world.cfg.lock_path("demo").unlink()
    spec = load_spec(world.spec(nodes=[], python_packages=["tinyfoo>=1.1"], options={"pin_installed": []}))
    realize(world.cfg, spec, opts(world, venv_python))
    assert site_versions(venv_python)["tinyfoo"] == "1.1"


def test_pip_fallback_installs_the_same_versions(world, venv_python):
    spec = load_spec(world.spec())
    realize(world.cfg, spec, opts(world, venv_python, installer="pip"))
    assert site_versions(venv_python) == {"tinyfoo": "1.1", "tinydep": "1.0", "tinybar": "2.0", "tinyextra": "0.3"}


def test_users_own_extra_model_paths_is_not_overwritten(world, venv_python):
    spec = load_spec(world.spec(nodes=[]))
    home = world.tmp / "target" / "ComfyUI"
    realize(world.cfg, spec, opts(world, venv_python))
    mine = "my_models:\n  base_path: /data\n  checkpoints: ckpt\n"
    (home / "extra_model_paths.yaml").write_text(mine)
    with pytest.raises(TargetModifiedError, match="extra_model_paths.yaml exists and was not written by version.py"):
        realize(world.cfg, spec, opts(world, venv_python))
    assert (home / "extra_model_paths.yaml").read_text() == mine
    realize(world.cfg, spec, opts(world, venv_python, force=True))
    assert "runpod_comfy_models:" in (home / "extra_model_paths.yaml").read_text()


def test_our_extra_model_paths_is_removed_when_models_move_inside(world, venv_python):
    spec = load_spec(world.spec(nodes=[]))
    home = world.tmp / "target" / "ComfyUI"
    realize(world.cfg, spec, opts(world, venv_python))
    assert (home / "extra_model_paths.yaml").exists()
    inside = world.with_env(MODELS_DIR=str(home / "models"))
    realize(inside.cfg, spec, opts(inside, venv_python))
    assert not (home / "extra_model_paths.yaml").exists()
    assert realize(inside.cfg, spec, opts(inside, venv_python)).plan.empty


def test_locked_commit_gone_from_the_remote_is_one_line(world, venv_python):
    from builder.errors import BuildError
    from builder.lock import read_lock, write_lock
    spec = load_spec(world.spec())
    realize(world.cfg, spec, opts(world, venv_python, dry_run=True))  # resolves, writes nothing
    from builder.realize import ensure_lock
    lock, _ = ensure_lock(world.cfg, spec, offline=False, write=True)
    lock["custom_nodes"][0]["commit"] = "f" * 40  # e.g. force-pushed away upstream
    write_lock(world.cfg.lock_path("demo"), lock)
    with pytest.raises(BuildError) as info:
        realize(world.cfg, spec, opts(world, venv_python))
    assert str(info.value) == (f"node-a: commit {'f' * 40} is no longer in {world.node_a.url} "
                               "(run `version.py resolve demo` to pick a new one)")
    assert read_lock(world.cfg.lock_path("demo"))["custom_nodes"][0]["commit"] == "f" * 40
