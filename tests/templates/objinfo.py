"""Structural check of an API-format workflow against a real ComfyUI /object_info.

Test helper: mirrors what ComfyUI's own validate_prompt checks before running
(classes exist, required inputs present, links point at existing nodes with a
matching output type, numbers within min/max, combo values in their list).
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from typing import Any, Iterable

from tests.conftest import PROTOCOL_DIR


@lru_cache(maxsize=1)
def object_info() -> dict[str, Any]:
    with gzip.open(PROTOCOL_DIR / "object_info.json.gz", "rt", encoding="utf-8") as fh:
        return json.load(fh)


def _combo_options(spec: list) -> list | None:
    kind = spec[0]
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list((spec[1] if len(spec) > 1 else {}).get("options", []))
    return None


def _types_match(out_type: str, in_type: str) -> bool:
    if "*" in (out_type, in_type):
        return True
    return bool(set(out_type.split(",")) & set(in_type.split(",")))


def validate(workflow: dict[str, Any], *, skip_combo: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Problems found (empty when the workflow is valid).

    ``skip_combo``: (node, input) pairs whose combo list depends on installed
    files (model names, uploaded images) and is not checked.
    """
    info = object_info()
    skip = set(skip_combo)
    problems: list[str] = []
    has_output = False
    for node_id, node in workflow.items():
        cls = node.get("class_type")
        if cls not in info:
            problems.append(f"{node_id}: unknown class_type {cls!r}")
            continue
        spec = info[cls]
        has_output |= bool(spec.get("output_node"))
        declared = {**(spec["input"].get("optional") or {}), **spec["input"].get("required", {})}
        inputs = node.get("inputs", {})
        for name in spec["input"].get("required", {}):
            if name not in inputs:
                problems.append(f"{node_id} ({cls}): required input {name!r} missing")
        for name, value in inputs.items():
            if name not in declared:
                problems.append(f"{node_id} ({cls}): unknown input {name!r}")
                continue
            in_spec = declared[name]
            opts = in_spec[1] if len(in_spec) > 1 and isinstance(in_spec[1], dict) else {}
            if isinstance(value, list):
                src_id, idx = value
                src = workflow.get(str(src_id))
                if src is None:
                    problems.append(f"{node_id}.{name}: links to missing node {src_id!r}")
                    continue
                outs = info.get(src.get("class_type"), {}).get("output", [])
                if not isinstance(idx, int) or idx >= len(outs):
                    problems.append(f"{node_id}.{name}: output {idx} of node {src_id} does not exist")
                    continue
                in_type = in_spec[0] if isinstance(in_spec[0], str) else "COMBO"
                if not _types_match(outs[idx], in_type):
                    problems.append(f"{node_id}.{name}: expects {in_type}, node {src_id} gives {outs[idx]}")
                continue
            combo = _combo_options(in_spec)
            if combo is not None:
                if (node_id, name) not in skip and value not in combo:
                    problems.append(f"{node_id}.{name}: {value!r} not in {combo[:8]}")
                continue
            kind = in_spec[0]
            if kind == "INT" and (isinstance(value, bool) or not isinstance(value, int)):
                problems.append(f"{node_id}.{name}: {value!r} is not an INT")
            elif kind == "FLOAT" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                problems.append(f"{node_id}.{name}: {value!r} is not a FLOAT")
            elif kind == "STRING" and not isinstance(value, str):
                problems.append(f"{node_id}.{name}: {value!r} is not a STRING")
            elif kind == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"{node_id}.{name}: {value!r} is not a BOOLEAN")
            if kind in ("INT", "FLOAT") and isinstance(value, (int, float)):
                if "min" in opts and value < opts["min"]:
                    problems.append(f"{node_id}.{name}: {value} below min {opts['min']}")
                if "max" in opts and value > opts["max"]:
                    problems.append(f"{node_id}.{name}: {value} above max {opts['max']}")
    if not has_output:
        problems.append("workflow has no output node")
    return problems
