"""Helpers shared by tests in several areas: waiting for a server, stopping a process, the GCS
emulator, and the opt-in switch for tests against a real ComfyUI."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from rp_handler.process import free_port

# Opt-in: tests against a real ComfyUI checkout run only when both are set.
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON")
needs_real_comfy = pytest.mark.skipif(not (COMFYUI_DIR and COMFYUI_PYTHON), reason="set COMFYUI_DIR and COMFYUI_PYTHON")
REAL_COMFY_MARKS = [pytest.mark.real_comfy, pytest.mark.slow, needs_real_comfy]

# The "Tiny model" recipe of the protocol README: a 3.4 KB random-weight RealESRGAN Compact 2x model
# written to sys.argv[1] (run it with COMFYUI_PYTHON, which has torch and safetensors).
TINY_MODEL = """
import sys, torch
from safetensors.torch import save_file
g = torch.Generator().manual_seed(0)
sd = {}
def conv(i, cin, cout):
    sd[f"body.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.1
    sd[f"body.{i}.bias"] = torch.zeros(cout)
def prelu(i, n):
    sd[f"body.{i}.weight"] = torch.full((n,), 0.25)
conv(0, 3, 4); prelu(1, 4); conv(2, 4, 4); prelu(3, 4); conv(4, 4, 12)
save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[1])
"""


def wait_until_answers(url: str, *, timeout: float, proc: subprocess.Popen | None = None,
                       log: Path | None = None, poll: float = 0.1, request_timeout: float = 1) -> None:
    """Poll GET ``url`` until it answers; AssertionError (with the tail of ``log``) when ``proc`` exits
    first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=request_timeout).read()
            return
        except OSError:
            exited = proc is not None and proc.poll() is not None
            if exited or time.monotonic() > deadline:
                why = f"the process exited with {proc.returncode}" if exited else f"no answer within {timeout} s"
                tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
                raise AssertionError(f"{url}: {why}\n{tail}") from None
            time.sleep(poll)


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it is still running after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


GCS_EMULATOR = Path(sys.executable).with_name("gcp-storage-emulator")


@contextlib.contextmanager
def gcs_emulator(*args: str) -> Iterator[str]:
    """gcp-storage-emulator in memory on 127.0.0.1 (``args``: more of its flags); yields its URL."""
    port = free_port()
    proc = subprocess.Popen([str(GCS_EMULATOR), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
                             "-q", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{url}/storage/v1/b", timeout=30, proc=proc)
        yield url
    finally:
        stop_process(proc, 10)


def storage_client(url: str):
    """An anonymous google-cloud-storage client for the emulator at ``url``."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})
