"""Starting a ComfyUI and talking HTTP to it: one command line, one readiness poll, one transport.

Both ComfyUIs this project starts use these: realize's one-off boot for the object_info snapshot
(``builder.extras``) and the worker's supervised child (``rp_handler.process``); every HTTP request
to a ComfyUI (the worker's client, its readiness ping, the cache's live /object_info, the snapshot)
goes through :class:`ComfyHttp`. Standard library only.
"""

from __future__ import annotations

import http.client
import logging
import select
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger(__name__)

# A reused keep-alive connection that the server closed fails with one of these before it is read.
STALE = (http.client.RemoteDisconnected, http.client.BadStatusLine, BrokenPipeError,
         ConnectionResetError, ConnectionAbortedError)
NOTE_EVERY_S = 15.0


class ComfyHttp:
    """A keep-alive http.client connection; one retry when a reused connection was stale."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_url(cls, base_url: str, timeout: float) -> "ComfyHttp":
        """``http://host:port`` → a transport to it (ValueError for anything else)."""
        parsed = urllib.parse.urlsplit(base_url.rstrip("/"))
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"ComfyUI base_url must be http://host:port, got {base_url!r}")
        return cls(parsed.hostname, parsed.port or 80, timeout)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, *, idempotent: bool = True,
                timeout: float | None = None) -> tuple[int, bytes]:
        with self._lock:
            for attempt in (0, 1):
                if self._conn is not None and _peer_closed(self._conn):
                    self._conn.close()  # closed by ComfyUI while idle: never send on it
                    self._conn = None
                reused = self._conn is not None
                conn = self._conn or http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self._conn = None
                if timeout is not None:
                    conn.timeout = timeout
                    if conn.sock is not None:
                        conn.sock.settimeout(timeout)
                try:
                    conn.request(method, path, body=body, headers=headers or {})
                    resp = conn.getresponse()
                    data = resp.read()
                except STALE:
                    conn.close()
                    if reused and attempt == 0 and idempotent:
                        continue
                    raise
                except BaseException:
                    conn.close()
                    raise
                if timeout is not None and conn.sock is not None:
                    conn.sock.settimeout(self.timeout)
                if resp.will_close:
                    conn.close()
                else:
                    self._conn = conn
                return resp.status, data
        raise AssertionError("unreachable")

    def get(self, path: str, timeout: float | None = None) -> bytes:
        """GET ``path``; OSError unless ComfyUI answers 200."""
        status, data = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise OSError(f"ComfyUI answered {status} to GET {path}")
        return data


def _peer_closed(conn: http.client.HTTPConnection) -> bool:
    """True when the idle keep-alive socket was closed by the server (readable at EOF)."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        if not select.select([sock], [], [], 0)[0]:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def ping(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when ``GET /system_stats`` answers 200 (a fresh connection: nothing is kept)."""
    client = ComfyHttp(host, port, timeout)
    try:
        client.get("/system_stats")
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        client.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ComfyDirs:
    """ComfyUI's input/output/temp folders (the worker reads outputs straight from disk)."""

    input: Path
    output: Path
    temp: Path
    user: Path | None = None

    @classmethod
    def defaults(cls, comfy_home: Path) -> "ComfyDirs":
        return cls(comfy_home / "input", comfy_home / "output", comfy_home / "temp")

    @classmethod
    def under(cls, root: Path) -> "ComfyDirs":
        return cls(root / "input", root / "output", root / "temp", root / "user")

    def args(self) -> list[str]:
        out = ["--input-directory", str(self.input), "--output-directory", str(self.output),
               "--temp-directory", str(self.temp)]
        if self.user is not None:
            # ComfyUI (a125cd84) keeps its SQLite db at <checkout>/user/comfyui.db by default: workers
            # sharing a COMFY_HOME on a volume must not share one file, so it goes with the user dir.
            out += ["--user-directory", str(self.user), "--database-url", f"sqlite:///{self.user}/comfyui.db"]
        return out

    def create(self) -> None:
        for d in (self.input, self.output, self.temp, self.user):
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)


def launch_command(python: str, main_py: Path, *, host: str, port: int, cpu: bool,
                   extra_model_paths: Path | None = None, dirs: ComfyDirs | None = None,
                   extra_args: Sequence[str] = (), launcher: Sequence[str] = (),
                   api_nodes: bool = True) -> list[str]:
    """ComfyUI's command line (pure). ``extra_args`` come last; a ``--database-url`` there wins.

    ``launcher``: a script (and its arguments) that runs ``main.py`` in its place, e.g. the worker's
    boot-time GC tuning; ``api_nodes=False`` adds ``--disable-api-nodes``.
    """
    cmd = [python, "-u", *launcher, str(main_py), "--listen", host, "--port", str(port), "--disable-auto-launch"]
    if cpu:
        cmd.append("--cpu")
    if not api_nodes:
        cmd.append("--disable-api-nodes")
    if extra_model_paths is not None:
        cmd += ["--extra-model-paths-config", str(extra_model_paths)]
    if dirs is not None:
        dir_args = dirs.args()
        if "--database-url" in extra_args and "--database-url" in dir_args:
            i = dir_args.index("--database-url")
            del dir_args[i:i + 2]
        cmd += dir_args
    return cmd + list(extra_args)


class NotReady(Exception):
    """ComfyUI exited (``exited``) or did not answer /system_stats before the deadline."""

    def __init__(self, message: str, *, exited: bool, waited_s: float):
        super().__init__(message)
        self.exited = exited
        self.waited_s = waited_s


def wait_ready(host: str, port: int, *, alive: Callable[[], bool], deadline: float,
               woken: threading.Event | None = None, what: str = "ComfyUI") -> float:
    """Block until ``/system_stats`` answers while ``alive()``; returns the seconds it took.

    Polls every 20-100 ms, at once when ``woken`` is set (ComfyUI printed its "To see the GUI"
    line), logs every 15 s while waiting, and raises :class:`NotReady` when the process exited or
    the monotonic ``deadline`` passed.
    """
    started = time.monotonic()
    next_note = started + NOTE_EVERY_S
    woken = woken or threading.Event()
    delay = 0.02
    while True:
        if not alive():
            raise NotReady(f"{what} exited during start-up", exited=True, waited_s=time.monotonic() - started)
        if ping(host, port, timeout=min(2.0, max(0.1, deadline - time.monotonic()))):
            return time.monotonic() - started
        now = time.monotonic()
        if now >= deadline:
            raise NotReady(f"{what} did not answer /system_stats within {now - started:.0f} s", exited=False,
                           waited_s=now - started)
        if now >= next_note:
            log.info("still waiting for %s on port %d to answer /system_stats after %.0f s", what, port, now - started)
            next_note = now + NOTE_EVERY_S
        if woken.wait(min(delay, max(0.0, deadline - now))):
            woken.clear()
            delay = 0.005
        delay = min(max(delay, 0.02) * 1.5, 0.1)
