"""The baseline client for benchmarks: what a careful hand-written client does per job.

One websocket and one keep-alive ``http.client`` connection kept for all jobs; per job:
POST /prompt, wait on the websocket for the final ``executing`` with ``node: null``, GET
/history/{id}, GET /view of each output, base64 it. No error handling beyond the minimum.
"""

from __future__ import annotations

import base64
import http.client
import json
import uuid
from urllib.parse import urlencode, urlsplit

import websocket


class BareClient:
    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.client_id = uuid.uuid4().hex
        self.http = http.client.HTTPConnection(self.host, self.port, timeout=30)
        self.ws = websocket.create_connection(f"ws://{self.host}:{self.port}/ws?clientId={self.client_id}",
                                              timeout=60)

    def _call(self, method: str, path: str, body: dict | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        self.http.request(method, path, body=data, headers=headers)
        resp = self.http.getresponse()
        payload = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status} {payload[:200]!r}")
        return payload

    def run(self, workflow: dict) -> list[str]:
        pid = json.loads(self._call("POST", "/prompt", {"prompt": workflow, "client_id": self.client_id}))["prompt_id"]
        while True:
            frame = self.ws.recv()
            if isinstance(frame, str):
                msg = json.loads(frame)
                data = msg.get("data") or {}
                if msg.get("type") == "executing" and data.get("node") is None and data.get("prompt_id") == pid:
                    break
        history = json.loads(self._call("GET", f"/history/{pid}"))[pid]
        out = []
        for node_out in history["outputs"].values():
            for img in node_out.get("images", []):
                q = urlencode({"filename": img["filename"], "subfolder": img["subfolder"], "type": img["type"]})
                out.append(base64.b64encode(self._call("GET", f"/view?{q}")).decode())
        return out

    def close(self) -> None:
        self.ws.close()
        self.http.close()


def tiny_workflow(color: int, prefix: str = "bench") -> dict:
    """EmptyImage 64x64 → ImageInvert → SaveImage; ``color`` varies per job so nothing is cached."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}
