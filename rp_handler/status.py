"""The worker's two actions besides a job: ``{"action": "status"}`` and ``{"action": "warm"}``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from rp_handler import errors
from rp_handler.timings import COLD

if TYPE_CHECKING:
    from rp_handler.context import WorkerContext

log = logging.getLogger(__name__)


def warm_payload(raw_input: Any, ctx: WorkerContext) -> dict:
    """``{"action": "warm", "models": [...] | "workflow": {...}, "wait": bool}``: preload into the NVMe cache."""
    from rp_handler.cache.actions import parse_warm

    req = parse_warm(raw_input, max_timeout_s=ctx.cfg.job_max_timeout_s)
    if ctx.cache is None:
        raise errors.InputError("the NVMe model cache is off on this worker (NVME_CACHE_DIR is not set): "
                                "nothing to warm", {"field": "action"})
    return ctx.cache.warm(req)


def status_payload(ctx: WorkerContext) -> dict:
    """``{"action": "status"}``: ComfyUI state, version, lock digest (and hooks, e.g. the model cache)."""
    sup = ctx.supervisor
    comfy: dict[str, Any] = {"url": ctx.url}
    if sup is not None:
        comfy.update(running=sup.proc.alive, ready=sup.ready, pid=sup.proc.pid, restarts=sup.restarts,
                     crashes=len(sup.crashes), killed_on_purpose=len(sup.kills),
                     generation=sup.generation, gave_up=sup.gave_up)
        if not sup.proc.alive and sup.last_exit_tail:
            comfy["log_tail"] = sup.last_exit_tail[-10:]
    ready = sup.ready if sup is not None else True
    if ready:
        try:
            with ctx.clients.lease(sup.generation if sup is not None else 0) as client:
                comfy["system_stats"] = client.system_stats()
        except Exception as err:
            comfy["error"] = errors.one_line(f"{type(err).__name__}: {err}", 200)
    payload: dict[str, Any] = {
        "status": "ready" if ready else "starting",
        "comfy": comfy,
        "version": ctx.version_id or None,
        "lock_digest": ctx.lock_digest,
        "jobs_done": ctx.jobs_done,
        "cold_start": COLD.snapshot(),
    }
    for hook in ctx.status_hooks:
        try:
            payload.update(hook())
        except Exception as err:
            log.warning("status hook failed: %s", err)
    return payload
