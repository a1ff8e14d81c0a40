"""Every environment variable the worker reads, read once.

``main`` builds ``WorkerConfig.from_env(os.environ)`` and passes it down; tests
pass plain dicts.  Nothing else in ``rp_handler`` touches ``os.environ``.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from builder.config import BUILD_ENV, BuildConfig, EnvVar, truthy

WORKER_ENV: tuple[EnvVar, ...] = (
    EnvVar("COMFY_VERSION_ID", "", "Version id to run (versions/<id>.json); also read as COMFY_VERSION_NAME."),
    EnvVar("COMFY_VERSION_NAME", "", "Alias of COMFY_VERSION_ID (seed 003)."),
    EnvVar("COMFY_PYTHON", "the worker's own python", "Interpreter that runs ComfyUI's main.py."),
    EnvVar("COMFY_PORT", "8188", "Port ComfyUI listens on (always on 127.0.0.1)."),
    EnvVar("COMFY_EXTRA_ARGS", "", "Extra arguments for ComfyUI's main.py, shell-quoted."),
    EnvVar("COMFY_FORCE_CPU", "auto", "true: pass --cpu; auto: pass --cpu when no NVIDIA GPU is visible."),
    EnvVar("COMFY_BOOT_TIMEOUT_S", "300", "Seconds ComfyUI may take to answer /system_stats after spawn."),
    EnvVar("COMFY_MAX_RESTARTS", "3", "ComfyUI crashes tolerated within COMFY_CRASH_WINDOW_S before the worker asks RunPod to refresh it (kills the worker makes on purpose do not count)."),
    EnvVar("COMFY_CRASH_WINDOW_S", "900", "Window in seconds over which ComfyUI crashes are counted against COMFY_MAX_RESTARTS."),
    EnvVar("COMFY_PROBE_TIMEOUT_S", "3", "Seconds ComfyUI may take to answer the /system_stats liveness probe before a job; no answer: it is restarted. 0: no probe (saves ComfyUI's ~3.5 ms /system_stats per job; a frozen ComfyUI is then found by the job's own timeouts)."),
    EnvVar("JOB_TIMEOUT_S", "600", "Default job deadline when the input has no timeout_s."),
    EnvVar("JOB_MAX_TIMEOUT_S", "3600", "Largest timeout_s a job may ask for."),
    EnvVar("JOB_RETRIES", "1", "Whole-job retries for transient failures (ComfyUI died, out of memory): 0 or 1."),
    EnvVar("COMFY_INTERRUPT_GRACE_S", "5", "Seconds after a job's deadline for ComfyUI to answer the interrupt and stop the prompt; past that it is killed (SIGKILL, works on a frozen process) and restarted."),
    EnvVar("JOB_CONCURRENCY", "2", "Jobs in flight at once (1-4): with 2 the next job is staged and queued while one executes; 1: one job at a time."),
    EnvVar("OUTPUT_MODE", "gcs if GCS_BUCKET else base64", "Default output sink: gcs, base64 or local."),
    EnvVar("OUTPUT_LOCAL_DIR", "", "Folder for output mode local."),
    EnvVar("GCS_BUCKET", "", "Bucket for output mode gcs."),
    EnvVar("GCS_PREFIX", "comfy-outputs", "Object name prefix: <prefix>/<job_id>/<node>_<index>_<file>."),
    EnvVar("GCS_PROJECT", "", "GCP project (also GOOGLE_CLOUD_PROJECT)."),
    EnvVar("GOOGLE_CLOUD_PROJECT", "", "GCP project, if GCS_PROJECT is unset."),
    EnvVar("GOOGLE_APPLICATION_CREDENTIALS", "", "Service-account JSON for GCS (never logged)."),
    EnvVar("GCS_RETRIES", "3", "Upload attempts for transient GCS errors."),
    EnvVar("GCS_RETRY_BASE_SLEEP", "0.5", "First backoff in seconds between GCS attempts (exponential)."),
    EnvVar("GCS_TIMEOUT_S", "60", "Seconds one GCS upload request may stall before it is retried (then fails the job)."),
    EnvVar("GCS_PUBLIC", "false", "true: return public URLs instead of signed ones."),
    EnvVar("GCS_SIGNED_URL_TTL", "3600", "Signed URL lifetime in seconds."),
    EnvVar("GCS_VALIDATE", "true", "Verify CRC32C of every uploaded object."),
    EnvVar("STORAGE_EMULATOR_HOST", "", "GCS emulator URL (tests)."),
    EnvVar("MAX_RESULT_BYTES", "19000000", "Largest base64 result before the worker refuses and points to GCS."),
    EnvVar("MAX_INPUT_BYTES", "50000000", "Largest decoded input image, in bytes."),
    EnvVar("ALLOW_PRIVATE_URLS", "false", "true: image URLs may point at private/loopback/link-local addresses."),
    EnvVar("NVME_CACHE_DIR", "", "Local NVMe model cache root; empty disables the cache."),
    EnvVar("CACHE_MIN_SIZE_MB", "10", "Model files smaller than this are read from the volume in place."),
    EnvVar("CACHE_BUDGET_GB", "0", "Byte budget of the NVMe cache (0: free disk less a margin)."),
    EnvVar("CACHE_CATEGORIES", "", "Comma-separated model folders to cache (empty: all)."),
    EnvVar("CACHE_VERBOSE", "false", "Log every cache decision."),
    EnvVar("CACHE_READ_THROTTLE_MBPS", "0", "Cap the cache's volume reads at this MiB/s (imitates a network volume in benchmarks; 0: off)."),
    EnvVar("CACHE_WAIT_S", "0", "Seconds a job waits for its model copies before submitting (0: never; see docs/cache.md)."),
    EnvVar("PROGRESS_INTERVAL_S", "0.5", "Minimum seconds between progress updates sent to RunPod."),
    EnvVar("FREE_VRAM_BELOW_MB", "0", "After a job, POST /free when free VRAM is below this (0: never)."),
    EnvVar("FREE_EVERY_N_JOBS", "0", "POST /free after every N jobs (0: never)."),
    EnvVar("LIMIT_MAX_PIXELS", "4194304", "Largest width x height a workflow may ask for."),
    EnvVar("LIMIT_MAX_BATCH", "8", "Largest batch_size."),
    EnvVar("LIMIT_MAX_STEPS", "150", "Largest sampler steps."),
    EnvVar("LIMIT_MAX_FRAMES", "256", "Largest frame count (video nodes)."),
    EnvVar("LOG_LEVEL", "INFO", "Worker log level."),
    EnvVar("COMFY_IO_DIR", "<tmp>/rp_handler-io", "Local folder for ComfyUI's input/output/temp (per-job subfolders)."),
    EnvVar("WAIT_READY_BEFORE_LOOP", "false", "true: start the runpod loop only after ComfyUI is ready (see docs)."),
    EnvVar("WORKER_BOOT_NICE", "0", "Niceness of the worker's own imports while ComfyUI boots (0: off; see docs)."),
    EnvVar("COMFY_API_NODES", "false", "true: load ComfyUI's API nodes (about 1.2 s of its boot; a version spec's options.comfy_api_nodes also turns them on)."),
    EnvVar("COMFY_BOOT_GC_THRESHOLD", "100000", "Python's generation-0 GC threshold during ComfyUI's boot only (restored once it listens; 0: start main.py directly)."),
    EnvVar("COMFY_GPU_IMAGE", "true if CUDA_VERSION is set", "true: a GPU image; the fitness checks require a CUDA device unless COMFY_FORCE_CPU=true (nvidia/cuda base images set CUDA_VERSION)."),
    EnvVar("CUDA_VERSION", "set by nvidia/cuda base images", "Read only as the default of COMFY_GPU_IMAGE (set: a GPU image)."),
    EnvVar("COMFY_DEPLOY_MODE", "", "baked, hybrid or volume (the Dockerfile's baked stage sets baked); baked: the fitness checks require the version's lock to match its spec."),
    EnvVar("FITNESS_CHECKS", "true", "false: register none of the worker's fitness checks (they run only in RunPod's job loop)."),
    EnvVar("FITNESS_WAIT_COMFY", "true", "true: the ComfyUI fitness check waits for its boot, so a host whose ComfyUI cannot start takes no job; false: the first job is taken while ComfyUI boots."),
    EnvVar("FITNESS_MIN_FREE_OUTPUT_GB", "1", "Free disk (GB) the outputs folder (COMFY_IO_DIR) needs for the fitness check."),
    EnvVar("FITNESS_MIN_FREE_CACHE_GB", "10", "Free disk (GB) NVME_CACHE_DIR needs for the fitness check (when the cache is on)."),
    EnvVar("FITNESS_SDK_CHECKS", "false", "true: also run the runpod SDK's automatic system/GPU checks (they import torch in the worker and dial 8.8.8.8, after ComfyUI's boot)."),
    EnvVar("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "true unless FITNESS_SDK_CHECKS", "The runpod SDK's switch for its automatic system checks; the worker sets it to true when unset."),
    EnvVar("RUNPOD_SKIP_GPU_CHECK", "true unless FITNESS_SDK_CHECKS", "The runpod SDK's switch for its automatic GPU check; the worker sets it to true when unset."),
)

ALL_ENV: tuple[EnvVar, ...] = BUILD_ENV + WORKER_ENV


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer; set it to a whole number like {default}") from None


def _probe_timeout(value: float) -> float:
    """COMFY_PROBE_TIMEOUT_S: 0 (or less) turns the liveness probe off; otherwise at least 0.1 s."""
    return 0.0 if value <= 0 else max(0.1, value)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    if raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number; set it to a number like {default}") from None


@dataclass(frozen=True)
class GcsConfig:
    bucket: str
    prefix: str
    project: str
    retries: int
    retry_base_sleep: float
    public: bool
    signed_url_ttl: int
    validate: bool
    emulator_host: str
    credentials_file: str = field(default="", repr=False)
    timeout_s: float = 60.0  # GCS_TIMEOUT_S

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "GcsConfig":
        return cls(
            bucket=env.get("GCS_BUCKET", ""),
            prefix=(env.get("GCS_PREFIX") or "comfy-outputs").strip("/"),
            project=env.get("GCS_PROJECT") or env.get("GOOGLE_CLOUD_PROJECT") or "",
            retries=max(1, _int(env, "GCS_RETRIES", 3)),
            retry_base_sleep=_float(env, "GCS_RETRY_BASE_SLEEP", 0.5),
            public=truthy(env.get("GCS_PUBLIC")),
            signed_url_ttl=_int(env, "GCS_SIGNED_URL_TTL", 3600),
            validate=truthy(env.get("GCS_VALIDATE", "true")),
            emulator_host=env.get("STORAGE_EMULATOR_HOST", ""),
            credentials_file=env.get("GOOGLE_APPLICATION_CREDENTIALS", ""),
            timeout_s=max(0.1, _float(env, "GCS_TIMEOUT_S", 60.0)),
        )


@dataclass(frozen=True)
class CacheConfig:
    root: Path | None
    min_size_mb: float
    budget_bytes: int
    categories: tuple[str, ...]
    verbose: bool
    wait_s: float = 0.0  # CACHE_WAIT_S
    read_throttle_mbps: float = 0.0  # CACHE_READ_THROTTLE_MBPS


@dataclass(frozen=True)
class Limits:
    max_pixels: int
    max_batch: int
    max_steps: int
    max_frames: int
    max_input_bytes: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Limits":
        return cls(
            max_pixels=_int(env, "LIMIT_MAX_PIXELS", 4_194_304),
            max_batch=_int(env, "LIMIT_MAX_BATCH", 8),
            max_steps=_int(env, "LIMIT_MAX_STEPS", 150),
            max_frames=_int(env, "LIMIT_MAX_FRAMES", 256),
            max_input_bytes=_int(env, "MAX_INPUT_BYTES", 50_000_000),
        )


@dataclass(frozen=True)
class FitnessConfig:
    enabled: bool = True  # FITNESS_CHECKS
    gpu_image: bool = False  # COMFY_GPU_IMAGE (default: CUDA_VERSION is set)
    deploy_mode: str = ""  # COMFY_DEPLOY_MODE
    wait_comfy: bool = True  # FITNESS_WAIT_COMFY
    min_free_output_gb: float = 1.0  # FITNESS_MIN_FREE_OUTPUT_GB
    min_free_cache_gb: float = 10.0  # FITNESS_MIN_FREE_CACHE_GB
    sdk_checks: bool = False  # FITNESS_SDK_CHECKS
    sdk_env: tuple[tuple[str, str], ...] = ()  # what to set so the SDK skips its own automatic checks

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "FitnessConfig":
        gpu = env.get("COMFY_GPU_IMAGE", "").strip()
        mode = (env.get("COMFY_DEPLOY_MODE") or "").strip().lower()
        sdk = truthy(env.get("FITNESS_SDK_CHECKS"))
        skip = ("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", env.get("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS")), \
               ("RUNPOD_SKIP_GPU_CHECK", env.get("RUNPOD_SKIP_GPU_CHECK"))
        if mode not in ("", "baked", "hybrid", "volume"):
            raise ValueError(f"COMFY_DEPLOY_MODE={mode!r} is not one of baked, hybrid, volume; set one or leave it empty")
        return cls(
            enabled=truthy(env.get("FITNESS_CHECKS", "true")),
            gpu_image=truthy(gpu) if gpu else bool(env.get("CUDA_VERSION", "").strip()),
            deploy_mode=mode,
            wait_comfy=truthy(env.get("FITNESS_WAIT_COMFY", "true")),
            min_free_output_gb=max(0.0, _float(env, "FITNESS_MIN_FREE_OUTPUT_GB", 1.0)),
            min_free_cache_gb=max(0.0, _float(env, "FITNESS_MIN_FREE_CACHE_GB", 10.0)),
            sdk_checks=sdk,
            sdk_env=() if sdk else tuple((name, "true") for name, value in skip if not value),
        )


@dataclass(frozen=True)
class WorkerConfig:
    build: BuildConfig
    version_id: str
    comfy_python: str
    port: int
    extra_args: tuple[str, ...]
    force_cpu: str  # "true" | "false" | "auto"
    boot_timeout_s: float
    max_restarts: int
    job_timeout_s: float
    job_max_timeout_s: float
    job_retries: int
    output_mode: str
    output_local_dir: str
    max_result_bytes: int
    allow_private_urls: bool
    progress_interval_s: float
    free_vram_below_mb: int
    free_every_n_jobs: int
    log_level: str
    gcs: GcsConfig
    cache: CacheConfig
    limits: Limits
    io_dir: Path | None = None  # COMFY_IO_DIR (None: <tmp>/rp_handler-io)
    wait_ready_before_loop: bool = False  # WAIT_READY_BEFORE_LOOP
    boot_nice: int = 0  # WORKER_BOOT_NICE
    interrupt_grace_s: float = 5.0  # COMFY_INTERRUPT_GRACE_S
    fitness: FitnessConfig = field(default_factory=FitnessConfig)
    boot_gc_threshold: int = 100_000  # COMFY_BOOT_GC_THRESHOLD
    comfy_api_nodes: bool = False  # COMFY_API_NODES, or the version spec's options.comfy_api_nodes
    crash_window_s: float = 900.0  # COMFY_CRASH_WINDOW_S
    probe_timeout_s: float = 3.0  # COMFY_PROBE_TIMEOUT_S
    job_concurrency: int = 2  # JOB_CONCURRENCY: jobs in flight at once (runpod's concurrency_modifier)

    @classmethod
    def from_env(cls, env: Mapping[str, str], **build_kwargs) -> "WorkerConfig":
        build = BuildConfig.from_env(env, **build_kwargs)
        bucket = env.get("GCS_BUCKET", "")
        mode = (env.get("OUTPUT_MODE") or ("gcs" if bucket else "base64")).strip().lower()
        budget_gb = _float(env, "CACHE_BUDGET_GB", 0.0)
        cache_root = env.get("NVME_CACHE_DIR", "").strip()
        return cls(
            build=build,
            version_id=env.get("COMFY_VERSION_ID") or env.get("COMFY_VERSION_NAME") or "",
            comfy_python=env.get("COMFY_PYTHON") or sys.executable,
            port=_int(env, "COMFY_PORT", 8188),
            extra_args=tuple(shlex.split(env.get("COMFY_EXTRA_ARGS", ""))),
            force_cpu=(env.get("COMFY_FORCE_CPU") or "auto").strip().lower(),
            boot_timeout_s=_float(env, "COMFY_BOOT_TIMEOUT_S", 300.0),
            max_restarts=_int(env, "COMFY_MAX_RESTARTS", 3),
            job_timeout_s=_float(env, "JOB_TIMEOUT_S", 600.0),
            job_max_timeout_s=_float(env, "JOB_MAX_TIMEOUT_S", 3600.0),
            job_retries=min(1, max(0, _int(env, "JOB_RETRIES", 1))),
            output_mode=mode,
            output_local_dir=env.get("OUTPUT_LOCAL_DIR", ""),
            max_result_bytes=_int(env, "MAX_RESULT_BYTES", 19_000_000),
            allow_private_urls=truthy(env.get("ALLOW_PRIVATE_URLS")),
            progress_interval_s=_float(env, "PROGRESS_INTERVAL_S", 0.5),
            free_vram_below_mb=_int(env, "FREE_VRAM_BELOW_MB", 0),
            free_every_n_jobs=_int(env, "FREE_EVERY_N_JOBS", 0),
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
            gcs=GcsConfig.from_env(env),
            cache=CacheConfig(
                root=Path(cache_root) if cache_root else None,
                min_size_mb=_float(env, "CACHE_MIN_SIZE_MB", 10.0),
                budget_bytes=int(budget_gb * (1 << 30)),
                categories=tuple(c.strip() for c in env.get("CACHE_CATEGORIES", "").split(",") if c.strip()),
                verbose=truthy(env.get("CACHE_VERBOSE")),
                wait_s=max(0.0, _float(env, "CACHE_WAIT_S", 0.0)),
                read_throttle_mbps=max(0.0, _float(env, "CACHE_READ_THROTTLE_MBPS", 0.0)),
            ),
            limits=Limits.from_env(env),
            io_dir=Path(env["COMFY_IO_DIR"]).expanduser() if env.get("COMFY_IO_DIR") else None,
            wait_ready_before_loop=truthy(env.get("WAIT_READY_BEFORE_LOOP")),
            boot_nice=max(0, min(19, _int(env, "WORKER_BOOT_NICE", 0))),
            interrupt_grace_s=max(0.0, _float(env, "COMFY_INTERRUPT_GRACE_S", 5.0)),
            fitness=FitnessConfig.from_env(env),
            comfy_api_nodes=truthy(env.get("COMFY_API_NODES")),
            boot_gc_threshold=max(0, _int(env, "COMFY_BOOT_GC_THRESHOLD", 100_000)),
            crash_window_s=max(1.0, _float(env, "COMFY_CRASH_WINDOW_S", 900.0)),
            probe_timeout_s=_probe_timeout(_float(env, "COMFY_PROBE_TIMEOUT_S", 3.0)),
            job_concurrency=max(1, min(4, _int(env, "JOB_CONCURRENCY", 2))),
        )

    @property
    def comfy_home(self) -> Path:
        return self.build.comfy_home_for(self.version_id or "default")
