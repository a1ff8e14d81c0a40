"""``python -m rp_handler``: own the ComfyUI process, then run the RunPod loop.

Order matters for cold start: ComfyUI is spawned first (its boot is 10+ s of imports), and only
then does the worker import the runpod SDK (about 2 s) and build its context, in parallel with
that boot. By default the runpod loop starts before ComfyUI is ready (WAIT_READY_BEFORE_LOOP=false):
the first job is fetched while ComfyUI boots and waits for it inside the handler; see
docs/benchmarks.md for the measurement behind this default.

Signals: SIGTERM is forwarded to ComfyUI and the worker exits (under runpod's own job loop, whose
SIGTERM handler replaces ours, the forwarding is chained in front of runpod's handler).
"""

from __future__ import annotations

from rp_handler.timings import COLD  # first: starts nothing, records the import time

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from rp_handler import runpod_sdk
from rp_handler.config import WorkerConfig
from rp_handler.errors import InputError, WorkerError
from rp_handler.process import ComfyDirs, ComfyProcess
from rp_handler.supervisor import Supervisor
from rp_handler.timings import current_job

if TYPE_CHECKING:  # imported later, while ComfyUI boots (cold start)
    from rp_handler.cache.worker import WorkerCache
    from rp_handler.comfy import ComfyClient
    from rp_handler.context import WorkerContext

log = logging.getLogger(__name__)

class _JobFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job = current_job.get()
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [job %(job)s] %(message)s"))
    handler.addFilter(_JobFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def write_models_yaml(models_dir: Path, path: Path) -> Path:
    """An extra_model_paths.yaml pointing every model folder at ``models_dir``."""
    from builder import extra_paths  # PyYAML: imported only when a file is written (cold start)

    doc = {"rp_handler_models": extra_paths.models_dir_group(models_dir, is_default=False)}
    return extra_paths.write_extra_model_paths(path, doc, "Written by rp_handler: models live in MODELS_DIR.")


def start_comfy(cfg: WorkerConfig, *, io_dir: Path, cache: WorkerCache | None = None) -> Supervisor:
    """Spawn ComfyUI now (before anything heavy) and supervise it on a thread.

    With the NVMe cache (``cache``: a ``WorkerCache``) ComfyUI's extra_model_paths.yaml puts the
    cache first and the volume (MODELS_DIR) second.
    """
    home = cfg.comfy_home
    extra = None
    models = cfg.build.models_dir
    if cache is not None:
        extra = cache.write_extra_model_paths(io_dir / "extra_model_paths.yaml")
    elif models.is_dir() and models.resolve() != (home / "models").resolve():
        extra = write_models_yaml(models, io_dir / "extra_model_paths.yaml")
    proc = ComfyProcess(cfg, home, extra_model_paths=extra, dirs=ComfyDirs.under(io_dir))
    sup = Supervisor(proc, max_restarts=cfg.max_restarts, boot_timeout_s=cfg.boot_timeout_s,
                     crash_window_s=cfg.crash_window_s)
    sup.start()
    return sup


def open_model_cache(cfg: WorkerConfig) -> WorkerCache | None:
    """The NVMe model cache (``rp_handler.cache.worker.WorkerCache``) when NVME_CACHE_DIR is set, else None."""
    if cfg.cache.root is None:
        return None
    from rp_handler.cache.worker import open_cache

    return open_cache(cfg, cfg.comfy_home)


def attach_cache(ctx: WorkerContext, cache: WorkerCache | None, sup: Supervisor) -> None:
    """Give the jobs the cache: per-job hooks, ``cache`` in the status action, live object_info later."""
    if cache is None:
        return
    ctx.cache = cache
    ctx.status_hooks.append(lambda: {"cache": cache.status()})
    cache.follow(sup)


def client_factory(sup: Supervisor | None = None):
    """Builds a connected ComfyClient that knows whether the ComfyUI process is still alive."""

    def connect(url: str) -> ComfyClient:
        from rp_handler.comfy import ComfyClient

        # Bound to this incarnation: a job must not wait on a restarted ComfyUI that never saw its prompt.
        # At a job's deadline ComfyUI has COMFY_INTERRUPT_GRACE_S to answer the interrupt.
        client = ComfyClient(url, alive=sup.proc.liveness() if sup is not None else None,
                             interrupt_timeout_s=sup.proc.cfg.interrupt_grace_s if sup is not None else 5.0)
        client.connect()
        return client

    return connect


def preload(cfg: WorkerConfig) -> None:
    """Import what the first job will need while ComfyUI boots."""
    import rp_handler.comfy  # noqa: F401  (websocket-client, orjson)

    if cfg.output_mode == "gcs" or cfg.gcs.bucket:
        try:
            import google.cloud.storage  # noqa: F401  (about 0.5 s)
        except ImportError:  # reported when a job asks for gcs
            pass


@contextlib.contextmanager
def yield_cpu_to_comfyui(nice: int):
    """Optionally run the worker's own start-up imports at a lower CPU priority (WORKER_BOOT_NICE).

    Off by default: it sped a fake ComfyUI's boot (mostly a sleep) but starved the runpod import
    behind a real ComfyUI's CPU-bound boot (docs/benchmarks.md). The niceness is restored afterwards
    when the process may (root or CAP_SYS_NICE); otherwise it stays.
    """
    if nice <= 0:
        yield
        return
    try:
        before = os.nice(0)
        os.nice(nice)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        try:
            os.nice(before - os.nice(0))
        except OSError as err:
            log.debug("could not restore the worker's CPU priority: %s", err)


def apply_version_limits(cfg: WorkerConfig) -> WorkerConfig:
    """``cfg`` with the version spec's ``options.limits`` applied (the stricter value wins) and its
    ``options.comfy_api_nodes``."""
    import dataclasses

    from rp_handler.limits import stricter_limits
    from rp_handler.version_files import version_spec

    spec = version_spec(cfg)  # None: no spec here (e.g. volume mode without versions/): env limits only
    if spec is not None and spec.options.comfy_api_nodes:  # ComfyUI's API nodes are off unless the version asks
        cfg = dataclasses.replace(cfg, comfy_api_nodes=True)
    limits = spec.options.limits if spec is not None else None
    if not limits:
        return cfg
    try:
        return dataclasses.replace(cfg, limits=stricter_limits(cfg.limits, limits))
    except ValueError as err:
        log.warning("ignoring options.limits of version %s: %s", cfg.version_id, err)
        return cfg


def check_test_input(argv: list[str]) -> None:
    """A malformed ``--test_input`` is one line here, not a traceback from inside the runpod SDK."""
    import argparse
    import json

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--test_input")
    raw = parser.parse_known_args(argv)[0].test_input
    if raw is None:
        return
    try:
        job = json.loads(raw)
    except ValueError as err:
        raise InputError(f"--test_input is not valid JSON ({err}); give a job like "
                         """'{"input": {"action": "status"}}'""") from None
    if not isinstance(job, dict) or not isinstance(job.get("input"), dict):
        raise InputError("""--test_input must be a JSON object with an "input" object, e.g. '{"input": {"action": "status"}}'""")


def main(env: Mapping[str, str] | None = None, argv: list[str] | None = None) -> int:
    """Expected failures (bad settings, no ComfyUI at COMFY_HOME, ...) end in one line and exit 1/2;
    the traceback only with LOG_LEVEL=DEBUG."""
    try:
        cfg = apply_version_limits(WorkerConfig.from_env(os.environ if env is None else env))
        check_test_input(sys.argv[1:] if argv is None else argv)
    except ValueError as err:  # InputError is one too
        print(f"error: {err}", file=sys.stderr)
        return 2
    configure_logging(cfg.log_level)
    log.info("%s; COMFY_HOME %s", cfg.build.describe(), cfg.comfy_home)
    try:
        return serve(cfg)
    except (WorkerError, OSError) as err:
        if cfg.log_level == "DEBUG":
            raise
        where = f": {err.filename}" if isinstance(err, OSError) and err.filename else ""
        print(f"error: {err}{where}", file=sys.stderr)
        return 1


def serve(cfg: WorkerConfig) -> int:
    """Own ComfyUI and run the runpod loop until it returns.

    Long on purpose: the boot sequence read top to bottom, each step placed to overlap ComfyUI's boot
    (moving one changes the cold-start timings), and one ``finally`` that undoes it.
    """
    COLD.mark("imports_done")
    owned_io = cfg.io_dir is None
    io_dir = cfg.io_dir or Path(tempfile.mkdtemp(prefix="rp_handler-io-"))
    cache = open_model_cache(cfg)
    sup = start_comfy(cfg, io_dir=io_dir, cache=cache)
    if cache is not None:
        cache.start()  # the version's warm set copies while ComfyUI boots

    def on_term(signum: int, frame: Any) -> None:
        log.info("signal %d: forwarding to ComfyUI and exiting", signum)
        sup.forward_signal(signum)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    ctx = None
    try:
        # Everything below overlaps ComfyUI's boot: the handler stack, the ComfyUI client, the
        # output library in use, and the runpod SDK (about 2 s).
        from rp_handler.cancel import run_cancellable
        from rp_handler.context import WorkerContext
        from rp_handler.handler import handle
        from rp_handler.version_files import lock_digest, version_lock

        with yield_cpu_to_comfyui(cfg.boot_nice):
            preload(cfg)
            serverless = runpod_sdk.import_runpod()

        COLD.mark("runpod_imported")
        version = cfg.version_id
        ctx = WorkerContext(cfg=cfg, dirs=sup.proc.dirs or ComfyDirs.under(io_dir), client_factory=client_factory(sup),
                            supervisor=sup, progress_sender=runpod_sdk.progress_sender(), version_id=version,
                            lock_digest=lock_digest(version_lock(cfg)))
        attach_cache(ctx, cache, sup)
        from rp_handler.fitness import register as register_fitness

        register_fitness(cfg, sup, ctx.dirs.output, os.environ)  # run by runpod's job loop before its first job
        ctx.preconnect_when_ready()
        if cfg.wait_ready_before_loop:
            sup.ensure_ready(cfg.boot_timeout_s)
        # Runs in the main thread inside runpod's job loop, after runpod installed its SIGTERM handler;
        # its answer is how many jobs the loop keeps in flight (JOB_CONCURRENCY).
        chain_sigterm = runpod_sdk.forward_sigterm_first(sup.forward_signal, on_term,
                                                         concurrency=lambda n: cfg.job_concurrency)

        async def handler(job: dict) -> dict:
            # The job runs on a thread: the loop stays free to see RunPod's stop (rp_handler.cancel).
            assert ctx is not None
            return await run_cancellable(lambda control: handle(job, ctx, control), job_id=str(job.get("id")))

        COLD.mark("loop_started")
        serverless.start({"handler": handler, "concurrency_modifier": chain_sigterm})
        return 0
    finally:
        if ctx is not None:
            ctx.close()
        sup.stop(timeout=10)
        if cache is not None:
            cache.close()
        if owned_io:
            shutil.rmtree(io_dir, ignore_errors=True)
