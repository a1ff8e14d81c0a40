"""What the image test builds from: a build context with two specs, local git repos, a wheel folder.

Used by ``test_image_e2e.py`` (``DOCKER_E2E=1``). Two versions that differ by one custom node:
``e2e-a`` (ComfyUI only) and ``e2e-b`` (ComfyUI + ``demo_node``), both with their ComfyUI from a
one-commit git repo of the snapshot in ``shared/comfyui/``, mounted while realizing as the
``sources`` named context (``file:///sources/...`` in the specs).
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

from tests.docker.dockerfile_model import REPO_ROOT

COMFY_TARBALL = REPO_ROOT.parent / "shared" / "comfyui" / "ComfyUI-a125cd84.tar.gz"
VERSIONS = ("e2e-a", "e2e-b")
NODE = "demo_node"
TORCH_WHEEL = "torch-2.13.0+cpu-cp311-*.whl"
TORCHVISION = "0.28.0"  # PyPI's build for torch 2.13
LOCAL_TAG = "+localcpu"
# The context holds what .dockerignore lets through; copying these is enough and keeps it small.
CONTEXT_ITEMS = ("Dockerfile", ".dockerignore", "builder", "rp_handler", "comfy_nodes", "scripts", "versions",
                 "workflows", "requirements", "test_input.json", "pyproject.toml")


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), "-c", "user.name=e2e", "-c", "user.email=e2e@example.invalid",
                           *args], check=True, capture_output=True, text=True)
    return proc.stdout.strip()


def one_commit_repo(path: Path) -> str:
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        git(path, *args)
    return git(path, "rev-parse", "HEAD")


def make_sources(root: Path) -> dict[str, str]:
    """``root/ComfyUI`` and ``root/demo_node`` as one-commit repos; their commits by name."""
    root.mkdir(parents=True)
    with tarfile.open(COMFY_TARBALL) as tar:
        tar.extractall(root, filter="data")
    node = root / NODE
    node.mkdir()
    (node / "__init__.py").write_text('"""A custom node that only proves it was loaded."""\n\n'
                                      "NODE_CLASS_MAPPINGS = {}\nNODE_DISPLAY_NAME_MAPPINGS = {}\n")
    return {"ComfyUI": one_commit_repo(root / "ComfyUI"), NODE: one_commit_repo(node)}


def spec(version_id: str, commits: dict[str, str], with_node: bool) -> dict:
    nodes = [{"name": NODE, "repo": f"file:///sources/{NODE}", "ref": "master", "commit": commits[NODE]}]
    return {
        "schema_version": 2,
        "version_id": version_id,
        "description": "image test: ComfyUI from a local repo" + (" + one custom node" if with_node else ""),
        "comfy": {"repo": "file:///sources/ComfyUI", "commit": commits["ComfyUI"]},
        "custom_nodes": nodes if with_node else [],
        "models": [],
        "python_packages": [],
        "pip_constraints": [],
        "env": {},
        "options": {},
    }


def make_context(dest: Path, commits: dict[str, str]) -> Path:
    """A copy of the repo's build inputs with the two e2e specs added under versions/."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".DS_Store")
    for item in CONTEXT_ITEMS:
        src = REPO_ROOT / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=skip)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / item)
    for version_id, with_node in zip(VERSIONS, (False, True)):
        (dest / "versions" / f"{version_id}.json").write_text(json.dumps(spec(version_id, commits, with_node), indent=2))
    return dest


def find_torch_wheel() -> Path | None:
    raw = " ".join(os.environ.get(k, "") for k in ("UV_FIND_LINKS", "PIP_FIND_LINKS"))
    for folder in [d for d in re.split(r"[\s,]+", raw) if d] + ["/opt/wheels"]:
        found = sorted(glob.glob(os.path.join(folder, TORCH_WHEEL)))
        if found:
            return Path(found[-1])
    return None


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def patched_torchvision(wheel: Path, dest_dir: Path) -> Path:
    """PyPI's torchvision (a CUDA build) repacked as ``<version>+localcpu`` whose import works beside
    a CPU torch: its ``register_fake`` calls made conditional on ``_has_ops()`` (shared/comfyui/README.md)."""
    version = wheel.name.split("-")[1]
    new_version = version + LOCAL_TAG
    with zipfile.ZipFile(wheel) as zin:
        files = {name: zin.read(name) for name in zin.namelist()}
    meta = "torchvision/_meta_registrations.py"
    text, n = re.subn(r'@torch\.library\.register_fake\(("torchvision::\w+")\)',
                      r"@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda f: f))",
                      files[meta].decode())
    assert n, "torchvision/_meta_registrations.py changed shape: update the CPU-only workaround"
    files[meta] = text.encode()
    old_info, new_info = f"torchvision-{version}.dist-info/", f"torchvision-{new_version}.dist-info/"
    out: dict[str, bytes] = {}
    for name, data in files.items():
        name = new_info + name[len(old_info):] if name.startswith(old_info) else name
        if name == new_info + "METADATA":
            data = re.sub(rb"(?m)^Version: .*$", f"Version: {new_version}".encode(), data, count=1)
        out[name] = data
    record = new_info + "RECORD"
    out[record] = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in out.items() if n != record).encode()
    out[record] += f"{record},,\n".encode()
    target = dest_dir / wheel.name.replace(f"-{version}-", f"-{new_version}-")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in out.items():  # fixed times: the same bytes every run, so the build cache holds
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zout.writestr(info, data)
    return target


def make_wheels(dest: Path, torch_wheel: Path) -> Path:
    """The ``wheels`` context: the local CPU torch wheel and the repacked torchvision."""
    dest.mkdir(parents=True)
    try:
        os.link(torch_wheel, dest / torch_wheel.name)
    except OSError:
        shutil.copy2(torch_wheel, dest / torch_wheel.name)
    dl = dest.parent / "torchvision-download"
    subprocess.run(["python3", "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                    "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "-d", str(dl),
                    f"torchvision=={TORCHVISION}"], check=True, capture_output=True, timeout=600)
    patched_torchvision(next(dl.glob("torchvision-*.whl")), dest)
    shutil.rmtree(dl)
    return dest
