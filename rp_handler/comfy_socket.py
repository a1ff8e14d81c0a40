"""The websocket half of ``ComfyClient``: connect, a reader thread that parses each frame once and
buffers events by prompt_id, and a close that waits for the reader.

A reconnect with the same clientId must close the old socket first (transcript 11).
"""

from __future__ import annotations

import logging
import threading

import orjson
import websocket

from rp_handler import errors
from rp_handler.events import BinaryPreview, Event, Executing, parse_frame

log = logging.getLogger("rp_handler.comfy")  # records keep the logger name they had before the split

_MAX_BUFFERED_PROMPTS = 64


class ComfySocket:
    """Mixin for ``ComfyClient``, which sets the attributes used here in its ``__init__``."""

    def connect(self) -> None:
        """Open ``/ws?clientId=...`` and start the reader thread (closing any old socket first)."""
        self._close_ws()
        url = f"ws://{self.host}:{self.port}/ws?clientId={self.client_id}"
        try:
            ws = websocket.create_connection(url, timeout=self.http_timeout, skip_utf8_validation=True,
                                             enable_multithread=True)
        except websocket.WebSocketBadStatusException as exc:
            raise errors.ComfyProtocolError(f"ComfyUI refused the websocket at {self.base_url}/ws: {exc}",
                                            {"url": self.base_url}) from exc
        except (OSError, websocket.WebSocketException) as exc:
            raise errors.ComfyDied(f"cannot open ComfyUI websocket at {self.base_url}/ws: {exc}",
                                   {"url": self.base_url}) from exc
        ws.settimeout(None)
        ws.send(orjson.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}).decode())
        with self._cv:
            self._ws, self._ws_dead, self._ws_error = ws, False, None
        self._reader = threading.Thread(target=self._read_loop, args=(ws,), name="comfy-ws-reader",
                                        daemon=True)
        self._reader.start()
        log.debug("websocket connected as %s", self.client_id)

    def _read_loop(self, ws: websocket.WebSocket) -> None:
        error = "closed"
        try:
            while True:
                opcode, data = ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    ev = parse_frame(data, binary=False)
                elif opcode == websocket.ABNF.OPCODE_BINARY:
                    ev = parse_frame(data)
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                else:
                    continue
                self._dispatch(ev)
        except Exception as exc:  # noqa: BLE001 - any socket error ends the reader
            error = f"{type(exc).__name__}: {exc}"
        with self._cv:
            if self._ws is ws:
                self._ws_dead = True
                self._ws_error = error
            self._cv.notify_all()

    def _dispatch(self, ev: Event) -> None:
        pid = ev.prompt_id
        if pid is None and isinstance(ev, BinaryPreview):
            pid = self._current_prompt
        if pid is None:
            return
        with self._cv:
            buf = self._buffers.get(pid)
            if buf is None:
                buf = self._buffers[pid] = []
                while len(self._buffers) > _MAX_BUFFERED_PROMPTS:
                    self._buffers.popitem(last=False)
            buf.append(ev)
            if isinstance(ev, Executing) and ev.node is not None:
                self._current_prompt = pid
            self._cv.notify_all()

    def _close_ws(self) -> None:
        """Close the socket and wait for the reader: the server must drop the old clientId
        registration before a new socket registers it (transcript 11, run b)."""
        with self._cv:
            ws, reader = self._ws, self._reader
            self._ws, self._reader, self._ws_dead = None, None, True
        if ws is None:
            return
        try:
            if ws.connected:
                ws.send_close()
        except Exception:  # noqa: BLE001 - already broken
            pass
        if reader is not None:
            reader.join(2.0)
        try:
            ws.shutdown()
        except Exception:  # noqa: BLE001
            pass
        if reader is not None and reader.is_alive():
            reader.join(1.0)
