"""Opt-in: ComfyClient against a real ComfyUI on CPU (set COMFYUI_DIR and COMFYUI_PYTHON)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from rp_handler import errors
from rp_handler.comfy import ComfyClient
from rp_handler.events import ExecutionCached
from rp_handler.process import free_port
from tests.comfy.wsrec import transcript
from tests.helpers import COMFYUI_DIR, COMFYUI_PYTHON, REAL_COMFY_MARKS, stop_process, wait_until_answers

pytestmark = REAL_COMFY_MARKS


@pytest.fixture(scope="module")
def real_comfy(tmp_path_factory):
    run = tmp_path_factory.mktemp("real-comfy")
    port = free_port()
    log_path = run / "comfyui.log"
    cmd = [COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--input-directory", str(run / "input"),
           "--output-directory", str(run / "output"), "--temp-directory", str(run / "temp"),
           "--user-directory", str(run / "user"), "--database-url", f"sqlite:///{run / 'user' / 'comfyui.db'}"]
    (run / "user").mkdir()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=COMFYUI_DIR, stdout=log_file, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_answers(url + "/system_stats", timeout=300, proc=proc, log=log_path, poll=0.5,
                               request_timeout=2)
            yield url, Path(run)
        finally:
            stop_process(proc, 30)


def test_empty_image_save_image(real_comfy):
    url, run = real_comfy
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1,
                                                        "color": 0x336699}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "real_client"}}}
    with ComfyClient(url) as c:
        res = c.wait(c.submit(wf), deadline=time.monotonic() + 120)
        img = res.outputs["2"]["images"][0]
        assert img["type"] == "output" and img["filename"].startswith("real_client_")
        assert c.view(img["filename"], img["subfolder"], img["type"])[:8] == b"\x89PNG\r\n\x1a\n"
        again = c.wait(c.submit(wf), deadline=time.monotonic() + 120)
        assert again.outputs == res.outputs
        assert any(isinstance(e, ExecutionCached) and set(e.nodes) == {"1", "2"} for e in again.events)


def test_invalid_and_failing_workflows(real_comfy):
    url, _ = real_comfy
    cases = transcript("07_validation_errors")["cases"]
    with ComfyClient(url) as c:
        with pytest.raises(errors.PromptRejected) as info:
            c.submit(cases["missing_required_input"])
        assert info.value.details["node_errors"]["2"]["errors"][0]["type"] == "required_input_missing"
        with pytest.raises(errors.ExecutionFailed) as failed:
            c.wait(c.submit(cases["missing_upscale_model_file"]), deadline=time.monotonic() + 120)
        assert failed.value.details["exception_type"] == "FileNotFoundError"
