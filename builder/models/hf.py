"""``hf://org/repo[@revision]/path`` through huggingface_hub's lower-level API.

``get_hf_file_metadata`` resolves the revision to a commit (pinned in the lock) and
gives the LFS sha256 (``X-Linked-Etag``) and size; ``http_get`` streams the bytes
into our own temp file through a hashing writer, so we keep one pass and our own
atomic store instead of huggingface_hub's cache.  The token goes only to the Hub:
huggingface_hub drops it for CDN redirects, and we drop it too when the file's
location is on another host.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from builder.errors import AuthError, DownloadError, NotFoundError
from builder.models.checksum import Digests
from builder.models.sources import HfSource, host_of, redact_url
from builder.models.writer import HashingWriter

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
ATTEMPTS = 3
FIX = ("check the network, or set HF_ENDPOINT to a reachable mirror, or work offline (--offline / "
       "COMFY_OFFLINE=1) with the files already in the store")


class _Unreachable(Exception):
    """A connection error, a timeout or a 429/5xx from the Hub: worth another attempt."""


def _with_retries(fn: Callable[[], object], label: str, host: str):
    """``fn()`` with up to ATTEMPTS tries, one warning line per retry, then one DownloadError line."""
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    def say(state) -> None:
        log.warning("%s; retry %d of %d in %.1f s", state.outcome.exception(), state.attempt_number,
                    ATTEMPTS - 1, state.next_action.sleep if state.next_action else 0)

    try:
        for attempt in Retrying(stop=stop_after_attempt(ATTEMPTS), wait=wait_exponential(multiplier=0.5, max=4),
                                retry=retry_if_exception_type(_Unreachable), reraise=True, before_sleep=say):
            with attempt:
                return fn()
    except _Unreachable as exc:
        raise DownloadError(f"{exc}; gave up after {ATTEMPTS} attempts: {FIX}") from None


def _transport_error(exc: BaseException) -> bool:
    """httpx2/httpx transport errors (connect, timeout, protocol) without importing either by name."""
    return any(k.__name__ in ("TransportError", "TimeoutException", "NetworkError") for k in type(exc).__mro__)


@dataclass
class HfResult:
    digests: Digests
    size: int
    resolved_source: str
    remote_sha256: str | None


class _Bar:
    """tqdm stand-in for huggingface_hub: forwards byte counts to our progress callback."""

    def __init__(self, progress, **_kw):
        self._progress = progress

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass  # bytes are counted by the HashingWriter

    def close(self):
        pass


def _token_error(label: str, code: int, token: str, what: str) -> AuthError:
    if not token:
        return AuthError(f"{label}: HTTP {code}, {what}; HF_TOKEN is not set (set it to a token with access)")
    return AuthError(f"{label}: HTTP {code}, {what}; HF_TOKEN was rejected or lacks access to this repo")


def metadata(src: HfSource, *, endpoint: str, token: str):
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub import errors as hfe

    label = f"hf://{src.repo_id}@{src.revision}/{src.filename}"
    url = hf_hub_url(src.repo_id, src.filename, revision=src.revision, endpoint=endpoint)
    host = host_of(url)

    def head():  # huggingface_hub's own retries are off: ours log one line each
        try:
            return get_hf_file_metadata(url, token=token or False, endpoint=endpoint, retry_on_errors=False)
        except hfe.HfHubHTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code == 429 or code >= 500:
                raise _Unreachable(f"{label}: HTTP {code} from {host} while reading the file's metadata") from None
            raise
        except Exception as exc:
            if _transport_error(exc) or isinstance(exc, OSError):
                reason = " ".join(str(exc).split()) or type(exc).__name__
                raise _Unreachable(f"{label}: cannot reach {host} ({reason}) while reading the file's "
                                   "metadata") from None
            raise

    try:
        meta = _with_retries(head, label, host)
    except hfe.GatedRepoError:
        raise _token_error(label, 403, token, f"repo {src.repo_id} is gated") from None
    except hfe.RemoteEntryNotFoundError:
        raise NotFoundError(
            f"{label}: file {src.filename!r} is absent at revision {src.revision!r} of {src.repo_id} (check path and revision)"
        ) from None
    except hfe.RevisionNotFoundError:
        raise NotFoundError(f"{label}: revision {src.revision!r} does not exist in {src.repo_id}") from None
    except hfe.RepositoryNotFoundError as exc:
        code = exc.response.status_code if exc.response is not None else 404
        if code == 401:
            raise _token_error(label, 401, token, f"repo {src.repo_id} not found or private") from None
        raise NotFoundError(f"{label}: repo {src.repo_id} not found (check the name)") from None
    except hfe.HfHubHTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        if code in (401, 403):
            raise _token_error(label, code, token, "access denied") from None
        raise DownloadError(f"{label}: HTTP {code} from the Hub") from None
    if not meta.commit_hash:
        raise DownloadError(f"{label}: {endpoint} is not a Hugging Face endpoint (no X-Repo-Commit header)")
    return url, meta


def download(
    src: HfSource,
    tmp: Path,
    *,
    endpoint: str,
    token: str,
    algos=("sha256",),
    progress: Callable[[int], None] | None = None,
    size_hint: Callable[[int], None] | None = None,
) -> HfResult:
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url, meta = metadata(src, endpoint=endpoint, token=token)
    label = f"hf://{src.repo_id}@{src.revision}/{src.filename}"
    headers = build_hf_headers(token=token or False)
    headers["Accept-Encoding"] = "identity"
    if host_of(meta.location) != host_of(url):
        headers.pop("authorization", None)
        headers.pop("Authorization", None)
    if size_hint and meta.size:
        size_hint(meta.size)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    writer = HashingWriter(fd, algos, progress)
    try:
        try:
            http_get(meta.location, writer, headers=headers, expected_size=meta.size,
                     tqdm_class=lambda **kw: _Bar(progress, **kw))
        except OSError as exc:
            if "Consistency check failed" in str(exc):
                raise DownloadError(
                    f"{label}: received a different size than the Hub announced ({meta.size} bytes); retry"
                ) from None
            raise
        except Exception as exc:
            from huggingface_hub import errors as hfe

            if isinstance(exc, hfe.HfHubHTTPError):
                code = exc.response.status_code if exc.response is not None else 0
                if code in (401, 403):
                    raise _token_error(label, code, token, "download denied") from None
                if code == 404:
                    raise NotFoundError(f"{label}: HTTP 404 at {redact_url(meta.location)}") from None
                raise DownloadError(f"{label}: HTTP {code} from {redact_url(meta.location)}") from None
            if _transport_error(exc):
                raise DownloadError(f"{label}: download from {host_of(meta.location)} broke off "
                                    f"({type(exc).__name__}); rerun to retry, or {FIX}") from None
            raise DownloadError(f"{label}: download failed ({type(exc).__name__})") from None
    finally:
        digests = writer.finish()
        os.close(fd)
    etag = (meta.etag or "").lower()
    return HfResult(digests, digests.size, src.pinned(meta.commit_hash), etag if _SHA256.match(etag) else None)
