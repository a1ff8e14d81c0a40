"""The ComfyUI child process: spawn, readiness, log capture, supervision, restart, stop.

``ComfyProcess`` is one restartable child (always ``--listen 127.0.0.1``); ``Supervisor`` keeps it
running on a thread: ready = ``/system_stats`` answered before a deadline while the process is
alive; an unexpected exit (a crash) is logged with the child's last lines and followed by a restart.
``Supervisor.replace`` is a kill the worker makes on purpose (a frozen ComfyUI, a prompt that ignored
its interrupt): restarted too, but not a crash. More than ``max_restarts`` crashes within
``crash_window_s``, or two failed boots in a row, mean ComfyUI cannot be kept running: the worker
then asks RunPod to replace it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from builder import comfyui
from builder.comfyui import ComfyDirs, free_port  # noqa: F401  (re-exported: the worker's names)
from rp_handler.config import WorkerConfig
from rp_handler.errors import ComfyStartError
from rp_handler.timings import COLD, PhaseClock

log = logging.getLogger(__name__)
child_log = logging.getLogger("rp_handler.comfyui")

try:
    _HAS_PRCTL = hasattr(ctypes.CDLL(None), "prctl")
except OSError:  # not Linux
    _HAS_PRCTL = False

# ComfyUI gets SIGTERM when the worker dies (PR_SET_PDEATHSIG survives exec). Set by a tiny launcher
# that then execs ComfyUI, not by preexec_fn: the worker already runs threads (the cache copier) when
# it spawns ComfyUI, and preexec_fn is unsafe in a threaded process (subprocess docs).
_LAUNCHER = ("import ctypes, os, signal, sys\n"
             "ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)\n"
             "if os.getppid() != int(sys.argv[1]):\n"
             "    sys.exit('the worker exited before ComfyUI started')\n"
             "os.execvp(sys.argv[2], sys.argv[2:])\n")


def with_parent_death_signal(cmd: list[str]) -> list[str]:
    """``cmd`` run through the launcher (Linux; elsewhere unchanged)."""
    if not _HAS_PRCTL:
        return list(cmd)
    return [cmd[0], "-S", "-c", _LAUNCHER, str(os.getpid()), *cmd]


def gpu_present() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists()


_OWNED_FLAGS = ("--listen", "--port")
BOOT_LAUNCHER = Path(__file__).resolve().parent / "comfy_launch.py"


def without_address_flags(args: tuple[str, ...] | list[str]) -> list[str]:
    """Extra ComfyUI arguments minus ``--listen``/``--port``: the worker owns the address (127.0.0.1 only)."""
    out: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            if not arg.startswith("-"):
                continue
        name = arg.split("=", 1)[0]
        if name in _OWNED_FLAGS:
            log.warning("COMFY_EXTRA_ARGS: %s ignored: ComfyUI always listens on 127.0.0.1 at COMFY_PORT", name)
            skip_value = "=" not in arg
            continue
        out.append(arg)
    return out


class ComfyProcess:
    """One ComfyUI child on 127.0.0.1; ``start`` may be called again after it exits."""

    def __init__(self, cfg: WorkerConfig, comfy_home: Path, *, extra_model_paths: Path | None = None,
                 dirs: ComfyDirs | None = None, port: int | None = None, host: str = "127.0.0.1",
                 extra_args: tuple[str, ...] | None = None, tail_lines: int = 200):
        self.cfg = cfg
        self.comfy_home = Path(comfy_home)
        self.extra_model_paths = extra_model_paths
        self.dirs = dirs
        self.host = host
        chosen = cfg.port if port is None else port
        self.port = chosen or comfyui.free_port()
        self.extra_args = tuple(cfg.extra_args if extra_args is None else extra_args)
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._listening = threading.Event()  # ComfyUI printed its "To see the GUI go to" line
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self.starts = 0

    # --- plan ------------------------------------------------------------------
    def command(self) -> list[str]:
        cpu = self.cfg.force_cpu == "true" or (self.cfg.force_cpu == "auto" and not gpu_present())
        gc = self.cfg.boot_gc_threshold  # fewer GC passes during the boot (rp_handler/comfy_launch.py)
        return comfyui.launch_command(self.cfg.comfy_python, self.comfy_home / "main.py", host=self.host,
                                      port=self.port, cpu=cpu, extra_model_paths=self.extra_model_paths,
                                      dirs=self.dirs, extra_args=without_address_flags(self.extra_args),
                                      launcher=[str(BOOT_LAUNCHER), str(gc)] if gc > 0 else [],
                                      api_nodes=self.cfg.comfy_api_nodes)  # ~1.2 s of boot when on

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    # --- act -------------------------------------------------------------------
    def start(self) -> None:
        if self.alive:
            return
        main_py = self.comfy_home / "main.py"
        if not main_py.is_file():
            raise ComfyStartError(f"no ComfyUI at {self.comfy_home} (main.py missing): realize the version first "
                                  "(scripts/version.py realize <id>) or set COMFY_HOME",
                                  {"comfy_home": str(self.comfy_home)})
        if self.dirs is not None:
            self.dirs.create()
        cmd = self.command()
        log.info("starting ComfyUI: %s", " ".join(cmd))
        self._tail.clear()
        self._listening.clear()
        self._proc = subprocess.Popen(with_parent_death_signal(cmd), cwd=str(self.comfy_home),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT)
        self.starts += 1
        self._reader = threading.Thread(target=self._pump, args=(self._proc,), name="comfyui-log", daemon=True)
        self._reader.start()

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._tail.append(line)
                if "To see the GUI go to" in line:
                    self._listening.set()
                child_log.info("[comfyui] %s", line)

    def liveness(self) -> "Callable[[], bool]":
        """A check bound to the current child: stays False once it exited, even after a restart."""
        popen = self._proc
        return lambda: popen is not None and popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def log_tail(self, n: int = 40) -> list[str]:
        if self._reader is not None and self._proc is not None and self._proc.poll() is not None:
            self._reader.join(timeout=1.0)  # let the pipe drain after an exit
        return list(self._tail)[-n:]

    @property
    def _local_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    def ping(self, timeout: float = 2.0) -> bool:
        return comfyui.ping(self._local_host, self.port, timeout)

    def wait_ready(self, deadline: float) -> None:
        """Block until /system_stats answers (monotonic ``deadline``), logging while waiting."""
        try:
            took = comfyui.wait_ready(self._local_host, self.port, alive=lambda: self.alive, deadline=deadline,
                                      woken=self._listening, what=f"ComfyUI (pid {self.pid})")
        except comfyui.NotReady as exc:
            tail = self.log_tail(20)
            if exc.exited:
                rc = self.returncode
                raise ComfyStartError(
                    f"ComfyUI exited with code {rc} during start-up: {tail[-1] if tail else '(no output)'}",
                    {"returncode": rc, "log_tail": tail}) from None
            raise ComfyStartError(f"ComfyUI did not answer /system_stats within {exc.waited_s:.0f} s "
                                  "(COMFY_BOOT_TIMEOUT_S)", {"log_tail": tail}) from None
        log.info("ComfyUI ready on %s after %.2f s", self.url, took)

    def send_signal(self, sig: int) -> None:
        if self.alive and self._proc is not None:
            self._proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("ComfyUI (pid %s) ignored SIGTERM for %.0f s; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait(5)
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        return proc.returncode

    def wait_exit(self, timeout: float | None = None) -> int | None:
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


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
        """``ensure_ready``, then a liveness probe (``/system_stats`` within ``probe_timeout_s``): a ComfyUI
        that stopped answering since it became ready is replaced before a job is given to it."""
        generation = self.ensure_ready(timeout)
        if self.proc.ping(timeout=probe_timeout_s):
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
