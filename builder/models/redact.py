"""Keep signed-URL query strings and tokens out of third-party log records.

huggingface_hub, httpx and urllib3 log request URLs (at INFO/DEBUG); signed CDN
URLs carry their secret in the query.  A logger filter only sees records logged
on that very logger, so it is attached to each one that logs URLs.
"""

from __future__ import annotations

import logging
import re

_QUERY = re.compile(r"((?:https?://|/)[^\s?'\"]*)\?[^\s'\"]+")
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._\-~+/=]+")
LOGGERS = (
    "httpx", "httpx2", "urllib3.connectionpool", "huggingface_hub", "huggingface_hub.file_download",
    "huggingface_hub.utils._http", "google.resumable_media", "google.cloud.storage",
    *(f"{core}.{mod}" for core in ("httpcore", "httpcore2") for mod in ("http11", "http2", "connection", "proxy")),
)


def redact(text: str) -> str:
    return _BEARER.sub(r"\1<redacted>", _QUERY.sub(r"\1?<redacted>", text))


class RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record: leave it to logging
            return True
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


_FILTER = RedactFilter()


def install() -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
