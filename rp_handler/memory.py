"""GPU memory policy as pure decisions; the caller does the ``POST /free``.

After each job::

    jobs_since_free += 1
    if should_free(client.system_stats(), jobs_since_free, cfg):
        client.free(unload_models=True, free_memory=True); jobs_since_free = 0

``should_free`` is true when the smallest ``vram_free`` of the GPU devices in
``/system_stats`` is below ``cfg.free_vram_below_mb`` MiB, or after
``cfg.free_every_n_jobs`` jobs.  Both default to 0 (never), which keeps models
warm between jobs.  CPU devices (``"type": "cpu"``, where vram is RAM) are
ignored.  ``cfg`` is anything with those two attributes (``WorkerConfig``).

``is_oom(details)`` tells whether an ``execution_error`` (its ``data`` dict, or
``ExecutionFailed.details``) is an out-of-memory error: free, then retry once.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Protocol

MIB = 1024 * 1024


class MemoryConfig(Protocol):
    free_vram_below_mb: int
    free_every_n_jobs: int


def min_free_vram(stats: Mapping[str, Any]) -> int | None:
    """Smallest ``vram_free`` in bytes over the non-CPU devices; None if none reports it."""
    values = []
    for dev in stats.get("devices") or ():
        if not isinstance(dev, Mapping) or str(dev.get("type", "")).lower() == "cpu":
            continue
        free = dev.get("vram_free")
        if isinstance(free, (int, float)) and not isinstance(free, bool):
            values.append(int(free))
    return min(values) if values else None


def should_free(stats: Mapping[str, Any], jobs_since_free: int, cfg: MemoryConfig) -> bool:
    """True when the worker should ``POST /free`` now (see the module docstring)."""
    if cfg.free_every_n_jobs > 0 and jobs_since_free >= cfg.free_every_n_jobs:
        return True
    if cfg.free_vram_below_mb > 0:
        free = min_free_vram(stats)
        if free is not None and free < cfg.free_vram_below_mb * MIB:
            return True
    return False


# Exception types and messages that torch, ComfyUI and common backends use for OOM.
_OOM_TYPES = re.compile(r"(OutOfMemoryError|OOM_EXCEPTION|\bMemoryError$)")
_OOM_MESSAGES = re.compile(
    r"out of memory|allocation on device|failed to allocate|CUBLAS_STATUS_ALLOC_FAILED"
    r"|Not enough (GPU )?memory|MPS backend out of memory",
    re.IGNORECASE,
)


def is_oom(details: Mapping[str, Any] | None) -> bool:
    """True when an ``execution_error``'s data describes an out-of-memory failure."""
    if not details:
        return False
    exc_type = str(details.get("exception_type") or "")
    if _OOM_TYPES.search(exc_type):
        return True
    return bool(_OOM_MESSAGES.search(str(details.get("exception_message") or "")))
