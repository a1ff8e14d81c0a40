"""A write-only file object that hashes on a second thread what it writes.

Handed to library downloaders (huggingface_hub ``http_get``, google-cloud-storage
``download_to_file``) so their bytes are hashed in the same pass they are written.
"""

from __future__ import annotations

import os
from typing import Callable

from builder.models.checksum import Digests, HashThread


class HashingWriter:
    def __init__(self, fd: int, algos=("sha256",), progress: Callable[[int], None] | None = None):
        self._fd = fd
        self._hash = HashThread(algos)
        self._pos = 0
        self._progress = progress

    def write(self, data) -> int:
        data = bytes(data) if not isinstance(data, bytes) else data
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._hash.feed(data)
        self._pos += len(data)
        if self._progress:
            self._progress(len(data))
        return len(data)

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        """Only rewinding to the start is supported (a library restarting its download)."""
        if whence != 0 or pos != 0:
            if whence == 0 and pos == self._pos:
                return pos
            raise OSError("HashingWriter can only seek back to 0")
        return 0

    def truncate(self, size: int | None = None) -> int:
        if size not in (None, 0):
            raise OSError("HashingWriter can only truncate to 0")
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        if self._progress:
            self._progress(-self._pos)
        self._pos = 0
        self._hash.reset()
        return 0

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def finish(self) -> Digests:
        return self._hash.finish()
