"""Progress: a one-line bytes/s display on a TTY (CLI only), else an INFO log line every 30 s."""

from __future__ import annotations

import logging
import threading
import time
from typing import TextIO

log = logging.getLogger(__name__)


class Task:
    def __init__(self, board: "Progress | None", label: str, verb: str, total: int | None):
        self.board, self.label, self.verb, self.total = board, label, verb, total
        self.done = 0
        self.started = time.monotonic()
        self.last_log = self.started

    def update(self, n: int) -> None:
        self.done += n
        if self.board:
            self.board.refresh(self)

    def set_total(self, total: int) -> None:
        self.total = total

    def close(self) -> None:
        if self.board:
            self.board.finish(self)


class Progress:
    """No output; the base for :class:`TtyProgress`."""

    def start(self, label: str, verb: str, total: int | None = None) -> Task:
        return Task(None, label, verb, total)

    def refresh(self, task: Task | None = None) -> None:
        pass

    def finish(self, task: Task) -> None:
        pass


def describe(task: Task) -> str:
    elapsed = max(time.monotonic() - task.started, 1e-6)
    total = f"/{_size(task.total)}" if task.total else ""
    return f"{task.verb} {task.label[-50:]} {_size(task.done)}{total} {_size(task.done / elapsed)}/s"


class LogProgress(Progress):
    """For logs (non-TTY, the builder): one INFO line per task every ``interval`` seconds."""

    def __init__(self, interval: float = 30.0):
        self.interval = interval

    def start(self, label: str, verb: str, total: int | None = None) -> Task:
        return Task(self, label, verb, total)

    def refresh(self, task: Task | None = None) -> None:
        now = time.monotonic()
        if task is not None and now - task.last_log >= self.interval:
            task.last_log = now
            log.info("still %s", describe(task))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class TtyProgress(Progress):
    """One status line on stderr, redrawn at most 5×/s: ``verb label done/total rate``."""

    def __init__(self, stream: TextIO, interval: float = 0.2):
        self.stream, self.interval = stream, interval
        self.tasks: list[Task] = []
        self.lock = threading.Lock()
        self.last = 0.0

    def start(self, label: str, verb: str, total: int | None = None) -> Task:
        task = Task(self, label, verb, total)
        with self.lock:
            self.tasks.append(task)
        return task

    def _line(self, task: Task) -> str:
        return describe(task)

    def refresh(self, task: Task | None = None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        with self.lock:
            self.last = now
            parts = [self._line(t) for t in self.tasks[:3]]
            more = f" (+{len(self.tasks) - 3})" if len(self.tasks) > 3 else ""
            self.stream.write("\r\x1b[K" + " | ".join(parts) + more)
            self.stream.flush()

    def finish(self, task: Task) -> None:
        with self.lock:
            if task in self.tasks:
                self.tasks.remove(task)
            self.stream.write("\r\x1b[K" + self._line(task) + " done\n")
            self.stream.flush()
