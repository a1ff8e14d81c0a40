"""Checksums: parse ``algo:hex``, hash files and streams in one pass.

Fast paths (see PERF_LIMITS.md): a local file is hashed from ``mmap`` slices
(no copy into Python buffers); a stream is hashed on a second thread so the
reader/writer is never waiting for the CPU-bound digest.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from builder.errors import ModelSpecError

ALGOS = {"sha256": 64, "md5": 32}
SLICE = 8 * 1024 * 1024
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class Checksum:
    algo: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algo}:{self.hex}"


def parse_checksum(text: str, *, where: str = "checksum") -> Checksum:
    """``"sha256:<64 hex>"`` or ``"md5:<32 hex>"``; a bare 64-hex string means sha256."""
    raw = (text or "").strip()
    algo, sep, hexpart = raw.partition(":")
    if not sep:
        algo, hexpart = "sha256", raw
    algo, hexpart = algo.strip().lower(), hexpart.strip().lower()
    if algo not in ALGOS:
        raise ModelSpecError(
            f"{where}: unknown checksum algorithm {algo!r} in {raw!r} (use sha256:<64 hex> or md5:<32 hex>)"
        )
    if len(hexpart) != ALGOS[algo] or not _HEX.match(hexpart):
        raise ModelSpecError(
            f"{where}: malformed {algo} checksum {raw!r} (expected {algo}:<{ALGOS[algo]} hex digits>)"
        )
    return Checksum(algo, hexpart)


class Digests:
    """A set of hashers fed together; always includes sha256."""

    def __init__(self, algos: Iterable[str] = ("sha256",)):
        names = ["sha256", *(a for a in algos if a != "sha256")]
        self._h = {name: hashlib.new(name) for name in dict.fromkeys(names)}
        self.size = 0

    def update(self, data) -> None:
        for h in self._h.values():
            h.update(data)
        self.size += len(data)

    def hexdigest(self, algo: str = "sha256") -> str:
        return self._h[algo].hexdigest()

    def checksum(self, algo: str = "sha256") -> Checksum:
        return Checksum(algo, self.hexdigest(algo))

    @property
    def algos(self) -> list[str]:
        return list(self._h)


Progress = Callable[[int], None]


def drop_pages(mm, off: int, length: int) -> None:
    """Unmap slices we are done with so RSS stays flat (the page cache keeps the data)."""
    try:
        mm.madvise(mmap.MADV_DONTNEED, off, length)
    except (OSError, ValueError):
        pass


def hash_mmap(mm, size: int, digests: Digests, progress: Progress | None = None, start: int = 0) -> None:
    """Hash ``mm[start:size]`` in 8 MiB slices (``start`` page-aligned)."""
    view = memoryview(mm)
    try:
        for off in range(start, size, SLICE):
            chunk = view[off : min(off + SLICE, size)]
            digests.update(chunk)
            n = len(chunk)
            chunk.release()
            drop_pages(mm, off, n)
            if progress:
                progress(n)
    finally:
        view.release()


def hash_file(path: Path, algos: Iterable[str] = ("sha256",), progress: Progress | None = None) -> Digests:
    """Hash a local file via mmap slices (reaches the in-memory hash rate on cached files)."""
    digests = Digests(algos)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return digests
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            mm.madvise(mmap.MADV_SEQUENTIAL)
            hash_mmap(mm, size, digests, progress)
    return digests


def checksum_file(path: str | os.PathLike, algo: str = "sha256") -> str:
    """``"<algo>:<hex>"`` of a local file (used by ``create --auto-checksum``)."""
    if algo not in ALGOS:
        raise ModelSpecError(f"unknown checksum algorithm {algo!r} (use sha256 or md5)")
    return str(hash_file(Path(path), (algo,)).checksum(algo))


class HashThread:
    """Hash chunks on a second thread, in the order they are fed.

    ``feed`` hands over a bytes-like chunk (the caller must not reuse its buffer);
    ``reset`` starts over (a server ignored ``Range``); ``finish`` joins and returns
    the digests.  The queue is bounded so memory stays flat.
    """

    _RESET = object()
    _END = object()

    def __init__(self, algos: Iterable[str] = ("sha256",), depth: int = 16):
        self._algos = list(algos)
        self.digests = Digests(self._algos)
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._t = threading.Thread(target=self._run, name="hash", daemon=True)
        self._t.start()

    def _run(self) -> None:
        try:
            while True:
                item = self._q.get()
                if item is self._END:
                    return
                if item is self._RESET:
                    self.digests = Digests(self._algos)
                    continue
                self.digests.update(item)
        except BaseException as exc:  # pragma: no cover - surfaced in finish()
            self._error = exc
            while self._q.get() is not self._END:
                pass

    def feed(self, chunk) -> None:
        self._q.put(chunk)

    def reset(self) -> None:
        self._q.put(self._RESET)

    def finish(self) -> Digests:
        self._q.put(self._END)
        self._t.join()
        if self._error:
            raise self._error
        return self.digests
