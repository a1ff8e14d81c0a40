"""Verified copy: the kernel copies (``copy_file_range``, as ``cp`` does) while a second
thread hashes an ``mmap`` of the source.

Across filesystems where ``copy_file_range`` fails (EXDEV), the bytes are written
from the same mapping instead.  Either way the copy and the digest run on two cores
and nothing is copied through Python buffers (PERF_LIMITS.md: mmap + hash thread
0.79–1.30 GB/s vs ``cp`` 0.74–0.82).  Only map files that are
not truncated while we read them (a shrinking mapped file raises SIGBUS): our
blobs, and model files the user handed us.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from pathlib import Path
from typing import Callable, Iterable

from builder.models.checksum import SLICE, Digests, drop_pages, hash_mmap


CFR_CHUNK = 64 * 1024 * 1024
_CFR_FALLBACK = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


def _copy_range(src_fd: int, dst_fd: int, size: int, progress) -> bool:
    """Kernel-side copy (``copy_file_range``, like ``cp``); False when this pair of files can't use it."""
    off = 0
    while off < size:
        try:
            n = os.copy_file_range(src_fd, dst_fd, min(CFR_CHUNK, size - off), off, off)
        except OSError as exc:
            if off == 0 and exc.errno in _CFR_FALLBACK:
                return False
            raise
        if n == 0:
            raise OSError(errno.EIO, f"source shrank while copying (at byte {off} of {size})")
        off += n
        if progress:
            progress(n)
    return True


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


def copy_verified(
    src: Path, dst_tmp: Path, algos: Iterable[str] = ("sha256",), progress: Callable[[int], None] | None = None
) -> Digests:
    """Copy ``src`` to ``dst_tmp`` (created) and return the digests of the bytes copied."""
    digests = Digests(algos)
    with open(src, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        fd = os.open(dst_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if size == 0:
                return digests
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                mm.madvise(mmap.MADV_SEQUENTIAL)
                errors: list[BaseException] = []

                def hasher() -> None:
                    try:
                        hash_mmap(mm, size, digests)
                    except BaseException as exc:  # pragma: no cover - re-raised below
                        errors.append(exc)

                t = threading.Thread(target=hasher, name="copy-hash", daemon=True)
                t.start()
                view = memoryview(mm)
                try:
                    copied = _copy_range(f.fileno(), fd, size, progress)
                    for off in range(0, 0 if copied else size, SLICE):
                        chunk = view[off : off + SLICE]
                        _write_all(fd, chunk)
                        n = len(chunk)
                        chunk.release()
                        drop_pages(mm, off, n)
                        if progress:
                            progress(min(SLICE, size - off))
                finally:
                    view.release()
                    t.join()
                if errors:
                    raise errors[0]
        finally:
            os.close(fd)
    return digests
