"""Opt-in (``DOCKER_E2E=1``, tens of minutes): build the image's CPU variant and run a real workflow in it.

``scripts/local_docker.sh up`` gets an engine and the base images (a stand-in base where no registry
answers; the real base image where one does). From the context in ``image_inputs``:

- **baked**: two versions that differ by one custom node (``e2e-a``, ``e2e-b``); the bytes of the
  layers ``e2e-b`` does not share with ``e2e-a`` stay under 300 MB. ``docker run --rm --network none
  IMAGE`` (docs/runpod.md, "Running locally") runs ``test_input.json``: exit 0 and a 64x64 PNG.
- **volume**: without a version on the volume, one line and exit 1; then the version is realized onto a
  host folder as docs/runpod.md ("Network volume") tells users to, mounted at ``/runpod-volume``.
- **hybrid**: a model file on the volume, a job that names it, an NVMe cache folder mounted at
  ``NVME_CACHE_DIR``: the result's cache report shows the copy.

Sizes, build times and the layer table are printed (``-s``) and written to ``$DOCKER_E2E_REPORT`` if set.
Images are removed afterwards unless ``DOCKER_E2E_KEEP=1``; the engine is left running
(``scripts/local_docker.sh down`` stops it).
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.docker import image_inputs as inputs
from tests.docker.dockerfile_model import REPO_ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(7200),
    pytest.mark.skipif(os.environ.get("DOCKER_E2E") != "1",
                       reason="set DOCKER_E2E=1 to build and run the image (needs root or Docker, ~10 GB disk, minutes)"),
]
REPORT: dict = {"build_s": {}, "image_bytes": {}, "layers": {}, "runs": {}}
TAG = "runpod-comfy-e2e"
CPU_INDEX = ["--build-arg", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu",
             "--build-arg", "TORCH_VERSION=2.8.0+cpu", "--build-arg", "TORCHVISION_VERSION=0.23.0+cpu",
             "--build-arg", "TORCHAUDIO_VERSION=2.8.0+cpu"]


def sh(cmd: list[str], *, timeout: float = 3600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd[:6])}... exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def setup():
    up = sh(["bash", str(REPO_ROOT / "scripts" / "local_docker.sh"), "up"], timeout=1800)
    machine_args = up.stdout.strip().splitlines()[-1].split() if up.stdout.strip() else []
    root = Path(tempfile.mkdtemp(prefix="docker-e2e-", dir=os.environ.get("DOCKER_E2E_DIR", "/var/tmp")))
    commits = inputs.make_sources(root / "sources")
    context = inputs.make_context(root / "context", commits)
    args = [*machine_args, "--build-context", f"sources={root / 'sources'}"]
    if "PYTHON_VERSION=system" in machine_args:  # the stand-in base: no CUDA, no PyTorch index
        wheel = inputs.find_torch_wheel()
        if wheel is None:
            pytest.skip(f"the stand-in base needs a local {inputs.TORCH_WHEEL} (PIP_FIND_LINKS)")
        wheels = inputs.make_wheels(root / "wheels", wheel)
        args += ["--build-context", f"wheels={wheels}", "--build-arg", "TORCH_INDEX_URL=",
                 "--build-arg", "TORCH_VERSION=2.13.0+cpu",
                 "--build-arg", f"TORCHVISION_VERSION={inputs.TORCHVISION}{inputs.LOCAL_TAG}",
                 "--build-arg", "TORCHAUDIO_VERSION="]
    else:
        args += CPU_INDEX
    yield {"root": root, "context": context, "args": args}
    if os.environ.get("DOCKER_E2E_KEEP") != "1":
        tags = sh(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", TAG], check=False).stdout.split()
        if tags:
            sh(["docker", "rmi", "-f", *tags], check=False)
    shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(REPORT, indent=2)
    print("\nimage e2e report:\n" + text)
    if os.environ.get("DOCKER_E2E_REPORT"):
        Path(os.environ["DOCKER_E2E_REPORT"]).write_text(text + "\n")


def build(setup, version: str, mode: str) -> str:
    tag = f"{TAG}:{version}-{mode}"
    t0 = time.monotonic()
    cmd = ["nice", "-n", "15", "bash", str(setup["context"] / "scripts" / "build_docker.sh"),
           "--mode", mode, "--tag", tag, "--", *setup["args"]]
    if mode != "volume":
        cmd[5:5] = ["--version", version]
    sh(cmd, timeout=5400)
    REPORT["build_s"][tag] = round(time.monotonic() - t0, 1)
    REPORT["image_bytes"][tag] = int(sh(["docker", "image", "inspect", "-f", "{{.Size}}", tag]).stdout)
    REPORT["layers"][tag] = layers(tag)
    return tag


def layers(tag: str) -> list[list]:
    """[diff id, bytes] of each layer, bottom first (sizes from the engine's layer store)."""
    diff_ids = json.loads(sh(["docker", "image", "inspect", "-f", "{{json .RootFS.Layers}}", tag]).stdout)
    info = sh(["docker", "info", "-f", "{{.DockerRootDir}} {{.Driver}}"]).stdout.split()
    out, chain = [], None
    for diff in diff_ids:
        chain = diff if chain is None else "sha256:" + hashlib.sha256(f"{chain} {diff}".encode()).hexdigest()
        size_file = Path(info[0]) / "image" / info[1] / "layerdb" / "sha256" / chain.split(":")[1] / "size"
        out.append([diff, int(size_file.read_text()) if size_file.is_file() else None])
    return out


def job_result(stdout: str) -> dict:
    line = next(ln for ln in stdout.splitlines() if "Job result: " in ln)
    return ast.literal_eval(line.split("Job result: ", 1)[1])


def check_png(proc: subprocess.CompletedProcess, name: str) -> dict:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    output = job_result(proc.stdout + proc.stderr)["output"]
    data = base64.b64decode(output["outputs"][0]["data"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (64, 64)
    REPORT["runs"][name] = {"exit": proc.returncode, "png_bytes": len(data), "png_size": [64, 64]}
    return output


def docker_run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return sh(["docker", "run", "--rm", *args], timeout=timeout, check=False)


def world_writable(tag: str) -> list[str]:
    find = ("find / -xdev \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o "
            "-perm -o+w ! -type l ! -perm -1000 -print")
    return docker_run("--network", "none", "--entrypoint", "bash", tag, "-c", find).stdout.split()


def test_baked_two_versions_share_all_but_their_own_layers_and_run(setup):
    a = build(setup, "e2e-a", "baked")
    b = build(setup, "e2e-b", "baked")
    in_a = {d for d, _ in REPORT["layers"][a]}
    own = [[d, n] for d, n in REPORT["layers"][b] if d not in in_a]
    REPORT["non_shared_bytes"] = {"e2e-b vs e2e-a (baked)": sum(n or 0 for _, n in own), "layers": own}
    assert len(own) <= 4, f"e2e-b adds more than venv, comfy, cache, models (+ /app): {own}"
    assert sum(n or 0 for _, n in own) <= 300 * 10**6, own
    assert world_writable(b) == [], "world-writable paths in the image"
    proc = docker_run("--network", "none", b)  # docs/runpod.md: docker run --rm IMAGE (CPU variant)
    check_png(proc, f"{b}: docker run --rm --network none")


def test_volume_image_without_a_version_says_so_then_runs_a_realized_volume(setup):
    tag = build(setup, "worker", "volume")
    volume = setup["root"] / "volume"
    volume.mkdir()
    empty = docker_run("--network", "none", "-v", f"{volume}:/runpod-volume", "-e", "COMFY_VERSION_ID=e2e-b", tag)
    assert empty.returncode == 1
    said = [ln for ln in (empty.stdout + empty.stderr).splitlines() if "no ComfyUI at" in ln]
    assert len(said) == 1 and "Traceback" not in empty.stdout + empty.stderr, empty.stderr[-3000:]
    REPORT["runs"][f"{tag}: empty volume"] = {"exit": empty.returncode, "line": said[0][-200:]}
    # docs/runpod.md, "Network volume", step 2, in a container of the volume image (network for PyPI)
    populate = ("cd /app && python3 -m venv --system-site-packages /runpod-volume/venvs/e2e-b "
                "&& /runpod-volume/venvs/e2e-b/bin/python scripts/version.py realize e2e-b --installer pip "
                "&& python3 scripts/version.py lock --check e2e-b")
    net = ["--network", "host"] if "--network" in setup["args"] else []
    proc = docker_run(*net, "-v", f"{volume}:/runpod-volume", "-v", f"{setup['root'] / 'sources'}:/sources:ro",
                      "--entrypoint", "bash", tag, "-c", populate, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    proc = docker_run("--network", "none", "-v", f"{volume}:/runpod-volume", "-e", "COMFY_VERSION_ID=e2e-b",
                      "-e", "COMFY_PYTHON=/runpod-volume/venvs/e2e-b/bin/python", tag)
    check_png(proc, f"{tag}: realized volume at /runpod-volume")


def test_hybrid_copies_the_jobs_model_from_the_volume_to_the_nvme_cache(setup):
    tag = build(setup, "e2e-b", "hybrid")
    volume, nvme = setup["root"] / "hybrid-volume", setup["root"] / "nvme"
    model = volume / "cache" / "runpod-comfy" / "models" / "checkpoints" / "e2e-tiny.safetensors"
    model.parent.mkdir(parents=True)
    model.write_bytes(os.urandom(3 * 2**20))
    nvme.mkdir()
    job = json.loads((REPO_ROOT / "test_input.json").read_text())
    # a loader no output depends on: ComfyUI never runs it, the cache still copies what it names
    job["input"]["workflow"]["9"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model.name}}
    proc = docker_run("--network", "none", "-v", f"{volume}:/runpod-volume", "-v", f"{nvme}:/var/cache/comfy-nvme",
                      "-e", "CACHE_MIN_SIZE_MB=0", "-e", "CACHE_WAIT_S=120", tag, "--test_input", json.dumps(job))
    output = check_png(proc, f"{tag}: volume models + NVMe cache dir")
    cache = output["cache"]
    REPORT["runs"][f"{tag}: volume models + NVMe cache dir"]["cache"] = cache
    assert cache["bytes_copied"] == model.stat().st_size, cache
    copies = list(nvme.rglob(model.name))
    assert copies and copies[0].read_bytes() == model.read_bytes()
