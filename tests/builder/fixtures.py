"""Local stand-ins for the builder: bare git repos, tiny wheels, empty venvs.

Importable by tests and by ``bench/realize_bench.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "test",
           "GIT_COMMITTER_EMAIL": "t@example.invalid", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_DATE": "2025-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2025-01-01T00:00:00Z"}


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **GIT_ENV}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


class Repo:
    """A working repo plus the bare repo tests point at (``.url`` is file://)."""

    def __init__(self, root: Path, name: str):
        self.work = root / "work" / name
        self.bare = root / "bare" / f"{name}.git"
        self.work.mkdir(parents=True)
        git("init", "-q", "-b", "main", str(self.work))
        self.bare.parent.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, files: dict[str, str], msg: str = "change") -> str:
        for rel, text in files.items():
            p = self.work / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", msg, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def tag(self, name: str, annotated: bool = True) -> None:
        git("tag", *(["-a", "-m", name] if annotated else []), name, cwd=self.work)

    def branch(self, name: str, rev: str = "HEAD") -> None:
        git("branch", "-f", name, rev, cwd=self.work)

    def publish(self) -> "Repo":
        if not (self.bare / "HEAD").exists():
            git("clone", "-q", "--bare", str(self.work), str(self.bare))
        else:
            git("push", "-q", "--force", "--tags", str(self.bare), "+refs/heads/*:refs/heads/*", cwd=self.work)
        return self

    def sha(self, rev: str = "HEAD") -> str:
        return git("rev-parse", f"{rev}^{{commit}}", cwd=self.work)


def fake_comfy(root: Path, requirements: str = "tinyfoo>=1.0\n") -> Repo:
    repo = Repo(root, "ComfyUI")
    repo.commit({"main.py": "print('fake ComfyUI')\n", "requirements.txt": requirements,
                 "custom_nodes/example_node.py.example": "# example\n",
                 "models/checkpoints/put_checkpoints_here": ""}, "initial")
    repo.tag("v0.1")
    repo.commit({"main.py": "print('fake ComfyUI v0.2')\n"}, "second")
    repo.tag("v0.2")
    return repo.publish()


def node_repo(root: Path, name: str, *, requirements: str | None = None, install_py: str | None = None) -> Repo:
    repo = Repo(root, name)
    files = {"__init__.py": f"NODE_CLASS_MAPPINGS = {{}}  # {name} v1\n"}
    if requirements is not None:
        files["requirements.txt"] = requirements
    if install_py is not None:
        files["install.py"] = install_py
    repo.commit(files, "v1")
    repo.tag("v1")
    repo.commit({"__init__.py": f"NODE_CLASS_MAPPINGS = {{}}  # {name} v2\n"}, "v2")
    repo.tag("v2", annotated=False)
    repo.branch("dev")
    return repo.publish()


def make_wheel(dest: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    """A minimal pure-python wheel written by hand (valid RECORD hashes)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": f"__version__ = {version!r}\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\n" f"Name: {name}\nVersion: {version}\n"
                            + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as zf:
        for path, text in files.items():
            info_ = zipfile.ZipInfo(path, date_time=(2025, 1, 1, 0, 0, 0))
            zf.writestr(info_, text)
    return out


def standard_wheels(dest: Path) -> Path:
    make_wheel(dest, "tinyfoo", "1.0", ["tinydep>=1"])
    make_wheel(dest, "tinyfoo", "1.1", ["tinydep>=1"])
    make_wheel(dest, "tinydep", "1.0")
    make_wheel(dest, "tinybar", "2.0")
    make_wheel(dest, "tinyextra", "0.3")
    return dest


def make_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


def site_versions(python: Path) -> dict[str, str]:
    code = ("import json,importlib.metadata as m;"
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)


def write_spec(versions: Path, vid: str, comfy: dict, nodes: list[dict] = (), **extra) -> Path:
    versions.mkdir(parents=True, exist_ok=True)
    data = {"schema_version": 2, "version_id": vid, "comfy": comfy, "custom_nodes": list(nodes), "models": [],
            "python_packages": [], "env": {}, "options": {"pin_installed": []}}
    data.update(extra)
    path = versions / f"{vid}.json"
    path.write_text(json.dumps(data, indent=2))
    return path
