"""ComfyUI websocket frames, parsed once into small frozen dataclasses named as ComfyUI names them."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import orjson


class Event:
    """Base of every websocket event: each has ``prompt_id`` (None when the frame has none)."""

    __slots__ = ()
    prompt_id: str | None


@dataclass(frozen=True)
class Status(Event):
    queue_remaining: int | None = None
    sid: str | None = None
    prompt_id: str | None = None


@dataclass(frozen=True)
class FeatureFlags(Event):
    flags: dict = field(default_factory=dict)
    prompt_id: str | None = None


@dataclass(frozen=True)
class ExecutionStart(Event):
    prompt_id: str | None = None
    timestamp: int | None = None


@dataclass(frozen=True)
class ExecutionCached(Event):
    nodes: tuple[str, ...] = ()
    prompt_id: str | None = None


@dataclass(frozen=True)
class Executing(Event):
    """``node is None`` with our prompt_id is the last frame of a prompt."""

    node: str | None = None
    prompt_id: str | None = None
    display_node: str | None = None


@dataclass(frozen=True)
class Progress(Event):
    value: float = 0
    max: float = 0
    node: str | None = None
    prompt_id: str | None = None


@dataclass(frozen=True)
class ProgressState(Event):
    nodes: dict = field(default_factory=dict)
    prompt_id: str | None = None


@dataclass(frozen=True)
class Executed(Event):
    node: str | None = None
    output: dict = field(default_factory=dict)
    prompt_id: str | None = None
    display_node: str | None = None


@dataclass(frozen=True)
class ExecutionSuccess(Event):
    prompt_id: str | None = None
    timestamp: int | None = None


@dataclass(frozen=True)
class ExecutionError(Event):
    """``data`` holds ComfyUI's payload unchanged (node_id, node_type, exception_type, ...)."""

    data: dict = field(default_factory=dict)
    prompt_id: str | None = None

    @property
    def node_id(self) -> str | None:
        return self.data.get("node_id")

    @property
    def node_type(self) -> str | None:
        return self.data.get("node_type")

    @property
    def exception_type(self) -> str:
        return str(self.data.get("exception_type") or "")

    @property
    def exception_message(self) -> str:
        return str(self.data.get("exception_message") or "").strip()


@dataclass(frozen=True)
class ExecutionInterrupted(Event):
    data: dict = field(default_factory=dict)
    prompt_id: str | None = None

    @property
    def node_id(self) -> str | None:
        return self.data.get("node_id")

    @property
    def node_type(self) -> str | None:
        return self.data.get("node_type")


@dataclass(frozen=True)
class BinaryPreview(Event):
    """Binary frame: type 1 (PREVIEW_IMAGE), 4 (with metadata) or 3 (TEXT)."""

    event_type: int = 0
    image: bytes = b""
    image_format: str | None = None  # "jpeg" | "png" | mime type from the metadata
    metadata: dict | None = None
    node: str | None = None
    text: str | None = None
    prompt_id: str | None = None


@dataclass(frozen=True)
class Unknown(Event):
    type: str = ""
    data: Any = None
    prompt_id: str | None = None


def _s(v: Any) -> str | None:
    return None if v is None else str(v)


def _parse_text(msg: Any) -> Event:
    if not isinstance(msg, dict):
        return Unknown(type="", data=msg)
    kind = msg.get("type")
    data = msg.get("data")
    if not isinstance(data, dict):
        return Unknown(type=str(kind), data=data)
    pid = _s(data.get("prompt_id"))
    if kind == "executing":
        return Executing(prompt_id=pid, node=_s(data.get("node")), display_node=_s(data.get("display_node")))
    if kind == "progress_state":
        return ProgressState(prompt_id=pid, nodes=data.get("nodes") or {})
    if kind == "progress":
        return Progress(prompt_id=pid, value=data.get("value", 0), max=data.get("max", 0),
                         node=_s(data.get("node")))
    if kind == "executed":
        return Executed(prompt_id=pid, node=_s(data.get("node")), output=data.get("output") or {},
                        display_node=_s(data.get("display_node")))
    if kind == "status":
        status = data.get("status") or {}
        remaining = (status.get("exec_info") or {}).get("queue_remaining")
        return Status(prompt_id=None, queue_remaining=remaining, sid=_s(data.get("sid")))
    if kind == "execution_start":
        return ExecutionStart(prompt_id=pid, timestamp=data.get("timestamp"))
    if kind == "execution_cached":
        return ExecutionCached(prompt_id=pid, nodes=tuple(str(n) for n in data.get("nodes") or ()))
    if kind == "execution_success":
        return ExecutionSuccess(prompt_id=pid, timestamp=data.get("timestamp"))
    if kind == "execution_error":
        return ExecutionError(prompt_id=pid, data=data)
    if kind == "execution_interrupted":
        return ExecutionInterrupted(prompt_id=pid, data=data)
    if kind == "feature_flags":
        return FeatureFlags(flags=data)
    return Unknown(prompt_id=pid, type=str(kind), data=data)


def _parse_binary(frame: bytes) -> Event:
    if len(frame) < 4:
        return Unknown(type="binary", data=frame)
    (etype,) = struct.unpack_from(">I", frame, 0)
    if etype == 1 and len(frame) >= 8:
        (fmt,) = struct.unpack_from(">I", frame, 4)
        return BinaryPreview(event_type=1, image=frame[8:], image_format={1: "jpeg", 2: "png"}.get(fmt))
    if etype == 4 and len(frame) >= 8:
        (n,) = struct.unpack_from(">I", frame, 4)
        try:
            meta = orjson.loads(frame[8:8 + n])
        except orjson.JSONDecodeError:
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
        return BinaryPreview(prompt_id=_s(meta.get("prompt_id")), event_type=4, image=frame[8 + n:],
                             image_format=meta.get("image_type"), metadata=meta, node=_s(meta.get("node_id")))
    if etype == 3 and len(frame) >= 8:
        (n,) = struct.unpack_from(">I", frame, 4)
        return BinaryPreview(event_type=3, node=frame[8:8 + n].decode("utf-8", "replace"),
                             text=frame[8 + n:].decode("utf-8", "replace"))
    return Unknown(type=f"binary:{etype}", data=frame)


def parse_frame(frame: str | bytes, *, binary: bool | None = None) -> Event:
    """One websocket frame → one Event. Text frames are JSON; ``bytes`` are binary frames
    unless ``binary=False`` (a text frame given as bytes)."""
    if isinstance(frame, (bytes, bytearray, memoryview)) and binary is not False:
        return _parse_binary(bytes(frame))
    try:
        return _parse_text(orjson.loads(frame))
    except orjson.JSONDecodeError:
        return Unknown(type="invalid_json", data=frame)
