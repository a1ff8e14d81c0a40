"""Shared fixtures: every cache, home and token points inside tmp_path."""

from __future__ import annotations

import collections
import logging
import os
import signal
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Transcripts recorded from a real ComfyUI (copied from shared/comfyui-protocol).
PROTOCOL_DIR = REPO_ROOT / "tests" / "data" / "protocol"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test reads or writes the real home, caches or tokens."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("COMFY_CACHE_ROOT", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.invalid")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    # runpod's production fitness checks dial 8.8.8.8: tests stay on loopback
    monkeypatch.setenv("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "true")
    for name in ("COMFY_HOME", "MODELS_DIR", "COMFY_OFFLINE", "HF_TOKEN", "CIVITAI_TOKEN",
                 "GCS_BUCKET", "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST",
                 "COMFY_VERSION_ID", "COMFY_VERSION_NAME", "OUTPUT_MODE", "NVME_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Each test starts with the SIGINT/SIGTERM handlers of a fresh Python process. The runpod SDK, run
    in-process by some tests and fixtures, installs its own (a SIGINT that only sets a flag, a
    disposition that children inherit); without this, a Ctrl-C test (``KeyboardInterrupt``, a realize
    that must stop on SIGINT) depended on which module ran before it in the same xdist worker."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """Entry points called in-process (``run_handler``, the CLIs) call ``logging.basicConfig(force=True)``
    on the stderr of the moment, which pytest closes after the test: drop the handlers a test added to
    the root logger (pytest's own aside) and restore its level, so that a later test in the same process
    never logs into a closed stream (``--- Logging error ---``, with the record's arguments)."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in before and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Longest first: modules with real-ComfyUI tests (marker ``real_comfy``), then modules by how many
    ``slow`` tests they hold, then the rest in collection order (a stable sort: each module stays whole).

    ``scripts/test.sh`` hands whole modules to the pytest-xdist workers in this order (``--dist
    loadscope --no-loadscope-reorder``): a module's module-scoped fixtures (a ComfyUI boot, an install)
    are set up once, and the long modules start first and overlap the short ones. Chosen by the markers
    alone: a new real-ComfyUI test needs nothing else.
    """
    weight: collections.Counter[str] = collections.Counter()
    for item in items:
        module = item.nodeid.split("::")[0]
        weight[module] += 1000 if item.get_closest_marker("real_comfy") else bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: -weight[item.nodeid.split("::")[0]])


def pytest_terminal_summary(terminalreporter):
    """Name every real-ComfyUI test and its outcome (with -q the dots hide whether they ran), then the
    timings that tests attached to their reports as ``("timings", {...})`` user properties."""
    rows, timings, notes = [], {}, []
    for outcome in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(outcome, []):
            for name, value in getattr(rep, "user_properties", []):
                if name == "timings":
                    timings.update(value["seconds"])
                    notes.extend(n for n in value["notes"] if n not in notes)
            if "real_comfy" in getattr(rep, "keywords", {}) and (rep.when == "call" or outcome != "passed"):
                rows.append(f"{outcome.upper()} {rep.nodeid}")
    if rows:
        terminalreporter.section(f"real ComfyUI tests (COMFYUI_DIR={os.environ.get('COMFYUI_DIR', 'unset')})")
        for row in sorted(rows):
            terminalreporter.write_line(row)
    if timings:
        terminalreporter.section("timings")
        for name, seconds in timings.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")
        for line in notes:
            terminalreporter.write_line(line)
