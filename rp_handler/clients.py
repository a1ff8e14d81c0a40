"""Connected ComfyUI clients for concurrent jobs: one per job in flight, reused across jobs.

Each client has its own websocket (its own ``clientId``), so ComfyUI sends a prompt's events only
to the job that queued it: two jobs in flight never see each other's progress or outputs. Clients
belong to one ComfyUI incarnation (``generation``); a restart closes the old ones. With one job at
a time this is exactly one client, kept connected between jobs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)


def _close(client: Any) -> None:
    try:
        client.close()
    except Exception:  # the old server is gone; nothing to save
        pass


class ClientPool:
    def __init__(self, factory: Callable[[], Any], *, keep: int = 4):
        self.factory = factory  # () -> connected client of the current ComfyUI
        self.keep = keep
        self._idle: list[Any] = []
        self._generation = -1
        self._lock = threading.Lock()

    def acquire(self, generation: int) -> Any:
        """An idle client of ``generation``, else a new one (connected outside the lock)."""
        stale: list[Any] = []
        with self._lock:
            if generation != self._generation:
                stale, self._idle, self._generation = self._idle, [], generation
            client = self._idle.pop() if self._idle else None
        for old in stale:
            _close(old)
        return client if client is not None else self.factory()

    def release(self, client: Any, generation: int) -> None:
        """Back to the pool, unless ComfyUI restarted since (or the pool is full): then closed."""
        with self._lock:
            if generation == self._generation and len(self._idle) < self.keep:
                self._idle.append(client)
                return
        _close(client)

    @contextlib.contextmanager
    def lease(self, generation: int) -> Iterator[Any]:
        client = self.acquire(generation)
        try:
            yield client
        finally:
            self.release(client, generation)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for client in idle:
            _close(client)
