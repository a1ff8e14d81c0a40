"""Content-addressed model store: ``<root>/models/<algo>/<HH>/<hex>/blob``.

Blobs are keyed by sha256; when a spec names an md5 the same blob is also
hardlinked under ``md5/``.  A blob is written only after its digest matched, by
``os.replace`` of a writer-private temp, and made read-only (hardlinked targets
share the inode, so this guards the store against in-place edits).  Locks here
only save duplicate downloads; correctness never depends on them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator

from builder.atomic import link_or_copy_into
from builder.models.checksum import Digests

log = logging.getLogger(__name__)

LOCK_WAIT_S = 30 * 60
STALE_TEMP_S = 24 * 3600  # temps of writers killed mid-download are swept after a day


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.models = self.root / "models"

    def blob_path(self, algo: str, hexdigest: str) -> Path:
        return self.models / algo / hexdigest[:2] / hexdigest / "blob"

    def find(self, sha256: str | None = None, md5: str | None = None) -> Path | None:
        for algo, hexd in (("sha256", sha256), ("md5", md5)):
            if hexd:
                p = self.blob_path(algo, hexd)
                if p.is_file():
                    return p
        return None

    def temp_dir(self, sha256: str | None) -> Path:
        """Where a writer puts its ``.incomplete``: the blob's own dir when the hash is known."""
        d = self.blob_path("sha256", sha256).parent if sha256 else self.models / ".incoming"
        d.mkdir(parents=True, exist_ok=True)
        sweep_stale(d)
        return d

    def commit(self, tmp: Path, digests: Digests) -> Path:
        """Move a verified temp into its blob path (atomic; the last writer wins, same bytes)."""
        dest = self.blob_path("sha256", digests.hexdigest("sha256"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        self._index(dest, digests)
        return dest

    def _index(self, blob: Path, digests: Digests) -> None:
        for algo in digests.algos:
            if algo == "sha256":
                continue
            alias = self.blob_path(algo, digests.hexdigest(algo))
            if not alias.exists():
                with contextlib.suppress(OSError):
                    link_or_copy_into(blob, alias)

    def adopt(self, path: Path, digests: Digests) -> Path | None:
        """Hardlink an already-verified file into the store when its blob is missing (same filesystem only)."""
        dest = self.blob_path("sha256", digests.hexdigest("sha256"))
        if dest.exists():
            return dest
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f"blob.{os.getpid()}.{time.monotonic_ns()}.incomplete")
            os.link(path, tmp)
            os.replace(tmp, dest)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
            return None
        self._index(dest, digests)
        return dest

    def discard(self, blob: Path) -> None:
        """Remove a blob that failed verification (and its empty directory)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(blob)
        with contextlib.suppress(OSError):
            blob.parent.rmdir()

    @contextlib.contextmanager
    def lock(self, key: str, label: str) -> Iterator[None]:
        """Advisory lock so two processes don't download the same blob twice.

        Best effort: if the filesystem has no working flock the download just happens twice.
        """
        lock_dir = self.models / ".locks"
        path = lock_dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")
        for _ in range(3):  # another process may prune the empty .locks folder in between
            lock_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                break
            except FileNotFoundError:
                continue
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        started = time.monotonic()
        next_log = started + 10
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    now = time.monotonic()
                    if now - started > LOCK_WAIT_S:
                        log.warning("%s: lock still held after %.0f s; downloading anyway", label, now - started)
                        break
                    if now >= next_log:
                        log.info("%s: another process is fetching it; still waiting after %.0f s", label, now - started)
                        next_log = now + 30
                    time.sleep(0.2)
                except OSError:
                    break  # no flock on this filesystem: correctness does not need it
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()  # nothing left behind; a waiter holding the old inode just proceeds
            os.close(fd)
            self.prune(lock_dir)

    def prune(self, directory: Path) -> None:
        """Remove ``directory`` and its parents up to the store root while they are empty."""
        with contextlib.suppress(ValueError):
            directory.relative_to(self.models)
            while directory != self.root and directory.is_relative_to(self.root):
                try:
                    directory.rmdir()
                except OSError:
                    return  # not empty (or already gone and its parent in use)
                directory = directory.parent


def sweep_stale(directory: Path, max_age: float = STALE_TEMP_S) -> None:
    """Remove ``*.incomplete`` left by killed writers (old enough that nobody is still writing them)."""
    cutoff = time.time() - max_age
    for p in directory.glob("*.incomplete"):
        with contextlib.suppress(OSError):
            if p.stat().st_mtime < cutoff:
                p.unlink()
