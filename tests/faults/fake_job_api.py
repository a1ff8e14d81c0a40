"""A stand-in for RunPod's worker-side job API (job-take / job-done / job-stop) on 127.0.0.1.

The runpod SDK's job loop (what a deployed worker runs) takes jobs from
``RUNPOD_WEBHOOK_GET_JOB`` (``/job-take-batch/`` when it wants several) and posts results to ``RUNPOD_WEBHOOK_POST_OUTPUT``; ``env()`` gives
those variables pointing here. ``queue`` jobs with ``put``; results land in ``results[job_id]``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote_plus, urlsplit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        api: FakeJobApi = self.server.api  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith("/job-take-batch/"):  # runpod asks for several jobs when JOB_CONCURRENCY > 1
            size = int(parse_qs(parts.query).get("batch_size", ["1"])[0])
            jobs = [job for job in (api.take() for _ in range(size)) if job]
            return self._reply(200, json.dumps(jobs).encode()) if jobs else self._reply(204)
        if path.startswith("/job-take/"):
            job = api.take()
            return self._reply(200, json.dumps(job).encode()) if job else self._reply(204)
        if path.startswith("/job-stop/"):
            time.sleep(0.5)  # a short long-poll
            return self._reply(204)
        if path.startswith("/ping/"):
            return self._reply(200, b"{}")
        self._reply(404, b"{}")

    def do_POST(self) -> None:
        api: FakeJobApi = self.server.api  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        parts = urlsplit(self.path)
        if parts.path.startswith("/job-done/"):
            job_id = parts.path.rstrip("/").rsplit("/", 1)[-1]
            stream = parse_qs(parts.query).get("isStream", ["false"])[0] == "true"
            try:
                data = json.loads(body)
            except ValueError:
                data = json.loads(unquote_plus(body.decode()))
            if not stream and not (isinstance(data, dict) and data.get("status") == "IN_PROGRESS"):
                with api.lock:
                    api.results.setdefault(job_id, []).append(data)
        self._reply(200, b"{}")


class FakeJobApi:
    def __init__(self) -> None:
        self.jobs: list[dict] = []
        self.results: dict[str, list[dict]] = {}
        self.taken: list[str] = []
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.api = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "FakeJobApi":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def put(self, job_id: str, job_input: dict) -> None:
        with self.lock:
            self.jobs.append({"id": job_id, "input": job_input})

    def take(self) -> dict | None:
        with self.lock:
            if not self.jobs:
                return None
            job = self.jobs.pop(0)
            self.taken.append(job["id"])
            return job

    def env(self) -> dict[str, str]:
        return {"RUNPOD_WEBHOOK_GET_JOB": f"{self.url}/job-take/$ID?gpu=none",
                "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.url}/job-done/$RUNPOD_POD_ID/$ID?gpu=none",
                "RUNPOD_WEBHOOK_POST_STREAM": f"{self.url}/job-stream/$RUNPOD_POD_ID/$ID?gpu=none",
                "RUNPOD_WEBHOOK_PING": f"{self.url}/ping/$RUNPOD_POD_ID?gpu=none",
                "RUNPOD_AI_API_KEY": "test-key", "RUNPOD_POD_ID": "worker-1", "RUNPOD_ENDPOINT_ID": "ep"}

    def wait_result(self, job_id: str, timeout: float) -> dict | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if job_id in self.results:
                    return self.results[job_id][0]
            time.sleep(0.02)
        return None
