"""The ComfyUI child: command line, readiness, log capture, crash → restart → give up, SIGTERM."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rp_handler.errors import ComfyStartError
from rp_handler.process import ComfyDirs, ComfyProcess
from rp_handler.supervisor import Supervisor
from rp_handler.timings import PhaseClock
from tests.worker.conftest import make_cfg


def test_command_line(tmp_path):
    cfg = make_cfg(COMFY_EXTRA_ARGS="--preview-method auto", COMFY_PORT="8190", COMFY_FORCE_CPU="true")
    p = ComfyProcess(cfg, tmp_path, extra_model_paths=tmp_path / "x.yaml", dirs=ComfyDirs.under(tmp_path / "run"))
    cmd = p.command()
    assert str(tmp_path / "main.py") in cmd[2:5]  # after rp_handler/comfy_launch.py and its threshold
    assert cmd[cmd.index("--listen") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8190"
    assert "--disable-auto-launch" in cmd and "--cpu" in cmd
    assert cmd[cmd.index("--extra-model-paths-config") + 1] == str(tmp_path / "x.yaml")
    assert cmd[cmd.index("--output-directory") + 1] == str(tmp_path / "run" / "output")
    assert cmd[-2:] == ["--preview-method", "auto"]
    assert "--cpu" not in ComfyProcess(make_cfg(COMFY_FORCE_CPU="false"), tmp_path).command()


def test_missing_main_py(tmp_path):
    with pytest.raises(ComfyStartError, match="main.py missing"):
        ComfyProcess(make_cfg(), tmp_path / "nope").start()


def test_ready_and_log_capture_and_stop(tiny_home, caplog):
    caplog.set_level("INFO")
    p = ComfyProcess(make_cfg(), tiny_home)
    p.start()
    try:
        p.wait_ready(time.monotonic() + 20)
        assert p.alive and p.ping()
        assert any("tiny comfy argv" in line for line in p.log_tail())
        assert any("[comfyui] tiny comfy argv" in r.getMessage() for r in caplog.records)
    finally:
        rc = p.stop(timeout=5)
    assert rc is not None and not p.alive


def test_exit_during_startup_reports_tail(tiny_home, monkeypatch):
    monkeypatch.setenv("TINY_MODE", "crash")
    p = ComfyProcess(make_cfg(), tiny_home)
    p.start()
    with pytest.raises(ComfyStartError) as info:
        p.wait_ready(time.monotonic() + 20)
    assert "code 3" in str(info.value) and "ImportError" in str(info.value)
    assert any("ImportError" in line for line in info.value.details["log_tail"])


def test_boot_deadline(tiny_home, monkeypatch):
    monkeypatch.setenv("TINY_MODE", "silent")
    p = ComfyProcess(make_cfg(), tiny_home)
    p.start()
    try:
        with pytest.raises(ComfyStartError, match="did not answer"):
            p.wait_ready(time.monotonic() + 0.5)
    finally:
        p.stop(timeout=5)


def _wait_not_ready(sup, timeout=10.0):
    deadline = time.monotonic() + timeout
    while sup.ready and time.monotonic() < deadline:
        time.sleep(0.01)


def test_supervisor_restarts_after_crash_then_gives_up(tiny_home):
    clock = PhaseClock()
    sup = Supervisor(ComfyProcess(make_cfg(), tiny_home), max_restarts=1, boot_timeout_s=20, clock=clock)
    sup.start()
    try:
        gen = sup.ensure_ready(20)
        assert gen == 1 and clock.get("comfy_spawned") is not None and clock.get("comfy_ready") is not None
        first_pid = sup.proc.pid
        os.kill(first_pid, signal.SIGKILL)
        _wait_not_ready(sup)
        assert sup.ensure_ready(20) == 2  # restarted
        assert sup.proc.pid != first_pid and sup.restarts == 1
        os.kill(sup.proc.pid, signal.SIGKILL)
        _wait_not_ready(sup)
        with pytest.raises(ComfyStartError) as info:
            sup.ensure_ready(20)
        assert sup.gave_up and info.value.refresh_worker
        assert "needs replacing" in str(info.value)
    finally:
        sup.stop(timeout=5)


def test_forward_sigterm_stops_without_restart(fake_home):
    sup = Supervisor(ComfyProcess(make_cfg(), fake_home), max_restarts=3, boot_timeout_s=30)
    sup.start()
    try:
        sup.ensure_ready(30)
        sup.forward_signal(signal.SIGTERM)
        assert sup.proc.wait_exit(10) is not None
        time.sleep(0.3)
        assert not sup.proc.alive and sup.restarts == 0
        assert any("Stopped server" in line for line in sup.proc.log_tail())
    finally:
        sup.stop(timeout=5)


def test_kills_on_purpose_are_not_crashes(tiny_home):
    sup = Supervisor(ComfyProcess(make_cfg(), tiny_home), max_restarts=1, boot_timeout_s=20, crash_window_s=600)
    sup.start()
    try:
        for _ in range(3):
            gen = sup.ensure_ready(20)
            os.kill(sup.proc.pid, signal.SIGSTOP)  # frozen: SIGKILL still ends it
            assert sup.replace(gen, "test: frozen")
        assert len(sup.kills) == 3 and len(sup.crashes) == 0 and not sup.gave_up
        gen = sup.ensure_ready(20)
        os.kill(sup.proc.pid, signal.SIGKILL)  # crash 1 of 1 allowed
        assert sup.death_of(gen, 10) is not None and not sup.gave_up
        gen = sup.ensure_ready(20)
        os.kill(sup.proc.pid, signal.SIGKILL)  # crash 2 within the window: a crash loop
        assert sup.death_of(gen, 10) is not None and sup.gave_up
    finally:
        sup.stop(timeout=5)


def test_crashes_older_than_the_window_do_not_count(tiny_home):
    sup = Supervisor(ComfyProcess(make_cfg(), tiny_home), max_restarts=1, boot_timeout_s=20, crash_window_s=0.5)
    sup.start()
    try:
        for _ in range(3):
            gen = sup.ensure_ready(20)
            time.sleep(0.6)  # the last crash is out of the window
            os.kill(sup.proc.pid, signal.SIGKILL)
            assert sup.death_of(gen, 10) is not None
        sup.ensure_ready(20)
        assert not sup.gave_up and sup.restarts == 3
    finally:
        sup.stop(timeout=5)


def test_a_boot_that_fails_twice_gives_up(tiny_home, monkeypatch):
    monkeypatch.setenv("TINY_MODE", "crash")
    sup = Supervisor(ComfyProcess(make_cfg(), tiny_home), max_restarts=10, boot_timeout_s=20)
    sup.start()
    try:
        with pytest.raises(ComfyStartError, match="needs replacing") as info:
            sup.ensure_ready(30)
        assert sup.gave_up and info.value.refresh_worker and sup.proc.starts == 2
    finally:
        sup.stop(timeout=5)


def test_comfyui_is_spawned_without_preexec_fn(tiny_home, monkeypatch):
    """preexec_fn is unsafe once the worker runs threads (the cache copier does): never used."""
    import subprocess

    seen: list = []

    class Recording(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get("preexec_fn"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    p = ComfyProcess(make_cfg(), tiny_home)
    p.start()
    try:
        p.wait_ready(time.monotonic() + 20)
        assert any("tiny comfy argv" in line for line in p.log_tail())
    finally:
        p.stop(timeout=5)
    assert seen and all(fn is None for fn in seen)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return any(line.startswith("State:") and "Z" in line for line in fh)
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="parent-death signal is Linux only")
def test_comfyui_gets_sigterm_when_the_worker_dies(tiny_home):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    script = (f"import os, sys, time; sys.path.insert(0, {str(REPO_ROOT)!r})\n"
              "from rp_handler.process import ComfyProcess\n"
              "from tests.worker.conftest import make_cfg\n"
              f"p = ComfyProcess(make_cfg(), {str(tiny_home)!r}); p.start()\n"
              "p.wait_ready(time.monotonic() + 20)\n"
              "print(p.pid, flush=True); os._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    pid = int(out.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = not _gone(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "ComfyUI outlived the worker"
