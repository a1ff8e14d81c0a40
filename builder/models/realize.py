"""Make every model present and verified at its target (the act step).

Per task: a target that already matches is ``ok``; else a blob in the store is
placed (``restored``); else the source is fetched into the store, verified while
it streams, and placed (``fetched``).  A target that exists but differs is left
alone and reported as ``mismatch`` unless ``overwrite``.  Failures become
``missing``/``mismatch`` records carrying a one-line ``error``.
"""

from __future__ import annotations

import errno
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from builder.atomic import check_free_space, incomplete
from builder.config import BuildConfig
from builder.errors import ChecksumMismatch, ModelError, ModelMissingError, NotFoundError
from builder.models import gcs, hf, http
from builder.models.checksum import Digests, hash_file
from builder.models.copy import copy_verified
from builder.models.plan import ModelTask, plan
from builder.models.progress import LogProgress, Progress
from builder.models.sources import GcsSource, HttpSource, LocalSource, host_of
from builder.models.store import Store

log = logging.getLogger(__name__)


class _CorruptBlob(Exception):
    pass


@dataclass
class Context:
    cfg: BuildConfig
    store: Store
    offline: bool
    overwrite: bool
    progress: Progress = field(default_factory=Progress)
    parallel_min: int = http.DEFAULT_PARALLEL_MIN
    gcs_client: object | None = None


def _check(task: ModelTask, digests: Digests) -> tuple[str, str] | None:
    """``(expected, actual)`` when ``digests`` do not satisfy the task, else None."""
    if task.expected:
        actual = digests.hexdigest(task.expected.algo)
        if actual != task.expected.hex:
            return str(task.expected), f"{task.expected.algo}:{actual}"
    if task.sha256 and digests.hexdigest("sha256") != task.sha256:
        return f"sha256:{task.sha256}", f"sha256:{digests.hexdigest('sha256')}"
    if task.size is not None and digests.size != task.size:
        return f"{task.size} bytes", f"{digests.size} bytes"
    return None


def _hash(path: Path, task: ModelTask, ctx: Context, verb: str) -> Digests:
    bar = ctx.progress.start(task.name, verb, path.stat().st_size)
    try:
        return hash_file(path, task.algos, bar.update)
    finally:
        bar.close()


def _record(task: ModelTask, status: str, digests: Digests | None = None, **extra) -> dict:
    rec = {
        "source": task.source_text,
        "target": str(task.target),
        "sha256": digests.hexdigest("sha256") if digests else task.sha256,
        "size": digests.size if digests else task.size,
        "status": status,
    }
    resolved = extra.pop("resolved_source", None) or task.resolved_source
    if resolved:
        rec["resolved_source"] = resolved
    rec.update({k: v for k, v in extra.items() if v is not None})
    return rec


def realize_one(task: ModelTask, ctx: Context) -> tuple[dict, ModelError | None]:
    """Ensure one model; returns its lock record and the error, if any (never raises ModelError)."""
    try:
        return _realize(task, ctx), None
    except ChecksumMismatch as exc:
        return _record(task, "mismatch", error=str(exc)), exc
    except ModelError as exc:
        return _record(task, "missing", error=str(exc)), exc
    except OSError as exc:  # permissions, read-only filesystems, ...: one line naming the path
        err = ModelError(f"{task.label}: {exc.strerror or exc} ({exc.filename or task.target})")
        return _record(task, "missing", error=str(err)), err


def _realize(task: ModelTask, ctx: Context) -> dict:
    if task.target.is_file():
        digests = _hash(task.target, task, ctx, "verifying")
        problem = _check(task, digests)
        if problem is None:
            ctx.store.adopt(task.target, digests)
            return _record(task, "ok", digests)
        if not ctx.overwrite:
            raise ChecksumMismatch(
                f"{task.target} (from {task.label}; --overwrite replaces it)", problem[0], problem[1]
            )
        log.warning("%s differs from %s; replacing it (--overwrite)", task.target, problem[0])
    blob = ctx.store.find(task.sha256, task.md5)
    if blob is not None:
        try:
            digests = _place(blob, task, ctx, trusted=None)
            return _record(task, "restored", digests)
        except _CorruptBlob:
            log.warning("store blob %s failed verification; removed it", blob)
    if ctx.offline and task.network:
        raise ModelMissingError(
            f"{task.label}: not in the store ({ctx.store.models}) and offline mode forbids downloading "
            "(run once online, or drop --offline / COMFY_OFFLINE)"
        )
    blob, digests, resolved = _fetch(task, ctx)
    _place(blob, task, ctx, trusted=digests)
    return _record(task, "fetched", digests, resolved_source=resolved)


def _place(blob: Path, task: ModelTask, ctx: Context, trusted: Digests | None) -> Digests:
    """Hardlink (same filesystem) or verified copy of ``blob`` at the target, atomically."""
    with incomplete(task.target, str(task.target)) as tmp:
        try:
            os.link(blob, tmp)
            linked = True
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            linked = False
        if linked:
            digests = trusted or _hash(blob, task, ctx, "verifying")
        else:
            check_free_space(task.target.parent, blob.stat().st_size, str(task.target))
            bar = ctx.progress.start(task.name, "copying", blob.stat().st_size)
            try:
                digests = copy_verified(blob, tmp, task.algos, bar.update)
            finally:
                bar.close()
        if _check(task, digests) or (trusted is None and blob.parent.name != digests.hexdigest(_algo_of(blob))):
            ctx.store.discard(blob)
            raise _CorruptBlob(str(blob))
        os.replace(tmp, task.target)
    return digests


def _algo_of(blob: Path) -> str:
    return blob.parent.parent.parent.name


def _fetch(task: ModelTask, ctx: Context) -> tuple[Path, Digests, str | None]:
    key = task.sha256 or f"{task.source.kind}:{task.label}"
    with ctx.store.lock(key, task.label):
        blob = ctx.store.find(task.sha256, task.md5)
        if blob is not None:  # another process fetched it while we waited
            digests = _hash(blob, task, ctx, "verifying")
            if _check(task, digests) is None:
                return blob, digests, None
            ctx.store.discard(blob)
        tmp_dir = ctx.store.temp_dir(task.sha256)
        try:
            check_free_space(tmp_dir, task.size, task.label)
            bar = ctx.progress.start(task.name, "downloading" if task.network else "copying", task.size)
            try:
                with incomplete(tmp_dir / task.name, task.label) as tmp:
                    digests, resolved, remote_sha = _download(task, tmp, ctx, bar)
                    problem = _check(task, digests)
                    if problem is None and remote_sha and remote_sha != digests.hexdigest("sha256"):
                        problem = (f"sha256:{remote_sha} (the Hub's LFS hash)", f"sha256:{digests.hexdigest('sha256')}")
                    if problem:
                        raise ChecksumMismatch(task.label, *problem)
                    blob = ctx.store.commit(tmp, digests)
            finally:
                bar.close()
        except BaseException:
            ctx.store.prune(tmp_dir)  # no empty hash folder left behind by a failed fetch
            raise
    log.info("%s: fetched %d bytes, sha256:%s", task.label, digests.size, digests.hexdigest("sha256"))
    return blob, digests, resolved


def _download(task: ModelTask, tmp: Path, ctx: Context, bar) -> tuple[Digests, str | None, str | None]:
    src, cfg = task.source, ctx.cfg
    if isinstance(src, LocalSource):
        if not src.path.is_file():
            raise NotFoundError(f"{task.label}: no such file (check the path in 'source')")
        bar.set_total(src.path.stat().st_size)
        return copy_verified(src.path, tmp, task.algos, bar.update), None, None
    if isinstance(src, HttpSource):
        hosts = {"civitai.com", "www.civitai.com", host_of(cfg.civitai_endpoint)}
        token = cfg.civitai_token if src.token_env == "CIVITAI_TOKEN" else ""
        opts = http.HttpOptions(
            headers=http.auth_headers(src.url, token, hosts),
            token_env=src.token_env,
            token_set=bool(token),
            connections=cfg.download_connections,
            parallel_min=ctx.parallel_min,
        )
        res = http.download(src.url, tmp, label=task.label, opts=opts, algos=task.algos,
                            progress=bar.update, size_hint=bar.set_total)
        return res.digests, None, None
    if isinstance(src, GcsSource):
        res = gcs.download(src, tmp, client=ctx.gcs_client, algos=task.algos, progress=bar.update,
                           size_hint=bar.set_total)
        return res.digests, res.resolved_source, None
    res = hf.download(src, tmp, endpoint=cfg.hf_endpoint, token=cfg.hf_token, algos=task.algos,
                      progress=bar.update, size_hint=bar.set_total, connections=cfg.download_connections,
                      parallel_min=ctx.parallel_min)
    return res.digests, res.resolved_source, res.remote_sha256


def realize_models(
    entries: list[dict],
    *,
    cfg: BuildConfig,
    models_dir: Path,
    offline: bool,
    overwrite: bool = False,
    jobs: int = 4,
    cache_dir: Path | None = None,
    comfy_home: Path | None = None,
    progress: Progress | None = None,
    raise_on_error: bool = True,
    parallel_min: int | None = None,
) -> list[dict]:
    """Ensure every model entry is at its target and verified; return one lock record per entry.

    Records are ``{source, target, sha256, size, status[, resolved_source][, error]}`` in entry order.
    With ``raise_on_error`` (the builder's default) the first failure is raised after every entry
    was tried, as its ModelError subclass, with ``.records`` attached.
    """
    models_dir = Path(models_dir)
    tasks = plan(entries, cfg=cfg, models_dir=models_dir, comfy_home=comfy_home or cfg.comfy_home)
    ctx = Context(
        cfg=cfg,
        store=Store(Path(cache_dir) if cache_dir else cfg.store_dir),
        offline=offline,
        overwrite=overwrite,
        progress=progress or LogProgress(),
        parallel_min=parallel_min or http.DEFAULT_PARALLEL_MIN,
    )
    if any(isinstance(t.source, GcsSource) for t in tasks) and not offline:
        ctx.gcs_client = gcs.make_client()
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="model") as pool:
        results = list(pool.map(lambda t: realize_one(t, ctx), tasks))
    records = [rec for rec, _ in results]
    errors = [exc for _, exc in results if exc is not None]
    for exc in errors:
        log.debug("model problem: %s", exc)  # the caller prints it (table or error line)
    if errors and raise_on_error:
        first = errors[0]
        if len(errors) > 1:
            first.args = (f"{first} (and {len(errors) - 1} more model problem(s))",)
        first.records = records
        raise first
    return records
