#!/usr/bin/env python3
"""Submit a ComfyUI job to a RunPod endpoint and save its outputs.

    RUNPOD_API_KEY=... scripts/submit.py --endpoint ID --template sdxl_txt2img \\
        --param prompt="a lighthouse at dawn" --param seed=-1 --out out/
    scripts/submit.py --endpoint ID --workflow my_api_workflow.json --sync
    scripts/submit.py --url http://127.0.0.1:8000 --template cpu_invert   # local --rp_serve_api worker

Sends ``{"input": {"template", "params"}}`` (checked first against the worker's own
workflows/*.manifest.json) or ``{"input": {"workflow"}}`` through the runpod SDK's
endpoint client (``runpod.Endpoint``) to ``/run`` and follows ``/status/{id}`` (or ``/stream/{id}`` with ``--stream``), or
waits on ``/runsync`` with ``--sync``.  Progress goes to stderr.  Outputs are
saved under ``--out``: base64 payloads are decoded, http(s) URLs (GCS signed
URLs) are downloaded.  A summary of the output, with files replaced by the
paths they were saved to, is printed to stdout.

``--param k=v``: ``v`` is read as JSON when it is a number, true/false or null
(``steps=30``), else as text (``prompt=a cat``); ``k:=JSON`` forces JSON.
``--image NAME=PATH`` uploads a local image as ``input.images[]``
(``{"name", "image": base64}``) for params like ``image=NAME``.

The API key comes only from ``RUNPOD_API_KEY``; it is never printed, and
signed URLs are printed without their query string.
Exit status: 0 done, 1 the job failed, 2 bad arguments, 3 network/HTTP error,
4 timed out.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from builder.entry import ensure_for_script  # noqa: E402  (stdlib only)

if __name__ == "__main__":
    ensure_for_script(__file__)  # plain python3: re-run in the project's .venv

import requests  # noqa: E402

from scripts.submit_outputs import OutputSaver, SubmitError, redact_url  # noqa: E402

API_BASE = "https://api.runpod.ai/v2"
ENV_HELP = """environment:
  RUNPOD_API_KEY   the RunPod API key, needed with --endpoint (never printed; a local --url worker needs none)

A template and its params are checked against workflows/*.manifest.json before anything is sent."""
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
FAILED_STATES = FINAL_STATES - {"COMPLETED"}


# ----------------------------------------------------------------------------- helpers


def parse_param(text: str) -> tuple[str, Any]:
    if ":=" in text and ("=" not in text or text.index(":=") < text.index("=")):
        key, raw = text.split(":=", 1)
        try:
            return key.strip(), json.loads(raw)
        except ValueError:
            raise SubmitError(f"--param {key}:= needs JSON after ':=', got {raw!r}", 2) from None
    if "=" not in text:
        raise SubmitError(f"--param {text!r} must look like name=value", 2)
    key, raw = text.split("=", 1)
    if re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?|true|false|null", raw.strip()):
        return key.strip(), json.loads(raw.strip())
    return key.strip(), raw


def build_input(args: argparse.Namespace) -> dict[str, Any]:
    job: dict[str, Any] = {}
    if args.workflow:
        try:
            data = json.loads(Path(args.workflow).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise SubmitError(f"--workflow {args.workflow}: cannot read JSON: {err}", 2) from None
        if isinstance(data, dict) and isinstance(data.get("input"), dict):
            job.update(data["input"])  # a whole RunPod request body
        elif isinstance(data, dict) and isinstance(data.get("workflow"), dict):
            job.update(data)
        elif isinstance(data, dict) and data and all(isinstance(n, dict) and "class_type" in n for n in data.values()):
            job["workflow"] = data
        else:
            raise SubmitError(f"--workflow {args.workflow}: not an API-format workflow "
                              "(export it with 'Save (API)' in ComfyUI)", 2)
    else:
        job["template"] = args.template
        job["params"] = dict(parse_param(p) for p in args.param)
    for spec in args.image:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SubmitError(f"--image {spec!r} must look like NAME=PATH", 2)
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise SubmitError(f"--image {name}: cannot read {path}: {err.strerror}", 2) from None
        job.setdefault("images", []).append({"name": name, "image": base64.b64encode(data).decode()})
    return job


def check_template(name: str, params: Mapping[str, Any] | None) -> None:
    """The worker's own check (rp_handler.templates), before the job is sent: a one-line usage error."""
    from rp_handler.templates import expand_template

    try:
        expand_template(name, params)
    except ValueError as err:
        raise SubmitError(f"{err} (see workflows/README.md; --no-local-check sends it anyway)", 2) from None


# ----------------------------------------------------------------------------- API client


class RunpodApi:
    """The endpoint through the runpod SDK's endpoint client (``runpod.Endpoint``).

    ``Endpoint.run`` submits, ``Job.cancel`` cancels; the SDK client (``Endpoint.rp_client``: auth
    header, base URL ``runpod.endpoint_url_base``, its session) answers ``status``/``stream``/``runsync``
    with RunPod's whole state dicts (status, progress ``output``, ``error``), which the SDK's ``Job``
    methods reduce to the output alone. A local ``--rp_serve_api`` worker serves the same routes at its
    root: its URL is the base and the endpoint id is ``.`` (``<url>/./run`` is ``<url>/run``).
    """

    def __init__(self, base: str, endpoint_id: str, api_key: str | None, *, timeout: float = 60):
        import runpod
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        runpod.endpoint_url_base = base.rstrip("/")
        self.shown = redact_url(base.rstrip("/") + ("" if endpoint_id == "." else f"/{endpoint_id}"))
        self.endpoint = runpod.Endpoint(endpoint_id, api_key=api_key or "local")  # a local worker ignores it
        self.client = self.endpoint.rp_client
        # the SDK retries 5 times with up to 16 s sleeps; one quick retry says "unreachable" in seconds
        retry = Retry(total=2, connect=1, backoff_factor=0.2, status_forcelist=[408, 429])
        for scheme in ("http://", "https://"):
            self.client.rp_session.mount(scheme, HTTPAdapter(max_retries=retry))
        self.id = endpoint_id
        self.timeout = timeout
        self.job = None
        # RunPod serves GET /status and /stream; the local --rp_serve_api answers POST only.
        self.poll_method = "GET"

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        where = f"{what} {self.shown}"
        try:
            data = fn()
        except requests.HTTPError as err:
            resp = err.response
            snippet = " ".join((resp.text if resp is not None else "").split())[:200]
            raise SubmitError(f"{where}: HTTP {resp.status_code if resp is not None else '?'}: {snippet}") from None
        except requests.RequestException as err:
            raise SubmitError(f"{where} failed: {type(err).__name__} (is the endpoint reachable?)") from None
        except RuntimeError as err:  # the SDK's 401: "Unauthorized request, please check your API key."
            raise SubmitError(f"{where}: 401 unauthorized; check RUNPOD_API_KEY ({err})") from None
        except ValueError:
            raise SubmitError(f"{where}: the answer is not JSON") from None
        return data

    def run(self, job_input: dict) -> dict:
        self.job = self._call("POST /run", lambda: self.endpoint.run({"input": job_input}))
        return {"id": self.job.job_id, "status": "IN_QUEUE"}

    def runsync(self, job_input: dict, wait_s: float) -> dict:
        wait_ms = int(min(max(wait_s, 1), 300) * 1000)
        data = self._call("POST /runsync", lambda: self.client.post(f"{self.id}/runsync?wait={wait_ms}",
                                                                     {"input": job_input}, timeout=wait_s + 30))
        return self._state(data, "/runsync")

    def _state(self, data: Any, what: str) -> dict:
        if not isinstance(data, dict):
            raise SubmitError(f"{what} {self.shown}: unexpected answer {str(data)[:100]}")
        return data

    def poll(self, kind: str, job_id: str) -> dict:
        path = f"{self.id}/{kind}/{job_id}"
        if self.poll_method == "GET":
            try:
                return self._state(self._call(f"GET /{kind}", lambda: self.client.get(path, timeout=self.timeout)),
                                   f"/{kind}")
            except SubmitError as err:
                if "HTTP 405" not in str(err):
                    raise
                self.poll_method = "POST"
        return self._state(self._call(f"POST /{kind}", lambda: self.client.post(path, None, timeout=self.timeout)),
                           f"/{kind}")

    def cancel(self, job_id: str) -> None:
        if self.job is not None and self.job.job_id == job_id:
            try:
                self.job.cancel(timeout=10)
            except (requests.RequestException, RuntimeError, ValueError):
                pass


def _describe(state: Mapping[str, Any]) -> str:
    status = state.get("status", "?")
    extra = state.get("output") if status == "IN_PROGRESS" else None
    if extra is None and status == "IN_PROGRESS" and state.get("stream"):
        extra = state["stream"][-1].get("output")
    if extra is None:
        return status
    text = extra if isinstance(extra, str) else json.dumps(extra, separators=(",", ":"))
    return f"{status} {text[:160]}"


def wait_for_job(api: RunpodApi, job: dict, *, stream: bool, poll_s: float, deadline: float,
                 log: Callable[[str], None]) -> dict:
    """Follow a job to a final state; returns the final status dict (with ``output``)."""
    job_id = job.get("id")
    if not job_id:
        raise SubmitError(f"the endpoint answered without a job id: {str(job)[:200]}")
    start, last_shown, last_line = time.monotonic(), 0.0, None
    state, chunks, kind = job, [], "stream" if stream else "status"
    while True:
        line = _describe(state)
        now = time.monotonic()
        if line != last_line or now - last_shown >= 10:
            log(f"[{now - start:6.1f}s] {job_id}: {line}")
            last_line, last_shown = line, now
        if state.get("status") in FINAL_STATES:
            break
        if now >= deadline:
            api.cancel(job_id)
            raise SubmitError(f"job {job_id} still {state.get('status')} after {now - start:.0f} s; "
                              "cancelled it (raise --timeout to wait longer)", 4)
        time.sleep(poll_s)
        state = api.poll(kind, job_id)
        if kind == "stream":
            if state.get("status") == "FAILED" and "Stream not supported" in str(state.get("error", "")):
                log("the worker's handler does not stream; following /status instead")
                kind, state = "status", api.poll("status", job_id)
                continue
            chunks.extend(c.get("output") for c in state.get("stream") or [] if isinstance(c, dict))
    if kind == "stream" and state.get("status") == "COMPLETED" and "output" not in state:
        if chunks:
            state = {**state, "output": chunks[-1] if len(chunks) == 1 else chunks}
        else:
            state = api.poll("status", job_id)
    return state


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="submit.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=ENV_HELP)
    p.add_argument("--endpoint", help="RunPod endpoint id")
    p.add_argument("--url", help="base URL instead of the RunPod API, e.g. a local --rp_serve_api worker "
                                 "at http://127.0.0.1:8000")
    p.add_argument("--api-base", default=API_BASE, help=argparse.SUPPRESS)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--template", help="template name (see workflows/README.md)")
    what.add_argument("--workflow", help="API-format workflow JSON file")
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="template param (repeatable)")
    p.add_argument("--image", action="append", default=[], metavar="NAME=PATH", help="upload a local image")
    p.add_argument("--out", default="outputs", help="folder for the outputs (default: outputs)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--sync", action="store_true", help="use /runsync")
    mode.add_argument("--stream", action="store_true", help="follow /stream/{id} instead of /status/{id}")
    p.add_argument("--no-local-check", action="store_true",
                   help="send --template/--param unchecked (an endpoint built from another checkout)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the job (default 1800)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between status polls (default 1)")
    return p


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    api_key = env.get("RUNPOD_API_KEY", "").strip() or None  # the only place the key is read
    try:
        if args.param and not args.template:
            raise SubmitError("--param needs --template (a --workflow is sent as is)", 2)
        if args.url:
            base, endpoint_id = args.url, "."
        elif args.endpoint:
            base, endpoint_id = args.api_base, args.endpoint
            if not api_key:
                raise SubmitError("set RUNPOD_API_KEY to call a RunPod endpoint", 2)
        else:
            raise SubmitError("give --endpoint ID (RunPod) or --url URL (a local worker)", 2)
        job_input = build_input(args)
        if "template" in job_input and not args.no_local_check:
            check_template(job_input["template"], job_input.get("params"))
        # a local --rp_serve_api worker runs the job inside the /status or /runsync call
        api = RunpodApi(base, endpoint_id, api_key, timeout=args.timeout + 30)
        deadline = time.monotonic() + args.timeout
        if args.sync:
            log(f"POST {api.shown}/runsync")
            job = api.runsync(job_input, args.timeout)
        else:
            job = api.run(job_input)
            log(f"submitted job {job.get('id')} to {api.shown}")
        try:
            final = wait_for_job(api, job, stream=args.stream, poll_s=args.poll, deadline=deadline, log=log)
        except KeyboardInterrupt:
            if job.get("id"):
                api.cancel(job["id"])
            raise SubmitError(f"interrupted; asked the endpoint to cancel job {job.get('id')}", 4) from None
        if final.get("status") in FAILED_STATES:
            error = final.get("error") or final.get("output") or "no error message"
            if isinstance(error, str):
                try:
                    error = json.loads(error)
                except ValueError:
                    pass
            print(json.dumps({"id": final.get("id"), "status": final["status"], "error": error}, indent=2))
            log(f"job {final.get('id')} {final['status']}")
            return 1
        saver = OutputSaver(Path(args.out), timeout=120, log=log)
        summary = saver.walk(final.get("output"))
        print(json.dumps({"id": final.get("id"), "status": final.get("status"), "output": summary,
                          "saved": [str(p) for p in saver.saved]}, indent=2))
        return 0
    except SubmitError as err:
        log(f"error: {err}")
        return err.code


if __name__ == "__main__":
    sys.exit(main())
