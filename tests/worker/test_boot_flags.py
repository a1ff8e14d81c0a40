"""What the worker's ComfyUI command line skips by default: API nodes (unless the version's spec
asks for them), and the GC passes of the boot (comfy_launch.py, restored once ComfyUI listens)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from builder.errors import SpecError
from builder.spec import load_spec
from rp_handler.main import apply_version_limits
from rp_handler.process import BOOT_LAUNCHER, ComfyProcess, free_port
from tests.worker.conftest import make_cfg

SPEC = {"schema_version": 2, "version_id": "flags", "comfy": {"repo": "https://github.com/comfyanonymous/ComfyUI",
                                                              "commit": "a" * 40}}


def spec_cfg(tmp_path: Path, options: dict):
    path = tmp_path / "versions" / "flags.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**SPEC, "options": options}))
    return apply_version_limits(make_cfg(tmp_path, VERSIONS_DIR=str(path.parent), COMFY_VERSION_ID="flags"))


def test_api_nodes_off_unless_the_spec_asks(tmp_path):
    assert "--disable-api-nodes" in ComfyProcess(spec_cfg(tmp_path, {}), tmp_path).command()
    assert "--disable-api-nodes" not in ComfyProcess(spec_cfg(tmp_path, {"comfy_api_nodes": True}), tmp_path).command()


def test_spec_validates_comfy_api_nodes(tmp_path):
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({**SPEC, "options": {"comfy_api_nodes": "yes"}}))
    with pytest.raises(SpecError, match=r"options.comfy_api_nodes: must be true or false"):
        load_spec(path)


def test_launcher_in_the_command_line(tmp_path):
    cmd = ComfyProcess(make_cfg(), tmp_path).command()
    assert cmd[2:5] == [str(BOOT_LAUNCHER), "100000", str(tmp_path / "main.py")]
    direct = ComfyProcess(make_cfg(COMFY_BOOT_GC_THRESHOLD="0"), tmp_path).command()
    assert direct[2] == str(tmp_path / "main.py") and str(BOOT_LAUNCHER) not in direct


PROBE = '''
import gc, http.server, json, sys
boot = {"threshold": gc.get_threshold(), "name": __name__, "argv": sys.argv, "path0": sys.path[0], "file": __file__}
port = int(sys.argv[sys.argv.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = json.dumps({**boot, "now": gc.get_threshold()}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def test_launcher_runs_main_like_python_and_restores_the_threshold(tmp_path):
    (tmp_path / "main.py").write_text(PROBE)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-u", str(BOOT_LAUNCHER), "100000", str(tmp_path / "main.py"),
                             "--port", str(port)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                seen = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read())
                if seen["now"][0] != 100000 or time.monotonic() > deadline:
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert seen["threshold"][0] == 100000 and seen["now"][0] == 700  # raised for the boot, then restored
    assert seen["name"] == "__main__" and seen["file"] == str(tmp_path / "main.py")
    assert seen["argv"] == [str(tmp_path / "main.py"), "--port", str(port)] and seen["path0"] == str(tmp_path)
