"""ComfyUI client: one keep-alive HTTP connection and one websocket, reused across jobs.

Protocol facts (tests/data/protocol/README.md): the socket must be connected before POST /prompt,
frames may arrive before the POST answer (buffered here by prompt_id), a prompt ends with the final
``executing {node: null}`` for its id, history is written before that frame, and a reconnect with the
same clientId must close the old socket first (transcript 11). Workflows go to ``/prompt`` only:
``/queue`` answers 200 to a workflow and runs nothing (seed 001).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from typing import Any, Callable

import orjson
import websocket
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_exponential

from builder.comfyui import STALE, ComfyHttp
from rp_handler import errors
from rp_handler.comfy_socket import ComfySocket
from rp_handler.events import Event, Executing
from rp_handler.prompt_wait import PromptResult, Seen, WaitClock, result_of, summarize_node_errors  # noqa: F401

log = logging.getLogger(__name__)


class ComfyClient(ComfySocket):
    """Talks to one ComfyUI. One job at a time (rp_handler.clients gives each job in flight its own)."""

    def __init__(self, base_url: str, *, client_id: str | None = None, http_timeout: float = 30,
                 alive: Callable[[], bool] | None = None, died_grace_s: float = 1.0,
                 history_poll_s: float = 5.0, submit_confirm_s: float = 10.0, interrupt_timeout_s: float = 5.0):
        parsed = urllib.parse.urlsplit(base_url.rstrip("/"))
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"ComfyUI base_url must be http://host:port, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.client_id = client_id or uuid.uuid4().hex
        self.http_timeout = http_timeout
        self.alive = alive  # e.g. ComfyProcess.alive: False → ComfyDied at once
        self.died_grace_s = died_grace_s
        self.history_poll_s = history_poll_s
        self.submit_confirm_s = submit_confirm_s  # how long a POST whose answer was lost is looked for
        self.interrupt_timeout_s = interrupt_timeout_s  # at the deadline; no answer: ComfyUI is unresponsive
        self.partial_node_errors: dict[str, dict] = {}
        self._http = ComfyHttp(self.host, self.port, http_timeout)
        self._ws: websocket.WebSocket | None = None
        self._reader: threading.Thread | None = None
        self._cv = threading.Condition()
        self._buffers: OrderedDict[str, list[Event]] = OrderedDict()
        self._ws_dead = True
        self._ws_error: str | None = None
        self._current_prompt: str | None = None  # for legacy previews without prompt_id
        self.reconnects = 0

    # ------------------------------------------------------------------ websocket: ComfySocket (comfy_socket.py)

    def close(self) -> None:
        self._close_ws()
        self._http.close()

    def __enter__(self) -> "ComfyClient":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, body: Any = None, *, idempotent: bool = True,
                 raw: bytes | None = None, headers: dict[str, str] | None = None,
                 timeout: float | None = None) -> tuple[int, bytes]:
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = orjson.dumps(body)
            hdrs["Content-Type"] = "application/json"
        try:
            return self._http.request(method, path, data, hdrs, idempotent=idempotent, timeout=timeout)
        except (ConnectionRefusedError, *STALE) as exc:
            raise errors.ComfyDied(f"ComfyUI at {self.base_url} is unreachable ({method} {path}): {exc}",
                                   {"url": self.base_url}) from exc
        except (socket.timeout, TimeoutError) as exc:
            raise errors.ComfyUnresponsive(f"ComfyUI did not answer {method} {path} within "
                                            f"{timeout or self.http_timeout:g} s", {"path": path}) from exc
        except OSError as exc:
            raise errors.ComfyDied(f"ComfyUI at {self.base_url} failed ({method} {path}): {exc}",
                                   {"url": self.base_url}) from exc

    def _json(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, data = self._request(method, path, body, **kw)
        if status != 200:
            raise errors.ComfyProtocolError(f"ComfyUI answered {status} to {method} {path}",
                                            {"status": status, "path": path, "body": data[:500].decode("utf-8", "replace")})
        return orjson.loads(data) if data else None

    def system_stats(self) -> dict:
        return self._json("GET", "/system_stats")

    def object_info(self) -> dict:
        return self._json("GET", "/object_info")

    def queue(self) -> dict:
        """``{"queue_running": [[number, id, graph, extra, outputs]], "queue_pending": [...]}``."""
        return self._json("GET", "/queue")

    def history(self, prompt_id: str, *, timeout: float | None = None) -> dict:
        """The history entry of ``prompt_id`` (``{}`` while unknown or pending)."""
        data = self._json("GET", "/history/" + urllib.parse.quote(prompt_id, safe=""), timeout=timeout)
        return (data or {}).get(prompt_id, {}) if isinstance(data, dict) else {}

    def view(self, filename: str, subfolder: str, type_: str) -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type_})
        status, data = self._request("GET", "/view?" + q)
        if status != 200:
            raise errors.OutputError(f"ComfyUI /view answered {status} for {type_}/{subfolder}/{filename}",
                                     {"filename": filename, "subfolder": subfolder, "type": type_,
                                      "status": status})
        return data

    def upload_image(self, name: str, data: bytes, *, subfolder: str = "", overwrite: bool = True) -> dict:
        boundary = uuid.uuid4().hex
        parts = []
        fields = {"overwrite": "true" if overwrite else "false", "type": "input"}
        if subfolder:
            fields["subfolder"] = subfolder
        for k, v in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
        safe = name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{safe}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        status, body = self._request("POST", "/upload/image", raw=b"".join(parts),
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise errors.InputError(f"ComfyUI refused the upload of {name!r} (HTTP {status})",
                                    {"name": name, "status": status})
        return orjson.loads(body)

    def interrupt(self, prompt_id: str | None = None, *, timeout: float | None = None) -> None:
        """Interrupt ``prompt_id`` if it is running (ComfyUI ignores it otherwise), or whatever runs."""
        self._request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {}, timeout=timeout)

    def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        self._request("POST", "/free", {"unload_models": unload_models, "free_memory": free_memory})

    def delete_history(self, prompt_ids: list[str]) -> None:
        if prompt_ids:
            self._request("POST", "/history", {"delete": list(prompt_ids)})

    def delete_queued(self, prompt_ids: list[str], *, timeout: float | None = None) -> None:
        """Remove pending (not running) prompts from ComfyUI's queue."""
        if prompt_ids:
            self._request("POST", "/queue", {"delete": list(prompt_ids)}, timeout=timeout)

    # ------------------------------------------------------------------ submit
    def submit(self, workflow: dict, *, prompt_id: str | None = None) -> str:
        """POST /prompt (the only route that queues work); returns the prompt id."""
        if self._ws_dead:
            self.connect()
        prompt_id = prompt_id or str(uuid.uuid4())
        with self._cv:
            self._buffers.setdefault(prompt_id, [])
        body = {"prompt": workflow, "client_id": self.client_id, "prompt_id": prompt_id}
        try:
            status, data = self._request("POST", "/prompt", body, idempotent=False)
        except errors.ComfyDied as exc:
            # The POST may have arrived (ComfyUI may still be validating it): never send it again,
            # look for it in /queue and /history instead (a dead ComfyUI raises ComfyDied there).
            self._await_queued(prompt_id, exc)
            return prompt_id
        if status == 200:
            answer = orjson.loads(data)
            node_errors = answer.get("node_errors") or {}
            if node_errors:
                self.partial_node_errors[prompt_id] = node_errors
                log.warning("prompt %s queued, but some outputs are invalid and will not run: %s",
                            prompt_id, summarize_node_errors(node_errors))
            return str(answer.get("prompt_id") or prompt_id)
        with self._cv:
            self._buffers.pop(prompt_id, None)
        if status == 400:
            try:
                answer = orjson.loads(data)
            except orjson.JSONDecodeError:
                answer = {}
            error = answer.get("error") or {}
            node_errors = answer.get("node_errors") or {}
            msg = error.get("message") if isinstance(error, dict) else str(error)
            summary = summarize_node_errors(node_errors)
            details = error.get("details") if isinstance(error, dict) else ""
            text = f"ComfyUI rejected the workflow: {msg or 'invalid prompt'}"
            if summary:
                text += f": {summary}"
            elif details:
                text += f" ({details})"
            raise errors.PromptRejected(text, {"error": error, "node_errors": node_errors})
        if status == 500:
            raise errors.PromptRejected(
                "ComfyUI could not read the workflow (HTTP 500): it must be an API-format object "
                "{node_id: {class_type, inputs}} (export it with 'Save (API)')", {"status": 500})
        raise errors.ComfyProtocolError(f"ComfyUI answered {status} to POST /prompt",
                                        {"status": status, "body": data[:500].decode("utf-8", "replace")})

    def _known(self, prompt_id: str) -> bool:
        """Whether ComfyUI has queued ``prompt_id``; ComfyDied when it is unreachable."""
        try:
            if self.history(prompt_id, timeout=2):
                return True
            q = self._json("GET", "/queue", timeout=2)
        except errors.ComfyDied:
            raise
        except errors.WorkerError:
            return False
        return any(item[1] == prompt_id for key in ("queue_running", "queue_pending")
                   for item in (q or {}).get(key, []))

    def _await_queued(self, prompt_id: str, lost: errors.ComfyDied) -> None:
        """Wait up to ``submit_confirm_s`` for a prompt whose POST answer was lost to show up."""
        log.warning("the answer to POST /prompt %s was lost (%s); waiting for it to show up in "
                    "ComfyUI's queue or history (it is never sent twice)", prompt_id, lost)
        poll = Retrying(stop=stop_after_delay(self.submit_confirm_s),
                        wait=wait_exponential(multiplier=0.05, max=1.0),
                        retry=retry_if_result(lambda known: not known),
                        retry_error_callback=lambda state: False)
        try:
            known = poll(self._known, prompt_id)
        except errors.ComfyDied:
            raise lost from None
        if not known:
            with self._cv:
                self._buffers.pop(prompt_id, None)
            raise errors.ComfyProtocolError(
                f"the connection to ComfyUI died during POST /prompt and prompt {prompt_id} did not "
                f"appear in its queue within {self.submit_confirm_s:g} s; it was not sent again",
                {"prompt_id": prompt_id})

    # ------------------------------------------------------------------ wait
    def _take(self, prompt_id: str, timeout: float) -> list[Event]:
        """Events buffered for ``prompt_id``; blocks up to ``timeout`` when there are none."""
        with self._cv:
            buf = self._buffers.get(prompt_id)
            if not buf and not self._ws_dead and timeout > 0:
                self._cv.wait(timeout)
                buf = self._buffers.get(prompt_id)
            if buf:
                self._buffers[prompt_id] = []
                return buf
            return []

    def _check_alive(self) -> None:
        if self.alive is not None and not self.alive():
            raise errors.ComfyDied("ComfyUI process exited during the job", {"url": self.base_url})

    def _reconnect(self, prompt_id: str, deadline: float) -> None:
        """Close the old socket first, then open a new one; ComfyDied when ComfyUI is gone."""
        self.reconnects += 1
        log.warning("websocket to ComfyUI lost (%s) while waiting for %s; reconnecting",
                    self._ws_error, prompt_id)
        self._close_ws()
        give_up = min(deadline, time.monotonic() + self.died_grace_s)
        delay = 0.02
        while True:
            self._check_alive()
            try:
                self.connect()
                return
            except errors.ComfyDied:
                if time.monotonic() + delay > give_up:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def wake(self) -> None:
        """Wake a ``wait`` now (e.g. its job was stopped) instead of at its next poll."""
        with self._cv:
            self._cv.notify_all()

    def wait(self, prompt_id: str, *, deadline: float, on_event: Callable[[Event], None] | None = None,
             stopped: Callable[[], bool] | None = None) -> PromptResult:
        """Wait for the final ``executing(node=None)`` of ``prompt_id`` (``deadline`` is monotonic).

        ``stopped``: when it returns True the wait ends with ``errors.Cancelled`` (the caller has
        stopped the prompt; ``wake`` makes the wait notice at once).
        """
        clock = WaitClock(deadline, self.history_poll_s, check_alive=self.alive is not None)
        seen = Seen()
        entry = self._follow(prompt_id, clock, seen, on_event, stopped)
        seen.finished = seen.finished or time.monotonic()
        with self._cv:
            self._buffers.pop(prompt_id, None)
        from_history = bool(entry)
        if not entry:
            try:
                entry = self._history_after_completion(prompt_id, deadline)
            except errors.ComfyDied:
                if not any(isinstance(ev, Executing) and ev.node is None for ev in seen.events):
                    raise
                # The prompt finished (its final frame came) and ComfyUI died right after, e.g. in the
                # next job's prompt: this job's outputs are known from the websocket; no retry needed.
                log.warning("ComfyUI exited right after prompt %s finished; using the websocket's outputs", prompt_id)
        if not entry:
            log.warning("history of prompt %s is still empty after completion; using websocket outputs",
                        prompt_id)
        return result_of(prompt_id, seen, entry, self.partial_node_errors.pop(prompt_id, {}),
                         from_history=from_history)

    def _follow(self, prompt_id: str, clock: WaitClock, seen: Seen,
                on_event: Callable[[Event], None] | None, stopped: Callable[[], bool] | None = None) -> dict:
        """Take events until the final frame (returns ``{}``) or /history shows the prompt done (its entry).

        A lost websocket is reopened and /history polled often from then on (a frame may be missed);
        a dead ComfyUI raises ComfyDied, the deadline ComfyTimeout (after the interrupt).
        """
        while True:
            if stopped is not None and stopped():
                with self._cv:
                    self._buffers.pop(prompt_id, None)
                self.partial_node_errors.pop(prompt_id, None)
                raise errors.Cancelled(f"the job was stopped while ComfyUI prompt {prompt_id} was queued or ran",
                                       {"prompt_id": prompt_id})
            if clock.expired():
                self._on_deadline(prompt_id, clock.deadline)
            if self._ws_dead:
                self._reconnect(prompt_id, clock.deadline)
                entry = self._poll_history(prompt_id, clock.deadline)  # also detects a dead ComfyUI
                if entry:
                    return entry
                clock.poll_soon()
            batch = self._take(prompt_id, clock.until_wake())
            if seen.absorb(batch, on_event):
                return {}
            if not batch:
                self._check_alive()
            if clock.log_due():
                log.info("still waiting for ComfyUI prompt %s after %.0f s (%d events so far)",
                         prompt_id, clock.waited, len(seen.events))
            if clock.poll_due():
                entry = self._poll_history(prompt_id, clock.deadline)  # also detects a dead ComfyUI
                if entry:
                    log.warning("prompt %s finished without its final websocket frame; using /history",
                                prompt_id)
                    return entry
                clock.polled()

    def _poll_history(self, prompt_id: str, deadline: float) -> dict:
        """``/history`` of ``prompt_id``, never waiting past ``deadline``: a silent ComfyUI at the deadline
        is a timed-out job (interrupted, then restarted when it stays silent), not a transient error."""
        try:
            return self.history(prompt_id, timeout=max(0.05, min(self.http_timeout, deadline - time.monotonic())))
        except errors.ComfyUnresponsive:
            if time.monotonic() >= deadline - 0.01:
                self._on_deadline(prompt_id, deadline)
            raise

    def _history_after_completion(self, prompt_id: str, deadline: float) -> dict:
        """History is written before the final frame; retry briefly in case of a race."""
        entry = self.history(prompt_id)
        delay = 0.005
        stop = min(deadline, time.monotonic() + 10)
        while not entry and time.monotonic() + delay < stop:
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
            entry = self.history(prompt_id)
        return entry

    def _on_deadline(self, prompt_id: str, deadline: float) -> None:
        """Interrupt ``prompt_id`` (``interrupt_timeout_s`` for ComfyUI to answer) and raise ComfyTimeout;
        ``details["comfy_unresponsive"]`` says ComfyUI did not answer (its caller restarts it)."""
        log.warning("prompt %s passed its deadline; interrupting it", prompt_id)
        stop = time.monotonic() + self.interrupt_timeout_s
        details: dict[str, Any] = {"prompt_id": prompt_id}
        try:
            self.interrupt(prompt_id, timeout=max(0.05, self.interrupt_timeout_s))
            self.delete_queued([prompt_id], timeout=max(0.05, stop - time.monotonic()))
        except errors.ComfyUnresponsive as exc:
            log.warning("ComfyUI did not answer the interrupt of prompt %s: %s", prompt_id, exc)
            details["comfy_unresponsive"] = True
        except errors.WorkerError as exc:
            log.warning("could not interrupt prompt %s: %s", prompt_id, exc)
        with self._cv:
            self._buffers.pop(prompt_id, None)
        raise errors.ComfyTimeout(f"ComfyUI prompt {prompt_id} did not finish before the job deadline; "
                                  "it was interrupted", details)
