"""The running version's spec and lock, read with the builder's readers (their one owner).

The worker only reads them: ``options.limits`` and ``options.warm_models`` of the spec, the models'
sha256 and the ``spec_digest`` of the lock. A file that is absent (volume mode without ``versions/``)
is None; one that is broken is logged once as a warning with the builder's one-line error and is
None too: the worker still serves with its environment's settings.
"""

from __future__ import annotations

import logging

from builder.errors import LockError, SpecError
from builder.lock import read_lock
from builder.spec import Spec, load_spec
from rp_handler.config import WorkerConfig

log = logging.getLogger(__name__)


def version_spec(cfg: WorkerConfig) -> Spec | None:
    """The validated spec of ``cfg.version_id``; None without a version id or a spec file."""
    if not cfg.version_id:
        return None
    path = cfg.build.spec_path(cfg.version_id)
    if not path.is_file():
        return None
    try:
        return load_spec(path)
    except SpecError as err:
        log.warning("ignoring the version spec: %s (fix it: `scripts/version.py validate %s`)", err, cfg.version_id)
        return None


def version_lock(cfg: WorkerConfig) -> dict | None:
    """The lock of ``cfg.version_id`` (``builder.lock.read_lock``); None when absent or corrupt."""
    if not cfg.version_id:
        return None
    try:
        return read_lock(cfg.build.lock_path(cfg.version_id))
    except LockError as err:
        log.warning("ignoring the version lock: %s", err)
        return None


def lock_checksums(lock: dict | None) -> dict[str, str]:
    """``{target under the models dir: sha256}`` of the lock's models (verified while copying)."""
    return {m["target"]: m["sha256"] for m in (lock or {}).get("models", [])
            if isinstance(m, dict) and isinstance(m.get("target"), str) and isinstance(m.get("sha256"), str)}


def lock_digest(lock: dict | None) -> str | None:
    """The ``spec_digest`` the running version was resolved from (reported with each job)."""
    return lock["spec_digest"] if lock else None
