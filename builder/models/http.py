"""HTTP(S) download into a temp file, hashed while the bytes stream.

* One stream: ``requests`` for the request and redirects (it drops
  ``Authorization`` when a redirect leaves the host), then the underlying urllib3
  ``raw.stream`` with 1 MiB chunks (``iter_content`` is half as fast here).  The
  digest runs on a second thread.
* Resume after a broken connection with ``Range`` + ``If-Range`` (the first
  response's strong ETag or Last-Modified); a ``206`` must carry a matching
  ``Content-Range``, a ``200`` means the server ignored the range or the file
  changed: start over.  Retries go through tenacity.
* Large files with ``Accept-Ranges``: ``connections`` ranged GETs write pieces
  with ``os.pwrite``; the hash thread follows the completed prefix through an
  ``mmap`` of the temp file, so the file is still hashed in one pass.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests
import urllib3
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from builder.errors import DownloadError
from builder.models.checksum import SLICE, Digests, HashThread, drop_pages
from builder.models.http_response import CONTENT_RANGE, Transient, check_status, total_from, validator_of
from builder.models.sources import host_of, redact_url

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
PIECE = 32 * 1024 * 1024
DEFAULT_PARALLEL_MIN = 256 * 1024 * 1024
TIMEOUT = (15, 60)
ATTEMPTS = 5


class _RangeIgnored(Exception):
    pass


class _Stopped(Exception):
    """Another range worker failed or the download was interrupted: stop writing."""


@dataclass(frozen=True)
class HttpOptions:
    headers: dict  # extra headers (Authorization only when the URL is the token's host)
    token_env: str = ""
    token_set: bool = False
    connections: int = 1
    parallel_min: int = DEFAULT_PARALLEL_MIN


@dataclass
class HttpResult:
    digests: Digests
    size: int
    final_url: str


def new_session(pool: int = 4) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # no netrc/proxy env: config is read in config modules only
    s.max_redirects = 10
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool, pool_maxsize=pool, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["Accept-Encoding"] = "identity"
    return s


def auth_headers(url: str, token: str, token_hosts: set[str]) -> dict:
    """``Authorization`` only for the token's own hosts (redirects elsewhere drop it: requests)."""
    if token and host_of(url) in token_hosts:
        return {"Authorization": f"Bearer {token}"}
    return {}



def _write_all(fd: int, data, offset: int | None = None) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        if offset is not None:
            offset += n
        view = view[n:]


def _get(session: requests.Session, url: str, headers: dict, label: str) -> requests.Response:
    try:
        return session.get(url, headers=headers, stream=True, timeout=TIMEOUT)
    except requests.TooManyRedirects:
        raise DownloadError(f"{label}: too many redirects (a redirect loop at {redact_url(url)})") from None
    except requests.exceptions.InvalidURL as exc:
        raise DownloadError(f"{label}: invalid URL ({type(exc).__name__})") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise Transient(f"{label}: cannot reach {host_of(url)} ({type(exc).__name__})") from None


def _retrying() -> Retrying:
    return Retrying(
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_exponential(multiplier=0.2, max=3),
        retry=retry_if_exception_type(Transient),
        reraise=True,
        before_sleep=lambda rs: log.warning("%s; retry %d of %d", rs.outcome.exception(), rs.attempt_number,
                                            ATTEMPTS - 1),
    )


def download(
    url: str,
    tmp: Path,
    *,
    label: str,
    opts: HttpOptions,
    algos=("sha256",),
    progress: Callable[[int], None] | None = None,
    size_hint: Callable[[int], None] | None = None,
) -> HttpResult:
    """Download ``url`` into ``tmp`` (created), hashing as it streams."""
    session = new_session(max(1, opts.connections))
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        first: requests.Response | None = None
        if opts.connections > 1:
            hdrs = {**opts.headers, "Range": f"bytes=0-{PIECE - 1}"}
            first = _retry_call(lambda: _opened(session, url, hdrs, label, opts), label)
            total = total_from(first)
            if first.status_code == 206 and total is not None and total >= opts.parallel_min:
                final_url, validator = first.url, validator_of(first)
                first.close()
                if size_hint:
                    size_hint(total)
                piece_opts = opts
                if host_of(final_url) != host_of(url):  # redirected (signed CDN URL): no token there
                    headers = {k: v for k, v in opts.headers.items() if k.lower() != "authorization"}
                    piece_opts = HttpOptions(headers, "", False, opts.connections, opts.parallel_min)
                try:
                    digests = _parallel(fd, final_url, total, validator, label, piece_opts, algos, progress)
                    if digests.size != total:
                        raise DownloadError(f"{label}: hashed {digests.size} bytes of {total}; the "
                                            "download is incomplete (try again)")
                    return HttpResult(digests, total, final_url)
                except _RangeIgnored:
                    log.warning("%s: server stopped honouring Range; downloading in one stream", label)
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    first = None
            elif first.status_code == 206 and (total is None or total > PIECE):
                first.close()  # a medium file: one plain stream is cheaper than resuming the probe
                first = None
        return _single(session, fd, url, label, opts, algos, progress, first, size_hint)
    finally:
        os.close(fd)
        session.close()


def _retry_call(fn, label):
    try:
        for attempt in _retrying():
            with attempt:
                return fn()
    except Transient as exc:
        raise DownloadError(f"{exc}; gave up after {ATTEMPTS} attempts: check the network and the URL, or work "
                            "offline (--offline / COMFY_OFFLINE=1) with the file already in the store") from None


def _opened(session, url, headers, label, opts) -> requests.Response:
    resp = _get(session, url, headers, label)
    try:
        check_status(resp, label, opts)
    except BaseException:
        resp.close()
        raise
    return resp


def _single(session, fd, url, label, opts, algos, progress, first, size_hint) -> HttpResult:
    hasher = HashThread(algos)
    state = {"done": 0, "validator": None, "total": None, "url": url}

    def attempt_once() -> None:
        nonlocal first
        done = state["done"]
        if first is not None:
            resp, first = first, None
        else:
            hdrs = dict(opts.headers)
            if done:
                hdrs["Range"] = f"bytes={done}-"
                if state["validator"]:
                    hdrs["If-Range"] = state["validator"]
            resp = _opened(session, url, hdrs, label, opts)
        with resp:
            start = _body_start(resp, done, label)
            if start == 0 and done:
                log.warning("%s: server ignored Range (HTTP %s); starting over from byte 0", label, resp.status_code)
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                hasher.reset()
                if progress:
                    progress(-done)
                state["done"] = done = 0
            if state["total"] is None or start == 0:
                state["total"] = total_from(resp)
                state["validator"] = validator_of(resp)
                if size_hint and state["total"]:
                    size_hint(state["total"])
            state["url"] = resp.url
            _stream_body(resp, fd, hasher, state, label, progress)

    try:
        _retry_call(attempt_once, label)
    except BaseException:
        hasher.finish()
        raise
    digests = hasher.finish()
    total = state["total"]
    if total is not None and digests.size != total:
        raise DownloadError(
            f"{label}: received {digests.size} bytes but the server announced {total} (Content-Length lies?)"
        )
    return HttpResult(digests, digests.size, state["url"])


def _body_start(resp: requests.Response, done: int, label: str) -> int:
    """Where the body of ``resp`` starts: a 206's Content-Range start (``done`` or 0), 0 for a 200."""
    start = 0
    if resp.status_code == 206:
        m = CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
        if not m:
            raise DownloadError(f"{label}: 206 response without a valid Content-Range")
        start = int(m.group(1))
        if start != done:
            if start != 0:
                raise DownloadError(f"{label}: server resumed at byte {start}, asked for {done}")
    elif resp.status_code != 200:
        raise DownloadError(f"{label}: unexpected HTTP {resp.status_code}")
    return start


def _stream_body(resp: requests.Response, fd: int, hasher: HashThread, state: dict, label: str,
                 progress: Callable[[int], None] | None) -> None:
    """Write and hash the body; a broken or short one is ``Transient`` (resumed from ``state["done"]``)."""
    try:
        for chunk in resp.raw.stream(CHUNK, decode_content=False):
            _write_all(fd, chunk)
            hasher.feed(chunk)
            state["done"] += len(chunk)
            if progress:
                progress(len(chunk))
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError,
            requests.ConnectionError, ConnectionError) as exc:
        raise Transient(
            f"{label}: connection broke after {state['done']} of {state['total'] or '?'} bytes"
            f" ({type(exc).__name__})"
        ) from None
    total = state["total"]
    if total is not None and state["done"] < total:
        raise Transient(f"{label}: body truncated at {state['done']} of {total} bytes")


class _Pieces:
    """Work queue of byte ranges and the completed-prefix tracker the hash thread follows."""

    def __init__(self, total: int, piece: int):
        self.ranges = [(off, min(piece, total - off)) for off in range(0, total, piece)]
        self.done = [False] * len(self.ranges)
        self.next = 0
        self.cond = threading.Condition()
        self.error: BaseException | None = None

    def take(self) -> int | None:
        with self.cond:
            if self.error is not None or self.next >= len(self.ranges):
                return None
            i, self.next = self.next, self.next + 1
            return i

    def finish(self, i: int) -> None:
        with self.cond:
            self.done[i] = True
            self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = exc
            self.cond.notify_all()

    def wait_done(self, i: int) -> bool:
        with self.cond:
            while not self.done[i] and self.error is None:
                self.cond.wait(timeout=30)
                if not self.done[i] and self.error is None:
                    log.info("still waiting for byte range %d of %d", i + 1, len(self.ranges))
            return self.done[i]


def _parallel(fd, url, total, validator, label, opts, algos, progress) -> Digests:
    os.ftruncate(fd, total)
    pieces = _Pieces(total, PIECE)
    digests = Digests(algos)

    def worker() -> None:
        session = new_session(1)
        try:
            while (i := pieces.take()) is not None:
                off, length = pieces.ranges[i]
                _fetch_piece(session, fd, url, off, length, total, validator, label, opts, progress,
                             pieces)
                pieces.finish(i)
        except BaseException as exc:
            pieces.fail(exc)
        finally:
            session.close()

    def hasher(mm) -> None:
        view = memoryview(mm)
        try:
            for i, (off, length) in enumerate(pieces.ranges):
                if not pieces.wait_done(i):
                    return
                for o in range(off, off + length, SLICE):
                    n = min(SLICE, off + length - o)
                    with view[o : o + n] as chunk:
                        digests.update(chunk)
                    drop_pages(mm, o, n)
        except BaseException as exc:  # reported by the caller, never lost with the thread
            pieces.fail(DownloadError(f"{label}: hashing the download failed: {type(exc).__name__}: {exc}"))
        finally:
            view.release()

    n = max(1, min(opts.connections, len(pieces.ranges)))
    with mmap.mmap(fd, total, access=mmap.ACCESS_READ) as mm:
        threads = [threading.Thread(target=worker, name=f"range-{k}", daemon=True) for k in range(n)]
        hash_t = threading.Thread(target=hasher, args=(mm,), name="range-hash", daemon=True)
        for t in threads:
            t.start()
        hash_t.start()
        try:
            for t in (*threads, hash_t):
                t.join()
        except BaseException as exc:  # Ctrl-C: stop the workers before the mmap and fd are closed
            pieces.fail(exc)
            for t in (*threads, hash_t):
                t.join()
            raise
    if pieces.error is not None:
        raise pieces.error
    return digests


def _fetch_piece(session, fd, url, off, length, total, validator, label, opts, progress, pieces) -> None:
    pos = off
    end = off + length - 1

    def once() -> None:
        nonlocal pos
        hdrs = {**opts.headers, "Range": f"bytes={pos}-{end}"}
        if validator:
            hdrs["If-Range"] = validator
        resp = _opened(session, url, hdrs, label, opts)
        with resp:
            if resp.status_code != 206:
                raise _RangeIgnored()
            m = CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
            if not m or int(m.group(1)) != pos or (m.group(3) != "*" and int(m.group(3)) != total):
                raise _RangeIgnored()
            try:
                for chunk in resp.raw.stream(CHUNK, decode_content=False):
                    if pieces.error is not None:
                        raise _Stopped()
                    take = min(len(chunk), end + 1 - pos)
                    _write_all(fd, memoryview(chunk)[:take], pos)
                    pos += take
                    if progress:
                        progress(take)
                    if pos > end:
                        break
            except (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError,
                    requests.ConnectionError, ConnectionError) as exc:
                raise Transient(f"{label}: range {off}-{end} broke at byte {pos} ({type(exc).__name__})") from None
            if pos <= end:
                raise Transient(f"{label}: range {off}-{end} truncated at byte {pos}")

    _retry_call(once, label)

