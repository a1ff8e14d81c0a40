"""Realize's extras: the worker's OnDemand node in custom_nodes/nvme_cache, and the object_info snapshot."""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import pytest

from builder.errors import BuildError, SpecError, TargetModifiedError
from builder.extras import NVME_NODE_SOURCE, tree_digest
from builder.realize import RealizeOptions, read_state, realize
from builder.spec import load_spec, validate
from rp_handler.cache.refs import load_object_info, snapshot_path

from .fixtures import Repo, git

FAKE_COMFY_DIR = Path(__file__).resolve().parents[1] / "fakes" / "comfyui"
FIXTURE_MODEL = "fixture_upscale_2x.safetensors"


def opts(world, python, **kw) -> RealizeOptions:
    return RealizeOptions(python=python, wheels_dir=world.wheels, **kw)


def kinds(result) -> list[str]:
    return [a.kind for a in result.plan.actions]


# --- the OnDemand node -----------------------------------------------------------
def test_nvme_node_installed_once_and_kept_by_content(world, venv_python):
    spec = load_spec(world.spec())
    first = realize(world.cfg, spec, opts(world, venv_python))
    node = first.home / "custom_nodes" / "nvme_cache"
    assert "nvme_node" in kinds(first)
    assert (node / "__init__.py").read_bytes() == (NVME_NODE_SOURCE / "__init__.py").read_bytes()
    assert read_state(first.home)["nvme_cache_node"] == tree_digest(NVME_NODE_SOURCE)
    assert not list(node.parent.glob("*.incomplete*"))

    (node / "__pycache__").mkdir(exist_ok=True)  # ComfyUI imported it: bytecode does not count as a change
    (node / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0" * 16)
    assert realize(world.cfg, spec, opts(world, venv_python)).plan.empty

    (node / "__init__.py").write_text("# an older copy we installed\n")  # ours, recorded: replaced
    state = read_state(first.home)
    state["nvme_cache_node"] = tree_digest(node)
    (first.home / ".version-state.json").write_text(json.dumps(state))
    (node.parent / "nvme_cache.1234abcd.incomplete.disabled").mkdir()  # an interrupted install
    again = realize(world.cfg, spec, opts(world, venv_python))
    assert kinds(again) == ["clean", "nvme_node"]
    assert tree_digest(node) == tree_digest(NVME_NODE_SOURCE)
    assert not list(node.parent.glob("*.incomplete*"))


def test_nvme_node_never_overwrites_a_foreign_folder_without_force(world, venv_python):
    spec = load_spec(world.spec())
    home = realize(world.cfg, spec, opts(world, venv_python)).home
    node = home / "custom_nodes" / "nvme_cache"
    (node / "__init__.py").write_text("# someone's own node of that name\n")  # not what we recorded
    with pytest.raises(TargetModifiedError, match="nvme_cache exists and was not installed by version.py"):
        realize(world.cfg, spec, opts(world, venv_python))
    assert "someone's own" in (node / "__init__.py").read_text()
    realize(world.cfg, spec, opts(world, venv_python, force=True))
    assert tree_digest(node) == tree_digest(NVME_NODE_SOURCE)
    (kept,) = node.parent.glob("nvme_cache.*.disabled")  # theirs, renamed aside (ComfyUI skips *.disabled)
    assert "someone's own" in (kept / "__init__.py").read_text()


def test_option_false_skips_and_removes_our_node(world, venv_python):
    home = realize(world.cfg, load_spec(world.spec()), opts(world, venv_python)).home
    assert (home / "custom_nodes" / "nvme_cache").is_dir()
    world.cfg.lock_path("demo").unlink()  # the spec changes: resolve again
    off = load_spec(world.spec(options={"pin_installed": [], "nvme_cache_node": False}))
    result = realize(world.cfg, off, opts(world, venv_python))
    assert "remove_nvme_node" in kinds(result) and "nvme_node" not in kinds(result)
    assert not (home / "custom_nodes" / "nvme_cache").exists()
    assert "nvme_cache_node" not in read_state(home)
    assert realize(world.cfg, off, opts(world, venv_python)).plan.empty


def test_spec_options_are_validated():
    base = {"schema_version": 2, "version_id": "v", "comfy": {"repo": "https://example.invalid/c.git", "ref": "m"}}
    with pytest.raises(SpecError) as info:
        validate({**base, "options": {"nvme_cache_node": "yes", "snapshot_object_info": 1}})
    assert "options.nvme_cache_node: must be true or false" in str(info.value)
    assert "options.snapshot_object_info: must be true or false" in str(info.value)
    clash = {**base, "custom_nodes": [{"repo": "https://example.invalid/nvme_cache.git", "ref": "main"}]}
    with pytest.raises(SpecError, match=r"custom_nodes\[0\].name: 'nvme_cache' is reserved"):
        validate(clash)
    spec = validate({**clash, "options": {"nvme_cache_node": False, "snapshot_object_info": True}})
    assert spec.options.nvme_cache_node is False and spec.options.snapshot_object_info is True
    assert validate(base).options.nvme_cache_node is True and validate(base).options.snapshot_object_info is False


# --- the object_info snapshot ----------------------------------------------------
@pytest.fixture(scope="session")
def server_comfy(repos) -> Repo:
    """A ComfyUI repo whose tree is the fake ComfyUI server, plus one model in its own models folder."""
    repo = Repo(repos["root"], "ComfyUI-server")
    shutil.copytree(FAKE_COMFY_DIR, repo.work, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "input", "output", "temp", "user"))
    model = repo.work / "models" / "upscale_models" / FIXTURE_MODEL
    model.parent.mkdir(parents=True)
    model.write_bytes(b"not really a model")
    git("add", "-A", "--force", cwd=repo.work)  # the fake's .gitignore lists /models/
    git("commit", "-q", "-m", "fake server", cwd=repo.work)
    repo.tag("v1")
    return repo.publish()


@pytest.mark.slow
def test_snapshot_boots_comfyui_once_and_is_skipped_when_nothing_changed(world, server_comfy):
    from .fixtures import write_spec

    python = Path(sys.executable)  # runs the fake; nothing is installed (no requirements in this spec)
    write_spec(world.versions, "srv", {"repo": server_comfy.url, "ref": "v1"}, [])
    spec = load_spec(world.versions / "srv.json")
    first = realize(world.cfg, spec, RealizeOptions(python=python, snapshot_object_info=True))
    home = first.home
    assert kinds(first)[-1] == "object_info"
    path = snapshot_path(home)
    assert path == home / ".runpod-comfy" / "object_info.json.gz"
    assert gzip.open(path).read(1) == b"{"
    info = load_object_info(path)
    assert len(info) > 400 and "SaveImage" in info
    assert FIXTURE_MODEL in json.dumps(info["UpscaleModelLoader"])  # served live by the booted ComfyUI
    assert read_state(home)["object_info"]["classes"] == len(info)
    assert not list(path.parent.glob("*.incomplete"))
    assert not (home / "output").exists() and not (home / "user").exists()  # its folders were temporary

    mtime = path.stat().st_mtime_ns
    assert realize(world.cfg, spec, RealizeOptions(python=python, snapshot_object_info=True)).plan.empty
    assert path.stat().st_mtime_ns == mtime
    assert realize(world.cfg, spec, RealizeOptions(python=python)).plan.empty  # off: the old one stays

    world.cfg.lock_path("srv").unlink()  # a node is added: ComfyUI may list more classes
    write_spec(world.versions, "srv", {"repo": server_comfy.url, "ref": "v1"},
               [{"repo": world.node_c.url, "ref": "v1"}], options={"pin_installed": [], "snapshot_object_info": True})
    spec2 = load_spec(world.versions / "srv.json")
    plan = realize(world.cfg, spec2, RealizeOptions(python=python, dry_run=True)).plan
    assert [a.kind for a in plan.actions] == ["fetch", "clone", "pip", "bytecode", "object_info"]
    path.unlink()
    realize(world.cfg, spec2, RealizeOptions(python=python))
    assert load_object_info(path) == info


def test_snapshot_failure_names_the_cause_and_is_retried(world, venv_python):
    spec = load_spec(world.spec())  # the plain fixture ComfyUI: main.py prints a line and exits
    with pytest.raises(BuildError, match="ComfyUI exited with code 0 before answering /system_stats: "
                                         "fake ComfyUI v0.2"):
        realize(world.cfg, spec, opts(world, venv_python, snapshot_object_info=True))
    home = world.tmp / "target" / "ComfyUI"
    assert not snapshot_path(home).exists() and "object_info" not in read_state(home)
    plan = realize(world.cfg, spec, opts(world, venv_python, snapshot_object_info=True, dry_run=True)).plan
    assert [a.kind for a in plan.actions] == ["object_info"]
    assert realize(world.cfg, spec, opts(world, venv_python)).plan.empty  # the rest was realized


def test_cli_flag_plans_the_snapshot(world, capsys):
    from builder.cli import main

    world.spec()
    assert main(["realize", "demo", "--dry-run", "--snapshot-object-info", "--json"], env=world.env) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan[-1].startswith("object_info → ") and plan[-1].endswith("save GET /object_info")
    assert any(line.startswith("nvme_node nvme_cache → ") for line in plan)
    assert main(["realize", "demo", "--dry-run", "--json"], env=world.env) == 0
    assert not any("object_info" in line for line in json.loads(capsys.readouterr().out)["plan"])
