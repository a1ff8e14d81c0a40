"""Requests from the OnDemand node inside ComfyUI, read by the worker.

The node (``comfy_nodes/nvme_cache``) runs in ComfyUI's process and cannot
call ``ModelCache`` directly, so it drops one small JSON file per request into
``<cache root>/.requests/`` (written as ``.incomplete`` then renamed):
``{"kind": "copy" | "hit", "folder": ..., "name": ...}``.  The worker is the
only writer of the cache, so budget and index stay consistent.  The node keeps
its own copy of this format (it must import without our package); the tests
check that the two agree.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from rp_handler.cache.store import SPOOL_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpoolRequest:
    kind: str
    folder: str
    name: str


def drain(root: Path, limit: int = 1000) -> list[SpoolRequest]:
    """Read and delete pending requests, oldest first."""
    spool = Path(root) / SPOOL_DIR
    try:
        files = sorted(p for p in spool.iterdir() if p.suffix == ".json")
    except FileNotFoundError:
        return []
    out: list[SpoolRequest] = []
    for path in files[:limit]:
        try:
            data = json.loads(path.read_bytes())
            req = SpoolRequest(str(data["kind"]), str(data["folder"]), str(data["name"]))
            if req.kind in ("copy", "hit"):
                out.append(req)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cache: ignoring unreadable request %s (%s)", path.name, exc)
        path.unlink(missing_ok=True)
    return out
