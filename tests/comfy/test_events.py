"""parse_frame on every frame recorded from the real ComfyUI."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

from rp_handler import events as ev
from tests.conftest import PROTOCOL_DIR

EXPECTED = {
    "status": ev.Status, "execution_start": ev.ExecutionStart, "execution_cached": ev.ExecutionCached,
    "executing": ev.Executing, "progress": ev.Progress, "progress_state": ev.ProgressState,
    "executed": ev.Executed, "execution_success": ev.ExecutionSuccess, "execution_error": ev.ExecutionError,
    "execution_interrupted": ev.ExecutionInterrupted, "feature_flags": ev.FeatureFlags,
}


def _frames():
    for path in sorted(Path(PROTOCOL_DIR).glob("[0-9]*.json")):
        for e in json.loads(path.read_text())["events"]:
            if e["kind"] == "ws_recv" and e.get("frame") in ("text", "binary"):
                yield path.name, e


def test_every_recorded_text_frame_parses_to_its_class():
    seen = set()
    for name, e in _frames():
        if e["frame"] != "text":
            continue
        parsed = ev.parse_frame(json.dumps(e["data"]))
        kind = e["data"]["type"]
        assert type(parsed) is EXPECTED[kind], (name, kind)
        seen.add(kind)
        data = e["data"]["data"]
        assert parsed.prompt_id == data.get("prompt_id"), (name, kind)
        if kind == "executing":
            assert parsed.node == data["node"]
        if kind == "execution_error":
            assert parsed.node_id == data["node_id"] and parsed.exception_type == data["exception_type"]
        if kind == "executed":
            assert parsed.output == data["output"] and parsed.node == data["node"]
        if kind == "status":
            assert parsed.queue_remaining == data["status"]["exec_info"]["queue_remaining"]
    assert seen == set(EXPECTED)


def test_recorded_binary_frames():
    n = 0
    for _, e in _frames():
        if e["frame"] == "binary" and e.get("payload_b64"):
            parsed = ev.parse_frame(base64.b64decode(e["payload_b64"]))
            assert isinstance(parsed, ev.BinaryPreview) and parsed.event_type == e["event_type"]
            assert parsed.image[:8] == b"\x89PNG\r\n\x1a\n"
            if parsed.event_type == 4:
                assert parsed.prompt_id == e["metadata"]["prompt_id"] and parsed.node == "2"
            else:
                assert parsed.image_format == "png" and parsed.prompt_id is None
            n += 1
    assert n == 4


def test_text_binary_and_garbage():
    text = ev.parse_frame(struct.pack(">II", 3, 1) + b"7" + "héllo".encode())
    assert isinstance(text, ev.BinaryPreview) and text.node == "7" and text.text == "héllo"
    assert isinstance(ev.parse_frame("{not json"), ev.Unknown)
    assert isinstance(ev.parse_frame('{"type": "crystools.monitor", "data": {"cpu": 1}}'), ev.Unknown)
    assert ev.parse_frame(b'{"type": "executing", "data": {"node": null, "prompt_id": "p"}}',
                          binary=False) == ev.Executing(prompt_id="p", node=None)
