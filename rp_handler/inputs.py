"""Job inputs into ComfyUI: fetch URL images (SSRF-guarded), stage files per job, rewrite the graph.

Each job's images go to ``<input_dir>/jobs/<job_key>/<name>`` and its SaveImage-style outputs to
``<output_dir>/jobs/<job_key>/...`` (by prefixing ``filename_prefix``), so concurrent or crashed
jobs never collide and ``cleanup_job`` removes exactly that job's files.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urljoin, urlsplit

from builder.atomic import write_atomic
from rp_handler.config import WorkerConfig
from rp_handler.errors import InputError
from rp_handler.job import ImageInput, Job, address_refused, check_url

log = logging.getLogger(__name__)

JOBS_SUBDIR = "jobs"
_MAX_REDIRECTS = 3
FETCH_BUDGET_S = 120.0  # overall bound of one URL fetch when the caller gives no deadline
_READ = 64 * 1024
Resolver = Callable[[str, int], list[str]]


def job_key(job_id: str) -> str:
    """A folder-safe form of a RunPod job id (stable, unique enough)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", job_id)[:64]
    if safe != job_id or not safe:
        safe = f"{safe}-{hashlib.sha256(job_id.encode()).hexdigest()[:8]}"
    return safe


def job_subfolder(job_id: str, attempt: str = "") -> str:
    """``jobs/<key>[-<attempt>]``: a fresh attempt token makes a retried job's prompt differ from the last."""
    return f"{JOBS_SUBDIR}/{job_key(job_id)}{'-' + attempt if attempt else ''}"


# Output nodes that write temp files and have no filename_prefix: given a per-attempt hidden input so a
# cached replay never points at a file an earlier job already removed (ComfyUI ignores unknown inputs
# when calling the node, but they are part of its cache key).
CACHE_BUST_INPUT = "_rp_handler_attempt"


def _writes_preview(class_type: str) -> bool:
    return class_type.startswith("Preview") or class_type.endswith("Preview")


def safe_url(url: str) -> str:
    """The URL without query string or credentials (signed URLs must not reach logs)."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname}{':' + str(p.port) if p.port else ''}{p.path}"


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def fetch_url(url: str, cfg: WorkerConfig, *, where: str = "image", timeout: float = 30.0,
              deadline: float | None = None, resolver: Resolver = resolve,
              refuse: Callable[[Any], str | None] = address_refused) -> bytes:
    """GET an image, refusing private/loopback/link-local addresses after DNS (unless allowed).

    ``timeout`` bounds each read; ``deadline`` (monotonic, e.g. the job's) bounds the whole fetch,
    redirects included, so a server dripping bytes cannot hold the job.

    The connection goes to the address that was checked (no second lookup), TLS still verifies
    the host name; redirects are followed by hand and each hop is checked again. ``refuse`` is the
    address policy applied after DNS (``address_refused``; tests narrow it to trust one server).
    """
    import urllib3  # lazy: only URL jobs need it

    limit = cfg.limits.max_input_bytes
    started = time.monotonic()
    deadline = started + FETCH_BUDGET_S if deadline is None else deadline
    for _hop in range(_MAX_REDIRECTS + 1):
        check_url(url, cfg, where=where)
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        ip = _checked_addresses(host, port, cfg, where, resolver, refuse)[0]
        left = _time_left(deadline, started, where, host, 0)
        kw: dict[str, Any] = {"timeout": urllib3.Timeout(connect=min(10, left), read=min(timeout, left)),
                              "retries": False}
        if parts.scheme == "https":
            pool = urllib3.HTTPSConnectionPool(ip, port, server_hostname=host, assert_hostname=host, **kw)
        else:
            pool = urllib3.HTTPConnectionPool(ip, port, **kw)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = host if parts.port is None else f"{host}:{parts.port}"
        try:
            resp = pool.urlopen("GET", path, headers={"Host": host_header, "User-Agent": "rp-handler"},
                                redirect=False, preload_content=False)
        except urllib3.exceptions.HTTPError as err:
            _time_left(deadline, started, where, host, 0)
            raise InputError(f"{where}: cannot fetch {safe_url(url)}: {type(err).__name__} (the worker cannot "
                             f"reach {host}: check the URL, or send the image as base64)", {"field": where}) from None
        try:
            if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                url = urljoin(url, resp.headers["Location"])
                continue
            if resp.status != 200:
                raise InputError(f"{where}: GET {safe_url(url)} answered HTTP {resp.status}",
                                 {"field": where, "status": resp.status})
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limit:
                raise InputError(f"{where}: {safe_url(url)} is {int(length) / 1e6:.1f} MB, over the "
                                 f"{limit / 1e6:.1f} MB input limit (MAX_INPUT_BYTES)", {"field": where})
            return _read_body(resp, url, where, host, limit, timeout, deadline, started)
        finally:
            resp.release_conn()
            pool.close()
    raise InputError(f"{where}: too many redirects from {safe_url(url)}", {"field": where})


def _checked_addresses(host: str, port: int, cfg: WorkerConfig, where: str, resolver: Resolver,
                       refuse: Callable[[Any], str | None]) -> list[str]:
    """``host``'s addresses after DNS, each passed through ``refuse`` unless ALLOW_PRIVATE_URLS."""
    try:
        addrs = resolver(host, port)
    except OSError as err:
        raise InputError(f"{where}: cannot resolve host {host!r}: {err} (check the URL, or send the image "
                         "as base64)", {"field": where}) from None
    if not addrs:
        raise InputError(f"{where}: host {host!r} has no address", {"field": where})
    if not cfg.allow_private_urls:
        for addr in addrs:
            reason = refuse(ipaddress.ip_address(addr.split("%")[0]))
            if reason:
                raise InputError(f"{where}: host {host!r} resolves to a {reason} address; only public "
                                 "addresses are fetched (ALLOW_PRIVATE_URLS=true allows it)",
                                 {"field": where, "reason": reason})
    return addrs


def _time_left(deadline: float, started: float, where: str, host: str, got: int) -> float:
    """Seconds left before ``deadline``; a one-line InputError (host only, never the query) after it."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise InputError(f"{where}: {host} sent {got} bytes in {time.monotonic() - started:.0f} s and did not "
                         "finish before the job's deadline; use a faster host, a smaller image, or a larger "
                         "timeout_s", {"field": where, "host": host, "bytes": got})
    return left


def _read_body(resp: Any, url: str, where: str, host: str, limit: int, timeout: float, deadline: float,
               started: float) -> bytes:
    """The body, read as it arrives (``read1``) so the deadline is checked between any two reads."""
    chunks: list[bytes] = []
    total = 0
    while True:
        left = _time_left(deadline, started, where, host, total)
        if resp.connection is not None and resp.connection.sock is not None:
            resp.connection.sock.settimeout(min(timeout, left))
        try:
            chunk = resp.read1(_READ)
        except Exception as err:  # noqa: BLE001 - a read timeout at the deadline, or a broken body
            _time_left(deadline, started, where, host, total)
            raise InputError(f"{where}: cannot fetch {safe_url(url)}: {type(err).__name__}",
                             {"field": where}) from None
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise InputError(f"{where}: {safe_url(url)} is over the {limit / 1e6:.1f} MB input limit "
                             "(MAX_INPUT_BYTES)", {"field": where})
        chunks.append(chunk)


def stage_images(images: Iterable[ImageInput], input_dir: Path, sub: str, cfg: WorkerConfig,
                 *, resolver: Resolver = resolve, deadline: float | None = None) -> dict[str, str]:
    """Write the job's images under ``input/<sub>/``; return {name: value for LoadImage}.
    ``deadline`` (monotonic) bounds all URL fetches together: the job's remaining time."""
    mapping: dict[str, str] = {}
    for i, img in enumerate(images):
        data = img.data if img.data is not None else fetch_url(img.url or "", cfg, where=f"images[{i}].image",
                                                               resolver=resolver, deadline=deadline)
        (input_dir / sub).mkdir(parents=True, exist_ok=True)
        write_atomic(input_dir / sub / img.name, data)
        mapping[img.name] = f"{sub}/{img.name}"
    return mapping


def rewrite_workflow(workflow: dict[str, Any], image_map: dict[str, str], sub: str) -> dict[str, Any]:
    """Pure: point image inputs at the staged files, every ``filename_prefix`` into the job's folder,
    and give preview nodes the attempt's cache-busting input."""
    out: dict[str, Any] = {}
    for node_id, node in workflow.items():
        inputs = dict(node.get("inputs") or {})
        for key, value in inputs.items():
            if isinstance(value, str) and value in image_map:
                inputs[key] = image_map[value]
        prefix = inputs.get("filename_prefix")
        if isinstance(prefix, str):
            cleaned = "/".join(p for p in prefix.replace("\\", "/").split("/") if p not in ("", ".", ".."))
            inputs["filename_prefix"] = f"{sub}/{cleaned or 'ComfyUI'}"
        elif _writes_preview(str(node.get("class_type", ""))):
            inputs[CACHE_BUST_INPUT] = sub
        out[node_id] = {**node, "inputs": inputs}
    return out


def cleanup_job(sub: str, *, input_dir: Path, output_dir: Path, extra_files: Iterable[Path] = ()) -> None:
    """Remove the job's staged inputs (``input/<sub>``), its output folder and its temp files."""
    for root in (input_dir, output_dir):
        target = root / sub
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
    for path in extra_files:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:  # best effort: a stale temp file is harmless
            log.warning("could not remove %s: %s", path, err)
