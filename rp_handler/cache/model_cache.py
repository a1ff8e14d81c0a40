"""ModelCache: per-job preload of a workflow's models from the volume onto NVMe."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from rp_handler.cache import spool
from rp_handler.cache.copier import CopyTask, CopyWorker
from rp_handler.cache.extra_paths import write_extra_model_paths
from rp_handler.cache.folders import FolderIndex, canonical
from rp_handler.cache.refs import ModelRef, RefScanner, refs_from_names
from rp_handler.cache.reports import CacheReports
from rp_handler.cache.status import STATUSES, FileStatus  # noqa: F401  (STATUSES: rp_handler.cache)
from rp_handler.cache.store import CacheDirUnusable, CacheStore, Entry
from rp_handler.config import CacheConfig
from rp_handler.errors import InputError

log = logging.getLogger(__name__)

WAIT_LOG_EVERY_S = 10.0
ONDEMAND_JOB = "ondemand"
KEEP_FINISHED_JOBS = 64
KEEP_COPY_LOG = 64


@dataclass
class _Job:
    job_id: str
    pin: bool
    started: float = field(default_factory=time.monotonic)
    files: "OrderedDict[str, FileStatus]" = field(default_factory=OrderedDict)
    tasks: dict[str, CopyTask] = field(default_factory=dict)
    finished: float | None = None


class ModelCache(CacheReports):
    """See the package docstring for an example."""

    def __init__(self, cfg: CacheConfig, volume_models_dir: Path, object_info: dict | None = None, *,
                 local_models_dir: Path | None = None, checksums: Mapping[str, str] | None = None,
                 read_throttle_bps: float | None = None, spool_poll_s: float = 0.5):
        self.cfg = cfg
        self.volume = FolderIndex(Path(volume_models_dir))
        self.local = FolderIndex(Path(local_models_dir)) if local_models_dir else None
        self._categories = frozenset(canonical(c) for c in cfg.categories)
        self.checksums = {k.replace("\\", "/"): v.lower() for k, v in (checksums or {}).items()}
        self._scanner = RefScanner(object_info, self.volume)
        self._lock = threading.RLock()
        self._tasks: dict[str, CopyTask] = {}
        self._task_jobs: dict[str, set[str]] = {}
        self._jobs: "OrderedDict[str, _Job]" = OrderedDict()
        self._warm_ids = itertools.count(1)
        self._warm: _Job | None = None
        self._copy_log: deque[dict[str, Any]] = deque(maxlen=KEEP_COPY_LOG)
        self.disabled_reason: str | None = None
        self.store: CacheStore | None = None
        self.copier: CopyWorker | None = None
        if cfg.root is None:
            self.disabled_reason = "NVME_CACHE_DIR is not set"
            return
        try:
            self.store = CacheStore(cfg.root, cfg.budget_bytes)
        except CacheDirUnusable as exc:
            self.disabled_reason = str(exc)
            log.warning("NVMe cache disabled: %s", exc)
            return
        self.copier = CopyWorker(self._copy_done, read_throttle_bps=read_throttle_bps,
                                 idle=self.process_requests, idle_interval_s=spool_poll_s)

    # -- public API ------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.store is not None

    def set_object_info(self, object_info: dict) -> None:
        """Use a fresher object_info (e.g. ComfyUI's live one once it is up)."""
        with self._lock:
            self._scanner = RefScanner(object_info, self.volume)

    def scan(self, workflow: dict) -> list[ModelRef]:
        """Model references of an API-format workflow (raises InputError when it is not one)."""
        self.volume.refresh()
        try:
            return self._scanner.scan(workflow)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def preload_workflow(self, workflow: dict, *, job_id: str) -> list[FileStatus]:
        """Schedule copies of the workflow's models; returns at once (see ``wait``)."""
        return self.preload(self.scan(workflow), job_id=job_id)

    def preload(self, refs: Iterable[ModelRef], *, job_id: str, pin: bool = True) -> list[FileStatus]:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                job = self._jobs[job_id] = _Job(job_id, pin)
            out = []
            for ref in refs:
                if self._categories and ref.folder and ref.folder not in self._categories:
                    continue
                status = job.files.get(ref.key) or self._schedule(ref, job)
                job.files[ref.key] = status
                out.append(status)
            self._trim_jobs()
        self._log_job(job, out)
        return out

    def wait(self, job_id: str, timeout: float | None = None) -> bool:
        """Block until the job's copies ended; False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_log = time.monotonic()
        while True:
            with self._lock:
                job = self._jobs.get(job_id)
                pending = [t for t in job.tasks.values() if not t.done.is_set()] if job else []
            if not pending:
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if now - last_log >= WAIT_LOG_EVERY_S:
                done = sum(t.bytes_done for t in pending)
                total = sum(t.size for t in pending)
                log.info("job %s: still waiting for %d model copies (%d/%d bytes) after %.0f s",
                         job_id, len(pending), done, total, now - job.started)
                last_log = now
            step = 0.5 if deadline is None else max(0.0, min(0.5, deadline - now))
            pending[0].done.wait(step)

    def release(self, job_id: str) -> None:
        """The job ended: its cached files may be evicted again."""
        with self._lock:
            if self.store is not None:
                self.store.unpin_owner(job_id)
            job = self._jobs.get(job_id)
            if job is not None and job.finished is None:
                job.finished = time.monotonic()

    def warm(self, models: list | None = None, workflow: dict | None = None, wait: bool = False,
             timeout: float | None = None) -> dict[str, Any]:
        """Preload ``models`` ("folder/name" or {"folder","name"}) or a workflow's models.

        A warm request while another warm is running joins it (its copies are
        added to the running warm) and succeeds.
        """
        if models is None and workflow is None:
            raise InputError("warm needs 'models' (a list of 'folder/name') or 'workflow' (API format)")
        if models is not None and not isinstance(models, list):
            raise InputError("warm 'models' must be a list of 'folder/name' strings or {folder, name} objects")
        refs: list[ModelRef] = []
        if workflow is not None:
            refs += self.scan(workflow)
        if models:
            try:
                refs += refs_from_names(models, self.volume)
            except ValueError as exc:
                raise InputError(str(exc)) from None
        with self._lock:
            joined = self._warm is not None and not self._job_done(self._warm)
            if not joined:
                if self._warm is not None:
                    self._warm.finished = time.monotonic()  # its report may be trimmed later
                self._warm = _Job(f"warm-{next(self._warm_ids)}", pin=False)
                self._jobs[self._warm.job_id] = self._warm
            warm_id = self._warm.job_id
        if joined:
            log.info("warm: a warm-up (%s) is already running; joining it", warm_id)
        self.preload(refs, job_id=warm_id, pin=False)
        done = self.wait(warm_id, timeout) if wait else self._job_done(self._jobs[warm_id])
        report = self.job_report(warm_id)
        return {"ok": True, "warm_id": warm_id, "joined": joined, "done": done, **report}

    def write_extra_model_paths(self, path: Path) -> Path:
        """Write extra_model_paths.yaml for ComfyUI: cache dir first, volume second."""
        root = self.store.root if self.store is not None else None
        return write_extra_model_paths(path, root, self.volume.models_dir, self.volume.folder_dirs())

    def process_requests(self) -> int:
        """Act on the OnDemand node's requests (runs on the copier thread when idle)."""
        if self.store is None:
            return 0
        requests = spool.drain(self.store.root)
        copies: list[ModelRef] = []
        for req in requests:
            key = f"{req.folder}/{req.name}"
            if req.kind == "hit":
                with self._lock:
                    self.store.touch(key)
            else:
                copies.append(ModelRef(req.name, req.folder, class_type="(on demand)"))
        if copies:
            self.preload(copies, job_id=ONDEMAND_JOB, pin=False)
        return len(requests)

    def close(self) -> None:
        if self.copier is not None:
            self.copier.close()

    # -- internals -------------------------------------------------------------
    def _schedule(self, ref: ModelRef, job: _Job) -> FileStatus:
        """Where ``ref`` is read from for ``job``: local, a cache hit, the volume (copy started), or an error."""
        where = f" (node {ref.node_id} {ref.class_type}.{ref.input_name})" if ref.node_id else ""
        st = FileStatus(ref.name, ref.folder, "not_found", node=ref.node_id or None, read_from="none")
        if ref.folder is None:
            st.error = f"model {ref.name!r}{where} is not on the volume in any model folder"
            return st
        if self.local is not None:
            local = self.local.locate(ref.folder, ref.name)
            # a ComfyUI models/ dir that links to the volume is not local
            if local is not None and not _inside(local, self.volume.models_dir):
                st.status, st.path, st.read_from, st.size = "skipped_exists", str(local), "local", _size(local)
                return st
        src = self.volume.locate(ref.folder, ref.name)
        entry = self.store.get(ref.key) if self.store is not None else None
        if src is None:
            if entry is not None:
                return self._hit(st, entry, job)
            st.error = (f"model {ref.folder}/{ref.name}{where} is not on the volume "
                        f"({self.volume.models_dir}); upload it or fix the workflow")
            return st
        st.path, st.read_from = str(src), "volume"
        try:
            src_stat = src.stat()
            if not os.access(src, os.R_OK):
                raise PermissionError(13, "permission denied")
        except OSError as exc:
            st.status = "error"
            st.error = f"model file {src} is not readable ({exc.strerror or exc}); fix it on the volume"
            return st
        st.size = src_stat.st_size
        if st.size < self.cfg.min_size_mb * 1024 * 1024:
            st.status = "skipped_small"
            return st
        if self.store is None:
            st.status, st.error = "error", f"not cached: {self.disabled_reason}"
            return st
        if entry is not None:
            if entry.size == st.size and (not entry.source_mtime_ns or entry.source_mtime_ns == src_stat.st_mtime_ns):
                return self._hit(st, entry, job)
            users = self.store.pinned_by(ref.key)
            if users:
                st.status = "error"
                st.error = f"the cached copy of {ref.key} is stale and in use by {sorted(users)}; read from the volume"
                return st
            self.store.remove(ref.key, reason="the volume file changed")
        return self._copy_for(ref, src, st, job)

    def _copy_for(self, ref: ModelRef, src: Path, st: FileStatus, job: _Job) -> FileStatus:
        """Start the copy of ``src`` (or join the one running) for ``job``; pinned while the job runs."""
        task = self._tasks.get(ref.key)
        if task is None:
            ok, reason, _ = self.store.reserve(ref.key, st.size)
            if not ok:
                log.warning("cache: %s; ComfyUI reads it from the volume", reason)
                st.status, st.error = "skipped_budget", reason
                return st
            task = CopyTask(ref.key, src, self.store.path_for(ref.key), st.size,
                            sha256=self._checksum(ref, src))
            self._tasks[ref.key] = task
            self.copier.submit(task)
        else:
            log.info("cache: %s is already being copied; job %s joins that copy", ref.key, job.job_id)
        self._task_jobs.setdefault(ref.key, set()).add(job.job_id)
        job.tasks[ref.key] = task
        if job.pin:
            self.store.pin(ref.key, job.job_id)
        st.status, st.miss = "scheduled", True
        return st

    def _hit(self, st: FileStatus, entry: Entry, job: _Job) -> FileStatus:
        st.status, st.size, st.hit = "cached", entry.size, True
        st.path, st.read_from, st.error = str(self.store.path_for(entry.key)), "cache", None
        self.store.touch(entry.key)
        if job.pin:
            self.store.pin(entry.key, job.job_id)
        return st

    def _checksum(self, ref: ModelRef, src: Path) -> str | None:
        try:
            rel = src.relative_to(self.volume.models_dir).as_posix()
        except ValueError:
            rel = ""
        return self.checksums.get(rel) or self.checksums.get(ref.key)

    def _copy_done(self, task: CopyTask) -> None:
        with self._lock:
            self._tasks.pop(task.key, None)
            job_ids = self._task_jobs.pop(task.key, set())
            if task.error is None and task.result is not None and self.store is not None:
                self.store.commit(Entry(key=task.key, size=task.result.size, source=str(task.src),
                                        source_mtime_ns=task.result.source_mtime_ns, sha256=task.result.sha256))
                log.info("cache: copied %s (%d bytes) in %.2f s", task.key, task.result.size, task.result.seconds)
            else:
                if self.store is not None:
                    self.store.unreserve(task.key)
                log.warning("cache: %s not cached: %s", task.key, task.error)
            seconds = (task.finished_at or time.monotonic()) - (task.started_at or time.monotonic())
            self._copy_log.append({"key": task.key, "bytes": task.size if task.error is None else task.bytes_done,
                                   "seconds": seconds, "finished_at": task.finished_at or time.monotonic(),
                                   "error": task.error})
            for job_id in job_ids:
                job = self._jobs.get(job_id)
                st = job.files.get(task.key) if job else None
                if st is None:
                    continue
                st.seconds = round(seconds, 3)
                if task.error is None:
                    st.status, st.path, st.read_from = "cached", str(task.dst), "cache"
                    st.bytes_copied = task.size
                    st.local_at, st.copy_s = task.finished_at or time.monotonic(), seconds
                else:
                    st.status, st.error = "error", task.error

    def _trim_jobs(self) -> None:
        finished = [j for j, job in self._jobs.items() if job.finished is not None]
        for job_id in finished[:-KEEP_FINISHED_JOBS]:
            del self._jobs[job_id]

    def _log_job(self, job: _Job, files: list[FileStatus]) -> None:
        counts: dict[str, int] = {}
        for f in files:
            counts[f.status] = counts.get(f.status, 0) + 1
            level = logging.WARNING if f.status in ("error", "not_found") else (
                logging.INFO if self.cfg.verbose else logging.DEBUG)
            log.log(level, "cache job %s: %s/%s %s%s", job.job_id, f.folder, f.name, f.status,
                    f": {f.error}" if f.error else "")
        if files:
            log.info("cache job %s: %s", job.job_id, ", ".join(f"{n} {s}" for s, n in counts.items()))


def _inside(path: Path, directory: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(directory))
        return True
    except ValueError:
        return False


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
