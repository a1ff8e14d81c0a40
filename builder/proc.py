"""Run a subprocess to completion, logging while it takes long (never silently blocking)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


def run_logged(cmd: list[str], *, what: str, timeout: float, cwd: Path | None = None,
               every: float = 30.0, start_new_session: bool = False) -> subprocess.CompletedProcess:
    """Like ``subprocess.run(capture_output=True, text=True)``; logs "still waiting" every ``every`` s.

    Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds (the child is killed; with
    ``start_new_session`` its whole process group, e.g. a worker pool, is killed).
    """
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=start_new_session)
    try:
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                raise subprocess.TimeoutExpired(cmd, timeout)
            try:
                out, err = proc.communicate(timeout=min(every, left))
                return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                if time.monotonic() - start >= timeout:
                    raise
                log.info("still waiting for %s after %.0f s", what, time.monotonic() - start)
    except BaseException:
        if start_new_session:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait()
        raise
