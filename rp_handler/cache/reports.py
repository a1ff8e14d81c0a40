"""Read-only views of the model cache: a job's report, the files it is missing, recent copies and the
``status`` action's snapshot. A mixin of ``ModelCache``, which owns the state read here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rp_handler.cache.model_cache import _Job


class CacheReports:
    """Mixin for ``ModelCache``: every method takes ``self._lock`` or runs under it."""

    def job_report(self, job_id: str) -> dict[str, Any]:
        """``{"hits", "misses", "bytes_copied", "seconds", "models": [...]}`` for the job."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return {"hits": 0, "misses": 0, "bytes_copied": 0, "seconds": 0.0, "models": []}
            files = list(job.files.values())
            ends = [t.finished_at for t in job.tasks.values() if t.finished_at is not None]
            running = any(not t.done.is_set() for t in job.tasks.values())
            end = time.monotonic() if running or not ends else max(ends)
            report = {
                "hits": sum(1 for f in files if f.hit),
                "misses": sum(1 for f in files if f.miss),
                "bytes_copied": sum(f.bytes_copied for f in files),
                "seconds": round(max(0.0, end - job.started) if job.tasks else 0.0, 3),
                "models": [f.to_dict() for f in files],
            }
            if not self.enabled:
                report["disabled"] = self.disabled_reason
            return report

    def missing(self, job_id: str) -> list[str]:
        """One line per model of the job that is not on the volume (for the job's error)."""
        with self._lock:
            job = self._jobs.get(job_id)
            return [f.error or f"{f.folder}/{f.name}" for f in (job.files.values() if job else ())
                    if f.status == "not_found"]

    def copy_log(self) -> list[dict[str, Any]]:
        """Recent finished copies: ``{key, bytes, seconds, finished_at (monotonic), error}``, oldest first."""
        with self._lock:
            return [dict(c) for c in self._copy_log]

    def local_times(self, job_id: str) -> list[dict[str, Any]]:
        """The job's copies that completed: ``{key, bytes, seconds, local_at (monotonic)}``."""
        with self._lock:
            job = self._jobs.get(job_id)
            return [{"key": f"{f.folder}/{f.name}", "bytes": f.bytes_copied, "seconds": f.copy_s,
                     "local_at": f.local_at}
                    for f in (job.files.values() if job else ()) if f.local_at is not None]

    def status(self) -> dict[str, Any]:
        """Cache contents and copies in flight (the ``status`` action)."""
        with self._lock:
            out: dict[str, Any] = {"enabled": self.enabled, "root": str(self.cfg.root) if self.cfg.root else None,
                                   "volume": str(self.volume.models_dir)}
            if self.store is None:
                out["disabled"] = self.disabled_reason
                return out
            entries = []
            for e in sorted(self.store.entries.values(), key=lambda e: -e.access_seq):
                entries.append({"key": e.key, "size": e.size, "hits": e.hits, "last_access": e.last_access,
                                "sha256": e.sha256, "in_use_by": sorted(self.store.pinned_by(e.key))})
            in_flight = [{"key": k, "size": t.size, "bytes_done": t.bytes_done,
                          "state": "copying" if t.started_at is not None else "queued",
                          "jobs": sorted(self._task_jobs.get(k, ()))}
                         for k, t in self._tasks.items()]
            out.update({
                "budget_bytes": self.cfg.budget_bytes,
                "capacity_bytes": self.store.capacity(),
                "used_bytes": self.store.used_bytes(),
                "entries": entries,
                "in_flight": in_flight,
                "warm": self._warm_summary(),
            })
            return out

    def _job_done(self, job: _Job) -> bool:
        return all(t.done.is_set() for t in job.tasks.values())

    def _warm_summary(self) -> dict[str, Any] | None:
        if self._warm is None:
            return None
        return {"warm_id": self._warm.job_id, "done": self._job_done(self._warm),
                "models": len(self._warm.files)}
