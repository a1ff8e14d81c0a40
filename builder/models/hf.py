"""``hf://org/repo[@revision]/path`` through huggingface_hub's public API and our own downloader.

``hf_hub_url`` + ``get_hf_file_metadata`` (public) resolve the revision to a commit (pinned in
the lock) and give the LFS sha256 (``X-Linked-Etag``), the size and the file's location; the bytes
are then streamed by :func:`builder.models.http.download` (hashed while they stream, resumed with
``Range``, our own atomic store instead of huggingface_hub's cache) and their size is checked
against the Hub's.  The token goes only to the Hub: it is dropped when the file's location is on
another host (the CDN), and requests drops it on a redirect to another host.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from builder.errors import AuthError, DownloadError, NotFoundError
from builder.models import http
from builder.models.checksum import Digests
from builder.models.sources import HfSource, host_of

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
    connections: int = 1,
    parallel_min: int = http.DEFAULT_PARALLEL_MIN,
) -> HfResult:
    from huggingface_hub.utils import build_hf_headers

    url, meta = metadata(src, endpoint=endpoint, token=token)
    label = f"hf://{src.repo_id}@{src.revision}/{src.filename}"
    headers = {k: v for k, v in build_hf_headers(token=token or False).items()
               if host_of(meta.location) == host_of(url) or k.lower() != "authorization"}
    opts = http.HttpOptions(headers=headers, token_env="HF_TOKEN", token_set=bool(token),
                            connections=connections, parallel_min=parallel_min)
    res = http.download(meta.location, tmp, label=label, opts=opts, algos=algos, progress=progress,
                        size_hint=size_hint)
    if meta.size is not None and res.size != meta.size:
        raise DownloadError(f"{label}: received {res.size} bytes, the Hub announced {meta.size}; retry")
    etag = (meta.etag or "").lower()
    return HfResult(res.digests, res.size, src.pinned(meta.commit_hash), etag if _SHA256.match(etag) else None)
