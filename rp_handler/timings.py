"""Phase timestamps measured from the moment the worker process started.

The clock is ``time.monotonic``; "process start" is read from ``/proc/self/stat``
(so interpreter start-up counts), falling back to this module's import time.
Cold-start phases are recorded once per process; job phases once per job.
Import this module first: it is tiny and imports nothing heavy.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

_IMPORTED_AT = time.monotonic()

# The RunPod job id being handled (log records and timers read it); "-" between jobs.
current_job: contextvars.ContextVar[str] = contextvars.ContextVar("current_job", default="-")

# Cold-start phases, in the order they normally happen.
COLD_PHASES = (
    "imports_done",       # the worker's own light imports finished
    "comfy_spawned",      # Popen returned
    "runpod_imported",    # the runpod SDK finished importing (overlaps ComfyUI's boot)
    "loop_started",       # runpod.serverless.start was called
    "comfy_ready",        # /system_stats answered
)
# Per-job phases.
JOB_PHASES = (
    "job_received",
    "submitted",
    "first_node_executing",
    "execution_done",
    "last_output_uploaded",
    "result_returned",
)


def process_start_monotonic() -> float:
    """``time.monotonic()`` value of this process's start (Linux), else module import time."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
        # Field 22 (starttime, clock ticks since boot); skip past "(comm)" which may hold spaces.
        rest = stat.rsplit(")", 1)[1].split()
        start_ticks = int(rest[19])
        ticks = os.sysconf("SC_CLK_TCK")
        since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / ticks
        now = time.monotonic()
        if 0 <= since_start < 3600:
            return now - since_start
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    return _IMPORTED_AT


@dataclass
class PhaseClock:
    """Named timestamps relative to ``origin`` (seconds since process start)."""

    origin: float = field(default_factory=process_start_monotonic)
    marks: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def mark(self, name: str, at: float | None = None, *, overwrite: bool = True) -> float:
        t = (time.monotonic() if at is None else at) - self.origin
        with self._lock:
            if overwrite or name not in self.marks:
                self.marks[name] = t
            return self.marks[name]

    def get(self, name: str) -> float | None:
        with self._lock:
            return self.marks.get(name)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {k: round(v, 4) for k, v in self.marks.items()}


# The process-wide cold-start clock.
COLD = PhaseClock()
COLD.mark("module_imported", _IMPORTED_AT)


class JobTimer:
    """Phases of one job, on the same origin as ``COLD`` (seconds since process start)."""

    def __init__(self, job_id: str, clock: PhaseClock | None = None):
        self.job_id = job_id
        self.cold = clock or COLD
        self.phases = PhaseClock(origin=self.cold.origin)
        self.phases.mark("job_received")

    def mark(self, name: str, *, first: bool = False) -> None:
        self.phases.mark(name, overwrite=not first)

    def durations(self) -> dict[str, float]:
        """queued (received → submitted), executing, uploading (tail after execution), total."""
        p = self.phases.snapshot()
        received = p.get("job_received", 0.0)
        submitted = p.get("submitted", received)
        done = p.get("execution_done", submitted)
        end = p.get("result_returned") or p.get("last_output_uploaded") or done
        uploaded = p.get("last_output_uploaded", done)
        return {
            "queued": round(submitted - received, 4),
            "executing": round(done - submitted, 4),
            "uploading": round(max(0.0, uploaded - done), 4),
            "total": round(end - received, 4),
        }

    def log_line(self, *, status: str) -> str:
        p = self.phases.snapshot()
        parts = " ".join(f"{k}={v:.3f}" for k, v in p.items())
        d = self.durations()
        line = (f"job {self.job_id} {status}: total={d['total'] * 1000:.1f}ms queued={d['queued'] * 1000:.1f}ms "
                f"executing={d['executing'] * 1000:.1f}ms uploading={d['uploading'] * 1000:.1f}ms | since start: {parts}")
        log.info("%s", line)
        return line
