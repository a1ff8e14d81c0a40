"""The model cache inside the worker: set up before ComfyUI spawns, hooks around each job.

``main`` calls :func:`open_cache` (only when ``NVME_CACHE_DIR`` is set), writes ComfyUI's
extra_model_paths.yaml with it (cache first, volume second), spawns ComfyUI, then
:meth:`WorkerCache.start` begins the version's warm set and loads the realize-time object_info
snapshot while ComfyUI boots. The handler calls :meth:`before_job` (schedule copies, refuse models
that are nowhere), :meth:`after_job` / :meth:`after_error` and :meth:`release`.

Copies never delay a job by default: ComfyUI reads the volume file until the cached copy is
complete (``CACHE_WAIT_S`` > 0 makes a job wait that long for its copies before submitting).
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from builder.comfyui import ComfyHttp
from rp_handler.cache.actions import WarmRequest
from rp_handler.cache.model_cache import ModelCache
from rp_handler.cache.refs import load_object_info, snapshot_path
from rp_handler.config import WorkerConfig
from rp_handler.errors import InputError
from rp_handler.version_files import lock_checksums, version_lock, version_spec

log = logging.getLogger(__name__)

LIVE_INFO_TIMEOUT_S = 60.0


def combo_names(object_info: dict) -> frozenset[str]:
    """Every option of every combo input in ``object_info`` (what ComfyUI itself can list)."""
    names: set[str] = set()
    for node in object_info.values():
        inputs = (node or {}).get("input") or {} if isinstance(node, dict) else {}
        for group in inputs.values():
            for spec in (group or {}).values() if isinstance(group, dict) else ():
                if not isinstance(spec, list) or not spec:
                    continue
                opts = spec[0] if isinstance(spec[0], list) else (
                    (spec[1] or {}).get("options") if spec[0] == "COMBO" and len(spec) > 1 and
                    isinstance(spec[1], dict) else None)
                names.update(o for o in opts or () if isinstance(o, str))
    return frozenset(names)


class WorkerCache:
    """One ``ModelCache`` for the worker's lifetime plus what the handler needs around it."""

    def __init__(self, cache: ModelCache, *, comfy_home: Path, warm_models: list[str], wait_s: float = 0.0):
        self.cache = cache
        self.comfy_home = Path(comfy_home)
        self.warm_models = warm_models
        self.wait_s = wait_s
        self.snapshot_loaded = False
        self._live_generation = -1
        self._live_names: frozenset[str] = frozenset()
        self._live_lock = threading.Lock()
        self.idle_hook: Callable[[], None] | None = None  # runs after each job (main: live object_info)
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()

    # -- start-up ----------------------------------------------------------------
    def write_extra_model_paths(self, path: Path) -> Path:
        return self.cache.write_extra_model_paths(path)

    def start(self) -> None:
        """Right after ComfyUI spawned: start the warm set (non-blocking), then load the snapshot."""
        if self.warm_models:
            try:
                report = self.cache.warm(models=list(self.warm_models))
                log.info("cache: warm set of the version: %d model(s) (%s)", len(self.warm_models),
                         ", ".join(f"{m['folder']}/{m['name']} {m['status']}" for m in report["models"]))
            except InputError as err:
                log.warning("cache: warm set (options.warm_models) not started: %s", err)
        path = snapshot_path(self.comfy_home)
        if path.is_file():
            try:
                self.cache.set_object_info(load_object_info(path))
                self.snapshot_loaded = True
            except (OSError, ValueError) as err:
                log.warning("cache: object_info snapshot %s unusable (%s); waiting for ComfyUI's live one", path, err)

    def refresh_object_info(self, url: str, generation: int, *, wait: bool = False) -> None:
        """Switch to ComfyUI's live /object_info once per ComfyUI incarnation, on a thread (off the job path)."""
        with self._live_lock:
            if generation <= self._live_generation:
                return
            self._live_generation = generation

        def run() -> None:
            try:
                transport = ComfyHttp.for_url(url, LIVE_INFO_TIMEOUT_S)
                try:
                    info = json.loads(transport.get("/object_info"))
                finally:
                    transport.close()
            except (OSError, ValueError, http.client.HTTPException) as err:
                if not self._closed.is_set():  # ComfyUI stopped under it at shutdown: nothing to say
                    log.warning("cache: could not read ComfyUI's /object_info (%s); keeping the snapshot", err)
                with self._live_lock:
                    self._live_generation = min(self._live_generation, generation - 1)
                return
            if self._closed.is_set():
                return
            self.cache.set_object_info(info)
            self._live_names = combo_names(info)
            log.info("cache: using ComfyUI's live object_info (%d node classes)", len(info))

        thread = threading.Thread(target=run, name="cache-object-info", daemon=True)
        self._threads.append(thread)
        thread.start()
        if wait:
            thread.join(LIVE_INFO_TIMEOUT_S)

    # -- per job -------------------------------------------------------------------
    def before_job(self, job_id: str, workflow: dict) -> None:
        """Schedule the job's copies (returns at once); raise ``InputError`` naming models that are nowhere."""
        self.cache.preload_workflow(workflow, job_id=job_id)
        models = self.cache.job_report(job_id)["models"]
        # not on the volume nor in ComfyUI's own models/ (cache.missing); ComfyUI's live listing may still have it
        missing = [m for m in models if m["status"] == "not_found" and m["name"] not in self._live_names]
        if missing:
            lines = self.cache.missing(job_id)
            names = [f"{m['folder']}/{m['name']}" if m["folder"] else m["name"] for m in missing]
            raise InputError(f"{len(missing)} model(s) not found: " + "; ".join(lines[:5]),
                             {"field": "workflow", "missing_models": names})
        if self.wait_s > 0 and not self.cache.wait(job_id, self.wait_s):
            log.info("job %s: copies not done after CACHE_WAIT_S=%.0f s; ComfyUI reads the volume", job_id,
                     self.wait_s)

    def after_job(self, job_id: str, payload: dict, timer: Any, *, cold: bool) -> None:
        """``payload["cache"]``, and each copy's "model local" phase (with GB/s) in ``payload["timings"]``.

        ``timer`` is the job's ``JobTimer``; ``cold``: the first job, whose record covers every copy so far.
        """
        payload["cache"] = self.cache.job_report(job_id)
        timings = payload.setdefault("timings", {})
        copies = self._local_times(job_id, cold=cold)
        phases = {}
        for c in copies:
            phases[f"model_local:{c['model']}"] = timer.phases.mark(f"model_local:{c['model']}", c.pop("local_at"))
            c["at"] = round(phases[f"model_local:{c['model']}"], 4)
        if not copies:
            return
        timings["models_local"] = copies
        log.info("job %s models local: %s", job_id, "; ".join(
            f"{c['model']} at {c['at']:.2f} s ({c['bytes'] / 1e9:.2f} GB in {c['seconds']:.2f} s, "
            f"{c['gb_per_s'] or 0:.2f} GB/s)" for c in copies))
        for key in ("phases", "cold_start") if cold else ("phases",):
            if isinstance(timings.get(key), dict):
                timings[key].update({k: round(v, 4) for k, v in phases.items()})

    def after_error(self, job_id: str, details: dict) -> None:
        details["cache"] = self.cache.job_report(job_id)

    def release(self, job_id: str) -> None:
        self.cache.release(job_id)
        if self.idle_hook is not None:
            try:
                self.idle_hook()
            except Exception as err:  # never fail a job over it
                log.debug("cache idle hook failed: %s", err)

    def follow(self, supervisor: Any) -> None:
        """Use ComfyUI's live /object_info: at once when there is no snapshot, else after each job
        (a ComfyUI building /object_info would delay the first job's submit)."""

        def refresh() -> None:
            if supervisor.ready and not self._closed.is_set():
                self.refresh_object_info(supervisor.proc.url, supervisor.generation)

        self.idle_hook = refresh
        if self.snapshot_loaded:
            return

        def when_ready() -> None:
            deadline = time.monotonic() + supervisor.boot_timeout_s
            while not self._closed.is_set() and time.monotonic() < deadline:
                try:
                    supervisor.ensure_ready(1.0)
                except Exception:  # not ready yet, or gave up (the first job reports it)
                    if supervisor.gave_up:
                        return
                    continue
                refresh()
                return

        thread = threading.Thread(target=when_ready, name="cache-follow", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _local_times(self, job_id: str, *, cold: bool) -> list[dict[str, Any]]:
        if cold:  # the first job: every copy so far (the warm set too)
            rows = [{"key": c["key"], "bytes": c["bytes"], "seconds": c["seconds"], "local_at": c["finished_at"]}
                    for c in self.cache.copy_log() if c["error"] is None]
        else:
            rows = self.cache.local_times(job_id)
        out = []
        for r in rows:
            secs = r["seconds"] or 0.0
            out.append({"model": r["key"], "local_at": r["local_at"],
                        "bytes": r["bytes"], "seconds": round(secs, 4),
                        "gb_per_s": round(r["bytes"] / secs / 1e9, 3) if secs > 0 else None})
        return out

    # -- actions -------------------------------------------------------------------
    def warm(self, req: WarmRequest) -> dict[str, Any]:
        return self.cache.warm(models=list(req.models) if req.models is not None else None, workflow=req.workflow,
                               wait=req.wait, timeout=req.timeout_s)

    def status(self) -> dict[str, Any]:
        out = self.cache.status()
        out["object_info"] = ("live" if self._live_names else "snapshot" if self.snapshot_loaded else "none")
        out["warm_models"] = list(self.warm_models)
        return out

    def close(self) -> None:
        self._closed.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.cache.close()


def open_cache(cfg: WorkerConfig, comfy_home: Path, **kwargs: Any) -> WorkerCache | None:
    """The worker's cache when ``NVME_CACHE_DIR`` is set (a cache dir that is not writable: disabled, warned)."""
    if cfg.cache.root is None:
        return None
    started = time.monotonic()
    checksums = lock_checksums(version_lock(cfg))
    if cfg.cache.read_throttle_mbps > 0:
        kwargs.setdefault("read_throttle_bps", cfg.cache.read_throttle_mbps * (1 << 20))
    cache = ModelCache(cfg.cache, cfg.build.models_dir, None, local_models_dir=Path(comfy_home) / "models",
                       checksums=checksums, **kwargs)
    spec = version_spec(cfg)
    warm = list(spec.options.warm_models) if spec is not None else []
    log.info("cache: %s at %s, volume %s (%.0f ms)", "on" if cache.enabled else f"OFF ({cache.disabled_reason})",
             cfg.cache.root, cfg.build.models_dir, (time.monotonic() - started) * 1000)
    return WorkerCache(cache, comfy_home=comfy_home, warm_models=warm, wait_s=cfg.cache.wait_s)
