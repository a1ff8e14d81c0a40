"""A job's deadline bounds the whole job, retries included; what the worker does when it passes.

The clock starts when the job's first prompt is submitted (ComfyUI's boot and the input staging
before it do not count). At the deadline the client interrupts the prompt; ComfyUI then has
``COMFY_INTERRUPT_GRACE_S`` to answer and stop it. A ComfyUI that does not (frozen, deadlocked, or
a node that ignores interrupts) is killed and restarted, and the job fails with one line saying so.
A timed-out job is never retried, and no retry starts after the deadline.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from rp_handler import errors

log = logging.getLogger(__name__)


@dataclass
class JobDeadline:
    timeout_s: float
    at: float | None = None  # time.monotonic() of the deadline, once the first prompt is submitted

    def start(self) -> float:
        if self.at is None:
            self.at = time.monotonic() + self.timeout_s
        return self.at

    def left(self) -> float | None:
        """Seconds left (may be negative); None before the clock started."""
        return None if self.at is None else self.at - time.monotonic()

    @property
    def passed(self) -> bool:
        left = self.left()
        return left is not None and left <= 0


def _prompt_state(client: Any, prompt_id: str, end: float) -> str:
    """'stopped' once ``prompt_id`` is in /history or out of the queue, 'unresponsive' if ComfyUI does not
    answer before ``end``, 'gone' if it died, else 'running'."""
    try:
        timeout = max(0.05, end - time.monotonic())
        if client.history(prompt_id, timeout=timeout):
            return "stopped"
        queue = client.queue()
    except errors.ComfyUnresponsive:
        return "unresponsive"
    except errors.WorkerError:
        return "gone"
    queued = any(item[1] == prompt_id for key in ("queue_running", "queue_pending")
                 for item in (queue or {}).get(key, []))
    return "running" if queued else "stopped"


def wait_stopped(client: Any, prompt_id: str, end: float) -> str:
    """Poll until ``end`` for the interrupted prompt to stop; the last ``_prompt_state``."""
    while True:
        state = _prompt_state(client, prompt_id, end)
        if state != "running" or time.monotonic() >= end:
            return state
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))


def recover_after_timeout(err: errors.ComfyTimeout, *, client: Any, supervisor: Any, generation: int,
                          deadline: JobDeadline, grace_s: float) -> None:
    """After the client raised ``err`` at the deadline: restart ComfyUI unless the prompt stopped within the
    grace; ``err`` gets the one-line message for the job (the kill is waited for, so the next job finds
    the restarting ComfyUI, never the dying one)."""
    prompt_id = err.details.get("prompt_id", "")
    head = f"the job timed out after {deadline.timeout_s:g} s (timeout_s)"
    grace = f"COMFY_INTERRUPT_GRACE_S={grace_s:g} s"
    if err.details.get("comfy_unresponsive"):
        state = "unresponsive"
    else:
        state = wait_stopped(client, prompt_id, (deadline.at or time.monotonic()) + grace_s)
    if state == "stopped":
        err.args = (f"{head}: ComfyUI prompt {prompt_id} did not finish before the job deadline; it was interrupted",)
        return
    if state == "gone":
        err.args = (f"{head}: ComfyUI prompt {prompt_id} did not finish before the job deadline, and ComfyUI exited",)
        return
    if state == "unresponsive":
        why = f"ComfyUI was unresponsive (no answer to the interrupt within {grace})"
    else:
        why = f"ComfyUI prompt {prompt_id} ignored the interrupt for {grace}"
    err.details["comfy_unresponsive"] = state == "unresponsive"
    if supervisor is None:
        err.args = (f"{head} and {why}; this worker does not own ComfyUI: restart it",)
        return
    log.warning("%s after the deadline of prompt %s: restarting ComfyUI", why, prompt_id)
    supervisor.replace(generation, f"{why} after a job deadline")
    err.details["comfy_restarted"] = True
    err.args = (f"{head} and {why}; it was killed and restarted",)
