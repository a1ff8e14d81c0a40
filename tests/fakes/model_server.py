"""A local HTTP file server for model downloads, with fault modes.

Serves registered files with ``Range`` / ``If-Range`` / ``ETag`` / ``Last-Modified``,
HTTP/1.1 keep-alive, and per-file faults::

    status=404|401|403|500     always answer that status
    fail_times=N               answer 500 to the first N requests, then serve
    require_token="t"          401 without ``Authorization: Bearer t``, 403 with another token
    ignore_range=True          answer 200 with the whole body even when asked for a range
    truncate=N                 send only N body bytes (after a full Content-Length), then close;
    truncate_times=K           ... only for the first K responses (default: always)
    lying_length=N             announce N extra bytes in Content-Length, send the real body, close
    redirect="URL"             302 to URL (absolute, or a path on this server)
    rate=B                     at most B bytes/s ("slow")

``/__loop__/a`` ↔ ``/__loop__/b`` redirect to each other forever.  Run it as a
script to serve a directory in its own process (used by bench/models_bench.py)::

    python tests/fakes/model_server.py --root DIR [--port 0]
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class ServedFile:
    data: bytes | None = None
    path: Path | None = None
    etag: str = ""
    last_modified: float = 0.0
    headers: dict = field(default_factory=dict)
    faults: dict = field(default_factory=dict)
    hits: int = 0

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    status: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeModelServer/1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.server.app.dispatch(self, "GET")

    def do_HEAD(self) -> None:
        self.server.app.dispatch(self, "HEAD")


class ModelFileServer:
    """Thread-run server on 127.0.0.1:0; ``with ModelFileServer() as srv: srv.add("/m.bin", data=b"..")``."""

    def __init__(self, root: Path | None = None):
        self.files: dict[str, ServedFile] = {}
        self.requests: list[Seen] = []
        self.root = Path(root) if root else None
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------
    def start(self) -> "ModelFileServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.app = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="model-server",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> "ModelFileServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alt_url(self) -> str:
        """The same server under another host name (a "different host" for auth-stripping tests)."""
        return f"http://localhost:{self.port}"

    # --- content ------------------------------------------------------------------
    def add(self, path: str, data: bytes | None = None, *, file: Path | None = None, **faults) -> str:
        if data is None and file is None:
            data = b""  # a pure redirect/fault route
        etag = '"' + (hashlib.sha256(data).hexdigest()[:16] if data is not None else f"{file.stat().st_ino:x}") + '"'
        self.files[path] = ServedFile(data=data, path=file, etag=etag, last_modified=time.time(), faults=faults)
        return self.url + path

    def seen(self, path: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if urlsplit(r.path).path == path]

    # --- request handling -------------------------------------------------------------
    def lookup(self, path: str) -> ServedFile | None:
        if path in self.files:
            return self.files[path]
        if self.root is not None:
            p = (self.root / path.lstrip("/")).resolve()
            if p.is_file() and self.root.resolve() in p.parents:
                sf = ServedFile(path=p, etag=f'"{p.stat().st_ino:x}-{p.stat().st_mtime_ns:x}"',
                                last_modified=p.stat().st_mtime)
                return sf
        return None

    def dispatch(self, h: _Handler, method: str) -> None:
        seen = Seen(method, h.path, {k.lower(): v for k, v in h.headers.items()})
        with self._lock:
            self.requests.append(seen)
        path = urlsplit(h.path).path
        try:
            if path.startswith("/__loop__/"):
                other = "/__loop__/b" if path.endswith("/a") else "/__loop__/a"
                return self.reply(h, seen, 302, {"Location": other})
            self.route(h, seen, method, path)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    def route(self, h: _Handler, seen: Seen, method: str, path: str) -> None:
        sf = self.lookup(path)
        if sf is None:
            return self.reply(h, seen, 404, body=b"not found")
        self.serve(h, seen, method, sf)

    def reply(self, h: _Handler, seen: Seen, status: int, headers: dict | None = None, body: bytes = b"") -> None:
        seen.status = status
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD" and body:
            h.wfile.write(body)

    def serve(self, h: _Handler, seen: Seen, method: str, sf: ServedFile, extra: dict | None = None) -> None:
        f = sf.faults
        with self._lock:
            sf.hits += 1
            hit = sf.hits
        if f.get("status"):
            return self.reply(h, seen, f["status"], body=b"forced status")
        if hit <= f.get("fail_times", 0):
            return self.reply(h, seen, 500, body=b"transient failure")
        if f.get("require_token"):
            auth = h.headers.get("Authorization", "")
            if not auth:
                return self.reply(h, seen, 401, body=b"token required")
            if auth != f"Bearer {f['require_token']}":
                return self.reply(h, seen, 403, body=b"bad token")
        if f.get("redirect"):
            return self.reply(h, seen, 302, {"Location": f["redirect"]})
        size = sf.size
        start, end, status = 0, size - 1, 200
        headers = {"ETag": sf.etag, "Last-Modified": email.utils.formatdate(sf.last_modified, usegmt=True),
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **sf.headers,
                   **(extra or {})}
        rng = h.headers.get("Range")
        if rng and not f.get("ignore_range"):
            if_range = h.headers.get("If-Range")
            if if_range is None or if_range in (sf.etag, headers["Last-Modified"]):
                m = _RANGE.match(rng.strip())
                if m and (m.group(1) or m.group(2)):
                    if m.group(1):
                        start = int(m.group(1))
                        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                    else:
                        start, end = max(0, size - int(m.group(2))), size - 1
                    if start >= size or start > end:
                        return self.reply(h, seen, 416, {"Content-Range": f"bytes */{size}"})
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        announced = length + int(f.get("lying_length", 0))
        send = length
        truncate = f.get("truncate")
        if truncate is not None and hit <= f.get("truncate_times", 10**9) + f.get("fail_times", 0):
            send = min(length, int(truncate))
        seen.status = status
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(announced))
        h.end_headers()
        if method == "HEAD":
            return
        h.wfile.flush()
        self._send_body(h, sf, start, send, f.get("rate"))
        if send < announced:
            h.close_connection = True
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)

    def _send_body(self, h: _Handler, sf: ServedFile, start: int, count: int, rate: float | None) -> None:
        if count <= 0:
            return
        if rate:
            step = max(1, int(rate / 20))
            src = sf.data if sf.data is not None else sf.path.read_bytes()
            for off in range(start, start + count, step):
                h.wfile.write(src[off : min(off + step, start + count)])
                h.wfile.flush()
                time.sleep(step / rate)
            return
        if sf.data is not None:
            h.wfile.write(memoryview(sf.data)[start : start + count])
            return
        with open(sf.path, "rb") as fh:
            h.connection.sendfile(fh, start, count)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    srv = ModelFileServer(root=args.root)
    srv._httpd = ThreadingHTTPServer(("127.0.0.1", args.port), _Handler)
    srv._httpd.daemon_threads = True
    srv._httpd.app = srv
    srv.requests = _Discard()
    print(f"serving {args.root} at {srv.url}", flush=True)
    try:
        srv._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


class _Discard(list):
    """Request log that keeps nothing (the benchmark server runs for a long time)."""

    def append(self, item) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main())
