"""Reading one HTTP response of a model download: its status as a typed error, its validator for
``If-Range`` and its total size from ``Content-Range`` / ``Content-Length``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import requests

from builder.errors import AuthError, DownloadError, NotFoundError
from builder.models.sources import redact_url

if TYPE_CHECKING:
    from builder.models.http import HttpOptions

CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class Transient(Exception):
    """A failure worth resuming/retrying (connection reset, truncated body, 5xx)."""


def check_status(resp: requests.Response, label: str, opts: HttpOptions) -> None:
    code = resp.status_code
    if code < 400:
        return
    where = f"{label}: HTTP {code} from {redact_url(resp.url)}"
    if code in (401, 403):
        if opts.token_env and not opts.token_set:
            raise AuthError(f"{where}; {opts.token_env} is not set (set it to a token with access to this file)")
        if opts.token_env:
            raise AuthError(f"{where}; {opts.token_env} was rejected (check that it is valid and has access)")
        raise AuthError(f"{where}; access denied and no token is sent to this host (check the URL or use a signed URL)")
    if code in (404, 410):
        raise NotFoundError(f"{where}; the file does not exist (check the URL)")
    if code == 416:
        raise DownloadError(f"{where}; the server refused the byte range (its Content-Length may be wrong)")
    if code == 429 or code >= 500:
        raise Transient(f"{where}")
    raise DownloadError(f"{where}")


def validator_of(resp: requests.Response) -> str | None:
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified")


def total_from(resp: requests.Response) -> int | None:
    cr = resp.headers.get("Content-Range")
    if resp.status_code == 206 and cr:
        m = CONTENT_RANGE.match(cr.strip())
        if m and m.group(3) != "*":
            return int(m.group(3))
    cl = resp.headers.get("Content-Length")
    if resp.status_code == 200 and cl and cl.isdigit():
        return int(cl)
    return None
