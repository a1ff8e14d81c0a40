import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder.cli import _dispatch, build_parser, main, split_repo_ref
from builder.errors import BuildError

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "version.py"


def run(world, *argv):
    return subprocess.run([sys.executable, str(SCRIPT), *argv], env=world.env, capture_output=True, text=True)


def test_every_command_has_help():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) >= {"create", "validate", "resolve", "realize", "clone", "delete", "lock", "verify-models"}
    for name in ("create", "validate", "resolve", "realize", "clone", "delete", "lock", "verify-models"):
        with pytest.raises(SystemExit) as info:
            main([name, "--help"], env={})
        assert info.value.code == 0


def test_usage_error_exits_2(world):
    proc = run(world, "realize")
    assert proc.returncode == 2 and "the following arguments are required: id" in proc.stderr
    assert run(world, "frobnicate").returncode == 2


def test_validate_reports_problems_exit_1_and_json(world, capsys):
    path = world.spec()
    data = json.loads(path.read_text())
    data["custom_nodes"][0]["repo"] = "not-a-url"
    data["optoins"] = {}
    path.write_text(json.dumps(data))
    proc = run(world, "validate", "demo")
    assert proc.returncode == 1
    assert "custom_nodes[0].repo: not a git URL: 'not-a-url'" in proc.stderr
    assert "optoins: unknown key (did you mean 'options'?)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert main(["validate", "demo", "--json"], env=world.env) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and len(out["problems"]) == 2


def test_resolve_lock_check_and_realize_via_cli(world, venv_python, capsys):
    world.spec()
    assert main(["lock", "--check", "demo"], env=world.env) == 1
    assert "stale" in capsys.readouterr().out
    assert main(["resolve", "demo", "--json"], env=world.env) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["custom_nodes"]["node-a"] == world.node_a.sha("v1")
    assert main(["lock", "--check", "demo", "--json"], env=world.env) == 0
    assert json.loads(capsys.readouterr().out)["fresh"] is True
    argv = ["realize", "demo", "--python", str(venv_python), "--wheels-dir", str(world.wheels)]
    assert main(argv + ["--dry-run"], env=world.env) == 0
    assert "clone ComfyUI" in capsys.readouterr().out
    assert main(argv, env=world.env) == 0
    assert "realized demo into" in capsys.readouterr().out
    assert main(argv + ["--json"], env=world.env) == 0
    assert json.loads(capsys.readouterr().out)["done"] == []


def test_stale_and_corrupt_lock_are_one_line_errors(world):
    world.spec()
    assert run(world, "resolve", "demo").returncode == 0
    world.spec(python_packages=["tinybar"])
    proc = run(world, "realize", "demo", "--dry-run")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: lock ")
    assert "is stale" in proc.stderr and "run `version.py resolve demo`" in proc.stderr
    world.cfg.lock_path("demo").write_text("{not json")
    proc = run(world, "lock", "--check", "demo")
    assert proc.returncode == 1 and "is corrupt" in proc.stdout
    assert run(world, "resolve", "demo").returncode == 0  # resolve replaces a corrupt lock
    assert run(world, "lock", "--check", "demo").returncode == 0


def test_bad_ref_error_is_one_line(world):
    world.spec(nodes=[{"repo": world.node_a.url, "ref": "no-such-branch"}])
    proc = run(world, "resolve", "demo")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: custom_nodes[0] node-a: ref 'no-such-branch' not found")
    assert "Traceback" not in proc.stderr


def test_create_clone_delete(world, tmp_path, venv_python, capsys):
    models_root = tmp_path / "models-root"
    (models_root / "loras").mkdir(parents=True)
    (models_root / "loras" / "style.safetensors").write_bytes(b"lora")
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(f"- {world.node_a.url}@v2\n- repo: {world.node_b.url}\n  ref: dev\n")
    models = json.dumps([{"source": "https://example.com/style.safetensors", "target_subdir": "loras"}])
    argv = ["create", "mine", "--repo", f"{world.comfy.url}@{world.comfy.sha('v0.1')}", "--nodes", str(nodes),
            "--models", models, "--models-root", str(models_root), "--auto-checksum"]
    assert main(argv, env=world.env) == 0
    spec = json.loads((world.versions / "mine.json").read_text())
    assert spec["comfy"] == {"repo": world.comfy.url, "commit": world.comfy.sha("v0.1")}
    assert spec["custom_nodes"][0] == {"repo": world.node_a.url, "ref": "v2"}
    assert spec["models"][0]["checksum"] == "sha256:" + hashlib.sha256(b"lora").hexdigest()
    assert main(argv, env=world.env) == 1  # exists: refuses without --force
    assert main(["clone", "mine", "copy"], env=world.env) == 0
    assert json.loads((world.versions / "copy.json").read_text())["version_id"] == "copy"
    capsys.readouterr()
    target = tmp_path / "copy-home"
    assert main(["realize", "copy", "--target", str(target), "--skip-models", "--python", str(venv_python),
                 "--wheels-dir", str(world.wheels)], env=world.env) == 0
    assert (target / "custom_nodes" / "node-a").is_dir()
    (target / "main.py").write_text("edited")
    assert main(["delete", "copy", "--target", str(target)], env=world.env) == 1
    assert target.exists()
    assert main(["delete", "copy", "--target", str(target), "--force", "--remove-spec"], env=world.env) == 0
    assert not target.exists() and not (world.versions / "copy.json").exists()
    assert not world.cfg.lock_path("copy").exists()
    stranger = tmp_path / "not-ours"
    stranger.mkdir()
    assert main(["delete", "mine", "--target", str(stranger)], env=world.env) == 1
    assert stranger.exists()


def test_dispatch_missing_module_is_one_line_and_help_still_works(capsys):
    with pytest.raises(BuildError) as info:
        _dispatch("no_such_pkg.localrun", "run_ui", ["demo"], "run-ui", None)
    assert str(info.value) == "run-ui is not available: module no_such_pkg.localrun is missing from this checkout"
    assert _dispatch("no_such_pkg.localrun", "run_ui", ["--help"], "run-ui", None) == 0
    assert "no_such_pkg.localrun.run_ui" in capsys.readouterr().out


def test_dispatch_passes_argv_and_env(tmp_path, monkeypatch):
    (tmp_path / "fake_localrun.py").write_text(
        "CALLS = []\n"
        "def run_ui(argv, env=None):\n"
        "    CALLS.append((argv, env))\n"
        "    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _dispatch("fake_localrun", "run_ui", ["demo", "--port", "9"], "run-ui", {"A": "1"}) == 3
    import fake_localrun
    assert fake_localrun.CALLS == [(["demo", "--port", "9"], {"A": "1"})]


@pytest.mark.parametrize("value,expected", [
    ("https://github.com/x/ComfyUI@master", {"repo": "https://github.com/x/ComfyUI", "ref": "master"}),
    ("git@github.com:x/ComfyUI.git", {"repo": "git@github.com:x/ComfyUI.git"}),
    ("git@github.com:x/ComfyUI.git@v1", {"repo": "git@github.com:x/ComfyUI.git", "ref": "v1"}),
    ("https://h/r@" + "a" * 40, {"repo": "https://h/r", "commit": "a" * 40}),
])
def test_repo_at_ref_parsing(value, expected):
    assert split_repo_ref(value) == expected


def test_version_py_lists_the_worker_commands(world):
    proc = run(world, "--help")
    assert proc.returncode == 0
    for name in ("create", "realize", "run-ui", "run-handler", "verify-models"):
        assert name in proc.stdout


def test_run_handler_arguments_all_reach_the_runtime(world):
    proc = run(world, "-q", "run-handler", "--help")
    assert proc.returncode == 0 and "run-handler" in proc.stdout  # the runtime's help, or ours when it is absent
