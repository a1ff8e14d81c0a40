"""The ``warm`` action's input, validated (pure: no I/O).

``{"action": "warm", "models": ["checkpoints/sdxl.safetensors", {"folder": "loras", "name": "x.safetensors"}],
"wait": true, "timeout_s": 600}`` or ``{"action": "warm", "workflow": {...API format...}, "wait": false}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from rp_handler.errors import InputError

WARM_KEYS = frozenset({"action", "models", "workflow", "wait", "timeout_s"})
MAX_WARM_MODELS = 1000


@dataclass(frozen=True)
class WarmRequest:
    models: tuple[Any, ...] | None  # "folder/name" strings or {"folder", "name"} dicts
    workflow: dict | None
    wait: bool
    timeout_s: float | None


def parse_warm(raw: Any, *, max_timeout_s: float) -> WarmRequest:
    """Validate a warm action's input; ``InputError`` names the field and the fix."""
    if not isinstance(raw, dict):
        raise InputError("warm input must be an object like {\"action\": \"warm\", \"models\": [...]}",
                         {"field": "input"})
    unknown = sorted(set(raw) - WARM_KEYS)
    if unknown:
        raise InputError(f"warm does not take {', '.join(map(repr, unknown))}: use models, workflow, wait, timeout_s",
                         {"field": unknown[0]})
    models, workflow = raw.get("models"), raw.get("workflow")
    if models is None and workflow is None:
        raise InputError("warm needs 'models' (a list of 'folder/name') or 'workflow' (API format)",
                         {"field": "models"})
    if models is not None:
        if not isinstance(models, list) or len(models) > MAX_WARM_MODELS:
            raise InputError(f"warm 'models' must be a list (at most {MAX_WARM_MODELS}) of 'folder/name' strings "
                             "or {\"folder\", \"name\"} objects", {"field": "models"})
        for i, item in enumerate(models):
            ok = (isinstance(item, str) and item.strip()) or (
                isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]
                and isinstance(item.get("folder"), (str, type(None))) and set(item) <= {"folder", "name"})
            if not ok:
                raise InputError(f"warm models[{i}] must be 'folder/name' (e.g. 'checkpoints/sdxl.safetensors') "
                                 "or {\"folder\": ..., \"name\": ...}", {"field": f"models[{i}]"})
    if isinstance(workflow, str):
        try:
            workflow = json.loads(workflow)
        except ValueError as err:
            raise InputError(f"warm 'workflow' is a string but not valid JSON: {err}", {"field": "workflow"}) from None
    if workflow is not None and (not isinstance(workflow, dict) or not workflow):
        raise InputError("warm 'workflow' must be a non-empty API-format workflow object", {"field": "workflow"})
    wait = raw.get("wait", False)
    if not isinstance(wait, bool):
        raise InputError(f"warm 'wait' must be true or false, got {wait!r}", {"field": "wait"})
    timeout = raw.get("timeout_s")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
                or timeout <= 0:
            raise InputError(f"warm 'timeout_s' must be a positive number of seconds, got {timeout!r}",
                             {"field": "timeout_s"})
        if timeout > max_timeout_s:
            raise InputError(f"warm 'timeout_s' {timeout} is over this worker's maximum {max_timeout_s:g} s "
                             "(JOB_MAX_TIMEOUT_S)", {"field": "timeout_s"})
    elif wait:
        timeout = max_timeout_s
    return WarmRequest(models=tuple(models) if models is not None else None, workflow=workflow, wait=wait,
                       timeout_s=float(timeout) if timeout is not None else None)
