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
        if os.path.realpath(path).startswith(root) or cached.is_file():
            self._request("hit", folder, rel)
            return str(cached) if cached.is_file() else path
        if self.categories and folder not in self.categories:
            return path
        if os.path.getsize(path) < self.min_size_bytes:
            return path
        self._request("copy", folder, rel)
        return path

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
