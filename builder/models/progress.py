"""Progress reporting: silent by default, a one-line bytes/s display on a TTY (CLI only)."""

from __future__ import annotations

import threading
import time
from typing import TextIO


class Task:
    def __init__(self, board: "Progress | None", label: str, verb: str, total: int | None):
        self.board, self.label, self.verb, self.total = board, label, verb, total
        self.done = 0
        self.started = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        if self.board:
            self.board.refresh()

    def set_total(self, total: int) -> None:
        self.total = total

    def close(self) -> None:
        if self.board:
            self.board.finish(self)


class Progress:
    """No output; the base for :class:`TtyProgress`."""

    def start(self, label: str, verb: str, total: int | None = None) -> Task:
        return Task(None, label, verb, total)

    def refresh(self) -> None:
        pass

    def finish(self, task: Task) -> None:
        pass


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
        elapsed = max(time.monotonic() - task.started, 1e-6)
        total = f"/{_size(task.total)}" if task.total else ""
        return f"{task.verb} {task.label[-50:]} {_size(task.done)}{total} {_size(task.done / elapsed)}/s"

    def refresh(self, force: bool = False) -> None:
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
