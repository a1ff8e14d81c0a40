"""Fitness checks: a host that cannot serve refuses work before it takes a job.

They are registered with the runpod SDK (``register_fitness_check``), which runs them in order in
its production job loop, before the heartbeat and the first job-take (never under ``--test_input``
or ``--rp_serve_api``). A failing check is logged by the SDK as one line,
``Fitness check failed: <check> | FitnessError: <what is wrong and how to fix it>``, reported to
RunPod's ping URL, and the process exits with code 1 (``os._exit``): the job stays queued for a
healthy worker instead of failing on this one.

Order: the cheap checks first (version lock, free disk, CUDA device nodes: milliseconds, while
ComfyUI boots), ComfyUI's boot last. With ``FITNESS_WAIT_COMFY=true`` (default) that check waits
for the boot's outcome (answering, or failed with its last log lines); with ``false`` it only fails
a boot that has already failed, and the first job is taken while ComfyUI boots.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, MutableMapping

from rp_handler.config import WorkerConfig
from rp_handler.errors import ComfyStartError, WorkerError

log = logging.getLogger(__name__)

GB = 1 << 30
Check = Callable[[], None]


class FitnessError(WorkerError, RuntimeError):
    code = "unfit_host"
    refresh_worker = True


# --- the checks (pure reads; each raises FitnessError with one line) ------------------------------

def check_version_lock(cfg: WorkerConfig) -> None:
    """Baked images: the version's lock is present and was written from the spec in the image."""
    from builder.errors import LockError, SpecError
    from builder.lock import check, read_lock
    from builder.spec import load_spec

    vid = cfg.version_id
    if not vid:
        raise FitnessError("COMFY_DEPLOY_MODE=baked but COMFY_VERSION_ID is empty: set it to the version "
                           "the image was built for")
    spec_path, lock_path = cfg.build.spec_path(vid), cfg.build.lock_path(vid)
    try:
        spec = load_spec(spec_path)
        lock = read_lock(lock_path)
    except (SpecError, LockError) as err:
        raise FitnessError(f"version {vid}: {err}") from None
    if lock is None:
        raise FitnessError(f"version {vid} has no lock at {lock_path}: the image was not realized for it "
                           f"(rebuild with --build-arg VERSION_ID={vid})")
    fresh, reason = check(spec, lock)
    if not fresh:
        raise FitnessError(f"version {vid}: lock {lock_path} does not match spec {spec_path} ({reason}): "
                           "rebuild the image so realize writes a fresh lock")


def _free_bytes(path: Path) -> tuple[Path, int]:
    """Free bytes on the filesystem that holds ``path`` (its nearest existing ancestor)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free


def disk_problems(targets: list[tuple[Path, float, str]]) -> list[str]:
    """One phrase per (path, GB needed, what / setting) whose filesystem has less free space."""
    out = []
    for path, need_gb, what in targets:
        if need_gb <= 0:
            continue
        probe, free = _free_bytes(path)
        if free < need_gb * GB:
            name, setting = what.split("|")
            out.append(f"only {free / GB:.2f} GB free at {probe} for {name}, {setting}={need_gb:g} needed")
    return out


def check_free_disk(cfg: WorkerConfig, outputs: Path) -> None:
    targets = [(outputs, cfg.fitness.min_free_output_gb, "the outputs|FITNESS_MIN_FREE_OUTPUT_GB")]
    if cfg.cache.root is not None:
        targets.append((cfg.cache.root, cfg.fitness.min_free_cache_gb, "the NVMe cache|FITNESS_MIN_FREE_CACHE_GB"))
    problems = disk_problems(targets)
    if problems:
        raise FitnessError(f"not enough free disk: {'; '.join(problems)}: free space or lower the threshold")


def gpu_expected(cfg: WorkerConfig) -> bool:
    return cfg.fitness.gpu_image and cfg.force_cpu != "true"


def visible_gpus(root: Path = Path("/")) -> list[str]:
    """NVIDIA GPU device nodes the container was given (``/dev/nvidia0``, ...)."""
    return sorted(p.name for p in (root / "dev").glob("nvidia[0-9]*"))


def check_cuda_device(cfg: WorkerConfig, root: Path = Path("/")) -> None:
    if gpu_expected(cfg) and not visible_gpus(root):
        raise FitnessError(f"GPU image but no NVIDIA GPU is visible (no {root / 'dev' / 'nvidia0'}): the host "
                           "gave this container no GPU; set COMFY_FORCE_CPU=true to run on the CPU, or "
                           "COMFY_GPU_IMAGE=false")


def _one_line_tail(lines: list[str], n: int = 5) -> str:
    tail = [line.strip()[:200] for line in lines if line.strip()][-n:]
    return " | ".join(tail) if tail else "(no output)"


def boot_failure(sup: Any) -> ComfyStartError | None:
    """The error of ComfyUI's first boot, once it failed (None while booting or after it answered)."""
    if sup.gave_up or (sup.generation == 0 and sup.last_error is not None):
        return sup.last_error or ComfyStartError("ComfyUI is not running")
    return None


def wait_comfy(sup: Any, timeout: float, *, wait: bool = True) -> None:
    """Return once ComfyUI answers; FitnessError when its boot failed or the deadline passed."""
    deadline = time.monotonic() + timeout
    while not sup.ready:
        err = boot_failure(sup)
        if err is not None:
            tail = err.details.get("log_tail") or sup.proc.log_tail(20)
            raise FitnessError(f"ComfyUI did not boot: {err}; last lines: {_one_line_tail(tail)}")
        left = deadline - time.monotonic()
        if not wait:
            return
        if left <= 0:
            raise FitnessError(f"ComfyUI did not answer /system_stats within {timeout:.0f} s "
                               f"(COMFY_BOOT_TIMEOUT_S); last lines: {_one_line_tail(sup.proc.log_tail(20))}")
        try:
            sup.ensure_ready(min(0.5, left))  # woken at once when ComfyUI becomes ready
        except ComfyStartError:
            pass  # a slice ran out, or the supervisor gave up: decided at the top


def comfy_device_types(url: str, timeout: float = 5.0) -> list[str]:
    with urllib.request.urlopen(f"{url}/system_stats", timeout=timeout) as resp:  # loopback only
        stats = json.loads(resp.read())
    return [str(d.get("type")) for d in stats.get("devices") or [] if isinstance(d, dict)]


def check_comfy(cfg: WorkerConfig, sup: Any) -> None:
    wait_comfy(sup, cfg.boot_timeout_s, wait=cfg.fitness.wait_comfy)
    if not sup.ready or not gpu_expected(cfg):
        return
    types = comfy_device_types(sup.proc.url)
    if "cuda" not in types:
        raise FitnessError(f"GPU image but ComfyUI runs on {', '.join(types) or 'no device'} (/system_stats "
                           "lists no cuda device): check the host's driver and CUDA_VISIBLE_DEVICES, or set "
                           "COMFY_FORCE_CPU=true")


# --- plan, then register ---------------------------------------------------------------------------

def _named(name: str, fn: Check) -> Check:
    fn.__name__ = fn.__qualname__ = name  # the SDK logs a failure under the function's name
    return fn


def plan_checks(cfg: WorkerConfig, sup: Any, outputs: Path, *, root: Path = Path("/")) -> list[Check]:
    """The checks for this deployment, cheapest first (ComfyUI's boot last)."""
    if not cfg.fitness.enabled:
        return []
    checks = []
    if cfg.fitness.deploy_mode == "baked":
        checks.append(_named("version_lock", lambda: check_version_lock(cfg)))
    checks.append(_named("free_disk", lambda: check_free_disk(cfg, outputs)))
    if gpu_expected(cfg):
        checks.append(_named("cuda_device", lambda: check_cuda_device(cfg, root)))
    checks.append(_named("comfyui", lambda: check_comfy(cfg, sup)))
    return checks


def register(cfg: WorkerConfig, sup: Any, outputs: Path, environ: MutableMapping[str, str]) -> list[str]:
    """Register the checks with the runpod SDK; returns their names.

    Unless FITNESS_SDK_CHECKS=true, the SDK's own automatic checks are switched off (in ``environ``,
    where the SDK reads them, and only when not set explicitly): they would run after ours, i.e. after
    ComfyUI's boot, import torch and initialise CUDA in the worker process, and dial 8.8.8.8.
    """
    from runpod.serverless import register_fitness_check

    environ.update(cfg.fitness.sdk_env)
    checks = plan_checks(cfg, sup, outputs)
    for check in checks:
        register_fitness_check(check)
    return [c.__name__ for c in checks]
