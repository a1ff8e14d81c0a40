"""Opt-in, slow (a real install): the README's main path (``scripts/quickstart.sh``) against a real ComfyUI.

Set ``COMFYUI_DIR`` (a ComfyUI checkout) and ``REAL_E2E=1``. Everything is built under one temp
folder that is deleted afterwards:

1. a spec like ``versions/cpu-demo.json`` in its own ``VERSIONS_DIR``, whose ComfyUI repo is a
   one-commit git snapshot of the checkout's files, cloned by the builder over ``file://``;
   ``torch==2.13.0`` comes from a local CPU wheel found through ``PIP_FIND_LINKS``/``UV_FIND_LINKS``
   (handed to uv as ``UV_FIND_LINKS``: uv does not read pip's configuration), the rest from PyPI;
2. ``version.py realize`` into a fresh venv, then again (it must plan nothing);
3. ``python -m rp_handler`` with ``test_input.json`` (the runpod SDK's local run), then
   ``version.py run-handler --output base64 --out-file out.png``: each gives a 64x64 PNG.

CPU-only caveat: PyPI's torchvision is a CUDA build whose C++ ops do not load next to a CPU torch,
and its import then fails on the fake-op registrations. After the first realize the test makes
those registrations conditional in the fresh venv's torchvision (only when the import fails), as
``docs/testing.md`` describes. uv's cache is ``UV_CACHE_DIR`` when set, else a cold one in the temp
folder.
"""

from __future__ import annotations

import ast
import base64
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import NOTES, TIMINGS

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
REPO = Path(__file__).resolve().parents[2]
VERSION_ID = "e2e-cpu"
TORCH_PIN = "torch==2.13.0"
TORCH_WHEEL = "torch-2.13.0+cpu-*.whl"

pytestmark = [
    pytest.mark.real_comfy,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(not (COMFYUI_DIR and os.environ.get("REAL_E2E") == "1"),
                       reason="set COMFYUI_DIR and REAL_E2E=1 (installs ComfyUI's requirements: minutes)"),
]


def find_links() -> list[str]:
    """The wheel folders pip is told about here, the local CPU torch wheel among them."""
    raw = " ".join(os.environ.get(k, "") for k in ("UV_FIND_LINKS", "PIP_FIND_LINKS"))
    return list(dict.fromkeys(d for d in re.split(r"[\s,]+", raw) if d and glob.glob(os.path.join(d, TORCH_WHEEL))))


def comfy_source(root: Path, comfy_dir: Path) -> tuple[str, str]:
    """(repo URL, commit): a one-commit git repo of the checkout's files (git-ignored ones left out).

    A snapshot rather than the checkout's own history, which may be partial (this machine's copy has
    missing blobs, so cloning it fails); the commit differs from upstream's.
    """
    listed = subprocess.run(["git", "-C", str(comfy_dir), "ls-files", "--others", "--ignored", "--exclude-standard",
                             "--directory"], capture_output=True, text=True)
    ignored = set()
    if listed.returncode == 0:
        ignored = {(comfy_dir / p.rstrip("/")).resolve() for p in listed.stdout.splitlines()}

    def skip(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n in (".git", "__pycache__") or n.endswith(".pyc")
                or (Path(folder) / n).resolve() in ignored}

    snap = root / "comfy-src"
    shutil.copytree(comfy_dir, snap, ignore=skip, symlinks=True)
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot of COMFYUI_DIR"]):
        subprocess.run(["git", "-C", str(snap), "-c", "user.name=e2e", "-c", "user.email=e2e@example.invalid", *cmd],
                       check=True, capture_output=True)
    sha = subprocess.run(["git", "-C", str(snap), "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    return snap.as_uri(), sha.stdout.strip()


def write_spec(versions: Path, repo: str, commit: str) -> Path:
    """versions/cpu-demo.json, with the local repo and the torch this machine has a CPU wheel of."""
    spec = json.loads((REPO / "versions" / "cpu-demo.json").read_text())
    spec.update(version_id=VERSION_ID, description="e2e: cpu-demo against a local ComfyUI checkout",
                comfy={"repo": repo, "commit": commit}, pip_constraints=[TORCH_PIN], options={})
    assert spec["python_packages"] == ["requests>=2.31"], spec  # ComfyUI imports it without listing it
    versions.mkdir()
    path = versions / f"{VERSION_ID}.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def make_torchvision_import(python: Path) -> str:
    """Import torchvision in the target; when its CUDA-only fake ops break that, make them conditional."""
    probe = [str(python), "-c", "import torchvision, torch; print(torch.__version__, torchvision.__version__)"]
    first = subprocess.run(probe, capture_output=True, text=True, timeout=300)
    if first.returncode == 0:
        return "torchvision imports as installed"
    where = subprocess.run([str(python), "-c", "import importlib.util as u; "
                            "print(u.find_spec('torchvision').submodule_search_locations[0])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    meta = Path(where) / "_meta_registrations.py"
    text = meta.read_text()
    patched, n = re.subn(r"@torch\.library\.register_fake\(", "@_cpu_only_fake(", text)
    assert n, f"torchvision import fails for another reason: {first.stderr[-2000:]}"
    helper = ("\n\ndef _cpu_only_fake(name):  # e2e test, CPU-only: this CUDA wheel's C++ ops do not load\n"
              "    if torchvision.extension._has_ops():\n"
              "        return torch.library.register_fake(name)\n"
              "    return lambda fn: fn\n\n")
    anchor = "\n\n@functools.lru_cache(None)\ndef get_meta_lib"
    assert anchor in patched, "torchvision/_meta_registrations.py changed shape: update the CPU-only workaround"
    # A new file, not an in-place write: the installed file may be a hard link into uv's cache.
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(patched.replace(anchor, helper + anchor.lstrip("\n"), 1))
    os.replace(tmp, meta)
    second = subprocess.run(probe, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    return f"patched {n} fake-op registration(s) in {meta}"


@dataclass
class Realized:
    root: Path
    env: dict[str, str]
    python: Path
    home: Path
    first: dict


def run(cmd: list[str], env: dict[str, str], *, cwd: Path = REPO,
        timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return proc, time.monotonic() - t0


def realize_cmd(home: Path, python: Path) -> list[str]:
    return [sys.executable, "scripts/version.py", "realize", VERSION_ID, "--target", str(home),
            "--python", str(python), "--json"]


@pytest.fixture(scope="module")
def realized() -> Realized:
    links = find_links()
    if not links:
        pytest.skip(f"needs a {TORCH_WHEEL} in PIP_FIND_LINKS or UV_FIND_LINKS")
    root = Path(tempfile.mkdtemp(prefix="e2e-quickstart-"))
    try:
        repo, commit = comfy_source(root, Path(COMFYUI_DIR))
        write_spec(root / "versions", repo, commit)
        (root / "home").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "COMFY_"))}
        for name in ("MODELS_DIR", "HF_TOKEN", "CIVITAI_TOKEN", "GCS_BUCKET", "GOOGLE_APPLICATION_CREDENTIALS",
                     "STORAGE_EMULATOR_HOST", "OUTPUT_MODE", "NVME_CACHE_DIR", "PYTHONPATH"):
            env.pop(name, None)
        env.update(HOME=str(root / "home"), COMFY_CACHE_ROOT=str(root / "cache"), VERSIONS_DIR=str(root / "versions"),
                   UV_FIND_LINKS=",".join(links), UV_CACHE_DIR=os.environ.get("UV_CACHE_DIR") or str(root / "uv-cache"),
                   RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true", PYTHONUNBUFFERED="1", GIT_CONFIG_NOSYSTEM="1")
        venv, home = root / "venv", root / "ComfyUI"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        python = venv / "bin" / "python"
        proc, took = run(realize_cmd(home, python), env, timeout=3000)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        TIMINGS["first realize (clone, install, bytecode)"] = took
        workaround = make_torchvision_import(python)
        NOTES.extend([f"first realize: {d}" for d in json.loads(proc.stdout)["done"]] + [f"torchvision: {workaround}"])
        yield Realized(root, env, python, home, json.loads(proc.stdout))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    return struct.unpack(">II", data[16:24])


def worker_env(r: Realized) -> dict[str, str]:
    # As quickstart.sh exports them; port 0 and a private io dir because this machine is shared.
    return r.env | {"COMFY_HOME": str(r.home), "COMFY_PYTHON": str(r.python), "COMFY_VERSION_ID": VERSION_ID,
                    "OUTPUT_MODE": "base64", "COMFY_PORT": "0", "COMFY_IO_DIR": str(r.root / "io"),
                    "COMFY_BOOT_TIMEOUT_S": "300", "PYTHONPATH": str(REPO)}


def test_first_realize_installs_cpu_torch_and_locks_the_commit(realized):
    done = " ".join(realized.first["done"])
    assert "clone" in done and "pip" in done, realized.first
    lock = json.loads(Path(realized.first["lock"]).read_text())
    spec = json.loads((realized.root / "versions" / f"{VERSION_ID}.json").read_text())
    assert lock["comfy"]["commit"] == spec["comfy"]["commit"]
    head = subprocess.run(["git", "-C", str(realized.home), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert head.stdout.strip() == lock["comfy"]["commit"]
    installed = lock["pip"]["installed"]
    assert installed["torch"] == "2.13.0+cpu", installed.get("torch")  # the local CPU wheel, not PyPI's CUDA one
    assert "requests" in installed and "torchvision" in installed
    assert (realized.home / "custom_nodes" / "nvme_cache").is_dir()


def test_second_realize_plans_nothing(realized):
    before = Path(realized.first["lock"]).read_bytes()
    proc, took = run(realize_cmd(realized.home, realized.python), realized.env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    TIMINGS["second realize (nothing to do)"] = took
    second = json.loads(proc.stdout)
    assert second["done"] == [] and second["lock_written"] is False, second
    assert Path(realized.first["lock"]).read_bytes() == before


def test_worker_runs_test_input_json_like_quickstart(realized):
    work = realized.root / "cwd"
    work.mkdir()
    shutil.copy(REPO / "test_input.json", work / "test_input.json")
    proc, took = run([sys.executable, "-m", "rp_handler"], worker_env(realized), cwd=work, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    TIMINGS["worker: python -m rp_handler, start to exit"] = took
    line = next(ln for ln in proc.stdout.splitlines() if "Job result: " in ln)
    result = ast.literal_eval(line.split("Job result: ", 1)[1])["output"]
    assert "error" not in result, result
    (out,) = result["outputs"]
    assert png_size(base64.b64decode(out["data"])) == (64, 64)
    cold = result["timings"]["cold_start"]
    assert cold["comfy_spawned"] <= cold["comfy_ready"] <= cold["submitted"] <= cold["result_returned"]
    for phase in ("comfy_ready", "result_returned"):
        TIMINGS[f"worker cold start: {phase}"] = cold[phase]
    assert f"starting ComfyUI: {realized.python}" in proc.stdout + proc.stderr


def test_run_handler_writes_the_png(realized):
    out = realized.root / "out.png"
    cmd = [sys.executable, "scripts/version.py", "run-handler", VERSION_ID, "--workflow", "test_input.json",
           "--output", "base64", "--out-file", str(out)]
    proc, took = run(cmd, worker_env(realized), timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    TIMINGS["version.py run-handler, start to exit"] = took
    assert png_size(out.read_bytes()) == (64, 64)
    summary = json.loads(proc.stdout)
    assert summary["outputs"][0]["node"] == "3" and "error" not in summary, summary
