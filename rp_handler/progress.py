"""Job progress for RunPod: throttled, coalesced, in order, never after the result.

One sender thread per job sends the newest state at most every ``interval`` seconds; each payload
carries an increasing ``seq``. ``close()`` drops anything not yet sent, so no progress update can
arrive after the job's result. ``send`` is ``runpod.serverless.progress_update`` bound to the job
(passed in by ``main``), or ``None`` when progress goes nowhere (local runs).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], None]


class ProgressReporter:
    def __init__(self, send: Send | None, *, interval: float, node_count: int):
        self.send = send
        self.interval = max(0.0, interval)
        self.node_count = node_count
        self.node_index = 0
        self.seq = 0
        self.sent: list[dict[str, Any]] = []  # what was handed to ``send`` (for logs and tests)
        self._pending: dict[str, Any] | None = None
        self._last_sent = 0.0
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        if send is not None:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()

    # --- state updates (called from the client's event callback) -----------------
    def cached(self, count: int) -> None:
        self.node_count = max(0, self.node_count - count)

    def node_started(self, node: str, class_type: str | None = None) -> None:
        self.node_index += 1
        self._update({"stage": "executing", "node": node, "class_type": class_type,
                      "node_index": self.node_index, "node_count": max(self.node_count, self.node_index),
                      "value": 0, "max": 1})

    def step(self, node: str | None, value: float, maximum: float) -> None:
        self._update({"stage": "executing", "node": node, "node_index": max(1, self.node_index),
                      "node_count": max(self.node_count, self.node_index), "value": value, "max": maximum})

    def uploading(self, done: int) -> None:
        self._update({"stage": "uploading", "outputs_done": done})

    def _update(self, payload: dict[str, Any]) -> None:
        if self.send is None:
            return
        with self._cond:
            if self._closed:
                return
            self.seq += 1
            payload["seq"] = self.seq
            self._pending = payload
            self._cond.notify()

    # --- sender --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                wait = self._last_sent + self.interval - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)  # coalesce: newer states replace the pending one
                    if self._closed:
                        return
                    continue
                payload, self._pending = self._pending, None
                self._last_sent = time.monotonic()
                self.sent.append(payload)
                # Sent under the lock: ``close`` waits for an in-flight send, so none follows the result.
                try:
                    assert self.send is not None
                    self.send(payload)
                except Exception as err:  # progress is best effort
                    log.warning("progress update failed: %s", err)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
