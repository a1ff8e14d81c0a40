"""``gs://bucket/object`` through google-cloud-storage (never gsutil)."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from builder.errors import AuthError, DownloadError, NotFoundError
from builder.models.checksum import Digests
from builder.models.sources import GcsSource
from builder.models.writer import HashingWriter

log = logging.getLogger(__name__)
RETRY_S = 10.0  # seconds of retries for one GCS call before it is reported


@dataclass
class GcsResult:
    digests: Digests
    size: int
    resolved_source: str


def make_client():
    """The default client (GOOGLE_APPLICATION_CREDENTIALS, metadata server, STORAGE_EMULATOR_HOST),
    or an anonymous one for public buckets when no credentials exist."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    try:
        return storage.Client()
    except (DefaultCredentialsError, OSError) as exc:
        log.info("no Google credentials (%s); using an anonymous client for public buckets", type(exc).__name__)
        return storage.Client.create_anonymous_client()


def _retry():
    """The library's retry policy (transient errors, 429/5xx) for RETRY_S in all, not its default 120 s."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(RETRY_S).with_delay(initial=0.5, maximum=2.0)


@contextlib.contextmanager
def _unreachable_as_one_line(label: str, what: str, client):
    """A connection failure to GCS (requests / google-auth transport errors): one DownloadError line."""
    import requests
    from google.api_core.exceptions import RetryError
    from google.auth import exceptions as gauth

    try:
        yield
    except (requests.ConnectionError, requests.Timeout, gauth.TransportError, RetryError) as exc:
        from urllib.parse import urlsplit

        host = urlsplit(getattr(client, "api_endpoint", "") or "https://storage.googleapis.com").netloc
        raise DownloadError(f"{label}: cannot reach {host} ({type(exc).__name__}) while fetching {what}; check "
                            "the network, or work offline (--offline / COMFY_OFFLINE=1) with the file already "
                            "in the store") from None


def download(
    src: GcsSource,
    tmp: Path,
    *,
    client=None,
    algos=("sha256",),
    progress: Callable[[int], None] | None = None,
    size_hint: Callable[[int], None] | None = None,
) -> GcsResult:
    from google.api_core import exceptions as gexc

    label = f"gs://{src.bucket}/{src.name}"
    client = client or make_client()
    try:
        with _unreachable_as_one_line(label, "its metadata", client):
            blob = client.bucket(src.bucket).get_blob(src.name, retry=_retry())
    except gexc.NotFound:
        raise NotFoundError(f"{label}: bucket {src.bucket!r} does not exist (check the source)") from None
    except (gexc.Forbidden, gexc.Unauthorized) as exc:
        raise AuthError(
            f"{label}: access denied (HTTP {exc.code}); check GOOGLE_APPLICATION_CREDENTIALS has read access"
        ) from None
    except gexc.GoogleAPICallError as exc:
        raise DownloadError(f"{label}: {type(exc).__name__} (HTTP {exc.code})") from None
    if blob is None:
        raise NotFoundError(f"{label}: object does not exist in bucket {src.bucket!r} (check the object name)")
    if size_hint and blob.size:
        size_hint(int(blob.size))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    writer = HashingWriter(fd, algos, progress)
    try:
        try:
            with _unreachable_as_one_line(label, "its bytes", client):
                blob.download_to_file(writer, if_generation_match=blob.generation, checksum="auto", retry=_retry())
        except gexc.NotFound:
            raise NotFoundError(f"{label}: object disappeared or changed while downloading (retry)") from None
        except gexc.GoogleAPICallError as exc:
            raise DownloadError(f"{label}: {type(exc).__name__} (HTTP {exc.code})") from None
        except Exception as exc:  # google-resumable-media DataCorruption and friends
            if type(exc).__name__ == "DataCorruption":
                raise DownloadError(f"{label}: checksum reported by GCS did not match the bytes received") from None
            raise
    finally:
        digests = writer.finish()
        os.close(fd)
    return GcsResult(digests, digests.size, f"gs://{src.bucket}/{src.name}#{blob.generation}")
