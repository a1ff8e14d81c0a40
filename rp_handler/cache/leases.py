"""Short leases on cache entries that the OnDemand node has just handed to ComfyUI.

The node returns a cached path that ComfyUI opens a moment later; an entry no job pins could be
evicted in between. So the node, holding ``flock`` on ``<root>/.leases/.lock``, checks the copy and
touches ``<root>/.leases/<sha1 of key>``; eviction, holding the same lock, skips entries whose lease
is younger than ``LEASE_S``. The cache root is a local disk, where ``flock`` is reliable (the network
volume is never locked). The node keeps its own copy of this format (it must import without our
package); tests/cache/test_ondemand_node.py checks that the two agree.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LEASE_DIR = ".leases"
LEASE_S = 120.0  # ComfyUI opens a path right after resolving it; once open, an unlink is harmless


def lease_path(root: Path, key: str) -> Path:
    return Path(root) / LEASE_DIR / hashlib.sha1(key.encode()).hexdigest()


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Exclusive lock shared with the node (one process at a time checks or evicts)."""
    directory = Path(root) / LEASE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def leased(root: Path, key: str) -> bool:
    try:
        return time.time() - lease_path(root, key).stat().st_mtime < LEASE_S
    except OSError:
        return False
