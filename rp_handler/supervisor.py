"""Keeps the ComfyUI child running: ``Supervisor`` watches a ``ComfyProcess`` on a thread.

Ready = ``/system_stats`` answered before a deadline while the process is alive; an unexpected exit
(a crash) is logged with the child's last lines and followed by a restart. ``Supervisor.replace`` is a
kill the worker makes on purpose (a frozen ComfyUI, a prompt that ignored its interrupt): restarted
too, but not a crash. More than ``max_restarts`` crashes within ``crash_window_s``, or two failed
boots in a row, mean ComfyUI cannot be kept running: the worker then asks RunPod to replace it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque

from rp_handler.errors import ComfyStartError
from rp_handler.process import ComfyProcess
from rp_handler.timings import COLD, PhaseClock

log = logging.getLogger("rp_handler.process")  # records keep the logger name they had before the split


class Supervisor:
    """Keeps ComfyUI up on a thread; counts crashes; gives up after ``max_restarts``."""

    def __init__(self, proc: ComfyProcess, *, max_restarts: int, boot_timeout_s: float,
                 clock: PhaseClock | None = None, crash_window_s: float = 900.0):
        self.proc = proc
        self.max_restarts = max(0, max_restarts)
        self.boot_timeout_s = boot_timeout_s
        self.crash_window_s = crash_window_s
        self.clock = clock or COLD
        self.restarts = 0  # every restart, crash or not
        self.crashes: deque[float] = deque()  # monotonic times of crashes within crash_window_s
        self.kills: dict[int, str] = {}  # generation -> why the worker killed it on purpose
        self._kill_reason: str | None = None  # set by replace() until the supervisor sees the exit
        self._failed_boots = 0  # in a row
        self.generation = 0  # +1 each time ComfyUI becomes ready
        self.gave_up = False
        self.last_error: ComfyStartError | None = None
        self.last_exit_tail: list[str] = []
        self.deaths: dict[int, tuple[int | None, list[str]]] = {}  # generation -> (exit code, last lines)
        self._stopping = threading.Event()
        self.stop_signal: int | None = None  # the signal forwarded to ComfyUI when the worker shuts down
        self._cond = threading.Condition()
        self._ready = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Spawn now (in the caller's thread, so it happens first), supervise on a thread."""
        self.proc.start()
        self.clock.mark("comfy_spawned", overwrite=False)
        self._thread = threading.Thread(target=self._run, name="comfyui-supervisor", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        with self._cond:
            return self._ready and self.proc.alive

    def _set(self, ready: bool) -> None:
        with self._cond:
            self._ready = ready
            if ready:
                self.generation += 1
            self._cond.notify_all()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.proc.wait_ready(time.monotonic() + self.boot_timeout_s)
            except ComfyStartError as err:
                if self._stopping.is_set():
                    break
                self.proc.stop(timeout=5)
                if self._take_kill_reason() is None:  # a kill on purpose during the boot is no failed boot
                    log.error("%s", err)
                    self.last_error = err
                    self._failed_boots += 1
                    self._count_crash(failed_boot=True)
                if not self._restart_or_give_up():
                    break
                continue
            self._failed_boots = 0
            self.clock.mark("comfy_ready", overwrite=False)
            self._set(True)
            rc = self.proc.wait_exit()
            self._set(False)
            if self._stopping.is_set():
                break
            self._record_exit(rc)
            if not self._restart_or_give_up():
                break

    def _record_exit(self, rc: int | None) -> None:
        """A death record per generation; a crash counts toward giving up, a kill on purpose does not."""
        self.last_exit_tail = self.proc.log_tail(40)
        reason = self._take_kill_reason()
        with self._cond:
            if reason is None:
                self._count_crash()  # decided before the dying job reads its death record
            else:
                self.kills[self.generation] = reason
            self.deaths[self.generation] = (rc, self.last_exit_tail)
            self._cond.notify_all()
        if reason is not None:
            log.warning("ComfyUI (killed on purpose: %s) exited with code %s; restarting it", reason, rc)
            return
        log.error("ComfyUI exited unexpectedly with code %s; last lines:\n%s", rc,
                  "\n".join(self.last_exit_tail[-15:]))
        self.last_error = ComfyStartError(f"ComfyUI exited with code {rc}", {"log_tail": self.last_exit_tail})

    def _count_crash(self, failed_boot: bool = False) -> None:
        """Note one crash; give up on more than ``max_restarts`` in the window, or a second failed boot in a row."""
        now = time.monotonic()
        self.crashes.append(now)
        while self.crashes and self.crashes[0] < now - self.crash_window_s:
            self.crashes.popleft()
        if len(self.crashes) > self.max_restarts or (failed_boot and self._failed_boots >= 2):
            with self._cond:
                self.gave_up = True
                self._cond.notify_all()

    def _take_kill_reason(self) -> str | None:
        with self._cond:
            reason, self._kill_reason = self._kill_reason, None
            return reason

    def _restart_or_give_up(self) -> bool:
        if self.gave_up:
            why = ("its boot failed twice in a row" if self._failed_boots >= 2 else
                   f"{len(self.crashes)} crashes within {self.crash_window_s:.0f} s (COMFY_CRASH_WINDOW_S), more "
                   f"than COMFY_MAX_RESTARTS={self.max_restarts} allows")
            log.error("ComfyUI cannot be kept running (%s): asking RunPod for a fresh worker", why)
            return False
        self.restarts += 1
        log.warning("restarting ComfyUI (restart %d; %d crash(es) within the last %.0f s, at most %d)",
                    self.restarts, len(self.crashes), self.crash_window_s, self.max_restarts)
        try:
            self.proc.start()
        except ComfyStartError as err:
            self.last_error = err
            with self._cond:
                self.gave_up = True
                self._cond.notify_all()
            return False
        return True

    def ensure_ready(self, timeout: float) -> int:
        """Wait until ComfyUI is ready; returns its generation. Raises ``ComfyStartError`` otherwise."""
        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + 15.0
        with self._cond:
            while not (self._ready and self.proc.alive):
                if self.gave_up:
                    err = self.last_error or ComfyStartError("ComfyUI is not running")
                    raise ComfyStartError(f"ComfyUI cannot be kept running ({err}); this worker needs replacing",
                                          {**err.details, "restarts": self.restarts})
                now = time.monotonic()
                if now >= deadline:
                    raise ComfyStartError(f"ComfyUI was not ready within {timeout:.0f} s",
                                          {"log_tail": self.proc.log_tail(20)})
                if now >= next_note:
                    log.info("job waiting for ComfyUI to become ready (%.0f s so far)", now - deadline + timeout)
                    next_note = now + 15.0
                self._cond.wait(timeout=min(1.0, deadline - now))
            return self.generation

    def replace(self, generation: int, reason: str, timeout: float = 10.0) -> bool:
        """Kill ComfyUI incarnation ``generation`` on purpose (SIGKILL: it may be frozen or stopped) and
        wait for it to exit; the supervisor restarts it without counting a crash. False if it had gone."""
        with self._cond:
            if generation != self.generation or generation in self.deaths or not self.proc.alive:
                return False
            self._kill_reason = reason
        log.warning("killing ComfyUI (pid %s): %s; it will be restarted", self.proc.pid, reason)
        self.proc.send_signal(signal.SIGKILL)
        self.death_of(generation, timeout)
        return True

    def ensure_responsive(self, timeout: float, probe_timeout_s: float) -> int:
        """``ensure_ready``, then a liveness probe (``/system_stats`` within ``probe_timeout_s``; 0: none): a
        ComfyUI that stopped answering since it became ready is replaced before a job is given to it."""
        generation = self.ensure_ready(timeout)
        if probe_timeout_s <= 0 or self.proc.ping(timeout=probe_timeout_s):  # 0: the probe is off
            return generation
        self.replace(generation, f"it did not answer the /system_stats liveness probe within {probe_timeout_s:g} s "
                                 "(COMFY_PROBE_TIMEOUT_S)")
        return self.ensure_ready(timeout)

    def death_of(self, generation: int, timeout: float) -> tuple[int | None, list[str]] | None:
        """(exit code, last log lines) of the ComfyUI incarnation ``generation`` once it has exited."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while generation not in self.deaths:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping.is_set():
                    return None
                self._cond.wait(left)
            return self.deaths[generation]

    @property
    def stopping(self) -> bool:
        """True once the worker stops or forwards a shutdown signal: no restart will come."""
        return self._stopping.is_set()

    def forward_signal(self, sig: int) -> None:
        """Stop supervising and pass ``sig`` (e.g. SIGTERM) to ComfyUI."""
        self.stop_signal = sig
        self._stopping.set()
        log.info("forwarding signal %s to ComfyUI (pid %s)", sig, self.proc.pid)
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self.proc.stop(timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)
