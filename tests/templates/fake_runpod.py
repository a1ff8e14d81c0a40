"""A stand-in for RunPod's queue-endpoint API on pytest-httpserver.

Shapes follow RunPod's docs: ``POST /run`` → ``{"id", "status": "IN_QUEUE"}``;
``GET /status/{id}`` → ``{"id", "status", "delayTime", "executionTime",
"output"?, "error"?}`` with statuses IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED,
CANCELLED, TIMED_OUT (``output`` carries progress updates while IN_PROGRESS);
``GET /stream/{id}`` → ``{"status", "stream": [{"output": ...}, ...]}`` with
the chunks produced since the last call; ``POST /runsync`` → the final status;
``POST /cancel/{id}``.  ``local=True`` mimics ``--rp_serve_api``: routes at the
root, /status and /stream answer POST only (GET is 405), /run says IN_PROGRESS.
"""

from __future__ import annotations

import json
from typing import Any

from werkzeug import Request, Response

JOB_ID = "a1b2c3d4-e5f6-7890-job"


class FakeRunpod:
    def __init__(self, httpserver, *, endpoint: str = "ep-test", api_key: str | None = "rpa_TESTKEY_secret",
                 output: Any = None, statuses: list[dict] | None = None, stream: list[dict] | None = None,
                 local: bool = False, fail_with: Any = None):
        self.server = httpserver
        self.api_key = api_key
        self.prefix = "" if local else f"/v2/{endpoint}"
        self.output = output
        self.fail_with = fail_with
        self.runs: list[dict] = []
        self.polls: list[tuple[str, str]] = []
        self.cancelled: list[str] = []
        self.auth_seen: list[str | None] = []
        self._final_streamed = False
        final = self._final()
        self.status_script = list(statuses if statuses is not None else [
            {"id": JOB_ID, "status": "IN_QUEUE", "delayTime": 0},
            {"id": JOB_ID, "status": "IN_PROGRESS", "delayTime": 800, "output": "KSampler 3/20"},
            {"id": JOB_ID, "status": "IN_PROGRESS", "delayTime": 800, "output": {"node": "3", "value": 20, "max": 20}},
        ]) + [final]
        self.stream_script = list(stream if stream is not None else [
            {"status": "IN_QUEUE", "stream": []},
            {"status": "IN_PROGRESS", "stream": [{"output": {"progress": "KSampler 10/20"}}]},
        ]) + [{"status": final["status"], "stream": [{"output": final["output"]}] if "output" in final else []}]
        methods = ("POST",) if local else ("GET",)
        p = self.prefix
        httpserver.expect_request(f"{p}/run", method="POST").respond_with_handler(self._run)
        httpserver.expect_request(f"{p}/runsync", method="POST").respond_with_handler(self._runsync)
        httpserver.expect_request(f"{p}/cancel/{JOB_ID}", method="POST").respond_with_handler(self._cancel)
        for m in methods:
            httpserver.expect_request(f"{p}/status/{JOB_ID}", method=m).respond_with_handler(self._status)
            httpserver.expect_request(f"{p}/stream/{JOB_ID}", method=m).respond_with_handler(self._stream)
        if local:
            for kind in ("status", "stream"):
                httpserver.expect_request(f"/{kind}/{JOB_ID}", method="GET").respond_with_json(
                    {"detail": "Method Not Allowed"}, status=405)

    @property
    def base(self) -> str:
        return self.server.url_for(self.prefix or "/").rstrip("/")

    def _final(self) -> dict:
        if self.fail_with is not None:
            return {"id": JOB_ID, "status": "FAILED", "delayTime": 900, "executionTime": 120, "error": self.fail_with}
        return {"id": JOB_ID, "status": "COMPLETED", "delayTime": 900, "executionTime": 2345,
                "workerId": "w-1", "output": self.output}

    def _authorized(self, request: Request) -> Response | None:
        self.auth_seen.append(request.headers.get("Authorization"))
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return Response(json.dumps({"error": "Unauthorized"}), status=401, content_type="application/json")
        return None

    @staticmethod
    def _json(data: Any) -> Response:
        return Response(json.dumps(data), content_type="application/json")

    def _run(self, request: Request) -> Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        body = request.get_json()
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return Response(json.dumps({"error": "input is required"}), status=400, content_type="application/json")
        self.runs.append(body)
        return self._json({"id": JOB_ID, "status": "IN_PROGRESS" if not self.prefix else "IN_QUEUE"})

    def _runsync(self, request: Request) -> Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        self.runs.append(request.get_json())
        self.polls.append(("runsync", request.args.get("wait", "")))
        return self._json(self._final())

    def _status(self, request: Request) -> Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        self.polls.append(("status", request.method))
        state = self.status_script.pop(0) if len(self.status_script) > 1 else self.status_script[0]
        return self._json(state)

    def _stream(self, request: Request) -> Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        self.polls.append(("stream", request.method))
        if not self.prefix:  # the local API streams only generator handlers
            return self._json({"id": JOB_ID, "status": "FAILED",
                               "error": "Stream not supported, handler must be a generator."})
        if len(self.stream_script) > 1 or not self._final_streamed:
            self._final_streamed = len(self.stream_script) == 1
            return self._json(self.stream_script.pop(0) if len(self.stream_script) > 1 else self.stream_script[0])
        return self._json({**self.stream_script[0], "stream": []})

    def _cancel(self, request: Request) -> Response:
        self.cancelled.append(JOB_ID)
        return self._json({"id": JOB_ID, "status": "CANCELLED"})
