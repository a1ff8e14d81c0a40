"""One prompt's wait, as plain parts: its clocks, what its events said, and how it ended.

``ComfyClient.wait`` (rp_handler/comfy.py) drives these: :class:`WaitClock` holds the three timers
(the job's deadline, the "still waiting" log line, the /history poll), :class:`Seen` collects the
websocket events, and :func:`result_of` / :func:`failure_error` turn a finished prompt into a
:class:`PromptResult` or the worker's error. No I/O here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from rp_handler import errors
from rp_handler.events import Event, Executed, Executing, ExecutionError, ExecutionInterrupted, ExecutionStart
from rp_handler.memory import is_oom

LOG_EVERY_S = 30.0
POLL_AFTER_RECONNECT_S = 0.25
ALIVE_CHECK_S = 0.5


@dataclass
class PromptResult:
    prompt_id: str
    outputs: dict  # history "outputs": {node_id: {"images": [{filename, subfolder, type}], ...}}
    status: dict
    node_errors: dict
    events: list[Event]
    started_at: float | None = None  # time.monotonic() of execution_start
    finished_at: float | None = None  # time.monotonic() of the final executing(node=None)
    from_history: bool = field(default=False)  # completion learnt from /history (socket lost)


class WaitClock:
    """The job's ``deadline`` (monotonic), a log line every 30 s, and the /history poll.

    The poll runs every ``poll_every`` s; after a lost websocket every 0.25 s, doubling back up.
    """

    def __init__(self, deadline: float, poll_every: float, *, check_alive: bool):
        self.deadline = deadline
        self.started = time.monotonic()
        self.poll_max = self.poll_every = poll_every
        self.next_poll = self.started + poll_every
        self.next_log = self.started + LOG_EVERY_S
        self.check_alive = check_alive

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def until_wake(self) -> float:
        """How long to block for events before a timer is due."""
        now = time.monotonic()
        wake = min(self.deadline, self.next_poll, self.next_log)
        if self.check_alive:
            wake = min(wake, now + ALIVE_CHECK_S)
        return wake - now

    def log_due(self) -> bool:
        now = time.monotonic()
        if now < self.next_log:
            return False
        self.next_log = now + LOG_EVERY_S
        return True

    def poll_due(self) -> bool:
        return time.monotonic() >= self.next_poll

    def polled(self) -> None:
        self.poll_every = min(self.poll_every * 2, self.poll_max)
        self.next_poll = time.monotonic() + self.poll_every

    def poll_soon(self) -> None:
        self.poll_every = POLL_AFTER_RECONNECT_S
        self.next_poll = time.monotonic() + self.poll_every

    @property
    def waited(self) -> float:
        return time.monotonic() - self.started


@dataclass
class Seen:
    """What the websocket said about one prompt so far."""

    events: list[Event] = field(default_factory=list)
    started: float | None = None
    finished: float | None = None
    failure: Event | None = None

    def absorb(self, batch: list[Event], on_event: Callable[[Event], None] | None) -> bool:
        """Record ``batch`` (passing each event on); True at the final ``executing`` with ``node: null``."""
        for ev in batch:
            self.events.append(ev)
            if isinstance(ev, ExecutionStart):
                self.started = time.monotonic()
            elif isinstance(ev, (ExecutionError, ExecutionInterrupted)):
                self.failure = ev
            if on_event is not None:
                on_event(ev)
            if isinstance(ev, Executing) and ev.node is None:
                self.finished = time.monotonic()
                return True
        return False


def result_of(prompt_id: str, seen: Seen, entry: dict, node_errors: dict, *, from_history: bool) -> PromptResult:
    """The finished prompt from its /history ``entry`` (or, without one, from the events); raises its failure."""
    status = entry.get("status", {}) if entry else {
        "status_str": "error" if seen.failure else "success", "completed": seen.failure is None, "messages": []}
    result = PromptResult(prompt_id=prompt_id, outputs=entry.get("outputs") if entry else outputs_from_events(seen.events),
                          status=status, node_errors=node_errors, events=seen.events, started_at=seen.started,
                          finished_at=seen.finished, from_history=from_history)
    failure = seen.failure
    if failure is None and entry:
        failure = failure_from_history(prompt_id, entry)
    if failure is not None:
        raise failure_error(prompt_id, failure)
    return result


def outputs_from_events(events: list[Event]) -> dict:
    out: dict = {}
    for ev in events:
        if isinstance(ev, Executed) and ev.node is not None and ev.output:
            out[ev.node] = ev.output
    return out


def failure_from_history(prompt_id: str, entry: dict) -> Event | None:
    status = entry.get("status") or {}
    if status.get("status_str") != "error":
        return None
    for kind, data in reversed(status.get("messages") or []):
        if kind == "execution_error":
            return ExecutionError(prompt_id=prompt_id, data=data)
        if kind == "execution_interrupted":
            return ExecutionInterrupted(prompt_id=prompt_id, data=data)
    return ExecutionError(prompt_id=prompt_id, data={"exception_message": "ComfyUI reported an error",
                                                     "exception_type": ""})


def failure_error(prompt_id: str, ev: Event) -> errors.WorkerError:
    if isinstance(ev, ExecutionInterrupted):
        return errors.Interrupted(
            f"ComfyUI prompt {prompt_id} was interrupted at node {ev.node_id} ({ev.node_type})",
            {"prompt_id": prompt_id, "node_id": ev.node_id, "node_type": ev.node_type})
    assert isinstance(ev, ExecutionError)
    details = {"prompt_id": prompt_id, "node_id": ev.node_id, "node_type": ev.node_type,
               "exception_type": ev.exception_type, "exception_message": ev.exception_message}
    text = (f"node {ev.node_id} ({ev.node_type}) failed: {ev.exception_type}: "
            f"{ev.exception_message}").rstrip(": ")
    return (errors.OutOfMemory if is_oom(details) else errors.ExecutionFailed)(errors.one_line(text), details)


def summarize_node_errors(node_errors: dict) -> str:
    parts = []
    for node_id, info in (node_errors or {}).items():
        for err in (info or {}).get("errors", []):
            detail = err.get("details")
            parts.append(f"node {node_id} ({info.get('class_type')}): {err.get('message')}"
                         + (f": {detail}" if detail else ""))
    return "; ".join(parts)
