"""What realize adds to a ComfyUI beyond the lock: the worker's OnDemand node and an object_info snapshot.

* ``comfy_nodes/nvme_cache`` (shipped with the worker) is copied to ``<COMFY_HOME>/custom_nodes/nvme_cache``:
  built beside it as ``nvme_cache.<random>.incomplete.disabled`` (a name ComfyUI never imports), then
  swapped in; it is identified by :func:`tree_digest`, so an unchanged copy is never rewritten.
* ``<COMFY_HOME>/.runpod-comfy/object_info.json.gz`` is ComfyUI's ``GET /object_info``, taken by booting
  the realized ComfyUI once on CPU on 127.0.0.1 (a free port, every folder it writes under a temp dir),
  so the worker's model cache can scan workflows before its ComfyUI is up.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from . import comfyui
from .atomic import write_if_changed
from .errors import BuildError
from .plan import SNAPSHOT_RELPATH
from .spec import NVME_NODE_NAME

log = logging.getLogger(__name__)

NVME_NODE_SOURCE = Path(__file__).resolve().parents[1] / "comfy_nodes" / NVME_NODE_NAME
NODE_TMP_SUFFIX = ".incomplete.disabled"  # as realize's checkouts: ComfyUI skips *.disabled folders
IGNORED = ("__pycache__",)


def snapshot_path(comfy_home: Path) -> Path:
    """Where realize keeps the object_info snapshot of ``comfy_home``."""
    return Path(comfy_home) / SNAPSHOT_RELPATH


# --- the OnDemand node -----------------------------------------------------------
def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not any(part in IGNORED for part in p.relative_to(root).parts)
                  and p.suffix != ".pyc")


def tree_digest(root: Path) -> str | None:
    """sha256 over the relative names and bytes of the files under ``root`` (None when absent)."""
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for path in _files(root):
        rel = path.relative_to(root).as_posix().encode()
        data = path.read_bytes()
        h.update(len(rel).to_bytes(4, "big") + rel + len(data).to_bytes(8, "big") + data)
    return "sha256:" + h.hexdigest()


def install_tree(source: Path, dest: Path) -> str:
    """Copy ``source`` to ``dest`` atomically (a reader sees the old tree or the new one); returns its digest."""
    if not source.is_dir():
        raise BuildError(f"{source} is missing: this checkout of the worker has no {source.name} node to install "
                         "(restore comfy_nodes/ or set options.nvme_cache_node to false)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{secrets.token_hex(4)}{NODE_TMP_SUFFIX}")
    try:
        for path in _files(source):
            target = tmp / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        old = None
        if dest.exists():
            old = dest.with_name(f"{dest.name}.{secrets.token_hex(4)}.old{NODE_TMP_SUFFIX}")
            os.replace(dest, old)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return tree_digest(dest) or ""


# --- the object_info snapshot ----------------------------------------------------
def snapshot_key(lock: dict, pip_digest: str | None, node_digest: str | None) -> str:
    """What the snapshot depends on: checkout SHAs, installed packages, requirement inputs, our node."""
    data = {"comfy": lock["comfy"]["commit"], "nodes": sorted((n["name"], n["commit"]) for n in lock["custom_nodes"]),
            "installed": lock.get("pip", {}).get("installed"), "pip": pip_digest, "nvme_node": node_digest}
    return "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _tail(path: Path, n: int = 15) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def _last_line(lines: list[str]) -> str:
    return next((ln.strip() for ln in reversed(lines) if ln.strip()), "(no output)")[:300]


def fetch_object_info(python: Path, home: Path, *, timeout_s: float = 300.0,
                      extra_model_paths: Path | None = None) -> dict:
    """Boot ``home/main.py`` with ``python`` on CPU, wait for /system_stats, GET /object_info, stop it.

    ``extra_model_paths``: an extra_model_paths.yaml for this boot (e.g. to record which loader
    lists which folder); every folder ComfyUI writes is under a temp dir.
    """
    if not (home / "main.py").is_file():
        raise BuildError(f"no ComfyUI main.py in {home}: realize the version before taking an object_info snapshot")
    with tempfile.TemporaryDirectory(prefix="object-info-") as tmp:
        run = Path(tmp)
        port = comfyui.free_port()
        dirs = comfyui.ComfyDirs.under(run)
        dirs.create()
        cmd = comfyui.launch_command(str(python), Path("main.py"), host="127.0.0.1", port=port, cpu=True,
                                     extra_model_paths=extra_model_paths, dirs=dirs)
        log_path = run / "comfyui.log"
        log.info("object_info snapshot: starting %s on port %d", home / "main.py", port)
        started = time.monotonic()
        deadline = started + timeout_s
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(cmd, cwd=home, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT)
            try:
                info = _boot_and_read(proc, port, deadline, log_path)
            finally:
                _stop(proc)
    if not isinstance(info, dict) or not info:
        raise BuildError(f"ComfyUI at {home} returned an empty /object_info: check its log for import errors")
    log.info("object_info snapshot: %d node classes in %.1f s", len(info), time.monotonic() - started)
    return info


def _boot_and_read(proc: subprocess.Popen, port: int, deadline: float, log_path: Path) -> dict:
    url = f"http://127.0.0.1:{port}"
    try:
        comfyui.wait_ready("127.0.0.1", port, alive=lambda: proc.poll() is None, deadline=deadline,
                           what="ComfyUI (object_info snapshot)")
        transport = comfyui.ComfyHttp("127.0.0.1", port, max(30.0, deadline - time.monotonic()))
        try:
            return json.loads(transport.get("/object_info"))
        finally:
            transport.close()
    except comfyui.NotReady as exc:
        log.error("object_info snapshot failed; ComfyUI's last lines:\n%s", "\n".join(_tail(log_path, 30)))
        if exc.exited:
            raise BuildError(f"ComfyUI exited with code {proc.poll()} before answering /system_stats: "
                             f"{_last_line(_tail(log_path))} (its last lines are logged above)") from None
        raise BuildError(f"ComfyUI did not answer /system_stats within {exc.waited_s:.0f} s: "
                         f"{_last_line(_tail(log_path))}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        log.error("object_info snapshot failed; ComfyUI's last lines:\n%s", "\n".join(_tail(log_path, 30)))
        raise BuildError(f"GET {url}/object_info failed ({exc}); ComfyUI's last line: "
                         f"{_last_line(_tail(log_path))}") from None


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def write_snapshot(path: Path, object_info: dict) -> None:
    """gzip JSON, written as ``<name>.<random>.incomplete`` + os.replace."""
    data = gzip.compress(json.dumps(object_info, separators=(",", ":"), sort_keys=True).encode(), mtime=0)
    write_if_changed(path, data)
