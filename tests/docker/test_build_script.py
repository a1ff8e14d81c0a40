"""scripts/build_docker.sh: the docker command it would run, for each mode, and its usage errors.

The script runs from a copy of the repo's script in a temporary tree (with a spec under
versions/), and with --dry-run it must never need docker: PATH holds no docker binary here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest

from tests.docker.dockerfile_model import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "build_docker.sh"
HF_VALUE = "hf_abcdefghijklmnopqrstuvwxyz0123456789"
CIVITAI_VALUE = "civitai-secret-0123456789abcdef"


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / "versions").mkdir()
    shutil.copy2(SCRIPT, root / "scripts" / "build_docker.sh")
    shutil.copy2(REPO_ROOT / "Dockerfile", root / "Dockerfile")
    (root / "versions" / "demo.json").write_text('{"schema_version": 2, "version_id": "demo"}\n')
    return root


def run(tree, *args, env_extra=None):
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ["HOME"]}
    env.update(env_extra or {})
    return subprocess.run(["bash", str(tree / "scripts" / "build_docker.sh"), *args],
                          capture_output=True, text=True, env=env, timeout=30)


def dry(tree, *args, env_extra=None) -> list[str]:
    proc = run(tree, "--dry-run", *args, env_extra=env_extra)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return shlex.split(lines[0])


def option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]


@pytest.mark.parametrize("mode", ["baked", "hybrid", "volume"])
def test_dry_run_prints_the_buildx_command_for_each_mode(tree, mode):
    argv = dry(tree, "--version", "demo", "--tag", "reg.example/comfy:demo", "--mode", mode)
    assert argv[:3] == ["docker", "buildx", "build"]
    assert option(argv, "--target") == [mode]
    assert option(argv, "--file") == ["Dockerfile"]
    assert option(argv, "--tag") == ["reg.example/comfy:demo"]
    assert option(argv, "--build-arg") == ["VERSION_ID=demo"]
    assert "--load" in argv and "--push" not in argv
    assert argv[-1] == "."
    assert option(argv, "--secret") == [], "no token in the environment: no secret flags"


def test_default_mode_is_baked_and_default_tag_names_version_and_mode(tree):
    argv = dry(tree, "--version", "demo")
    assert option(argv, "--target") == ["baked"]
    assert option(argv, "--tag") == ["runpod-comfy:demo-baked"]


def test_tokens_travel_as_secret_names_never_as_values(tree):
    proc = run(tree, "--version", "demo", "--tag", "t:1", "--dry-run",
               env_extra={"HF_TOKEN": HF_VALUE, "CIVITAI_TOKEN": CIVITAI_VALUE})
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert option(argv, "--secret") == ["id=hf_token,env=HF_TOKEN", "id=civitai_token,env=CIVITAI_TOKEN"]
    assert not any("TOKEN" in a for a in option(argv, "--build-arg"))
    for value in (HF_VALUE, CIVITAI_VALUE):
        assert value not in proc.stdout and value not in proc.stderr


def test_platform_push_and_extra_args(tree):
    argv = dry(tree, "--version", "demo", "--tag", "t:1", "--platform", "linux/amd64", "--push",
               "--", "--label", "note=two words", "--build-arg", "TORCH_VERSION=2.8.0")
    assert option(argv, "--platform") == ["linux/amd64"]
    assert "--push" in argv and "--load" not in argv
    assert option(argv, "--label") == ["note=two words"]
    assert option(argv, "--build-arg") == ["VERSION_ID=demo", "TORCH_VERSION=2.8.0"]
    assert argv[-1] == "."


def test_volume_mode_needs_no_version(tree):
    argv = dry(tree, "--mode", "volume", "--tag", "w:1")
    assert option(argv, "--target") == ["volume"]
    assert option(argv, "--build-arg") == []


@pytest.mark.parametrize("args, code, needle", [
    (["--tag", "t:1"], 2, "--version <id> is required"),
    (["--version", "demo", "--mode", "fat"], 2, "--mode 'fat' is not one of baked, hybrid, volume"),
    (["--version", "../etc"], 2, "is not a version id"),
    (["--version", "nope"], 1, "versions/nope.json not found"),
    (["--version", "demo", "--bogus"], 2, "unknown argument '--bogus'"),
    (["--version"], 2, "--version needs a value"),
    (["--version", "demo", "--tag", "--push"], 2, "--tag needs a value"),
])
def test_bad_arguments_give_one_clear_line_and_run_nothing(tree, args, code, needle):
    proc = run(tree, "--dry-run", *args)
    assert proc.returncode == code
    assert needle in proc.stderr.splitlines()[0]
    assert proc.stdout == ""


def test_without_dry_run_and_without_docker_it_says_so(tree):
    proc = run(tree, "--version", "demo", "--tag", "t:1")
    assert proc.returncode == 1
    assert "docker not found" in proc.stderr


def test_help_lists_every_option(tree):
    proc = run(tree, "--help")
    assert proc.returncode == 0
    for flag in ("--version", "--tag", "--mode", "--platform", "--push", "--dry-run"):
        assert flag in proc.stdout


def test_every_mode_the_script_accepts_is_a_dockerfile_stage():
    from tests.docker.dockerfile_model import load

    names = {s.name for s in load()[1]}
    assert {"baked", "hybrid", "volume"} <= names
