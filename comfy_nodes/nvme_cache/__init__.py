"""OnDemand NVMe cache hook for ComfyUI (installed into ``custom_nodes/nvme_cache``).

It adds no nodes.  It wraps ``folder_paths.get_full_path`` so that a model
ComfyUI resolves is read from the NVMe cache when a complete copy is there, and
otherwise a copy is requested from the worker, which owns the cache.  This
catches models the worker's workflow scan cannot see (paths built at run time,
string inputs of custom nodes).

The hook never copies in ComfyUI's process: it drops a request file into
``<cache root>/.requests/`` (format in ``rp_handler/cache/spool.py``), so the
worker keeps the budget and the index consistent.  It must import without
ComfyUI: ``install(folder_paths_module, cache_root)`` takes the module to patch.
Inside ComfyUI it installs itself from the same environment variables the
worker reads (``NVME_CACHE_DIR``, ``CACHE_MIN_SIZE_MB``, ``CACHE_CATEGORIES``):
this plugin runs in ComfyUI's own interpreter and cannot import the worker's
config module.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

NODE_CLASS_MAPPINGS: dict[str, Any] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

SPOOL_DIR = ".requests"
INDEX_NAME = ".index.json"
LEASE_DIR = ".leases"  # format and lock: rp_handler/cache/leases.py
LEGACY_NAMES = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}
REPEAT_AFTER_S = 60.0  # the same request is not repeated within this many seconds


def _clean(name: str) -> str | None:
    parts = [p for p in str(name).replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or str(name).startswith("/"):
        return None
    return "/".join(parts)


class OnDemandHook:
    """The wrapper around one ``get_full_path``."""

    def __init__(self, original: Callable[[str, str], str | None], cache_root: Path, *,
                 min_size_bytes: int = 0, categories: tuple[str, ...] = ()):
        self.original = original
        self.cache_root = Path(cache_root)
        self.min_size_bytes = min_size_bytes
        self.categories = tuple(LEGACY_NAMES.get(c, c) for c in categories)
        self._sent: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()
        self._index: tuple[tuple[int, int], dict[str, dict]] | None = None

    def __call__(self, folder_name: str, filename: str) -> str | None:
        path = self.original(folder_name, filename)
        try:
            return self._resolve(folder_name, filename, path)
        except Exception:  # the cache must never break model loading
            log.exception("nvme_cache: lookup of %s/%s failed; using %s", folder_name, filename, path)
            return path

    def _resolve(self, folder_name: str, filename: str, path: str | None) -> str | None:
        if path is None:
            return None
        folder = LEGACY_NAMES.get(folder_name, folder_name)
        rel = _clean(filename)
        if rel is None:
            return path
        cached = self.cache_root / folder / rel
        root = str(self.cache_root.resolve()) + os.sep
        in_cache = os.path.realpath(path).startswith(root)
        if in_cache or cached.is_file():
            served, source = self._lease_cached(f"{folder}/{rel}", cached, None if in_cache else path)
            if served:
                self._request("hit", folder, rel)
                return str(cached)
            if source is None or not os.path.isfile(source):
                return path
            log.info("nvme_cache: the cached copy of %s/%s is stale or gone; reading %s", folder, rel, source)
            self._request("copy", folder, rel)
            return source
        if self.categories and folder not in self.categories:
            return path
        if os.path.getsize(path) < self.min_size_bytes:
            return path
        self._request("copy", folder, rel)
        return path

    def _lease_cached(self, key: str, cached: Path, volume_path: str | None) -> tuple[bool, str | None]:
        """(True, _) when the copy is complete and its volume file unchanged, leased against eviction;
        else (False, the volume file to read instead, when known)."""
        with _locked(self.cache_root):
            entry = self._entries().get(key)
            source = (entry or {}).get("source") or volume_path
            if entry is None:
                return False, source
            try:
                if cached.stat().st_size != entry.get("size"):
                    return False, source
            except OSError:
                return False, source
            if source and not _unchanged(source, entry):
                return False, source
            lease = self.cache_root / LEASE_DIR / hashlib.sha1(key.encode()).hexdigest()
            lease.touch()
            return True, source

    def _entries(self) -> dict[str, dict]:
        """The worker's index (``.index.json``), re-read only when it changed."""
        path = self.cache_root / INDEX_NAME
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        if self._index is None or self._index[0] != stamp:
            data = json.loads(path.read_bytes())
            self._index = (stamp, {e["key"]: e for e in data.get("entries", [])})
        return self._index[1]

    def _request(self, kind: str, folder: str, name: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._sent.get((kind, folder, name))
            if last is not None and now - last < REPEAT_AFTER_S:
                return
            self._sent[(kind, folder, name)] = now
        spool = self.cache_root / SPOOL_DIR
        spool.mkdir(parents=True, exist_ok=True)
        stem = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
        tmp = spool / f"{stem}.incomplete"
        tmp.write_text(json.dumps({"kind": kind, "folder": folder, "name": name}))
        os.replace(tmp, spool / f"{stem}.json")
        if kind == "copy":
            log.info("nvme_cache: requested a cache copy of %s/%s", folder, name)


def _unchanged(source: str, entry: dict) -> bool:
    """The volume file still has the size and mtime it was copied from (gone: the copy is all there is)."""
    try:
        st = os.stat(source)
    except FileNotFoundError:
        return True
    mtime_ns = entry.get("source_mtime_ns") or 0
    return st.st_size == entry.get("size") and (not mtime_ns or st.st_mtime_ns == mtime_ns)


class _locked:
    """``flock`` on ``<root>/.leases/.lock``, shared with the worker's eviction."""

    def __init__(self, root: Path):
        self.path = Path(root) / LEASE_DIR / ".lock"
        self.fd = -1

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def install(folder_paths: ModuleType | Any, cache_root: Path | str, *, min_size_bytes: int = 0,
            categories: tuple[str, ...] = ()) -> OnDemandHook:
    """Wrap ``folder_paths.get_full_path`` (idempotent: a second install replaces the first)."""
    current = folder_paths.get_full_path
    original = current.original if isinstance(current, OnDemandHook) else current
    hook = OnDemandHook(original, Path(cache_root), min_size_bytes=min_size_bytes, categories=categories)
    folder_paths.get_full_path = hook
    log.info("nvme_cache: OnDemand hook installed (cache %s)", cache_root)
    return hook


def settings_from_env(env: Mapping[str, str]) -> dict[str, Any] | None:
    """install() keyword arguments from the worker's variables; None when the cache is off."""
    root = (env.get("NVME_CACHE_DIR") or "").strip()
    if not root:
        return None
    try:
        min_mb = float(env.get("CACHE_MIN_SIZE_MB") or 10)
    except ValueError:
        min_mb = 10.0
    categories = tuple(c.strip() for c in (env.get("CACHE_CATEGORIES") or "").split(",") if c.strip())
    return {"cache_root": root, "min_size_bytes": int(min_mb * 1024 * 1024), "categories": categories}


def _install_in_comfyui() -> None:
    try:
        import folder_paths  # type: ignore[import-not-found]  # only inside ComfyUI
    except ImportError:
        return
    settings = settings_from_env(os.environ)
    if settings is None:
        log.info("nvme_cache: NVME_CACHE_DIR is not set; OnDemand hook not installed")
        return
    install(folder_paths, **settings)


_install_in_comfyui()
