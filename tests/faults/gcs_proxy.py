"""A tiny HTTP proxy in front of gcp-storage-emulator that injects GCS faults on uploads.

``fail_next``: statuses answered to the next uploads (e.g. [503, 503]); ``always``: a status answered
to every upload (e.g. 403); ``delay_s``: seconds to stall each upload before forwarding it (every
request with ``delay_all``: a distant GCS). Other requests pass through untouched. Point ``STORAGE_EMULATOR_HOST`` at ``proxy.url``.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _any(self) -> None:
        proxy: GcsFaultProxy = self.server.proxy  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        upload = urlsplit(self.path).path.startswith("/upload/")
        status = proxy.fault_for(upload)
        if status:
            data = json.dumps({"error": {"code": status, "message": f"injected {status}"}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if (upload or proxy.delay_all) and proxy.delay_s:
            time.sleep(proxy.delay_s)
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client that gave up: nothing to report
        pass


class GcsFaultProxy:
    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.fail_next: list[int] = []
        self.always: int | None = None
        self.delay_s = 0.0
        self.delay_all = False
        self.uploads = 0
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> "GcsFaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def set(self, *, fail_next: list[int] | None = None, always: int | None = None, delay_s: float = 0.0,
            delay_all: bool = False) -> None:
        with self._lock:
            self.fail_next = list(fail_next or [])
            self.always, self.delay_s, self.delay_all = always, delay_s, delay_all

    def fault_for(self, upload: bool) -> int | None:
        if not upload:
            return None
        with self._lock:
            self.uploads += 1
            if self.always:
                return self.always
            if self.fail_next:
                return self.fail_next.pop(0)
        return None
