"""Fixtures for the worker's tests: config from plain dicts, a GCS emulator, throwaway ComfyUIs."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest

from rp_handler.config import WorkerConfig
from tests import helpers


def make_cfg(tmp_path: Path | None = None, **env: str) -> WorkerConfig:
    base = {"HOME": str(tmp_path or Path("/nonexistent")), "COMFY_PORT": "0", "COMFY_FORCE_CPU": "true"}
    if tmp_path is not None:
        base["COMFY_CACHE_ROOT"] = str(tmp_path / "cache")
    base.update(env)
    return WorkerConfig.from_env(base, container=False, volume_root=Path("/nonexistent-volume"))


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda **env: make_cfg(tmp_path, **env)


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real gcp-storage-emulator on 127.0.0.1 (in memory); yields its URL."""
    with helpers.gcs_emulator() as url:
        yield url


@pytest.fixture
def gcs_bucket(gcs_emulator, request):
    client = helpers.storage_client(gcs_emulator)
    name = "b-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = client.bucket(name)
    if not bucket.exists():
        client.create_bucket(name)
    return client, name


FAKE_DIR = Path(__file__).resolve().parents[1] / "fakes" / "comfyui"


@pytest.fixture
def fake_home(tmp_path) -> Path:
    """A copy of the fake ComfyUI at tmp/ComfyUI, so its main.py is spawned like a real checkout."""
    return copy_fake(tmp_path / "ComfyUI")


TINY_COMFY = '''
import http.server, os, sys, time
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
print("tiny comfy argv:", " ".join(args), flush=True)
mode = os.environ.get("TINY_MODE", "ok")
if mode == "crash":
    print("Traceback: ImportError: no module named torch", flush=True)
    sys.exit(3)
if mode == "silent":
    time.sleep(60)
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = b'{"system": {}}'
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
print(f"To see the GUI go to: http://127.0.0.1:{port}", flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


@pytest.fixture
def tiny_home(tmp_path) -> Path:
    """A throwaway 'ComfyUI': main.py that serves /system_stats (TINY_MODE=crash|silent to misbehave)."""
    home = tmp_path / "tiny"
    home.mkdir()
    (home / "main.py").write_text(TINY_COMFY)
    return home


PROTOCOL_DIR = Path(__file__).resolve().parents[1] / "data" / "protocol"


def copy_fake(dest: Path) -> Path:
    """A copy of the fake ComfyUI that runs from anywhere (its object_info data copied along)."""
    import shutil

    shutil.copytree(FAKE_DIR, dest, ignore=shutil.ignore_patterns("__pycache__", "input", "output", "temp", "user"))
    if not (dest / "object_info.json.gz").exists():
        shutil.copy2(PROTOCOL_DIR / "object_info.json.gz", dest / "object_info.json.gz")
    return dest


def post_json(url: str, body: dict) -> None:
    import json as _json

    req = urllib.request.Request(url, data=_json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


class LiveWorker:
    """A WorkerContext over a supervised fake ComfyUI process (what main builds, minus runpod)."""

    def __init__(self, root: Path, home: Path | None = None, **env: str):
        from rp_handler.context import WorkerContext
        from rp_handler.main import client_factory, start_comfy

        home = home or copy_fake(root / "ComfyUI")
        self.cfg = make_cfg(root, COMFY_HOME=str(home), COMFY_IO_DIR=str(root / "io"), **env)
        self.sup = start_comfy(self.cfg, io_dir=root / "io")
        self.ctx = WorkerContext(cfg=self.cfg, dirs=self.sup.proc.dirs, client_factory=client_factory(self.sup),
                                 supervisor=self.sup, version_id="v1")
        self.sup.ensure_ready(self.cfg.boot_timeout_s)

    @property
    def url(self) -> str:
        return self.sup.proc.url

    def faults(self, faults: dict) -> None:
        post_json(f"{self.url}/__fake__/faults", faults)

    def run(self, job_input, job_id: str = "job-1") -> dict:
        from rp_handler.handler import handle

        return handle({"id": job_id, "input": job_input}, self.ctx)

    def close(self) -> None:
        self.ctx.close()
        self.sup.stop(timeout=5)


@pytest.fixture(scope="module")
def live_worker(tmp_path_factory):
    w = LiveWorker(tmp_path_factory.mktemp("live"))
    yield w
    w.close()
