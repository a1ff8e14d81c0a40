"""A fake ComfyUI server (aiohttp) that reproduces the recorded protocol of tests/data/protocol.

Behaviour follows the transcripts: message order, history shapes, validation bodies, caching,
interrupt and queue semantics, client_id routing, the reconnect gotcha, and aiohttp's 500 for
malformed bodies. Fault knobs (``FAKE_COMFY_FAULTS`` / ``POST /__fake__/faults``) simulate crashes,
hangs, dropped websockets and slow history.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

try:
    from . import nodes as fake_nodes
    from .folders import ModelPaths
    from .objectinfo import ObjectInfo
    from .validation import validate_prompt
except ImportError:  # run as a script from a ComfyUI-like checkout
    import nodes as fake_nodes  # type: ignore[no-redef]
    from folders import ModelPaths  # type: ignore[no-redef]
    from objectinfo import ObjectInfo  # type: ignore[no-redef]
    from validation import validate_prompt  # type: ignore[no-redef]

log = logging.getLogger("comfyui")

VERSION = "0.3.64"
FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class InterruptProcessing(Exception):
    """Like comfy.model_management.InterruptProcessingException."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_link(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


@dataclass
class QueueItem:
    number: float
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs: list[str]

    def as_list(self) -> list:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


@dataclass
class HistoryEntry:
    body: dict
    visible_at: float = 0.0


@dataclass
class _Run:
    """Per-prompt execution state."""

    item: QueueItem
    client_id: str | None
    messages: list = field(default_factory=list)
    progress: dict = field(default_factory=dict)
    executed: list = field(default_factory=list)
    ui: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


class FakeComfy:
    """State and routes of one fake ComfyUI."""

    def __init__(self, *, input_dir: Path, output_dir: Path, temp_dir: Path, user_dir: Path,
                 models_dir: Path, extra_model_paths: list[Path] | None = None,
                 faults: dict | None = None, hard_exit: bool = False, argv: list[str] | None = None):
        self.input_dir, self.output_dir, self.temp_dir = Path(input_dir), Path(output_dir), Path(temp_dir)
        self.user_dir, self.models_dir = Path(user_dir), Path(models_dir)
        for d in (self.input_dir, self.output_dir, self.temp_dir, self.user_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.paths = ModelPaths(self.models_dir)
        for y in extra_model_paths or []:
            self.paths.load_yaml(y)
        self.object_info = ObjectInfo(self.paths, self.input_dir)
        self.faults: dict = dict(faults or {})
        self._fault_prompts = 0
        self._dropped_prompt = False
        self.hard_exit = hard_exit
        self.argv = list(argv or ["main.py"])
        self.requests: list[tuple[str, str]] = []
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.socket_flags: dict[str, dict] = {}
        self.pending: list[QueueItem] = []
        self.running: QueueItem | None = None
        self.history: dict[str, HistoryEntry] = {}
        self.number = 0
        self.cache: dict[str, tuple[tuple, dict | None]] = {}
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.interrupted = False
        self.free_flags: dict = {}
        self.dead = False
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    # ---------------------------------------------------------------- faults
    def set_faults(self, faults: dict) -> None:
        self.faults = dict(faults or {})
        self._fault_prompts = 0
        self._dropped_prompt = False
        log.info("[fake] faults set: %s", json.dumps(self.faults))

    def fault(self, name: str, default: Any = None) -> Any:
        return self.faults.get(name, default)

    # ---------------------------------------------------------------- app
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=FEATURES["max_upload_size"],
                              middlewares=[self._record_mw, self._origin_mw])
        routes = [
            ("GET", "/ws", self.ws_handler),
            ("GET", "/", self.index),
            ("GET", "/embeddings", self.embeddings),
            ("GET", "/models", self.models),
            ("GET", "/models/{folder}", self.models_folder),
            ("GET", "/system_stats", self.system_stats),
            ("GET", "/features", self.features),
            ("GET", "/prompt", self.get_prompt),
            ("POST", "/prompt", self.post_prompt),
            ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue),
            ("POST", "/interrupt", self.post_interrupt),
            ("POST", "/free", self.post_free),
            ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_id),
            ("POST", "/history", self.post_history),
            ("GET", "/view", self.view),
            ("POST", "/upload/image", self.upload_image),
            ("GET", "/object_info", self.get_object_info),
            ("GET", "/object_info/{node_class}", self.get_object_info_node),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            if path != "/":
                app.router.add_route(method, "/api" + path, handler)
        app.router.add_route("POST", "/__fake__/faults", self.post_faults)
        app.router.add_route("GET", "/__fake__/requests", self.get_requests)
        return app

    @web.middleware
    async def _record_mw(self, request: web.Request, handler):
        self.requests.append((request.method, request.path))
        return await handler(request)

    @web.middleware
    async def _origin_mw(self, request: web.Request, handler):
        host = request.headers.get("Host", "").lower()
        origin = request.headers.get("Origin")
        if host and origin:
            origin_domain = urllib.parse.urlparse(origin).netloc.lower()
            hostname = urllib.parse.urlsplit("//" + host).hostname
            if hostname in LOOPBACK and origin_domain and host != origin_domain:
                log.warning("WARNING: request with non matching host and origin %s != %s, returning 403",
                            host, origin_domain)
                return web.Response(status=403)
        return await handler(request)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._wake = asyncio.Event()
        self.runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._worker = asyncio.create_task(self._prompt_worker())
        log.info("Starting server\n")
        log.info("To see the GUI go to: http://%s:%d", host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
        for ws in list(self.sockets.values()):
            await ws.close()
        if self.runner:
            await self.runner.cleanup()

    async def _die(self) -> None:
        log.error("[fake] fault die_during_prompt: dying now")
        if self.hard_exit:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        self.dead = True
        for ws in list(self.sockets.values()):
            transport = ws._req.transport if ws._req is not None else None  # noqa: SLF001
            if transport is not None:
                transport.abort()
        if self.runner:
            await self.runner.shutdown()
            await self.runner.cleanup()
        raise asyncio.CancelledError

    # ---------------------------------------------------------------- websocket
    async def send(self, event: str, data: Any, sid: str | None) -> None:
        msg = json.dumps({"type": event, "data": data})
        targets = list(self.sockets.values()) if sid is None else (
            [self.sockets[sid]] if sid in self.sockets else [])
        for ws in targets:
            try:
                await ws.send_str(msg)
            except Exception:  # noqa: BLE001 - a closing socket loses the frame, like ComfyUI
                pass

    async def send_preview(self, png: bytes, sid: str | None, meta: dict) -> None:
        sids = list(self.sockets) if sid is None else ([sid] if sid in self.sockets else [])
        for s in sids:
            ws = self.sockets.get(s)
            if ws is None:
                continue
            if self.socket_flags.get(s, {}).get("supports_preview_metadata"):
                mj = json.dumps(meta).encode()
                frame = struct.pack(">II", 4, len(mj)) + mj + png
            else:
                frame = struct.pack(">II", 1, 2) + png
            try:
                await ws.send_bytes(frame)
            except Exception:  # noqa: BLE001
                pass

    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": len(self.pending) + (1 if self.running else 0)}}

    async def queue_updated(self) -> None:
        await self.send("status", {"status": self.queue_info()}, None)

    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        if self.fault("reject_ws"):
            return web.Response(status=503, text="fake: websocket rejected by fault reject_ws")
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self.socket_flags[sid] = {}
        try:
            await self.send("status", {"status": self.queue_info(), "sid": sid}, sid)
            if self.client_id == sid and self.last_node_id is not None:
                await self.send("executing", {"node": self.last_node_id}, sid)
            first = True
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                    except json.JSONDecodeError:
                        continue
                    if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                        self.socket_flags[sid] = dict(data.get("data") or {})
                        await self.send("feature_flags", FEATURES, sid)
                    first = False
        finally:
            # The real server pops by clientId, even when a newer socket owns it (transcript 11).
            self.sockets.pop(sid, None)
            self.socket_flags.pop(sid, None)
        return ws

    # ---------------------------------------------------------------- simple routes
    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text="<html><body>fake ComfyUI</body></html>", content_type="text/html")

    async def embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([os.path.splitext(n)[0] for n in self.paths.list("embeddings")])

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.paths.paths))

    async def models_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in self.paths.paths:
            return web.Response(status=404)
        return web.json_response(self.paths.list(folder))

    async def system_stats(self, request: web.Request) -> web.Response:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError):
            total = free = 8 << 30
        return web.json_response({
            "system": {"os": os.name, "ram_total": total, "ram_free": free, "comfyui_version": VERSION,
                       "required_frontend_version": "1.27.10", "installed_templates_version": "0.1.95",
                       "required_templates_version": "0.1.95", "python_version": sys.version,
                       "pytorch_version": "2.13.0+cpu", "embedded_python": False, "argv": self.argv},
            "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": total,
                         "vram_free": free, "torch_vram_total": total, "torch_vram_free": free}],
        })

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(FEATURES)

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue_info())

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response({
            "queue_running": [self.running.as_list()] if self.running else [],
            "queue_pending": [i.as_list() for i in self.pending],
        })

    async def post_queue(self, request: web.Request) -> web.Response:
        data = await request.json()  # malformed → aiohttp's 500, like ComfyUI
        changed = False
        if "clear" in data and data["clear"]:
            self.pending.clear()
            changed = True
        if "delete" in data:
            for pid in data["delete"]:
                before = len(self.pending)
                self.pending = [i for i in self.pending if i.prompt_id != pid]
                changed = changed or len(self.pending) != before
        if changed:
            await self.queue_updated()
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except json.JSONDecodeError:
            data = {}
        pid = data.get("prompt_id") if isinstance(data, dict) else None
        if self.fault("ignore_interrupt"):
            log.info("[fake] interrupt ignored (fault ignore_interrupt)")
        elif pid:
            if self.running is not None and self.running.prompt_id == pid:
                log.info("Interrupting prompt %s", pid)
                self.interrupted = True
            else:
                log.info("Prompt %s is not currently running, skipping interrupt", pid)
        else:
            log.info("Interrupting processing")
            self.interrupted = True
        return web.Response(status=200)

    async def post_free(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.free_flags.update({k: bool(data.get(k)) for k in ("unload_models", "free_memory") if k in data})
        if self.running is None:
            self._apply_free()
        return web.Response(status=200)

    def _apply_free(self) -> None:
        if self.free_flags.get("unload_models") or self.free_flags.get("free_memory"):
            log.info("[fake] free: %s", self.free_flags)
        self.free_flags = {}

    async def get_requests(self, request: web.Request) -> web.Response:
        """Test control: every (method, path) this server has seen, in order."""
        return web.json_response([[m, p] for m, p in self.requests])

    async def post_faults(self, request: web.Request) -> web.Response:
        self.set_faults(await request.json())
        return web.json_response(self.faults)

    # ---------------------------------------------------------------- history
    def _visible(self) -> dict[str, dict]:
        now = time.monotonic()
        return {k: e.body for k, e in self.history.items() if e.visible_at <= now}

    async def get_history(self, request: web.Request) -> web.Response:
        hist = self._visible()
        max_items = request.rel_url.query.get("max_items")
        offset = int(request.rel_url.query.get("offset", -1))
        n = int(max_items) if max_items is not None else None
        if offset < 0 and n is not None:
            offset = len(hist) - n
        out: dict = {}
        for i, (k, v) in enumerate(hist.items()):
            if i >= offset:
                out[k] = v
                if n is not None and len(out) >= n:
                    break
        return web.json_response(out)

    async def get_history_id(self, request: web.Request) -> web.Response:
        pid = request.match_info["prompt_id"]
        body = self._visible().get(pid)
        return web.json_response({pid: body} if body is not None else {})

    async def post_history(self, request: web.Request) -> web.Response:
        data = await request.json()
        if data.get("clear"):
            self.history.clear()
        for pid in data.get("delete", []) or []:
            self.history.pop(pid, None)
        return web.Response(status=200)

    # ---------------------------------------------------------------- files
    def _dir_by_type(self, type_: str | None) -> Path | None:
        return {"output": self.output_dir, "input": self.input_dir, "temp": self.temp_dir}.get(
            type_ if type_ is not None else "output")

    async def view(self, request: web.Request) -> web.StreamResponse:
        q = request.rel_url.query
        delay = float(self.fault("slow_view_s", 0) or 0)
        if delay:
            await asyncio.sleep(delay)
        if "filename" in q:
            filename = q["filename"]
            base: Path | None = None
            for t in ("output", "input", "temp"):
                if filename.endswith(f" [{t}]"):
                    filename, base = filename[: -len(t) - 3], self._dir_by_type(t)
            if not filename or filename[0] == "/" or ".." in filename:
                return web.Response(status=400)
            if base is None:
                base = self._dir_by_type(q.get("type", "output"))
            if base is None:
                return web.Response(status=400)
            out_dir = str(base.resolve())
            if "subfolder" in q:
                full = os.path.abspath(os.path.join(out_dir, q["subfolder"]))
                if os.path.commonpath((full, out_dir)) != out_dir:
                    return web.Response(status=403)
                out_dir = full
            path = os.path.join(out_dir, os.path.basename(filename))
            if os.path.isfile(path):
                return web.FileResponse(path, headers={
                    "Content-Disposition": f'filename="{os.path.basename(filename)}"'})
        return web.Response(status=404)

    async def upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        overwrite = post.get("overwrite")
        type_ = post.get("type") or "input"
        base = {"input": self.input_dir, "temp": self.temp_dir, "output": self.output_dir}.get(str(type_))
        if base is None or image is None or not hasattr(image, "file") or not image.filename:
            return web.Response(status=400)
        data = image.file.read()
        filename = image.filename
        subfolder = str(post.get("subfolder", ""))
        upload_dir = str(base.resolve())
        folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        filepath = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((upload_dir, filepath)) != upload_dir:
            return web.Response(status=400)
        os.makedirs(folder, exist_ok=True)
        duplicate = False
        if overwrite not in ("true", "1"):
            stem, ext = os.path.splitext(filename)
            i = 1
            while os.path.exists(filepath):
                with open(filepath, "rb") as f:
                    if hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest():
                        duplicate = True
                        break
                filename = f"{stem} ({i}){ext}"
                filepath = os.path.join(folder, filename)
                i += 1
        if not duplicate:
            tmp = f"{filepath}.{uuid.uuid4().hex[:8]}.incomplete"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, filepath)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": str(type_)})

    async def get_object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.object_info.all())

    async def get_object_info_node(self, request: web.Request) -> web.Response:
        cls = request.match_info["node_class"]
        return web.json_response({cls: self.object_info.get(cls)} if cls in self.object_info else {})

    # ---------------------------------------------------------------- prompt submission
    async def post_prompt(self, request: web.Request) -> web.Response:
        log.info("got prompt")
        json_data = await request.json()  # malformed / empty / form body → 500 like ComfyUI
        if "number" in json_data:
            number: float = float(json_data["number"])
        else:
            number = self.number
            if "front" in json_data and json_data["front"]:
                number = -number
            self.number += 1
        if "prompt" not in json_data:
            error = {"type": "no_prompt", "message": "No prompt provided",
                     "details": "No prompt provided", "extra_info": {}}
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        drop_s = self.fault("drop_prompt_connection_s")
        if drop_s is not None and not self._dropped_prompt:
            # the connection dies while ComfyUI is still validating: the prompt is queued anyway
            self._dropped_prompt = True
            log.info("[fake] dropping the POST /prompt connection; queueing it in %s s", drop_s)
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(float(drop_s))
            await self._accept_prompt(json_data, number)
            return web.Response(status=500)  # nobody reads it: the connection is gone
        return await self._accept_prompt(json_data, number)

    async def _accept_prompt(self, json_data: dict, number: float) -> web.Response:
        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        result = validate_prompt(prompt, self.object_info.get, self.object_info.__contains__,
                                 fake_nodes.load_image_check(self.input_dir))
        extra_data = dict(json_data.get("extra_data") or {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not result.ok:
            log.warning("invalid prompt: %s", result.error)
            if result.node_errors:
                log.error("Output will be ignored")
            return web.json_response({"error": result.error, "node_errors": result.node_errors}, status=400)
        item = QueueItem(number, prompt_id, prompt, extra_data, result.outputs)
        self.pending.append(item)
        self.pending.sort(key=lambda i: i.number)
        await self.queue_updated()
        assert self._wake is not None
        self._wake.set()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors})

    # ---------------------------------------------------------------- execution
    async def _prompt_worker(self) -> None:
        assert self._wake is not None
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            item = self.pending.pop(0)
            self.running = item
            await self.queue_updated()
            t0 = time.perf_counter()
            run = _Run(item, item.extra_data.get("client_id"))
            try:
                success = await self._execute(run)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug in the fake must not wedge its queue
                log.exception("[fake] internal error while executing %s", item.prompt_id)
                success = False
            delay = float(self.fault("history_delay_s", 0) or 0)
            self.history[item.prompt_id] = HistoryEntry({
                "prompt": item.as_list(),
                "outputs": run.ui,
                "status": {"status_str": "success" if success else "error", "completed": success,
                           "messages": run.messages},
                "meta": run.meta,
            }, time.monotonic() + delay)
            self.running = None
            await self.queue_updated()
            if run.client_id is not None:
                await self.send("executing", {"node": None, "prompt_id": item.prompt_id}, run.client_id)
            self.client_id = None
            self.last_node_id = None
            if self.fault("drop_ws_after_completion"):
                await self._drop_ws(run.client_id)
            log.info("Prompt executed in %.2f seconds", time.perf_counter() - t0)
            self._apply_free()

    async def _drop_ws(self, sid: str | None) -> None:
        ws = self.sockets.get(sid) if sid is not None else None
        if ws is not None and ws._req is not None and ws._req.transport is not None:  # noqa: SLF001
            log.info("[fake] dropping websocket of %s", sid)
            ws._req.transport.abort()  # noqa: SLF001

    async def _message(self, run: _Run, event: str, data: dict, broadcast: bool = False) -> None:
        data = {**data, "timestamp": _now_ms()}
        run.messages.append([event, data])
        if run.client_id is not None or broadcast:
            await self.send(event, data, run.client_id)

    async def _progress_state(self, run: _Run) -> None:
        await self.send("progress_state", {"prompt_id": run.item.prompt_id,
                                           "nodes": json.loads(json.dumps(run.progress))}, run.client_id)

    def _entry(self, run: _Run, nid: str, value: Any, max_: Any, state: str) -> None:
        run.progress[nid] = {"value": value, "max": max_, "state": state, "node_id": nid,
                             "prompt_id": run.item.prompt_id, "display_node_id": nid,
                             "parent_node_id": None, "real_node_id": nid}

    def _signatures(self, prompt: dict) -> dict[str, str]:
        sigs: dict[str, str] = {}

        def sig(nid: str, depth: int = 0) -> str:
            if nid in sigs:
                return sigs[nid]
            if depth > 500:
                raise RecursionError("cycle")
            node = prompt[nid]
            parts: dict[str, Any] = {}
            for k, v in sorted(node.get("inputs", {}).items()):
                parts[k] = ["link", sig(v[0], depth + 1), v[1]] if _is_link(v) else v
            extra = None
            if node["class_type"] in ("LoadImage", "LoadImageMask"):
                p = self.input_dir / str(node["inputs"].get("image", ""))
                extra = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else uuid.uuid4().hex
            elif node["class_type"] == "SaveImageWebsocket":
                extra = time.time()  # its IS_CHANGED returns the time: never cached
            blob = json.dumps([node["class_type"], parts, extra], sort_keys=True, default=str)
            sigs[nid] = hashlib.sha256(blob.encode()).hexdigest()
            return sigs[nid]

        for nid in prompt:
            try:
                sig(nid)
            except Exception:  # noqa: BLE001 - invalid parts of a partially valid prompt
                sigs[nid] = uuid.uuid4().hex
        return sigs

    def _is_output(self, class_type: str) -> bool:
        return class_type in self.object_info and bool(self.object_info.get(class_type).get("output_node"))

    async def _execute(self, run: _Run) -> bool:
        item, prompt = run.item, run.item.prompt
        self.client_id = run.client_id
        self.interrupted = False
        self._fault_prompts += 1
        await self._message(run, "execution_start", {"prompt_id": item.prompt_id})
        sigs = self._signatures(prompt)
        live = set(sigs.values())
        self.cache = {k: v for k, v in self.cache.items() if k in live}
        cached_nodes = [nid for nid in prompt if sigs[nid] in self.cache]
        await self._message(run, "execution_cached", {"nodes": cached_nodes, "prompt_id": item.prompt_id})
        cached = set(cached_nodes)

        # ExecutionList of ComfyUI: stack-ordered pending nodes, blockers, ux-friendly pick.
        pending: dict[str, None] = {}
        blockers: dict[str, set[str]] = {}
        blocking: dict[str, set[str]] = {}

        def add(start: str) -> None:
            stack = [start]
            links = []
            while stack:
                nid = stack.pop()
                if nid in pending:
                    continue
                pending[nid] = None
                blockers.setdefault(nid, set())
                blocking.setdefault(nid, set())
                for v in prompt[nid]["inputs"].values():
                    if _is_link(v):
                        if v[0] not in cached:
                            stack.append(v[0])
                        links.append((v[0], nid))
            for src, dst in links:
                if src not in cached:
                    add(src)
                    blockers[dst].add(src)
                    blocking[src].add(dst)

        for o in item.outputs:
            add(o)

        def pick(ready: list[str]) -> str:
            for nid in ready:
                if self._is_output(prompt[nid]["class_type"]):
                    return nid
            for nid in ready:
                if any(self._is_output(prompt[b]["class_type"]) for b in blocking[nid]):
                    return nid
            for nid in ready:
                for b in blocking[nid]:
                    if any(self._is_output(prompt[b2]["class_type"]) for b2 in blocking[b]):
                        return nid
            return ready[0]

        values: dict[str, tuple] = {}
        current: str | None = None
        try:
            while pending:
                ready = [nid for nid in pending if not blockers[nid]]
                nid = pick(ready)
                current = nid
                await self._run_node(run, nid, sigs, values, nid in cached)
                del pending[nid]
                for dst in blocking[nid]:
                    blockers[dst].discard(nid)
        except asyncio.CancelledError:
            raise
        except InterruptProcessing:
            node = prompt.get(current or "", {})
            await self._message(run, "execution_interrupted", {
                "prompt_id": item.prompt_id, "node_id": current, "node_type": node.get("class_type"),
                "executed": list(reversed(run.executed))}, broadcast=True)
            log.info("Processing interrupted")
            return False
        except Exception as ex:  # noqa: BLE001 - a node failed: execution_error like ComfyUI
            node = prompt.get(current or "", {})
            tb = traceback.format_tb(ex.__traceback__)
            log.error("!!! Exception during processing !!! %s", ex)
            inputs = {k: [v] for k, v in node.get("inputs", {}).items() if not _is_link(v)}
            await self._message(run, "execution_error", {
                "prompt_id": item.prompt_id, "node_id": current, "node_type": node.get("class_type"),
                "executed": list(reversed(run.executed)), "exception_message": f"{ex}\n",
                "exception_type": fake_nodes.full_type_name(ex), "traceback": tb,
                "current_inputs": inputs, "current_outputs": list(prompt)})
            return False
        if self.fault("drop_ws_before_completion"):
            await self._drop_ws(run.client_id)
        await self._message(run, "execution_success", {"prompt_id": item.prompt_id})
        return True

    async def _run_node(self, run: _Run, nid: str, sigs: dict, values: dict, is_cached: bool) -> None:
        prompt, pid = run.item.prompt, run.item.prompt_id
        class_type = prompt[nid]["class_type"]
        if is_cached:
            outs, ui = self.cache[sigs[nid]]
            values[nid] = outs
            if run.client_id is not None:
                await self.send("executed", {"node": nid, "display_node": nid, "output": ui,
                                             "prompt_id": pid}, run.client_id)
            if ui is not None:
                run.ui[nid] = ui
                run.meta[nid] = {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
            self._entry(run, nid, 1, 1, "finished")
            await self._progress_state(run)
            return
        self._entry(run, nid, 0.0, 1.0, "running")
        await self._progress_state(run)
        self.last_node_id = nid
        if run.client_id is not None:
            await self.send("executing", {"node": nid, "display_node": nid, "prompt_id": pid}, run.client_id)
        await self._fault_points(class_type)
        inputs: dict[str, Any] = {}
        for k, v in prompt[nid]["inputs"].items():
            if _is_link(v):
                src = values[v[0]] if v[0] in values else self.cache[sigs[v[0]]][0]
                inputs[k] = src[v[1]]
            else:
                inputs[k] = v

        async def progress(value: int, max_: int, preview: bytes | None) -> None:
            if self.interrupted:
                raise InterruptProcessing()
            self._entry(run, nid, value, max_, "running")
            await self._progress_state(run)
            pmsg = {"value": value, "max": max_, "prompt_id": pid, "node": nid}
            meta = {"node_id": nid, "prompt_id": pid, "display_node_id": nid, "parent_node_id": None,
                    "real_node_id": nid, "image_type": "image/png"}
            if preview is not None:
                flagged = run.client_id is not None and self.socket_flags.get(run.client_id, {}).get(
                    "supports_preview_metadata")
                if flagged:
                    await self.send_preview(preview, run.client_id, meta)
                    await self.send("progress", pmsg, run.client_id)
                else:
                    await self.send("progress", pmsg, run.client_id)
                    await self.send_preview(preview, run.client_id, meta)
            else:
                await self.send("progress", pmsg, run.client_id)

        ctx = fake_nodes.NodeContext(nid, prompt, run.item.extra_data, self.input_dir, self.output_dir,
                                     self.temp_dir, self.paths, progress)
        fn = fake_nodes.NODES.get(class_type)
        if fn is None:
            raise NotImplementedError(f"the fake ComfyUI does not implement node class {class_type}")
        outs, ui = await fn(ctx, inputs)
        values[nid] = outs
        self.cache[sigs[nid]] = (outs, ui)
        run.executed.append(nid)
        if ui is not None:
            if run.client_id is not None:
                await self.send("executed", {"node": nid, "display_node": nid, "output": ui, "prompt_id": pid},
                                run.client_id)
            run.ui[nid] = ui
            run.meta[nid] = {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
        entry = run.progress[nid]
        self._entry(run, nid, entry["max"], entry["max"], "finished")
        await self._progress_state(run)

    async def _fault_points(self, class_type: str) -> None:
        """Interrupt check at the node boundary, then the fault knobs of a node that runs."""
        if self.interrupted:
            raise InterruptProcessing()
        die = self.fault("die_during_prompt")
        if die and self._fault_prompts == (1 if die is True else int(die)):
            await self._die()
        while self.fault("hang"):
            await asyncio.sleep(0.05)
        oom = self.fault("oom_on_node")
        if oom and oom == class_type:
            raise fake_nodes.NamedError(
                "torch.OutOfMemoryError",
                "Allocation on device 0 would exceed allowed memory. (out of memory)\n"
                "Currently allocated     : 7.80 GiB\nRequested               : 2.00 GiB\n"
                "Device limit            : 8.00 GiB\nFree (according to CUDA): 0 bytes\n"
                "PyTorch limit (set by user-supplied memory fraction)\n"
                "                        : 17179869184.00 GiB")
        fail = self.fault("error_on_node")
        if fail and fail == class_type:
            raise RuntimeError(f"fake failure in {class_type} (fault error_on_node)")
        delay = float(self.fault("node_delay_s", 0) or 0) + float(
            (self.fault("class_delay_s") or {}).get(class_type, 0))
        if delay:
            await asyncio.sleep(delay)


def parse_faults(text: str | None) -> dict:
    if not text:
        return {}
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("FAKE_COMFY_FAULTS must be a JSON object")
    return data


class FakeComfyServer:
    """Context manager: a fake ComfyUI on 127.0.0.1:0 in a background thread.

    ``root`` holds input/, output/, temp/, user/ and models/ (a temporary directory by default).
    """

    def __init__(self, root: Path | str | None = None, *, faults: dict | None = None,
                 extra_model_paths: list[Path] | None = None, port: int = 0):
        self.port = port
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="fake-comfy-"))
        self.input_dir = self.root / "input"
        self.output_dir = self.root / "output"
        self.temp_dir = self.root / "temp"
        self.user_dir = self.root / "user"
        self.models_dir = self.root / "models"
        for name in ("checkpoints", "upscale_models", "loras", "vae"):
            (self.models_dir / name).mkdir(parents=True, exist_ok=True)
        self._faults = dict(faults or {})
        self._extra = list(extra_model_paths or [])
        self.comfy: FakeComfy | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    @property
    def requests(self) -> list[tuple[str, str]]:
        assert self.comfy is not None
        return self.comfy.requests

    def set_faults(self, faults: dict) -> None:
        assert self.comfy is not None and self._loop is not None
        self._loop.call_soon_threadsafe(self.comfy.set_faults, dict(faults))
        # make it visible to the caller at once too (the loop applies the same dict)
        self.comfy.faults = dict(faults)

    def __enter__(self) -> "FakeComfyServer":
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self.comfy = FakeComfy(input_dir=self.input_dir, output_dir=self.output_dir,
                                       temp_dir=self.temp_dir, user_dir=self.user_dir,
                                       models_dir=self.models_dir, extra_model_paths=self._extra,
                                       faults=self._faults)
                port = loop.run_until_complete(self.comfy.start("127.0.0.1", self.port))
                self.port = port
                self.url = f"http://127.0.0.1:{port}"
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                errors.append(exc)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                try:
                    loop.run_until_complete(self.comfy.stop())
                except Exception:  # noqa: BLE001 - it may already be dead (die fault)
                    pass
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-comfyui", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
