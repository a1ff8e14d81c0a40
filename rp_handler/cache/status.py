"""What the cache did with one model of a job: :class:`FileStatus` and its ``status`` values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STATUSES = ("scheduled", "cached", "skipped_small", "skipped_exists", "skipped_budget", "error", "not_found")


@dataclass
class FileStatus:
    """What the cache did with one model of a job; ``path`` is where ComfyUI reads it now."""

    name: str
    folder: str | None
    status: str
    size: int | None = None
    path: str | None = None
    read_from: str = "volume"  # cache | volume | local | none
    error: str | None = None
    node: str | None = None
    bytes_copied: int = 0
    seconds: float | None = None
    hit: bool = False  # complete in the cache when the job asked
    miss: bool = False  # a copy was needed (started or joined) for the job
    local_at: float | None = None  # time.monotonic() when its copy became complete (not in to_dict)
    copy_s: float | None = None  # unrounded copy time (not in to_dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "folder": self.folder, "status": self.status, "size": self.size,
               "path": self.path, "read_from": self.read_from}
        for key in ("error", "node", "seconds"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.bytes_copied:
            out["bytes_copied"] = self.bytes_copied
        return out
