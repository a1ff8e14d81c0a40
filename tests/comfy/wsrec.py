"""A raw websocket recorder for checking the fake against the transcripts (not our client)."""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable

import websocket

from tests.conftest import PROTOCOL_DIR


def transcript(name: str) -> dict:
    return json.loads(next(Path(PROTOCOL_DIR).glob(f"{name}*.json")).read_text())


def summary_of(transcript_data: dict, socket: str | None = None) -> list[str]:
    """The transcript's ws_summary for one socket, without the close and binary lengths."""
    out = []
    for entry in transcript_data["ws_summary"]:
        sock, _, what = entry.partition(":")
        if (socket is not None and sock != socket) or what == "close":
            continue
        if what.startswith("binary("):
            what = what.split(",")[0] + ")"
        out.append(what)
    return out


class Recorder:
    """Connects to /ws and records every frame on a reader thread."""

    def __init__(self, base_url: str, client_id: str | None = None, *, feature_flags: bool = False):
        url = base_url.replace("http://", "ws://") + "/ws" + (f"?clientId={client_id}" if client_id else "")
        self.ws = websocket.create_connection(url, timeout=10)
        if feature_flags:
            self.ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        self.frames: list[Any] = []
        self.closed = threading.Event()
        self._lock = threading.Condition()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        try:
            while True:
                op, data = self.ws.recv_data()
                if op == websocket.ABNF.OPCODE_TEXT:
                    item: Any = json.loads(data)
                elif op == websocket.ABNF.OPCODE_BINARY:
                    item = {"type": "__binary__", "event": struct.unpack(">I", data[:4])[0], "raw": data}
                else:
                    break
                with self._lock:
                    self.frames.append(item)
                    self._lock.notify_all()
        except Exception:  # noqa: BLE001 - the socket closed
            pass
        finally:
            self.closed.set()
            with self._lock:
                self._lock.notify_all()

    def wait_for(self, pred: Callable[[Any], bool], timeout: float = 10) -> Any:
        end = time.monotonic() + timeout
        with self._lock:
            while True:
                for f in self.frames:
                    if pred(f):
                        return f
                left = end - time.monotonic()
                if left <= 0 or self.closed.is_set():
                    raise TimeoutError(f"no matching frame; got {self.types()}")
                self._lock.wait(left)

    def wait_done(self, prompt_id: str, timeout: float = 10) -> None:
        self.wait_for(lambda f: f.get("type") == "executing" and f["data"].get("node") is None
                      and f["data"].get("prompt_id") == prompt_id, timeout)

    def types(self) -> list[str]:
        out = []
        for f in list(self.frames):
            t = f["type"]
            if t == "__binary__":
                out.append(f"binary(type={f['event']})")
            elif t in ("executing", "executed", "progress"):
                out.append(f"{t}({f['data'].get('node')})")
            else:
                out.append(t)
        return out

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass
        self._t.join(5)
