"""NVMe model cache: preload each job's models from the network volume onto local disk.

Example (what the handler does around each job)::

    from rp_handler.cache import ModelCache
    from rp_handler.cache.refs import load_object_info, snapshot_path

    cache = ModelCache(cfg.cache, Path("/runpod-volume/models"),
                       load_object_info(snapshot_path(comfy_home)),  # taken by realize
                       local_models_dir=comfy_home / "models")
    cache.write_extra_model_paths(comfy_home / "extra_model_paths.yaml")  # before ComfyUI starts
    cache.warm(models=["checkpoints/sdxl.safetensors"])                   # at worker start, non-blocking

    statuses = cache.preload_workflow(workflow, job_id=job["id"])  # returns at once
    if cache.missing(job["id"]):                # models not on the volume: name them in the error
        raise InputError("; ".join(cache.missing(job["id"])))
    cache.wait(job["id"], timeout=300)          # optional: let copies finish before ComfyUI reads
    ...                                         # run the workflow
    result["cache"] = cache.job_report(job["id"])
    cache.release(job["id"])                    # its files may be evicted again

    cache.status()                              # {"action": "status"}
    cache.warm(workflow=wf, wait=True)          # {"action": "warm", ...}; joins a running warm

In the worker this is wired by ``rp_handler/cache/worker.py`` (``open_cache``, ``WorkerCache``: opened
before ComfyUI spawns, warm set from ``options.warm_models``, per-job hooks) and the ``warm`` action's
input is checked by ``rp_handler/cache/actions.py`` (docs/cache.md "In the worker").

Statuses per model: scheduled, cached, skipped_small, skipped_exists, skipped_budget,
error, not_found (docs/cache.md).
"""

from rp_handler.cache.model_cache import STATUSES, FileStatus, ModelCache
from rp_handler.cache.refs import ModelRef, load_object_info, save_object_info_snapshot, snapshot_path

__all__ = ["ModelCache", "FileStatus", "ModelRef", "STATUSES", "load_object_info", "save_object_info_snapshot",
           "snapshot_path"]
