"""The ComfyUI child process: spawn, readiness, log capture, restart, stop.

``ComfyProcess`` is one restartable child (always ``--listen 127.0.0.1``); ``rp_handler.supervisor``
keeps it running on a thread and restarts it after a crash.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import Callable

from builder import comfyui
from builder.comfyui import ComfyDirs, free_port  # noqa: F401  (re-exported: the worker's names)
from rp_handler.config import WorkerConfig
from rp_handler.errors import ComfyStartError

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
