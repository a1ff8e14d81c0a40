"""Parse a model ``source`` string into a typed source (pure, no I/O).

Accepted forms::

    https://host/path/file.safetensors     http(s), resumable, parallel ranges
    file:///abs/path  or  /abs/path  or  ~/path  or  relative/path
    gs://bucket/object
    hf://org/repo[@revision]/path/in/repo   (also https://huggingface.co/org/repo/resolve/rev/path)
    civitai:<modelVersionId>                (also https://civitai.com/api/download/models/<id>)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit, urlunsplit

from builder.config import BuildConfig
from builder.errors import ModelSpecError


@dataclass(frozen=True)
class HttpSource:
    url: str
    token_env: str = ""  # "CIVITAI_TOKEN" when the URL is on the Civitai host
    kind: str = "http"

    @property
    def default_name(self) -> str | None:
        if self.token_env == "CIVITAI_TOKEN":
            return None  # Civitai download URLs end in an id, not a file name
        name = PurePosixPath(unquote(urlsplit(self.url).path)).name
        return name or None


@dataclass(frozen=True)
class LocalSource:
    path: Path
    kind: str = "local"

    @property
    def default_name(self) -> str | None:
        return self.path.name or None


@dataclass(frozen=True)
class GcsSource:
    bucket: str
    name: str
    kind: str = "gcs"

    @property
    def default_name(self) -> str | None:
        return PurePosixPath(self.name).name or None


@dataclass(frozen=True)
class HfSource:
    repo_id: str
    revision: str
    filename: str
    kind: str = "hf"

    @property
    def default_name(self) -> str | None:
        return PurePosixPath(self.filename).name

    def pinned(self, commit: str) -> str:
        return f"hf://{self.repo_id}@{commit}/{self.filename}"


Source = HttpSource | LocalSource | GcsSource | HfSource

_CIVITAI_ID = re.compile(r"^civitai:(\d+)$")
_HF = re.compile(r"^hf://(?P<org>[^/@]+)/(?P<repo>[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<path>.+)$")


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def redact_url(url: str) -> str:
    """Drop userinfo and query strings (signed URLs carry secrets there)."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def parse_source(text: str, cfg: BuildConfig, *, where: str = "source") -> Source:
    raw = (text or "").strip()
    if not raw:
        raise ModelSpecError(f"{where}: empty model source (use https://, hf://, gs://, civitai:<id> or a path)")
    m = _CIVITAI_ID.match(raw)
    if m:
        return HttpSource(f"{cfg.civitai_endpoint}/api/download/models/{m.group(1)}", token_env="CIVITAI_TOKEN")
    if raw.startswith("civitai:"):
        raise ModelSpecError(f"{where}: {raw!r} is not civitai:<modelVersionId> (digits only)")
    m = _HF.match(raw)
    if m:
        return HfSource(f"{m['org']}/{m['repo']}", m["rev"] or "main", m["path"])
    if raw.startswith("hf://"):
        raise ModelSpecError(f"{where}: {raw!r} is not hf://org/repo[@revision]/path/in/repo")
    scheme = urlsplit(raw).scheme.lower()
    if scheme in ("http", "https"):
        hf = _hf_from_url(raw, cfg)
        if hf:
            return hf
        civitai_hosts = {"civitai.com", "www.civitai.com", host_of(cfg.civitai_endpoint)}
        token_env = "CIVITAI_TOKEN" if host_of(raw) in civitai_hosts else ""
        return HttpSource(raw, token_env=token_env)
    if scheme == "gs":
        parts = urlsplit(raw)
        obj = parts.path.lstrip("/")
        if not parts.netloc or not obj:
            raise ModelSpecError(f"{where}: {raw!r} is not gs://bucket/object")
        return GcsSource(parts.netloc, obj)
    if scheme == "file":
        return LocalSource(Path(unquote(urlsplit(raw).path)))
    if scheme and len(scheme) > 1:
        raise ModelSpecError(
            f"{where}: unsupported source scheme {scheme!r} in {redact_url(raw)!r} "
            "(use https://, hf://, gs://, civitai:<id>, file:// or a path)"
        )
    return LocalSource(Path(raw).expanduser())


def _hf_from_url(url: str, cfg: BuildConfig) -> HfSource | None:
    """``https://huggingface.co/org/repo/resolve/rev/path`` → HfSource (so HF_TOKEN rules apply)."""
    if host_of(url) not in {"huggingface.co", host_of(cfg.hf_endpoint)}:
        return None
    parts = [unquote(p) for p in urlsplit(url).path.strip("/").split("/")]
    if len(parts) >= 5 and parts[2] == "resolve":
        return HfSource(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
    return None


def describe(source: Source) -> str:
    """A label safe for logs and errors."""
    if isinstance(source, HttpSource):
        return redact_url(source.url)
    if isinstance(source, LocalSource):
        return str(source.path)
    if isinstance(source, GcsSource):
        return f"gs://{source.bucket}/{source.name}"
    return f"hf://{source.repo_id}@{source.revision}/{source.filename}"
