"""The GCS sink: uploads each output with a crc32c check and retries, and says why an upload failed.

``GcsSink`` is one of the sinks ``rp_handler.outputs.make_sink`` picks; ``gcs_client`` keeps one
storage client per configuration across jobs.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from builder.errors import ChecksumMismatch
from rp_handler.config import GcsConfig
from rp_handler.errors import InputError, OutputError
from rp_handler.inputs import job_key

if TYPE_CHECKING:
    from rp_handler.outputs import OutputFile, Source

log = logging.getLogger("rp_handler.outputs")  # records keep the logger name they had before the split


def _transient(err: BaseException) -> bool:
    from google.api_core import exceptions as gexc
    import requests

    if isinstance(err, ChecksumMismatch):
        return True
    if isinstance(err, (gexc.TooManyRequests, gexc.InternalServerError, gexc.BadGateway,
                        gexc.ServiceUnavailable, gexc.GatewayTimeout)):
        return True
    if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    try:
        from google.resumable_media import common as rm
        if isinstance(err, rm.DataCorruption):
            return True
        if isinstance(err, rm.InvalidResponse):
            status = getattr(err.response, "status_code", 0)
            return status == 429 or status >= 500
    except ImportError:  # pragma: no cover
        pass
    return False


def _status_of(err: BaseException) -> int | None:
    code = getattr(err, "code", None)
    return int(code) if isinstance(code, int) else None


_URL = re.compile(r"\b(?:https?|gs)://\S+")


def _upload_failure(err: BaseException, gcs: GcsConfig, bucket: str) -> str:
    """Why an upload failed, in a few words with the fix (no URLs: they may carry signatures)."""
    import requests

    code = getattr(err, "code", None)
    if code in (401, 403):
        return (f"{code} {type(err).__name__}: the credentials may not write to bucket {bucket!r} "
                "(grant the service account roles/storage.objectCreator, or check GOOGLE_APPLICATION_CREDENTIALS)")
    if code == 404:
        return f"404 NotFound: bucket {bucket!r} does not exist (check GCS_BUCKET / output.bucket)"
    if isinstance(err, requests.exceptions.Timeout):
        return (f"{type(err).__name__}: GCS did not answer within {gcs.timeout_s:g} s (GCS_TIMEOUT_S), "
                f"{gcs.retries} attempt(s)")
    if isinstance(err, requests.exceptions.ConnectionError):
        return f"{type(err).__name__}: cannot reach GCS after {gcs.retries} attempt(s)"
    message = getattr(err, "message", None) or str(err)
    text = _URL.sub("<url>", " ".join(str(message).split()))[:200]
    return f"{code} {type(err).__name__}: {text}" if isinstance(code, int) else f"{type(err).__name__}: {text}"


@lru_cache(maxsize=4)
def gcs_client(gcs: GcsConfig):
    """One storage client per configuration, reused across jobs (keep-alive)."""
    from google.cloud import storage

    if gcs.emulator_host:
        from google.auth.credentials import AnonymousCredentials
        return storage.Client(project=gcs.project or "emulator", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": gcs.emulator_host})
    creds = _service_account(gcs.credentials_file)
    return storage.Client(project=gcs.project or getattr(creds, "project_id", None), credentials=creds)


@lru_cache(maxsize=4)
def _service_account(path: str):
    from google.oauth2 import service_account

    if not path or not os.path.isfile(path):
        raise InputError("output mode gcs needs credentials: GOOGLE_APPLICATION_CREDENTIALS must name an existing "
                         "service-account JSON file", {"field": "output.mode",
                                                        "missing": "GOOGLE_APPLICATION_CREDENTIALS"})
    try:
        return service_account.Credentials.from_service_account_file(
            path, scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
    except (ValueError, KeyError) as err:
        raise InputError(f"GOOGLE_APPLICATION_CREDENTIALS is not a usable service-account JSON file "
                         f"({type(err).__name__})", {"field": "output.mode"}) from None


def crc32c_b64(source: Source) -> str:
    import google_crc32c

    crc = google_crc32c.Checksum()
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            while chunk := fh.read(8 << 20):
                crc.update(chunk)
    else:
        crc.update(bytes(source))
    return base64.b64encode(crc.digest()).decode("ascii")


class GcsSink:
    """Uploads to ``gs://<bucket>/<prefix>/<job_id>/<node>_<index>_<filename>`` (a retry overwrites)."""

    mode = "gcs"

    def __init__(self, gcs: GcsConfig, bucket: str, prefix: str, job_id: str, *, client=None):
        self.gcs = gcs
        self.client = client if client is not None else gcs_client(gcs)
        self.bucket = self.client.bucket(bucket)
        self.prefix = prefix.strip("/")
        self.job_dir = job_key(job_id)

    def object_name(self, item: OutputFile) -> str:
        parts = [p for p in (self.prefix, self.job_dir, item.object_name) if p]
        return "/".join(parts)

    def put(self, item: OutputFile, source: Source) -> dict[str, Any]:
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        name = self.object_name(item)
        expected = crc32c_b64(source) if self.gcs.validate else None
        retrying = Retrying(stop=stop_after_attempt(max(1, self.gcs.retries)),
                            wait=wait_exponential(multiplier=self.gcs.retry_base_sleep, max=30),
                            retry=retry_if_exception(_transient), reraise=True,
                            before_sleep=lambda rs: log.warning("GCS upload of gs://%s/%s failed (%s); retry %d",
                                                                self.bucket.name, name,
                                                                type(rs.outcome.exception()).__name__,
                                                                rs.attempt_number))
        try:
            blob = retrying(self._upload_once, name, item, source, expected)
        except OutputError:
            raise
        except Exception as err:  # google/requests errors: one line, no URLs
            raise OutputError(f"GCS upload of gs://{self.bucket.name}/{name} failed: "
                              f"{_upload_failure(err, self.gcs, self.bucket.name)}",
                              {"bucket": self.bucket.name, "object": name,
                               "status": _status_of(err)}) from None
        size = blob.size if blob.size is not None else (
            source.stat().st_size if isinstance(source, Path) else len(source))
        return {"bucket": self.bucket.name, "object": name, "gs_uri": f"gs://{self.bucket.name}/{name}",
                "url": self._url(blob), "size": size, "crc32c": blob.crc32c}

    def _upload_once(self, name: str, item: OutputFile, source: Source, expected: str | None):
        blob = self.bucket.blob(name)
        if isinstance(source, Path):
            blob.upload_from_filename(str(source), content_type=item.mime, retry=None, timeout=self.gcs.timeout_s)
        else:
            blob.upload_from_string(source, content_type=item.mime, retry=None, timeout=self.gcs.timeout_s)
        if expected is not None and blob.crc32c != expected:
            raise ChecksumMismatch(f"gs://{self.bucket.name}/{name} (CRC32C)", expected, str(blob.crc32c))
        return blob

    def _url(self, blob) -> str:
        if self.gcs.public:
            if self.gcs.emulator_host:
                return f"{self.gcs.emulator_host.rstrip('/')}/{self.bucket.name}/{quote(blob.name)}"
            return blob.public_url
        if self.gcs.credentials_file:
            kwargs: dict[str, Any] = {}
            if self.gcs.emulator_host:
                kwargs["api_access_endpoint"] = self.gcs.emulator_host.rstrip("/")
            return blob.generate_signed_url(version="v4", expiration=timedelta(seconds=self.gcs.signed_url_ttl),
                                            method="GET", credentials=_service_account(self.gcs.credentials_file),
                                            **kwargs)
        # Emulator without credentials: its plain download URL.
        return (f"{self.gcs.emulator_host.rstrip('/')}/download/storage/v1/b/{self.bucket.name}/o/"
                f"{quote(blob.name, safe='')}?alt=media")
