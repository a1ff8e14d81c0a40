"""``scripts/submit.py``'s output side: walk a job's output and save every file in it (base64 payloads
decoded, http(s) URLs such as GCS signed URLs downloaded), printing URLs without their query string.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import requests

_BASE64_KEYS = ("data", "base64", "image", "b64")
_NAME_KEYS = ("filename", "name", "file")
_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"RIFF", ".webp"),
          (b"\x1aE\xdf\xa3", ".webm"))


class SubmitError(Exception):
    """One-line message for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 3):
        super().__init__(message)
        self.code = code


def redact_url(url: str) -> str:
    """``scheme://host/path`` without query or fragment (signed URL secrets live there)."""
    parts = urlsplit(url)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, host, parts.path, "…" if parts.query else "", ""))


def _ext_for(data: bytes) -> str:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[4:8] == b"ftyp":
        return ".mp4"
    return ".bin"


def _decode_base64(text: str) -> bytes | None:
    if text.startswith("data:") and ";base64," in text[:100]:
        text = text.split(",", 1)[1]
    elif len(text) < 64 or len(text) % 4 or not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", text):
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


class OutputSaver:
    """Walks a job output, saves every file in it, returns a printable summary."""

    def __init__(self, out_dir: Path, *, timeout: float, log: Callable[[str], None]):
        self.out_dir = out_dir
        self.session = requests.Session()  # its own: the RunPod key must never reach a storage URL
        self.timeout = timeout
        self.log = log
        self.saved: list[Path] = []

    def _target(self, name: str | None, data_head: bytes) -> Path:
        name = Path(name).name if name else ""
        if not name or name in (".", ".."):
            name = f"output_{len(self.saved) + 1}{_ext_for(data_head)}"
        path, stem, suffix, n = self.out_dir / name, Path(name).stem, Path(name).suffix, 1
        while path.exists() or path in self.saved:
            path, n = self.out_dir / f"{stem}_{n}{suffix}", n + 1
        return path

    def _write(self, path: Path, chunks) -> int:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.incomplete")
        size = 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                    size += len(chunk)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.saved.append(path)
        return size

    def save_bytes(self, name: str | None, data: bytes) -> Path:
        path = self._target(name, data[:16])
        self._write(path, [data])
        self.log(f"saved {path} ({len(data)} bytes)")
        return path

    def download(self, name: str | None, url: str) -> Path:
        shown = redact_url(url)
        try:
            with self.session.get(url, stream=True, timeout=self.timeout) as resp:
                if resp.status_code != 200:
                    raise SubmitError(f"download of {shown} failed: HTTP {resp.status_code}")
                if not name:
                    name = Path(urlsplit(url).path).name or None
                chunks = resp.iter_content(1 << 16)
                first = next(chunks, b"")
                path = self._target(name, first[:16])
                size = self._write(path, itertools.chain([first], chunks))
        except requests.RequestException as err:
            raise SubmitError(f"download of {shown} failed: {type(err).__name__}") from None
        self.log(f"saved {path} ({size} bytes) from {shown}")
        return path

    def walk(self, value: Any, name: str | None = None) -> Any:
        if isinstance(value, dict):
            own_name = next((value[k] for k in _NAME_KEYS if isinstance(value.get(k), str)), None)
            out = {}
            for key, item in value.items():
                if isinstance(item, str) and key in ("url", "signed_url", "uri") and item.startswith(("http://", "https://")):
                    out[key] = redact_url(item)
                    out["saved"] = str(self.download(own_name, item))
                elif isinstance(item, str) and key in _BASE64_KEYS and (data := _decode_base64(item)) is not None:
                    out[key] = f"<{len(data)} bytes>"
                    out["saved"] = str(self.save_bytes(own_name, data))
                else:
                    out[key] = self.walk(item)
            return out
        if isinstance(value, list):
            return [self.walk(v) for v in value]
        if isinstance(value, str) and value.startswith("data:") and (data := _decode_base64(value)) is not None:
            return {"saved": str(self.save_bytes(name, data))}
        if isinstance(value, str) and value.startswith(("http://", "https://")) and urlsplit(value).query:
            return {"url": redact_url(value), "saved": str(self.download(name, value))}
        return value
