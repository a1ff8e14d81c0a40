"""The NVMe cache directory: what it holds, its byte budget, and LRU eviction.

Layout: ``<root>/<folder type>/<relative name>`` for each complete copy, so an
extra_model_paths entry with ``base_path: <root>`` serves them to ComfyUI, plus
``<root>/.index.json``: our own access record (never atime), rewritten
atomically after each change.  Entries pinned by a job are never evicted;
copies in flight hold a reservation of their size.  Not thread-safe: the caller
(``ModelCache``) serialises calls.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from builder.atomic import write_atomic
from rp_handler.cache import leases
from rp_handler.cache.folders import safe_relative
from rp_handler.errors import CacheError

log = logging.getLogger(__name__)

INDEX_NAME = ".index.json"
SPOOL_DIR = ".requests"
STALE_TEMP_S = 300.0  # an .incomplete this old belongs to a copy that died
DISK_MARGIN_BYTES = 2 << 30  # left free on the disk when no budget is set


class CacheDirUnusable(CacheError):
    code = "cache_dir_unusable"


@dataclass
class Entry:
    """One complete file in the cache."""

    key: str  # "<folder>/<name>"
    size: int
    source: str = ""
    source_mtime_ns: int = 0
    sha256: str | None = None
    added: float = 0.0
    last_access: float = 0.0  # wall clock, for people
    access_seq: int = 0  # our logical clock: LRU order
    hits: int = 0


class CacheStore:
    def __init__(self, root: Path, budget_bytes: int = 0, *, disk_margin_bytes: int | None = None):
        self.root = Path(root)
        self.budget_bytes = int(budget_bytes)
        self.disk_margin_bytes = disk_margin_bytes
        self.entries: dict[str, Entry] = {}
        self.pins: dict[str, set[str]] = {}
        self.reserved: dict[str, int] = {}
        self.clock = 0
        self._check_writable()
        self._load()
        self._reconcile()
        self.save()

    # -- setup ---------------------------------------------------------------
    def _check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomic(self.root / ".probe", b"ok")
            (self.root / ".probe").unlink()
        except OSError as exc:
            raise CacheDirUnusable(
                f"cache dir {self.root} is not writable ({exc.strerror or exc}); set NVME_CACHE_DIR to a "
                "writable local disk, or leave it empty to read models from the volume",
                {"root": str(self.root)},
            ) from None

    def _load(self) -> None:
        path = self.root / INDEX_NAME
        try:
            data = json.loads(path.read_bytes())
            self.clock = int(data.get("clock", 0))
            for raw in data.get("entries", []):
                entry = Entry(**raw)
                self.entries[entry.key] = entry
        except FileNotFoundError:
            return
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("cache index %s is unreadable (%s); rebuilding it from the files present", path, exc)
            self.entries.clear()

    def _reconcile(self) -> None:
        """Drop entries whose file is gone or has the wrong size; adopt unknown files; clear dead temps."""
        for key, entry in list(self.entries.items()):
            path = self.path_for(key)
            try:
                ok = path.is_file() and path.stat().st_size == entry.size
            except OSError:
                ok = False
            if not ok:
                log.info("cache: dropping %s from the index (file missing or torn)", key)
                path.unlink(missing_ok=True)
                del self.entries[key]
        now = time.time()
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(self.root)
            for fn in filenames:
                path = Path(dirpath) / fn
                if fn.endswith(".incomplete"):
                    try:
                        if now - path.stat().st_mtime > STALE_TEMP_S:
                            path.unlink()
                    except OSError:
                        pass
                    continue
                if rel_dir == Path(".") or fn.startswith("."):
                    continue
                key = (rel_dir / fn).as_posix()
                if key not in self.entries:
                    st = path.stat()
                    self.entries[key] = Entry(key=key, size=st.st_size, added=st.st_mtime, last_access=0.0)

    # -- queries -------------------------------------------------------------
    def path_for(self, key: str) -> Path:
        rel = safe_relative(key)
        if rel is None:
            raise ValueError(f"cache key {key!r} escapes the cache dir")
        return self.root / rel

    def get(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        try:
            if self.path_for(key).stat().st_size == entry.size:
                return entry
        except OSError:
            pass
        log.warning("cache: %s vanished or changed under the cache; dropping it", key)
        self.entries.pop(key, None)
        self.save()
        return None

    def used_bytes(self) -> int:
        return sum(e.size for e in self.entries.values())

    def reserved_bytes(self) -> int:
        return sum(self.reserved.values())

    def capacity(self) -> int:
        """Bytes the cache may hold: the budget, never more than the disk can take."""
        usage = shutil.disk_usage(self.root)
        margin = self.disk_margin_bytes
        if margin is None:
            margin = min(DISK_MARGIN_BYTES, usage.total // 10)
        disk_cap = self.used_bytes() + self.reserved_bytes() + usage.free - margin
        if self.budget_bytes > 0:
            return min(self.budget_bytes, disk_cap)
        return disk_cap

    def lru_order(self) -> list[Entry]:
        return sorted(self.entries.values(), key=lambda e: (e.access_seq, e.last_access, e.key))

    # -- changes -------------------------------------------------------------
    def touch(self, key: str, *, hit: bool = True) -> None:
        entry = self.entries.get(key)
        if entry is None:
            return
        self.clock += 1
        entry.access_seq = self.clock
        entry.last_access = time.time()
        entry.hits += int(hit)
        self.save()

    def pin(self, key: str, owner: str) -> None:
        self.pins.setdefault(key, set()).add(owner)

    def unpin_owner(self, owner: str) -> None:
        for key in list(self.pins):
            self.pins[key].discard(owner)
            if not self.pins[key]:
                del self.pins[key]

    def pinned_by(self, key: str) -> set[str]:
        return set(self.pins.get(key, ()))

    def reserve(self, key: str, size: int) -> tuple[bool, str, list[str]]:
        """Make room for ``size`` bytes: (ok, reason when not, keys evicted)."""
        capacity = self.capacity()
        if self.budget_bytes > 0 and size > self.budget_bytes:
            return False, (f"{key} ({size} bytes) is larger than the cache budget ({self.budget_bytes} bytes); "
                           "raise CACHE_BUDGET_GB to cache it"), []
        need = self.used_bytes() + self.reserved_bytes() + size - capacity
        if need > 0:
            with leases.locked(self.root):  # the OnDemand node may be handing an entry to ComfyUI
                return self._evict_for(key, size, need, capacity)
        self.reserved[key] = size
        return True, "", []

    def _evict_for(self, key: str, size: int, need: int, capacity: int) -> tuple[bool, str, list[str]]:
        """Evict least recently used entries that no job pins and no OnDemand lease holds."""
        evicted: list[str] = []
        for entry in self.lru_order():
            if need <= 0:
                break
            if self.pins.get(entry.key) or entry.key == key or leases.leased(self.root, entry.key):
                continue
            need -= entry.size
            evicted.append(entry.key)
        if need > 0:
            return False, (f"no room for {key} ({size} bytes): {self.used_bytes()} bytes cached "
                           f"(in use by running jobs) and {self.reserved_bytes()} reserved of {capacity}"), []
        for victim in evicted:
            self.remove(victim, reason="evicted (least recently used)")
        self.reserved[key] = size
        return True, "", evicted

    def unreserve(self, key: str) -> None:
        self.reserved.pop(key, None)

    def commit(self, entry: Entry) -> None:
        self.reserved.pop(entry.key, None)
        self.clock += 1
        entry.access_seq = self.clock
        entry.added = entry.last_access = time.time()
        self.entries[entry.key] = entry
        self.save()

    def remove(self, key: str, *, reason: str) -> None:
        entry = self.entries.pop(key, None)
        try:
            self.path_for(key).unlink()
        except FileNotFoundError:
            pass
        log.info("cache: removed %s (%s bytes): %s", key, entry.size if entry else "?", reason)
        self.save()

    def save(self) -> None:
        data = {"version": 1, "clock": self.clock,
                "entries": [asdict(e) for e in sorted(self.entries.values(), key=lambda e: e.key)]}
        try:
            write_atomic(self.root / INDEX_NAME, json.dumps(data, indent=1).encode())
        except OSError as exc:
            log.warning("cache: could not write the index in %s (%s)", self.root, exc)
