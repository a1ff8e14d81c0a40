"""scripts/submit.py against a real ``python -m rp_handler --rp_serve_api`` worker on the fake ComfyUI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rp_handler.process import free_port
from tests.fakes.comfyui.pngfile import decode_png
from tests.helpers import wait_until_answers
from tests.worker.test_entrypoint import _env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_endpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("endpoint")
    api_port = free_port()
    log = open(tmp / "worker.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rp_handler", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
                             "--rp_api_port", str(api_port)], cwd=tmp, env=_env(tmp), stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{api_port}"
    wait_until_answers(f"{base}/docs", timeout=90, proc=proc, log=tmp / "worker.log", poll=0.2)
    yield base, tmp
    proc.terminate()
    proc.wait(30)
    log.close()


def submit(base: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "submit.py"), "--url", base, "--out", str(out),
                           "--timeout", "60", "--poll", "0.2", *args],
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--sync"]], ids=["run+status", "runsync"])
def test_template_job_saves_the_png(local_endpoint, tmp_path, mode):
    base, _ = local_endpoint
    proc = submit(base, tmp_path / "out", "--template", "cpu_invert", "--param", "width=48",
                  "--param", "height=32", "--param", "color=255", *mode)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (png,) = sorted((tmp_path / "out").glob("*.png"))
    img = decode_png(png.read_bytes())
    assert (img.width, img.height) == (48, 32)
    assert tuple(img.data[:3]) == (255, 255, 0)  # 0x0000FF inverted


@pytest.mark.slow
def test_bad_param_is_a_clear_failure(local_endpoint, tmp_path):
    base, _ = local_endpoint
    proc = submit(base, tmp_path / "out", "--template", "cpu_invert", "--param", "width=99999", "--sync")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "width" in text and "2048" in text and "Traceback" not in text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_workflow_file_job(local_endpoint, tmp_path):
    base, _ = local_endpoint
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(json.loads((REPO / "test_input.json").read_text())["input"]["workflow"]))
    proc = submit(base, tmp_path / "out", "--workflow", str(wf))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (png,) = sorted((tmp_path / "out").glob("*.png"))
    assert decode_png(png.read_bytes()).width == 64
