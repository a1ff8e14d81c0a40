"""Copy one model file volume → NVMe, and a background thread that runs copies in order.

``copy_file`` streams with ``os.sendfile`` (kernel copy, works across
filesystems where ``copy_file_range`` fails with EXDEV) into
``<name>.<random>.incomplete`` next to the target and ``os.replace``s it into
place, so ComfyUI never sees a partial file.  When a sha256 is known, a second
thread hashes the bytes already written (an ``mmap`` of our own temp file, so a
source truncated under us cannot SIGBUS) while the copy goes on.  The source's
inode, size and mtime are compared before and after: a file that changed while
it was read is never cached.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from builder.atomic import incomplete
from builder.errors import ChecksumMismatch
from rp_handler.errors import CacheError

log = logging.getLogger(__name__)

CHUNK = 64 << 20  # bytes per sendfile call
THROTTLED_CHUNK = 1 << 20  # smaller steps keep a throttled read smooth
HASH_SLICE = 16 << 20


class CopyFailed(CacheError):
    """The copy did not produce a cache entry; the model is read from the volume."""

    code = "cache_copy_failed"


class SourceChanged(CopyFailed):
    code = "cache_source_changed"


class CacheFull(CopyFailed):
    code = "cache_full"


class CopyCancelled(CopyFailed):
    code = "cache_copy_cancelled"


@dataclass(frozen=True)
class CopyResult:
    size: int
    seconds: float
    sha256: str | None
    source_mtime_ns: int


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _DestHasher(threading.Thread):
    """Hashes a file we are writing, following the writer's offset."""

    def __init__(self, fd: int):
        super().__init__(name="cache-hash", daemon=True)
        self.fd = fd
        self.sha = hashlib.sha256()
        self.cond = threading.Condition()
        self.written = 0
        self.finished = False
        self.error: BaseException | None = None

    def advance(self, written: int, finished: bool = False) -> None:
        with self.cond:
            self.written = written
            self.finished = finished or self.finished
            self.cond.notify()

    def run(self) -> None:
        hashed = 0
        page = mmap.ALLOCATIONGRANULARITY
        try:
            while True:
                with self.cond:
                    while True:
                        avail = self.written - hashed
                        if not self.finished:
                            avail -= avail % page
                        if avail > 0 or self.finished:
                            break
                        self.cond.wait()
                    finished = self.finished
                if avail <= 0 and finished:
                    return
                length = min(avail, HASH_SLICE)
                with _map(self.fd, length, hashed) as mm:
                    self.sha.update(mm)
                hashed += length
        except BaseException as exc:  # reported by the copying thread
            self.error = exc

    def digest(self) -> str:
        self.join()
        if self.error is not None:
            raise CopyFailed(f"hashing the copy failed: {self.error}")
        return self.sha.hexdigest()


def _map(fd: int, length: int, offset: int) -> mmap.mmap:
    """A read-only map, pre-faulted in one call where the platform allows (fewer page faults)."""
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if populate:
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ, offset=offset)
    return mmap.mmap(fd, length, offset=offset, access=mmap.ACCESS_READ)


def _send(in_fd: int, out_fd: int, offset: int, count: int, use_sendfile: list[bool]) -> int:
    if use_sendfile[0]:
        try:
            return os.sendfile(out_fd, in_fd, offset, count)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) or offset:
                raise
            use_sendfile[0] = False  # filesystem without sendfile: plain read/write
    data = os.pread(in_fd, count, offset)
    view = memoryview(data)
    while view:
        n = os.write(out_fd, view)
        view = view[n:]
    return len(data)


def copy_file(
    src: Path,
    dst: Path,
    *,
    expected_sha256: str | None = None,
    read_throttle_bps: float | None = None,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
    fsync: bool = False,
) -> CopyResult:
    """Copy ``src`` to ``dst`` atomically; raises CopyFailed, ChecksumMismatch, or OSError for an unreadable source."""
    started = time.monotonic()
    before = os.stat(src)
    in_fd = _open_source(src, before)
    try:
        with incomplete(dst, str(src)) as tmp:
            out_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)  # RDWR: the hasher maps it
            hasher = _DestHasher(out_fd) if expected_sha256 else None
            try:
                if hasher is not None:
                    hasher.start()
                _stream(in_fd, out_fd, src, before.st_size, hasher=hasher, progress=progress, cancel=cancel,
                        throttle_bps=read_throttle_bps, started=started)
                _check_unchanged(in_fd, src, before)
                digest = _finish(out_fd, hasher, fsync)
                hasher = None
            finally:
                if hasher is not None:  # failed mid-copy: stop the hash thread before the file goes
                    hasher.advance(0, finished=True)
                    hasher.join()
                os.close(out_fd)
            if digest is not None and digest != expected_sha256.lower():
                raise ChecksumMismatch(f"{src} (sha256)", expected_sha256.lower(), digest)
            os.replace(tmp, dst)
    finally:
        os.close(in_fd)
    return CopyResult(before.st_size, time.monotonic() - started, digest, before.st_mtime_ns)


def _open_source(src: Path, before: os.stat_result) -> int:
    """Open ``src`` for a sequential read; SourceChanged when it is no longer the file just stat'ed."""
    in_fd = os.open(src, os.O_RDONLY)
    if _signature(os.fstat(in_fd)) != _signature(before):
        os.close(in_fd)
        raise SourceChanged(f"{src} was replaced while opening it; read it from the volume")
    try:
        os.posix_fadvise(in_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError):
        pass
    return in_fd


def _stream(in_fd: int, out_fd: int, src: Path, size: int, *, hasher: _DestHasher | None,
            progress: Callable[[int], None] | None, cancel: threading.Event | None,
            throttle_bps: float | None, started: float) -> None:
    """Send ``size`` bytes, feeding the hasher and progress, paced to ``throttle_bps`` when set."""
    chunk = THROTTLED_CHUNK if throttle_bps else CHUNK
    offset = 0
    use_sendfile = [True]
    while offset < size:
        if cancel is not None and cancel.is_set():
            raise CopyCancelled(f"copy of {src} cancelled")
        try:
            n = _send(in_fd, out_fd, offset, min(chunk, size - offset), use_sendfile)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise CacheFull(f"no space left on the cache disk while copying {src.name} "
                                f"({offset}/{size} bytes); it is read from the volume") from None
            raise
        if n == 0:
            raise SourceChanged(f"{src} shrank while it was copied ({offset} of {size} bytes); "
                                "it is read from the volume")
        offset += n
        if hasher is not None:
            hasher.advance(offset)
        if progress is not None:
            progress(offset)
        if throttle_bps:
            ahead = offset / throttle_bps - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)


def _check_unchanged(in_fd: int, src: Path, before: os.stat_result) -> None:
    """SourceChanged when ``src`` (the open file or the path) differs from ``before`` after the copy."""
    after_fd = os.fstat(in_fd)
    try:
        after_path = os.stat(src)
    except FileNotFoundError:
        raise SourceChanged(f"{src} was removed while it was copied") from None
    if _signature(after_fd) != _signature(before) or _signature(after_path) != _signature(before):
        raise SourceChanged(f"{src} changed while it was copied (size or mtime differs); "
                            "not cached, it is read from the volume")


def _finish(out_fd: int, hasher: _DestHasher | None, fsync: bool) -> str | None:
    """Let the hasher reach the end (the fsync overlaps with it); the copy's sha256 when hashed."""
    if hasher is not None:
        hasher.advance(os.fstat(out_fd).st_size, finished=True)
    if fsync:
        os.fsync(out_fd)
    return hasher.digest() if hasher is not None else None


@dataclass
class CopyTask:
    """One scheduled copy; ``done`` is set when it ended (see ``error``)."""

    key: str
    src: Path
    dst: Path
    size: int
    sha256: str | None = None
    bytes_done: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    result: CopyResult | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


class CopyWorker:
    """One background thread that runs ``CopyTask``s in submission order.

    Large sequential reads one at a time suit a network volume best.
    ``on_done(task)`` runs on the worker thread after each task.
    """

    def __init__(self, on_done: Callable[[CopyTask], None], *, read_throttle_bps: float | None = None,
                 idle: Callable[[], None] | None = None, idle_interval_s: float = 0.5):
        self._queue: "queue.Queue[CopyTask | None]" = queue.Queue()
        self._on_done = on_done
        self._idle = idle
        self._idle_interval_s = idle_interval_s
        self.read_throttle_bps = read_throttle_bps
        self.current: CopyTask | None = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvme-cache-copier", daemon=True)
        self._thread.start()

    def submit(self, task: CopyTask) -> None:
        self._queue.put(task)

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 5.0) -> None:
        self._cancel.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                task = self._queue.get(timeout=self._idle_interval_s)
            except queue.Empty:
                if self._idle is not None:
                    self._safe(self._idle)
                continue
            if task is None:
                return
            self.current = task
            task.started_at = time.monotonic()
            try:
                task.result = copy_file(
                    task.src, task.dst, expected_sha256=task.sha256,
                    read_throttle_bps=self.read_throttle_bps, cancel=self._cancel,
                    progress=lambda n, t=task: setattr(t, "bytes_done", n),
                )
            except (CopyFailed, OSError) as exc:
                task.error = _describe(exc, task.src)
            except BaseException as exc:  # keep the worker alive; the task reports it
                log.exception("cache copy of %s crashed", task.src)
                task.error = f"{type(exc).__name__}: {exc}"
            task.finished_at = time.monotonic()
            self.current = None
            self._safe(lambda: self._on_done(task))
            task.done.set()
            if self._idle is not None:
                self._safe(self._idle)

    @staticmethod
    def _safe(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("cache bookkeeping failed")


def _describe(exc: BaseException, src: Path) -> str:
    if isinstance(exc, CopyFailed):
        return str(exc)
    if isinstance(exc, ChecksumMismatch):
        return f"{exc}; fix the file on the volume or the lock"
    if isinstance(exc, PermissionError):
        return f"{src} is not readable (permission denied); fix its permissions on the volume"
    if isinstance(exc, FileNotFoundError):
        return f"{src} disappeared before it was copied"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on the cache disk for {src.name}; it is read from the volume"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS):
        return f"cannot write the cache copy of {src.name} ({exc.strerror}); check the cache dir permissions"
    return f"copy of {src} failed: {exc}"
