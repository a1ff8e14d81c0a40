"""Stopping a job when RunPod says so (the job was cancelled, or its execution timeout passed).

runpod's job loop long-polls a per-job stop channel and cancels the job's asyncio task. The job's
blocking work runs on a thread (``run_cancellable``), so the loop stays free to see that stop; on
cancellation ``JobControl.stop`` removes the job's prompt from ComfyUI's queue if it has not started,
interrupts it if it runs (``/interrupt`` with its ``prompt_id``: another job's prompt is never
touched), and runs the job's stop hooks (cancel pending uploads, wake the waiting client). The
thread then ends the job (``errors.Cancelled``) and cleans its files; the task ends only after that,
so the next job finds a clean worker.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import uuid
from typing import Any, Callable, TypeVar

from rp_handler import errors

log = logging.getLogger(__name__)

T = TypeVar("T")
STOP_MESSAGE = "the job was stopped by RunPod (cancelled, or its execution timeout passed)"
CLEANUP_WAIT_S = 30.0  # how long a stopped job's task waits for its thread to clean up


def stop_prompt(url: str, prompt_id: str, *, timeout: float = 5.0) -> None:
    """Remove ``prompt_id`` from ComfyUI's queue if pending, then interrupt it if it runs.

    Its own short connection: the job's client may be busy. Delete first: a prompt that starts
    between the two calls is still interrupted.
    """
    from rp_handler.comfy import ComfyClient

    client = ComfyClient(url, http_timeout=timeout)
    try:
        client.delete_queued([prompt_id], timeout=timeout)
        client.interrupt(prompt_id, timeout=timeout)
        log.info("prompt %s removed from the queue / interrupted", prompt_id)
    except errors.WorkerError as err:
        log.warning("could not stop prompt %s: %s", prompt_id, err)
    finally:
        client.close()


def queue_state(client: Any, prompt_id: str) -> str:
    """``running``, ``pending`` or ``gone``: where ``prompt_id`` is in ComfyUI's queue."""
    queue = client.queue() or {}
    for key, state in (("queue_running", "running"), ("queue_pending", "pending")):
        if any(len(item) > 1 and item[1] == prompt_id for item in queue.get(key, [])):
            return state
    return "gone"


def settle_stopped(client: Any, supervisor: Any, generation: int, prompt_id: str, grace_s: float) -> None:
    """After a stop: wait up to ``grace_s`` for the prompt to leave ComfyUI; a prompt still queued is
    removed again, one still running (ignoring the interrupt) gets ComfyUI restarted, as after a timeout."""
    from rp_handler.deadline import wait_stopped

    state = wait_stopped(client, prompt_id, time.monotonic() + grace_s)
    if state == "running":
        try:
            if queue_state(client, prompt_id) == "pending":
                stop_prompt(client.base_url, prompt_id)
                return
        except errors.WorkerError:
            pass
    if state in ("running", "unresponsive") and supervisor is not None:
        supervisor.replace(generation, f"prompt {prompt_id} ignored the stop for COMFY_INTERRUPT_GRACE_S={grace_s:g} s")


class JobControl:
    """One job's stop flag, its prompt (once queued) and what to do on a stop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._prompt: tuple[str, str] | None = None  # (ComfyUI url, prompt_id)
        self._hooks: list[Callable[[], None]] = []
        self.stopped_at: float | None = None  # time.monotonic() of the stop

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def error(self) -> errors.Cancelled:
        return errors.Cancelled(STOP_MESSAGE, {"stopped": True})

    def check(self) -> None:
        """Raise ``errors.Cancelled`` once the job was stopped."""
        if self._event.is_set():
            raise self.error()

    def new_prompt(self, url: str) -> str:
        """A prompt id for the job's next submit, registered before the POST so a stop never misses it."""
        prompt_id = str(uuid.uuid4())
        with self._lock:
            self._prompt = (url, prompt_id)
        return prompt_id

    def submitted(self) -> None:
        """After the POST: a stop that came while it was in flight may have missed the prompt."""
        with self._lock:
            prompt = self._prompt if self._event.is_set() else None
        if prompt is not None:
            stop_prompt(*prompt)
        self.check()

    def on_stop(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run ``hook`` on a stop (at once if already stopped); returns a function that unregisters it."""
        with self._lock:
            run_now = self._event.is_set()
            if not run_now:
                self._hooks.append(hook)
        if run_now:
            hook()

        def remove() -> None:
            with self._lock:
                if hook in self._hooks:
                    self._hooks.remove(hook)

        return remove

    def stop(self) -> None:
        """Stop the job: its prompt first (the GPU time), then its hooks. Safe to call twice."""
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            self.stopped_at = time.monotonic()
            prompt, hooks = self._prompt, list(self._hooks)
        if prompt is not None:
            stop_prompt(*prompt)
        for hook in hooks:
            try:
                hook()
            except Exception as err:  # a hook must not keep the others from running
                log.warning("stop hook failed: %s", err)


async def run_cancellable(work: Callable[[JobControl], T], *, job_id: str = "-",
                          cleanup_wait_s: float = CLEANUP_WAIT_S) -> T:
    """Run ``work(control)`` on a thread; when this task is cancelled, stop it and wait for its cleanup.

    The thread runs in a copy of the caller's context (the job id of log records).
    """
    control = JobControl()
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    future: asyncio.Future[Any] = loop.run_in_executor(None, ctx.run, work, control)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        log.warning("RunPod stopped job %s: stopping its prompt", job_id)
        await loop.run_in_executor(None, control.stop)
        try:
            await asyncio.wait_for(asyncio.shield(future), cleanup_wait_s)
        except asyncio.TimeoutError:
            log.warning("the stopped job's thread did not finish within %.0f s", cleanup_wait_s)
        except Exception as err:  # the job's own error no longer matters: RunPod stopped it
            log.debug("stopped job ended with %s", err)
        raise
