"""Thin glue for one RunPod job: validate → stage inputs → submit → stream outputs to the sink → result.

``handle(job, ctx)`` never raises: any failure becomes ``{"error": one line, "details": {...}}``
(``errors.to_payload``); ComfyUI's ``node_errors`` / ``execution_error`` pass through in details.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rp_handler import errors
from rp_handler.cancel import JobControl, settle_stopped
from rp_handler.context import WorkerContext
from rp_handler.deadline import JobDeadline, recover_after_timeout
from rp_handler.events import Executed, Executing, ExecutionCached, Progress
from rp_handler.inputs import cleanup_job, job_subfolder, rewrite_workflow, stage_images
from rp_handler.job import Action, Job, parse_job
from rp_handler.memory import should_free
from rp_handler.outputs import OutputCollector, OutputFile, local_path, make_sink
from rp_handler.progress import ProgressReporter
from rp_handler.retry import run_with_retry
from rp_handler.status import status_payload, warm_payload
from rp_handler.timings import COLD, JobTimer, current_job

if TYPE_CHECKING:  # imported by main while ComfyUI boots; the handler itself needs only their types
    from rp_handler.comfy import ComfyClient, PromptResult

log = logging.getLogger(__name__)

HISTORY_DELETE_BATCH = 50


def handle(job: dict, ctx: WorkerContext, control: JobControl | None = None) -> dict:
    """RunPod handler body, blocking (``main`` runs it on a thread via ``cancel.run_cancellable``).

    ``control``: the job's stop flag; a stopped job ends with ``errors.Cancelled``, its prompt stopped.
    """
    control = control or JobControl()
    job_id = str(job.get("id") or "local")
    token = current_job.set(job_id)
    timer = JobTimer(job_id)
    status = "failed"
    cached = False  # the model cache holds files for this job until the end
    try:
        parsed = parse_job(job_id, job.get("input"), ctx.cfg)
        if isinstance(parsed, Action):
            status = parsed.name
            return warm_payload(job.get("input"), ctx) if parsed.name == "warm" else status_payload(ctx)
        if ctx.cache is not None:
            cached = True
            ctx.cache.before_job(job_id, parsed.workflow)  # copies overlap ComfyUI's boot and the job
        result = run_job(parsed, job, ctx, timer, control)
        if cached:
            ctx.cache.after_job(job_id, result, timer, cold="cold_start" in result.get("timings", {}))
        status = "ok"
        return result
    except errors.WorkerError as err:
        status = "cancelled" if isinstance(err, errors.Cancelled) else status
        log.error("job %s failed: %s", job_id, err)
        return _cache_error(_error_payload(err, ctx, timer), ctx, job_id, cached)
    except Exception as err:  # never crash the worker loop
        log.exception("job %s failed with an internal error", job_id)
        return _cache_error(_error_payload(err, ctx, timer), ctx, job_id, cached)
    finally:
        if cached:
            ctx.cache.release(job_id)
        ctx.count_job()
        timer.mark("result_returned")
        timer.log_line(status=status)
        current_job.reset(token)


def _cache_error(payload: dict, ctx: WorkerContext, job_id: str, cached: bool) -> dict:
    if cached:
        ctx.cache.after_error(job_id, payload["details"])
    return payload


def _error_payload(err: BaseException, ctx: WorkerContext, timer: JobTimer) -> dict:
    payload = errors.to_payload(err)
    payload["details"]["timings"] = timer.durations()
    if ctx.supervisor is not None and ctx.supervisor.gave_up:
        payload["refresh_worker"] = True
    return payload


def _attach_comfy_state(err: errors.WorkerError, ctx: WorkerContext, generation: int | None) -> None:
    """A job that lost ComfyUI says why: exit code and the last lines of its log."""
    sup = ctx.supervisor
    if sup is None or generation is None or not isinstance(err, (errors.ComfyDied, errors.ComfyProtocolError)):
        return
    if sup.stop_signal is not None:  # we stopped ComfyUI ourselves: the worker is shutting down
        err.details["worker_stopping"] = True
        err.args = (f"the worker is shutting down (signal {sup.stop_signal}) and stopped ComfyUI during the job; "
                    "run the job again",)
        return
    if generation in sup.kills:  # killed on purpose (frozen, ignored interrupt): the error already says so
        err.details.setdefault("comfy_restarted", True)
        return
    death = sup.death_of(generation, timeout=3.0)
    if death is None:
        return
    rc, tail = death
    err.details.setdefault("comfy_exit_code", rc)
    err.details.setdefault("log_tail", tail[-20:])
    last = next((line for line in reversed(tail) if line.strip()), "")
    err.args = (f"{err} (ComfyUI exited with code {rc}; last log line: {errors.one_line(last, 200)})",)


def _after_failure(err: errors.WorkerError, ctx: WorkerContext, generation: int) -> None:
    """Decide whether a failed attempt may be retried, and say in ``err`` what happened to ComfyUI."""
    sup = ctx.supervisor
    if isinstance(err, errors.ComfyUnresponsive) and sup is not None:  # frozen: a retry gets a fresh one
        if sup.replace(generation, f"it stopped answering during a job ({err})"):
            err.args = (f"{err}; ComfyUI was unresponsive and was killed and restarted",)
    if isinstance(err, (errors.ComfyDied, errors.ComfyProtocolError)) and sup is not None:
        if isinstance(err, errors.ComfyDied):
            sup.death_of(generation, timeout=3.0)  # the supervisor decides on giving up first
        if sup.gave_up or sup.stopping:
            err.retryable = False  # the worker is being replaced or shut down: nothing to retry on
    _attach_comfy_state(err, ctx, generation)


def run_job(job: Job, raw_job: dict, ctx: WorkerContext, timer: JobTimer, control: JobControl | None = None) -> dict:
    """Run ``job``; a transient failure (ComfyUI died, out of memory) gets one more attempt (JOB_RETRIES).

    Validation errors and timeouts are never retried, and no retry starts after the job's deadline
    (rp_handler.deadline).  A retried job's result lists what the first attempt hit under ``retried``
    (with ComfyUI's log tail when it died).
    """
    cfg = ctx.cfg
    failures: list[dict] = []
    state: dict[str, Any] = {}
    deadline = JobDeadline(job.timeout_s)
    control = control or JobControl()

    def attempt() -> dict:
        control.check()
        generation = _comfy_for_attempt(ctx, deadline)
        state["generation"] = generation
        try:
            return _run_on(generation, job, raw_job, ctx, timer, deadline, control)
        except errors.WorkerError as err:
            _after_failure(err, ctx, generation)
            raise

    def on_retry(err: BaseException, number: int) -> None:
        generation = state.get("generation", 0)
        if isinstance(err, errors.WorkerError):
            failures.append(errors.to_payload(err))
        if isinstance(err, errors.OutOfMemory):
            with ctx.clients.lease(generation) as client:
                _free(ctx, client, "out of memory: freeing before the retry")
        elif isinstance(err, (errors.ComfyDied, errors.ComfyProtocolError)) and ctx.supervisor is not None:
            ctx.supervisor.death_of(generation, timeout=5.0)  # the retry waits for the restarted ComfyUI

    try:
        result = run_with_retry(attempt, on_retry=on_retry, attempts=1 + cfg.job_retries,
                                give_up=lambda: deadline.passed)
    except errors.WorkerError as err:
        if failures:
            err.details.setdefault("retried", failures)
        raise
    if failures:
        result["retried"] = failures
    return result


@dataclass
class _Attempt:
    """One attempt of a job on one ComfyUI: its per-job folder, graph, progress and outputs."""

    sub: str
    workflow: dict
    progress: ProgressReporter
    collector: OutputCollector
    prompt_id: str | None = None


def _comfy_for_attempt(ctx: WorkerContext, deadline: JobDeadline) -> int:
    """A ready ComfyUI that answers the liveness probe (a frozen one is replaced first); a retry waits
    for a restart only until the job's deadline."""
    sup, cfg = ctx.supervisor, ctx.cfg
    if sup is None:
        return 0
    left = deadline.left()
    if left is None or left >= cfg.boot_timeout_s:
        return sup.ensure_responsive(cfg.boot_timeout_s, cfg.probe_timeout_s)
    try:
        return sup.ensure_responsive(max(0.0, left), cfg.probe_timeout_s)
    except errors.ComfyStartError as err:
        if sup.gave_up:
            raise
        raise errors.ComfyTimeout(f"the job timed out after {deadline.timeout_s:g} s (timeout_s) while waiting for "
                                  "the restarted ComfyUI to retry it", {"waiting_for": "comfy_restart"}) from err


def _run_on(generation: int, job: Job, raw_job: dict, ctx: WorkerContext, timer: JobTimer,
            deadline: JobDeadline, control: JobControl) -> dict:
    """One attempt on ComfyUI incarnation ``generation``, with a client of its own for the attempt."""
    client = ctx.clients.acquire(generation)
    try:
        return _run_with(client, generation, job, raw_job, ctx, timer, deadline, control)
    finally:
        ctx.clients.release(client, generation)


def _run_with(client: ComfyClient, generation: int, job: Job, raw_job: dict, ctx: WorkerContext, timer: JobTimer,
              deadline: JobDeadline, control: JobControl) -> dict:
    """Stage the inputs, submit, wait, ship the outputs; always clean the job's files up after."""
    run = _stage(job, raw_job, ctx, client, timer)
    unhook = [control.on_stop(run.collector.cancel), control.on_stop(client.wake)]
    try:
        control.check()
        result = _submit_and_wait(job, run, ctx, client, timer, generation, deadline, control)
        outputs = run.collector.finish(result.outputs)
        control.check()
    except BaseException as err:
        run.collector.abort()
        raise _job_error(err, run.prompt_id, control)
    finally:
        for remove in unhook:
            remove()
        run.progress.close()
        cleanup_job(run.sub, input_dir=ctx.dirs.input, output_dir=ctx.dirs.output,
                    extra_files=run.collector.temp_files)
        if run.prompt_id:
            _forget_history(ctx, client, run.prompt_id)
        _maybe_free(ctx, client)
    return _result_payload(job, ctx, timer, run.prompt_id, outputs, result)


def _stage(job: Job, raw_job: dict, ctx: WorkerContext, client: ComfyClient, timer: JobTimer) -> _Attempt:
    """Input images into a per-job folder, the graph rewritten to them, progress and the output collector."""
    cfg = ctx.cfg
    sink = make_sink(job.output, cfg, job.id)
    sub = job_subfolder(job.id, os.urandom(3).hex())
    image_map = stage_images(job.images, ctx.dirs.input, sub, cfg, deadline=time.monotonic() + job.timeout_s)
    workflow = rewrite_workflow(job.workflow, image_map, sub)
    send = ctx.progress_sender
    sender = (lambda payload: send(raw_job, payload)) if send is not None else None
    progress = ProgressReporter(sender, interval=cfg.progress_interval_s, node_count=len(workflow))
    uploaded = [0]

    def on_uploaded() -> None:
        uploaded[0] += 1
        timer.mark("first_output_uploaded", first=True)
        timer.mark("last_output_uploaded")
        progress.uploading(uploaded[0])

    def locate(item: OutputFile):
        path = local_path(item, output_dir=ctx.dirs.output, temp_dir=ctx.dirs.temp, input_dir=ctx.dirs.input)
        if path is not None and path.is_file():
            return path
        return client.view(item.filename, item.subfolder, item.type)

    return _Attempt(sub, workflow, progress, OutputCollector(sink, locate, on_uploaded=on_uploaded))


def _job_error(err: BaseException, prompt_id: str | None, control: JobControl) -> BaseException:
    """What the attempt raises: a stopped job's failure (an interrupt, a dropped upload) is ``Cancelled``."""
    if control.stopped and isinstance(err, Exception) and not isinstance(err, errors.Cancelled):
        stopped = control.error()
        stopped.__cause__ = err
        err = stopped
    if prompt_id and isinstance(err, errors.WorkerError):
        err.details.setdefault("prompt_id", prompt_id)
    return err


def _submit_and_wait(job: Job, run: _Attempt, ctx: WorkerContext, client: ComfyClient, timer: JobTimer,
                     generation: int, deadline: JobDeadline, control: JobControl) -> PromptResult:
    # The prompt id is registered with ``control`` before the POST, so a stop always finds it.
    run.prompt_id = prompt_id = client.submit(run.workflow, prompt_id=control.new_prompt(client.base_url))
    timer.mark("submitted")
    log.info("job %s: prompt %s submitted (%d nodes)", job.id, prompt_id, len(run.workflow))
    control.submitted()
    on_event = _event_router(run.workflow, timer, run.progress, run.collector)
    try:
        result = client.wait(prompt_id, deadline=deadline.start(), on_event=on_event, stopped=lambda: control.stopped)
    except errors.Cancelled:
        # Stopped by RunPod: the prompt was removed or interrupted; it must end before the next job.
        settle_stopped(client, ctx.supervisor, generation, prompt_id, ctx.cfg.interrupt_grace_s)
        raise
    except errors.ComfyTimeout as err:
        recover_after_timeout(err, client=client, supervisor=ctx.supervisor, generation=generation,
                              deadline=deadline, grace_s=ctx.cfg.interrupt_grace_s)
        raise
    timer.mark("execution_done")
    return result


def _result_payload(job: Job, ctx: WorkerContext, timer: JobTimer, prompt_id: str | None, outputs: list,
                    result: PromptResult) -> dict:
    if timer.phases.get("last_output_uploaded") is None:
        timer.mark("last_output_uploaded")
    payload: dict[str, Any] = {
        "prompt_id": prompt_id,
        "outputs": outputs,
        "output_mode": job.output.mode,
        "version": ctx.version_id or None,
        "lock_digest": ctx.lock_digest,
    }
    if job.template is not None:
        payload["template"] = job.template  # the params used, random seeds resolved
    if result.node_errors:
        payload["node_errors"] = result.node_errors  # partially valid prompt: only the valid outputs ran
    timer.mark("result_returned")
    timings: dict[str, Any] = {**timer.durations(), "phases": timer.phases.snapshot()}
    if ctx.first_result():
        timings["cold_start"] = {**COLD.snapshot(), **timer.phases.snapshot()}
    payload["timings"] = timings
    return payload


def _event_router(workflow: dict, timer: JobTimer, progress: ProgressReporter, collector: OutputCollector):
    """The client's ``on_event``: outputs ship on ``executed``, progress on ``executing``/``progress``."""

    def on_event(ev: Any) -> None:
        if isinstance(ev, Executed):
            if ev.node is not None:
                collector.add(str(ev.node), ev.output)
        elif isinstance(ev, Executing):
            if ev.node is not None:
                timer.mark("first_node_executing", first=True)
                progress.node_started(str(ev.node), (workflow.get(str(ev.node)) or {}).get("class_type"))
        elif isinstance(ev, Progress):
            progress.step(ev.node, ev.value, ev.max)
        elif isinstance(ev, ExecutionCached):
            progress.cached(len(ev.nodes or ()))

    return on_event


def _forget_history(ctx: WorkerContext, client: ComfyClient, prompt_id: str) -> None:
    """Bound ComfyUI's history: delete our entries in batches (one HTTP call per batch)."""
    with ctx._lock:
        ctx._history_ids.append(prompt_id)
        ids: list[str] = []
        if len(ctx._history_ids) >= HISTORY_DELETE_BATCH:
            ids, ctx._history_ids = ctx._history_ids, []
    if ids:
        try:
            client.delete_history(ids)
        except Exception as err:
            log.warning("could not delete %d history entries: %s", len(ids), err)


def _maybe_free(ctx: WorkerContext, client: ComfyClient) -> None:
    """After a job: POST /free when the memory policy says so (rp_handler.memory; default: keep models warm)."""
    cfg = ctx.cfg
    stats: dict[str, Any] = {}
    if cfg.free_vram_below_mb > 0:
        try:
            stats = client.system_stats()
        except Exception as err:
            log.warning("could not read free VRAM: %s", err)
    ctx.jobs_since_free += 1
    if should_free(stats, ctx.jobs_since_free, cfg):
        _free(ctx, client, "memory policy (FREE_EVERY_N_JOBS / FREE_VRAM_BELOW_MB)")


def _free(ctx: WorkerContext, client: ComfyClient, reason: str) -> None:
    log.info("asking ComfyUI to unload models and free memory (%s)", reason)
    ctx.jobs_since_free = 0
    try:
        client.free(unload_models=True, free_memory=True)
    except Exception as err:
        log.warning("POST /free failed: %s", err)
