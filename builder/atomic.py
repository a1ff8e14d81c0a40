"""Atomic file placement, the one owner: each writer its own ``<name>.<random>.incomplete``, then ``os.replace``.

Correctness never depends on a lock: two writers of the same file each write their
own temp in the destination directory and the last ``os.replace`` wins with a
complete, verified file.  Disk-full errors become :class:`DiskFullError` with the
temp removed.  The builder (locks, specs, state, snapshots, models) and the worker
(inputs, outputs, the cache index, extra_model_paths.yaml) all write through here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from builder.errors import DiskFullError

_NOSPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def temp_name(dest: Path) -> Path:
    return dest.with_name(f"{dest.name}.{secrets.token_hex(6)}.incomplete")


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _NOSPACE


def check_free_space(directory: Path, needed: int | None, what: str) -> None:
    """Fail early when ``needed`` bytes clearly do not fit in ``directory``."""
    if not needed:
        return
    try:
        st = os.statvfs(directory)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < needed:
        raise DiskFullError(
            f"not enough space for {what}: needs {needed} bytes, {free} free in {directory} "
            "(free some space or point --cache-dir/--models-dir elsewhere)"
        )


@contextlib.contextmanager
def incomplete(dest: Path, what: str) -> Iterator[Path]:
    """Yield a unique temp path beside ``dest``; remove it unless the caller replaced it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(dest)
    try:
        yield tmp
    except OSError as exc:
        if is_no_space(exc):
            raise DiskFullError(
                f"no space left on device while writing {what} into {dest.parent} "
                "(the partial file was removed; free some space or use another --cache-dir/--models-dir)"
            ) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_atomic(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` through a temp file beside it; ``fsync`` before the rename when asked.

    The parent directory is created when missing; the temp file is removed on any failure.
    """
    with incomplete(path, str(path)) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)


def write_if_changed(path: Path, data: bytes) -> bool:
    """:func:`write_atomic` (fsynced) unless ``path`` already holds exactly ``data``; True when written."""
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    write_atomic(path, data, fsync=True)
    return True


def link_or_copy_into(src: Path, dest: Path) -> str:
    """Place ``src`` at ``dest`` atomically: hardlink when possible, else a plain copy.

    Returns ``"hardlink"`` or ``"copy"``.  (The verified copy lives in ``copy.py``;
    this plain form is for files that were just verified.)
    """
    with incomplete(dest, str(dest)) as tmp:
        try:
            os.link(src, tmp)
            mode = "hardlink"
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(src, tmp)
            mode = "copy"
        os.replace(tmp, dest)
    return mode
