"""Request limits, checked on every workflow (template or raw) before ComfyUI sees it.

``check_limits(workflow, limits)`` raises ``InputError`` naming the node, the
input, the value and the limit.  Inputs are found by name on any node class,
so custom nodes are covered too:

- pixels: ``width`` × ``height`` on one node (also ``<x>_width`` × ``<x>_height``
  pairs and ``megapixels``) ≤ ``limits.max_pixels``; text-encoder nodes are
  skipped (SDXL size conditioning often says 4096×4096 without rendering it);
- batch: ``batch_size``, ``amount`` (Repeat*Batch), ``num_images`` ≤ ``max_batch``;
- steps: ``steps`` ≤ ``max_steps``;
- frames: ``length``, ``frames``, ``frame_count``, ``video_frames``, ``num_frames`` ≤ ``max_frames``;
- bytes: any string input ≤ ``max_input_bytes`` (base64 images pasted inline).

Linked inputs (``["node", index]``) are skipped: their values exist only at run
time.  ``check_input_bytes(name, size, limits)`` is the same check for an
uploaded file.  ``stricter_limits(limits, overrides)`` combines the env limits
with a version's ``"limits"`` object (the stricter value wins).  A limit of 0
or less means "no limit".  Pure.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Mapping

from rp_handler.config import Limits
from rp_handler.errors import InputError

BATCH_INPUTS = frozenset({"batch_size", "amount", "num_images"})
STEP_INPUTS = frozenset({"steps"})
FRAME_INPUTS = frozenset({"length", "frames", "frame_count", "video_frames", "num_frames"})
# Nodes whose width/height describe conditioning, not an image that is rendered.
_CONDITIONING_MARKERS = ("TextEncode", "Conditioning")
_MEGAPIXEL = 1024 * 1024  # ComfyUI's ImageScaleToTotalPixels counts 1 MP as 1024²


def _too_big(node_id: str, cls: str, what: str, value: Any, limit: int, env: str) -> InputError:
    return InputError(
        f"node {node_id} ({cls}): {what}={value} exceeds the limit {limit} ({env}); lower it or raise {env}",
        {"node_id": node_id, "class_type": cls, "limit": limit, "value": value},
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _check_pixels(node_id: str, cls: str, inputs: Mapping[str, Any], max_pixels: int) -> None:
    if max_pixels <= 0 or any(m in cls for m in _CONDITIONING_MARKERS):
        return
    for name, value in inputs.items():
        if not name.endswith("width"):
            continue
        prefix = name[: -len("width")]
        width, height = _number(value), _number(inputs.get(prefix + "height"))
        if width is None or height is None:
            continue
        if width * height > max_pixels:
            raise _too_big(node_id, cls, f"{name}×{prefix}height", f"{width}×{height}", max_pixels, "LIMIT_MAX_PIXELS")
    megapixels = _number(inputs.get("megapixels"))
    if megapixels is not None and megapixels * _MEGAPIXEL > max_pixels:
        raise _too_big(node_id, cls, "megapixels", megapixels, max_pixels, "LIMIT_MAX_PIXELS")


def check_limits(workflow: Mapping[str, Any], limits: Limits) -> None:
    """Raise ``InputError`` for the first input of ``workflow`` above ``limits``."""
    if not isinstance(workflow, Mapping):
        raise InputError(f"workflow must be an object of node id: node, got {type(workflow).__name__}")
    by_name = (
        (BATCH_INPUTS, limits.max_batch, "LIMIT_MAX_BATCH"),
        (STEP_INPUTS, limits.max_steps, "LIMIT_MAX_STEPS"),
        (FRAME_INPUTS, limits.max_frames, "LIMIT_MAX_FRAMES"),
    )
    for node_id, node in workflow.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("inputs", {}), Mapping):
            continue  # malformed nodes are ComfyUI's to reject, with its own error
        cls = str(node.get("class_type", "?"))
        inputs = node.get("inputs", {})
        _check_pixels(str(node_id), cls, inputs, limits.max_pixels)
        for name, value in inputs.items():
            if isinstance(value, str):
                size = len(value) if value.isascii() else len(value.encode("utf-8"))
                if 0 < limits.max_input_bytes < size:
                    raise _too_big(str(node_id), cls, f"bytes({name})", size, limits.max_input_bytes, "MAX_INPUT_BYTES")
                continue
            number = _number(value)
            if number is None:
                continue
            for names, limit, env in by_name:
                if name in names and 0 < limit < number:
                    raise _too_big(str(node_id), cls, name, value, limit, env)


def check_input_bytes(name: str, size: int, limits: Limits) -> None:
    """Raise ``InputError`` when an input file of ``size`` bytes is above ``max_input_bytes``."""
    if 0 < limits.max_input_bytes < size:
        raise InputError(
            f"input {name!r} is {size} bytes, above the limit {limits.max_input_bytes} (MAX_INPUT_BYTES); "
            "send a smaller file or raise MAX_INPUT_BYTES",
            {"input": name, "size": size, "limit": limits.max_input_bytes},
        )


def stricter_limits(limits: Limits, overrides: Mapping[str, Any] | None) -> Limits:
    """``limits`` tightened by ``overrides`` (e.g. a version's ``{"max_steps": 50}``).

    For each field the stricter positive value wins; 0 means "no limit".
    Unknown names or non-integers raise ``ValueError`` naming them.
    """
    if not overrides:
        return limits
    known = {f.name for f in fields(Limits)}
    changes = {}
    for name, value in overrides.items():
        if name not in known:
            raise ValueError(f"unknown limit {name!r}; known limits: {', '.join(sorted(known))}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"limit {name!r} must be a whole number, got {value!r}")
        current = getattr(limits, name)
        if value > 0 and (current <= 0 or value < current):
            changes[name] = value
    return replace(limits, **changes)
