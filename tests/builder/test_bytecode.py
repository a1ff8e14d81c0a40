"""Realize compiles ComfyUI, its nodes and the target's site-packages to .pyc the target accepts."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
from pathlib import Path

import pytest

from builder import bytecode
from builder.cli import main as cli_main
from builder.pip_install import find_installer
from builder.plan import Checkout, Flags, Observed, make_plan
from builder.realize import RealizeOptions, realize, read_state
from builder.spec import load_spec, validate

from .fixtures import Repo, make_wheel, node_repo, write_spec

pytestmark = pytest.mark.slow  # realize and compile whole trees

COMFY_FILES = {
    "main.py": "import comfy.model\nimport nodes\nprint('fake ComfyUI', comfy.model.VERSION)\n",
    "nodes.py": "NODE_CLASS_MAPPINGS = {}\n",
    "comfy/__init__.py": "",
    "comfy/model.py": "VERSION = 1\n",
    "custom_nodes/websocket_image_save.py": "NODE_CLASS_MAPPINGS = {}\n",
    "requirements.txt": "tinyfoo>=1.0\n",
}


@pytest.fixture(scope="module")
def bc_repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("bc-repos")
    comfy = Repo(root, "ComfyUI")
    comfy.commit(COMFY_FILES, "initial")
    comfy.publish()
    good = node_repo(root, "node-good", requirements="tinybar==2.0\n")
    bad = Repo(root, "node-bad")
    bad.commit({"__init__.py": "NODE_CLASS_MAPPINGS = {}\n", "legacy/py2_only.py": "print 'python 2'\n"}, "v1")
    bad.publish()
    return {"comfy": comfy, "good": good, "bad": bad}


def make_spec(world, bc_repos, nodes=("good", "bad"), vid="bc", **extra) -> Path:
    return write_spec(world.versions, vid, {"repo": bc_repos["comfy"].url, "ref": "main"},
                      [{"repo": bc_repos[n].url, "ref": "main" if n == "bad" else "v1"} for n in nodes], **extra)


def opts(world, python, **kw) -> RealizeOptions:
    return RealizeOptions(python=python, wheels_dir=world.wheels, **kw)


def site_packages(python: Path) -> Path:
    return bytecode.site_dirs(python)[0]


def sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if ".git" not in p.parts)


def pyc_mtimes(roots: list[Path]) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for r in roots for p in r.rglob("*.pyc")}


def import_verbose(python: Path, code: str, cwd: Path, extra_path: list[Path]) -> str:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(map(str, extra_path))}
    proc = subprocess.run([str(python), "-v", "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True)
    return proc.stderr


IMPORTS = "import comfy.model, nodes, tinyfoo, tinydep, tinybar; import importlib; importlib.import_module('node-good')"


def test_realize_compiles_every_source_and_the_target_uses_them(world, bc_repos, venv_python, caplog):
    caplog.set_level(logging.WARNING, logger="builder.bytecode")
    result = realize(world.cfg, load_spec(make_spec(world, bc_repos)), opts(world, venv_python))
    home, site = result.home, site_packages(venv_python)
    assert any(d.startswith("bytecode: compile ComfyUI, custom_nodes/node-good, custom_nodes/node-bad, custom_nodes/nvme_cache, "
                            "site-packages to .pyc (checked-hash)") for d in result.done)

    broken = home / "custom_nodes" / "node-bad" / "legacy" / "py2_only.py"
    files = [p for p in sources(home) + sources(site) if p != broken]
    assert len(files) >= 10 and any("tinyfoo" in str(p) for p in files)
    missing = [p for p in files if not Path(importlib.util.cache_from_source(str(p))).is_file()]
    assert missing == []
    # checked-hash: flags word 0b11 in every header, the same bytes whatever the mtime
    for p in files:
        header = Path(importlib.util.cache_from_source(str(p))).read_bytes()[:8]
        assert header[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(header[4:8], "little") == 0b11, p
    # the file that is not Python 3 is reported, not fatal
    assert not Path(importlib.util.cache_from_source(str(broken))).exists()
    assert any("could not be compiled" in r.getMessage() and "py2_only.py" in r.getMessage() for r in caplog.records)

    before = pyc_mtimes([home, site])
    out = import_verbose(venv_python, IMPORTS, home, [home / "custom_nodes"])
    for src in (home / "comfy" / "model.py", home / "nodes.py", home / "custom_nodes" / "node-good" / "__init__.py",
                site / "tinyfoo" / "__init__.py", site / "tinydep" / "__init__.py", site / "tinybar" / "__init__.py"):
        assert f"# code object from '{importlib.util.cache_from_source(str(src))}'" in out, src
    assert not re.search(r"# code object from /.*\.py$", out, re.M)  # nothing compiled from source
    assert pyc_mtimes([home, site]) == before  # the start wrote no .pyc


def test_pyc_survive_moved_mtimes_and_edited_sources_still_win(world, bc_repos, venv_python):
    home = realize(world.cfg, load_spec(make_spec(world, bc_repos, nodes=("good",))), opts(world, venv_python)).home
    model = home / "comfy" / "model.py"
    for p in sources(home):  # as a copy without -p, or an image layer with rewritten timestamps, does
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 3_600_000_000_000))
    out = import_verbose(venv_python, "import comfy.model; print(comfy.model.VERSION)", home, [])
    assert f"# code object from '{importlib.util.cache_from_source(str(model))}'" in out

    model.write_text("VERSION = 2\n")  # a user's edit: the stale .pyc must not be used
    proc = subprocess.run([str(venv_python), "-c", "import comfy.model; print(comfy.model.VERSION)"], cwd=home,
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "2"


def test_second_realize_plans_no_compile_and_changes_plan_only_what_changed(world, bc_repos, venv_python):
    spec = load_spec(make_spec(world, bc_repos, nodes=("good",)))
    dry = realize(world.cfg, spec, opts(world, venv_python, dry_run=True))
    assert "bytecode: compile ComfyUI, custom_nodes/node-good, custom_nodes/nvme_cache, site-packages to .pyc (checked-hash)" in dry.plan.lines()
    assert not dry.home.exists()

    first = realize(world.cfg, spec, opts(world, venv_python))
    state = read_state(first.home)["bytecode"]
    assert state["comfy"] == bc_repos["comfy"].sha() and state["nodes"] == {"node-good": bc_repos["good"].sha("v1")}
    assert state["mode"] == "checked-hash" and state["python"] == str(venv_python)
    assert state["packages"] == bytecode.packages_digest(state["site_dirs"])

    site = site_packages(venv_python)
    before = pyc_mtimes([first.home, site])
    second = realize(world.cfg, spec, opts(world, venv_python))
    assert second.plan.empty and second.done == []
    assert pyc_mtimes([first.home, site]) == before

    # a package installed behind realize's back: only site-packages is compiled again
    extra = make_wheel(world.tmp / "more-wheels", "tinylate", "1.0")
    subprocess.run([*find_installer("uv").argv, "--python", str(venv_python), "--no-index", str(extra)],
                   check=True, capture_output=True)
    third = realize(world.cfg, spec, opts(world, venv_python, dry_run=True))
    assert third.plan.lines() == ["bytecode: compile site-packages to .pyc (checked-hash)"]
    realize(world.cfg, spec, opts(world, venv_python))
    assert Path(importlib.util.cache_from_source(str(site / "tinylate" / "__init__.py"))).is_file()
    assert realize(world.cfg, spec, opts(world, venv_python)).plan.empty


def test_timestamp_pyc_left_by_an_installer_are_replaced(world, bc_repos, venv_python):
    spec = load_spec(make_spec(world, bc_repos, nodes=("good",)))
    home = realize(world.cfg, spec, opts(world, venv_python, bytecode=False)).home
    site = site_packages(venv_python)
    # what pip, `uv --compile-bytecode` or a first start leave behind: timestamp .pyc
    subprocess.run([str(venv_python), "-m", "compileall", "-q", "--invalidation-mode", "timestamp", str(site),
                    str(home)], check=True)
    pyc = Path(importlib.util.cache_from_source(str(site / "tinyfoo" / "__init__.py")))
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0
    realize(world.cfg, spec, opts(world, venv_python))
    for src in (site / "tinyfoo" / "__init__.py", home / "comfy" / "model.py"):
        header = Path(importlib.util.cache_from_source(str(src))).read_bytes()
        assert int.from_bytes(header[4:8], "little") == 0b11, src


def test_no_bytecode_compiles_nothing(world, bc_repos, venv_python, capsys):
    make_spec(world, bc_repos, nodes=("good",))
    env_args = ["--python", str(venv_python), "--wheels-dir", str(world.wheels), "--no-bytecode"]
    assert cli_main(["realize", "bc", *env_args, "--dry-run"], env=world.env) == 0
    out = capsys.readouterr().out
    assert "clone ComfyUI" in out and "bytecode:" not in out
    assert cli_main(["realize", "bc", *env_args], env=world.env) == 0
    home = world.tmp / "target" / "ComfyUI"
    assert list(home.rglob("*.pyc")) == [] and list(site_packages(venv_python).rglob("*.pyc")) == []
    assert "bytecode" not in read_state(home)


def test_pyc_mode_for_an_image_from_the_flag_or_pyc_mode(world, bc_repos, venv_python, capsys):
    make_spec(world, bc_repos, nodes=("good",))
    env_args = ["--python", str(venv_python), "--wheels-dir", str(world.wheels), "--dry-run"]
    assert cli_main(["realize", "bc", *env_args, "--pyc-mode", "unchecked-hash"], env=world.env) == 0
    assert "site-packages to .pyc (unchecked-hash)" in capsys.readouterr().out
    assert cli_main(["realize", "bc", *env_args], env={**world.env, "PYC_MODE": "unchecked-hash"}) == 0
    assert "site-packages to .pyc (unchecked-hash)" in capsys.readouterr().out
    assert cli_main(["realize", "bc", *env_args], env=world.env) == 0
    assert "site-packages to .pyc (checked-hash)" in capsys.readouterr().out


def test_comfy_scope_skips_node_folders_git_and_an_inner_venv(tmp_path):
    home = tmp_path / "ComfyUI"
    rx = re.compile(bytecode.comfy_exclude(home, [home / "venv" / "lib" / "python3.11" / "site-packages"]))
    assert rx.search(f"{home}/custom_nodes/node-a/__init__.py")
    assert rx.search(f"{home}/.git/hooks/x.py")
    assert rx.search(f"{home}/venv/lib/python3.11/site-packages/torch/__init__.py")
    assert not rx.search(f"{home}/custom_nodes/websocket_image_save.py")
    assert not rx.search(f"{home}/comfy/model_management.py")
    cmd = bytecode.compile_command(Path("/py"), [home], None)
    assert cmd[:4] == ["/py", "-I", "-m", "compileall"] and cmd[cmd.index("-j") + 1] == "0"
    assert cmd[cmd.index("--invalidation-mode") + 1] == "checked-hash" and "-q" in cmd and "-f" in cmd


A, B = "a" * 40, "b" * 40


def test_plan_compiles_only_scopes_whose_inputs_changed():
    spec = validate({"schema_version": 2, "version_id": "p", "comfy": {"repo": "https://h/ComfyUI", "commit": A},
                     "custom_nodes": [{"repo": "https://h/node", "commit": B}]})
    lock = {"comfy": {"repo": "https://h/ComfyUI", "commit": A}, "models": [], "pip": {"installed": {}},
            "custom_nodes": [{"name": "node", "repo": "https://h/node", "commit": B, "run_install_py": False}]}
    home = Path("/nowhere/ComfyUI")
    done = {"python": "/py", "mode": "checked-hash", "comfy": A, "nodes": {"node": B}, "packages": "d"}

    def plan(state_bc, *, python="/py", site="d", flags=Flags(bytecode=True)):
        obs = Observed(home=home, comfy=Checkout(home, True, True, A),
                       nodes={"node": Checkout(home / "custom_nodes" / "node", True, True, B)},
                       state={"pip_digest": "p", "bytecode": state_bc}, pip_digest="p", models_ok=True,
                       python=python, site_digest=site)
        return [list(a.targets) for a in make_plan(spec, lock, obs, flags).actions]

    assert plan(done) == []
    assert plan(done, flags=Flags()) == []
    assert plan(done, site="other") == [["site-packages"]]
    assert plan(done, site=None) == [["site-packages"]]
    assert plan({**done, "nodes": {}}) == [["custom_nodes/node"]]
    assert plan(done, python="/other/py") == [["ComfyUI", "custom_nodes/node", "site-packages"]]
    assert plan({**done, "mode": "timestamp"}) == [["ComfyUI", "custom_nodes/node", "site-packages"]]
    assert plan({}) == [["ComfyUI", "custom_nodes/node", "site-packages"]]
