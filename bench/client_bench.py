"""ComfyClient vs a bare persistent client, interleaved, on the same ComfyUI.

The baseline keeps one websocket and one keep-alive http.client connection and does, per job:
POST /prompt, wait on the socket for the final ``executing {node: null}``, GET /history/{id} and
GET /view of the output. Ours does the same through ``ComfyClient.submit/wait/view``.

    python bench/client_bench.py [--jobs 40] [--url http://127.0.0.1:8188]

Without --url it starts the fake ComfyUI (tests/fakes/comfyui/main.py, zero-cost nodes) as a subprocess.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import websocket

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rp_handler.comfy import ComfyClient  # noqa: E402


def workflow(i: int, prefix: str) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                          "color": i % 16777215}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


class BareClient:
    """The minimum a correct persistent client does."""

    def __init__(self, url: str):
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port)
        self.cid = uuid.uuid4().hex
        self.ws = websocket.create_connection(f"ws://{u.hostname}:{u.port}/ws?clientId={self.cid}",
                                              skip_utf8_validation=True)

    def job(self, wf: dict) -> bytes:
        self.conn.request("POST", "/prompt", json.dumps({"prompt": wf, "client_id": self.cid}),
                          {"Content-Type": "application/json"})
        pid = json.loads(self.conn.getresponse().read())["prompt_id"]
        while True:
            msg = self.ws.recv()
            if isinstance(msg, str):
                m = json.loads(msg)
                if m["type"] == "executing" and m["data"]["node"] is None and m["data"]["prompt_id"] == pid:
                    break
        self.conn.request("GET", f"/history/{pid}")
        img = json.loads(self.conn.getresponse().read())[pid]["outputs"]["2"]["images"][0]
        self.conn.request("GET", "/view?" + urllib.parse.urlencode(img))
        return self.conn.getresponse().read()

    def close(self) -> None:
        self.ws.close()
        self.conn.close()


def ours_job(c: ComfyClient, wf: dict) -> bytes:
    res = c.wait(c.submit(wf), deadline=time.monotonic() + 60)
    img = res.outputs["2"]["images"][0]
    return c.view(img["filename"], img["subfolder"], img["type"])


def _drain(stream) -> None:
    """Keep reading the fake's log so its pipe never fills."""
    for _ in stream:
        pass


def start_fake(tmp: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests/fakes/comfyui/main.py"), "--listen", "127.0.0.1", "--port", "0",
         "--output-directory", str(tmp / "out"), "--input-directory", str(tmp / "in"),
         "--temp-directory", str(tmp / "temp"), "--user-directory", str(tmp / "user")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"To see the GUI go to: (http://\S+)", line)
        if m:
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            return proc, m.group(1)
    raise SystemExit(f"fake ComfyUI exited with {proc.wait()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=40, help="jobs per client (>= 30)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--url", help="an already running ComfyUI (default: start the fake)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="client-bench-") as tmpdir:
        proc = None
        url = args.url
        if url is None:
            proc, url = start_fake(Path(tmpdir))
        try:
            bare = BareClient(url)
            ours = ComfyClient(url)
            ours.connect()
            t_bare: list[float] = []
            t_ours: list[float] = []
            n = 0
            for i in range(args.warmup + args.jobs):
                order = [("bare", bare), ("ours", ours)] if i % 2 == 0 else [("ours", ours), ("bare", bare)]
                for name, c in order:
                    n += 1
                    wf = workflow(n, f"bench_{name}")
                    t0 = time.perf_counter()
                    data = bare.job(wf) if name == "bare" else ours_job(ours, wf)
                    dt = (time.perf_counter() - t0) * 1000
                    assert data[:8] == b"\x89PNG\r\n\x1a\n"
                    if i >= args.warmup:
                        (t_bare if name == "bare" else t_ours).append(dt)
            bare.close()
            ours.close()
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
    mb, mo = statistics.median(t_bare), statistics.median(t_ours)
    ab, ao = statistics.fmean(t_bare), statistics.fmean(t_ours)
    print(f"client_bench: jobs={args.jobs} each, interleaved; median bare={mb:.2f} ms ours={mo:.2f} ms "
          f"ratio={mo / mb:.3f} added={mo - mb:+.2f} ms; mean bare={ab:.2f} ms ours={ao:.2f} ms "
          f"ratio={ao / ab:.3f} (goal <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
