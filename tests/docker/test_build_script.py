"""scripts/build_docker.sh: the docker command it would run, for each mode, and its usage errors.

The script runs from a copy of the repo's script in a temporary tree (with a spec under
versions/), and with --dry-run it must never need docker: PATH holds no docker binary here.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

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
    toolbin = tmp_path / "toolbin"  # no docker here, whatever the machine has
    toolbin.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is needed to run build_docker.sh"
        (toolbin / tool).symlink_to(found)
    return root


TOOLS = ("bash", "dirname", "sed", "sort", "head")  # all build_docker.sh needs besides docker (and python3 for sizes)


def run(tree, *args, env_extra=None):
    """Run the script with a PATH of only the tools it uses (plus a fake docker when given)."""
    toolbin = tree.parent / "toolbin"
    env = {"HOME": os.environ["HOME"], **(env_extra or {})}
    env["PATH"] = f"{env['PATH']}:{toolbin}" if "PATH" in env else str(toolbin)
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


def test_several_platforms_with_push(tree):
    argv = dry(tree, "--version", "demo", "--platform", "linux/amd64,linux/arm64", "--push")
    assert option(argv, "--platform") == ["linux/amd64,linux/arm64"] and "--push" in argv


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
    (["--version", "demo", "--platform", "linux/amd64,linux/arm64"], 2, "names several platforms: add --push"),
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


# --- a real run against a stand-in docker CLI ----------------------------------------------
FAKE_DOCKER = r'''#!{python}
"""Stand-in for the docker CLI: logs each call, answers the few queries build_docker.sh makes."""
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps({{"argv": args, "hf": os.environ.get("HF_TOKEN")}}) + "\n")
if args[:2] == ["buildx", "version"]:
    if os.environ.get("FAKE_NO_BUILDX"):
        sys.exit("docker: unknown command: docker buildx")
    print("github.com/docker/buildx v0.29.1")
    sys.exit(0)
if args[:2] == ["buildx", "inspect"]:
    print("Name: default\nDriver: docker\nBuildKit version: " + os.environ.get("FAKE_BUILDKIT", "v0.25.1"))
    sys.exit(0)
if args[:1] == ["version"]:
    print(os.environ.get("FAKE_ENGINE", "28.5.2"))
    sys.exit(0)
if args[:2] == ["buildx", "build"]:
    sys.exit(int(os.environ.get("FAKE_DOCKER_BUILD_RC", "0")))
if args[:2] == ["image", "inspect"]:
    print(7 * 1024 ** 3 + 512 * 1024 ** 2)
    sys.exit(0)
if args[:3] == ["buildx", "imagetools", "inspect"]:
    ref = args[-1]
    if "@sha256:" in ref:
        print(json.dumps({{"layers": [{{"size": 1024 ** 3}}, {{"size": 2 * 1024 ** 3}}]}}))
    else:
        print(json.dumps({{"manifests": [
            {{"digest": "sha256:att", "platform": {{"os": "unknown", "architecture": "unknown"}}}},
            {{"digest": "sha256:amd", "platform": {{"os": "linux", "architecture": "amd64"}}}}]}}))
    sys.exit(0)
sys.exit(f"fake docker: unexpected {{args}}")
'''


@pytest.fixture
def fake_docker(tmp_path):
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    exe = bindir / "docker"
    exe.write_text(FAKE_DOCKER.format(python=sys.executable))
    exe.chmod(0o755)
    (bindir / "python3").symlink_to(sys.executable)
    log = tmp_path / "docker.log"
    return {"PATH": str(bindir), "FAKE_DOCKER_LOG": str(log)}, log


def calls(log) -> list[dict]:
    """The calls that build, inspect or push (the version checks before them left out)."""
    checks = (["buildx", "version"], ["buildx", "inspect"], ["version"])
    every = [json.loads(line) for line in log.read_text().splitlines()]
    return [c for c in every if not any(c["argv"][:len(k)] == k for k in checks)]


def test_build_then_prints_the_local_image_size(tree, fake_docker):
    env, log = fake_docker
    proc = run(tree, "--version", "demo", "--tag", "t:1", env_extra={**env, "HF_TOKEN": HF_VALUE})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "image t:1: 7.50 GiB uncompressed"
    build, inspect = calls(log)
    assert build["argv"][:2] == ["buildx", "build"] and "--load" in build["argv"]
    assert build["hf"] == HF_VALUE, "buildx reads the secret from its environment"
    assert inspect["argv"] == ["image", "inspect", "--format", "{{.Size}}", "t:1"]
    assert HF_VALUE not in proc.stdout + proc.stderr


def test_push_prints_the_compressed_size_of_the_real_platform_manifest(tree, fake_docker):
    env, log = fake_docker
    proc = run(tree, "--version", "demo", "--tag", "reg.example:5000/team/comfy:v1", "--push", env_extra=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "image reg.example:5000/team/comfy:v1 pushed: 3.00 GiB compressed"
    refs = [c["argv"][-1] for c in calls(log) if c["argv"][:2] == ["buildx", "imagetools"]]
    assert refs == ["reg.example:5000/team/comfy:v1", "reg.example:5000/team/comfy@sha256:amd"]


def test_a_failed_build_fails_the_script_and_prints_no_size(tree, fake_docker):
    env, log = fake_docker
    proc = run(tree, "--version", "demo", "--tag", "t:1", env_extra={**env, "FAKE_DOCKER_BUILD_RC": "17"})
    assert proc.returncode == 17
    assert "image t:1" not in proc.stdout
    assert [c["argv"][:2] for c in calls(log)] == [["buildx", "build"]]


def test_without_buildx_it_says_so_and_builds_nothing(tree, fake_docker):
    env, log = fake_docker
    proc = run(tree, "--version", "demo", "--tag", "t:1", env_extra={**env, "FAKE_NO_BUILDX": "1"})
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == ("build_docker.sh: docker buildx is missing; install the buildx plugin "
                                           "(package docker-buildx-plugin or docker-buildx)")
    assert calls(log) == []


@pytest.mark.parametrize("buildkit, engine", [("v0.12.5", "24.0.7"), ("v0.0.0+unknown", "26.1.5")])
def test_a_builder_too_old_for_the_dockerfile_is_named_and_builds_nothing(tree, fake_docker, buildkit, engine):
    env, log = fake_docker
    proc = run(tree, "--version", "demo", "--tag", "t:1",
               env_extra={**env, "FAKE_BUILDKIT": buildkit, "FAKE_ENGINE": engine})
    assert proc.returncode == 1
    line = proc.stderr.splitlines()[0]
    assert "is too old: the Dockerfile needs BuildKit 0.16+ (Docker 27.3+)" in line
    assert ("BuildKit 0.12" if buildkit.startswith("v0.12") else "Docker engine 26.1") in line
    assert calls(log) == []


@pytest.mark.parametrize("buildkit, engine", [("v0.16.0", "1.0"), ("v0.0.0+unknown", "28.5.2+dfsg4")])
def test_a_new_enough_builder_builds(tree, fake_docker, buildkit, engine):
    env, log = fake_docker
    proc = run(tree, "--version", "demo", "--tag", "t:1",
               env_extra={**env, "FAKE_BUILDKIT": buildkit, "FAKE_ENGINE": engine})
    assert proc.returncode == 0, proc.stderr
    assert [c["argv"][:2] for c in calls(log)] == [["buildx", "build"], ["image", "inspect"]]


def test_an_old_builder_with_a_frontend_image_named_is_let_through(tree, fake_docker):
    env, log = fake_docker
    proc = run(tree, "--version", "demo", "--tag", "t:1", "--", "--build-arg", "BUILDKIT_SYNTAX=docker/dockerfile:1.10",
               env_extra={**env, "FAKE_BUILDKIT": "v0.12.5"})
    assert proc.returncode == 0, proc.stderr


def test_no_extra_arguments_is_fine_under_bash_3_2_rules(tree):
    """`"${a[@]}"` of an empty array under `set -u` fails before bash 4.4: the script must not use it."""
    text = (tree / "scripts" / "build_docker.sh").read_text()
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        assert '"${extra[@]}"' not in code.replace('${extra[@]+"${extra[@]}"}', ""), line
    argv = dry(tree, "--version", "demo", "--tag", "t:1")
    assert argv[-1] == "." and argv[-2] == "--load"
