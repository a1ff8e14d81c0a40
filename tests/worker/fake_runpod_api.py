"""A stand-in for RunPod's job API, so ``python -m rp_handler`` runs its production loop locally.

The worker is pointed at it with ``env(...)``: it takes queued jobs from ``/job-take/``, posts
progress and results to ``/job-done/`` (form body holding JSON) and long-polls ``/job-stop/``, which
answers ``{"jobsToStop": [...]}`` once ``stop(job_id)`` was called (the time it answered is kept in
``stop_times``, ``time.time()``: compare with ComfyUI's message timestamps).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class FakeRunPodApi:
    def __init__(self, *, take_latency_s: float = 0.0, idle_poll_s: float = 0.5):
        self.take_latency_s = take_latency_s
        self.idle_poll_s = idle_poll_s
        self.jobs: list[dict] = []
        self.results: dict[str, dict] = {}  # job id -> final result body
        self.result_times: dict[str, float] = {}  # job id -> time.monotonic() the result arrived
        self.progress: dict[str, list] = {}  # job id -> IN_PROGRESS outputs in arrival order
        self.progress_at: dict[str, list[float]] = {}  # job id -> time.monotonic() each arrived
        self.takes = 0
        self.to_stop: list[str] = []
        self.stop_times: dict[str, float] = {}  # job id -> time.time() the stop signal was answered
        self.taken_times: dict[str, float] = {}  # job id -> time.monotonic() the job was handed out
        self._cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                parts = urlsplit(self.path)
                path = parts.path
                if path.startswith("/job-take-batch/"):  # runpod asks for several when concurrency > 1
                    outer.takes += 1
                    size = int(parse_qs(parts.query).get("batch_size", ["1"])[0])
                    first = outer._next_job()
                    if first is None:
                        return self._send(204)
                    jobs = [first] + outer._more_jobs(size - 1)
                    time.sleep(outer.take_latency_s)
                    for job in jobs:
                        outer.taken_times[job["id"]] = time.monotonic()
                    return self._send(200, json.dumps(jobs).encode())
                if path.startswith("/job-take/"):
                    outer.takes += 1
                    job = outer._next_job()
                    if job is None:
                        return self._send(204)
                    time.sleep(outer.take_latency_s)
                    outer.taken_times[job["id"]] = time.monotonic()
                    return self._send(200, json.dumps(job).encode())
                if path.startswith("/job-stop/"):
                    ids = outer._stops()
                    if not ids:
                        return self._send(204)
                    body = json.dumps({"jobsToStop": ids}).encode()
                    for job_id in ids:
                        outer.stop_times[job_id] = time.time()
                    return self._send(200, body)
                return self._send(404)

            def do_POST(self):
                parts = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                self._send(200, b"{}")
                if not parts.path.startswith("/job-done/"):
                    return
                job_id = parts.path.rstrip("/").split("/")[-1]
                data = json.loads(body)
                with outer._cond:
                    if data.get("status") == "IN_PROGRESS":
                        outer.progress.setdefault(job_id, []).append(data.get("output"))
                        outer.progress_at.setdefault(job_id, []).append(time.monotonic())
                    else:
                        outer.results[job_id] = data
                        outer.result_times[job_id] = time.monotonic()
                    outer._cond.notify_all()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _next_job(self) -> dict | None:
        deadline = time.monotonic() + self.idle_poll_s
        with self._cond:
            while not self.jobs:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self.jobs.pop(0)

    def _more_jobs(self, n: int) -> list[dict]:
        with self._cond:
            taken, self.jobs = self.jobs[:max(0, n)], self.jobs[max(0, n):]
            return taken

    def _stops(self) -> list[str]:
        """Long-poll: the ids to stop as soon as there are some, else none after ``idle_poll_s``."""
        deadline = time.monotonic() + self.idle_poll_s
        with self._cond:
            while not self.to_stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)
            ids, self.to_stop = self.to_stop, []
            return ids

    def stop(self, job_id: str) -> None:
        """RunPod cancels ``job_id`` (or its execution timeout passed): the next stop poll names it."""
        with self._cond:
            self.to_stop.append(job_id)
            self._cond.notify_all()

    def wait_progress(self, job_id: str, predicate, timeout: float) -> list:
        """Wait until ``predicate(progress updates so far)`` holds; returns them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.progress.get(job_id, [])):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"progress of {job_id} did not reach the state within {timeout} s")
                self._cond.wait(left)
            return list(self.progress.get(job_id, []))

    def queue(self, job_id: str, job_input: dict) -> None:
        with self._cond:
            self.jobs.append({"id": job_id, "input": job_input})
            self._cond.notify_all()

    def wait_result(self, job_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while job_id not in self.results:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no result for {job_id} within {timeout} s")
                self._cond.wait(left)
            return self.results[job_id]

    def env(self, worker_id: str = "local-worker") -> dict[str, str]:
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{self.url}/job-take/$ID?gpu=cpu",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.url}/job-done/$RUNPOD_POD_ID/$ID?gpu=cpu",
            "RUNPOD_POD_ID": worker_id,
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
