"""Whole-file writes that no reader ever sees half-done."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``<name>.<random>.incomplete`` next to ``path``, then ``os.replace`` it into place; the temp
    file is removed on any failure. The directory must exist."""
    tmp = path.parent / f"{path.name}.{os.urandom(4).hex()}.incomplete"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
