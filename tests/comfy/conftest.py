"""Fixtures for the ComfyUI protocol tests: a fake ComfyUI per test, tiny model files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests.fakes.comfyui.server import FakeComfyServer


def write_safetensors(path: Path, keys: list[str]) -> Path:
    """A small valid safetensors file with the given float32 tensors of shape [1]."""
    header: dict = {}
    offset = 0
    for k in keys:
        header[k] = {"dtype": "F32", "shape": [1], "data_offsets": [offset, offset + 4]}
        offset += 4
    blob = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\x00" * offset)
    return path


@pytest.fixture
def fake(tmp_path):
    with FakeComfyServer(tmp_path / "comfy") as server:
        yield server


@pytest.fixture
def fake_with_models(tmp_path):
    root = tmp_path / "comfy"
    write_safetensors(root / "models" / "upscale_models" / "tiny_compact_2x.safetensors",
                      ["body.0.weight", "body.0.bias", "body.1.weight"])
    write_safetensors(root / "models" / "upscale_models" / "broken_not_a_model.safetensors", ["foo"])
    with FakeComfyServer(root) as server:
        yield server
