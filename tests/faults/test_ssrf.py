"""Image URLs to private, loopback and link-local addresses are refused before any connection.

Only loopback servers take part: an HTTPS server on 127.0.0.1 plays a public host
("public.example", via the test resolver and a throwaway CA in SSL_CERT_FILE) that redirects to
private targets; sentinel listeners on 127.0.0.2 and [::1] count every connection they get, and
must get none. Names other than the test's are never resolved.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from rp_handler.errors import InputError
from rp_handler.handler import handle
from rp_handler.inputs import fetch_url, resolve
from rp_handler.job import address_refused, parse_job
from tests.faults.test_bad_input import PNG, PNG_B64
from tests.worker.conftest import make_cfg

NAMES = {"public.example": ["127.0.0.1"], "internal.example": ["10.0.0.5"], "rebind.example": ["127.0.0.2"],
         "metadata.example": ["169.254.169.254"], "mapped.example": ["::ffff:127.0.0.2"]}


def test_resolver(host: str, port: int) -> list[str]:
    """DNS for the test: its own names, and numeric forms (parsed locally by getaddrinfo, no DNS)."""
    if host in NAMES:
        return NAMES[host]
    try:
        socket.inet_aton(host)  # decimal, hex, octal and short IPv4 forms
    except OSError:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise OSError(f"the test resolver does not know {host!r}") from None
    return resolve(host, port)


test_resolver.__test__ = False  # not a test function


class WouldConnect(AssertionError):
    pass


def trust_only_the_public_server(ip) -> str | None:
    """The production policy, except that the stand-in public server (127.0.0.1) is reachable.

    Anything else the production policy would let through stops the test here, before a socket is
    opened: a broken guard fails the test without ever contacting another address.
    """
    if str(ip) == "127.0.0.1":
        return None
    reason = address_refused(ip)
    if reason is None:
        raise WouldConnect(f"the guard would connect to {ip}")
    return reason


class Sentinel:
    """A listener that counts connections (it must never get one)."""

    def __init__(self, host: str, family: int = socket.AF_INET):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _ca(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "public.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [x509.DNSName(n) for n in NAMES] + [x509.DNSName("localhost")]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Public(BaseHTTPRequestHandler):
    def log_message(self, *a) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append(self.path)  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ssrf")
    cert, key = _ca(tmp)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Public)
    httpd.daemon_threads = True
    httpd.seen = []  # type: ignore[attr-defined]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    v4, v6 = Sentinel("127.0.0.2"), Sentinel("::1", socket.AF_INET6)
    yield {"port": httpd.server_address[1], "seen": httpd.seen, "v4": v4, "v6": v6, "ca": cert}
    httpd.shutdown()
    v4.close()
    v6.close()


@pytest.fixture
def trusted(world, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(world["ca"]))  # OpenSSL's trust store for this test only
    return world


def private_targets(w) -> list[str]:
    p4, p6 = w["v4"].port, w["v6"].port
    return [f"https://127.0.0.2:{p4}/x.png", f"https://[::1]:{p6}/x.png", f"https://[::ffff:127.0.0.2]:{p4}/x.png",
            f"https://[::ffff:7f00:2]:{p4}/x.png", f"https://2130706434:{p4}/x.png", f"https://0x7f000002:{p4}/x.png",
            f"https://0177.0.0.2:{p4}/x.png", f"https://127.2:{p4}/x.png", f"https://localhost:{p4}/x.png",
            f"https://LOCALHOST.:{p4}/x.png", f"https://rebind.example:{p4}/x.png",
            f"https://mapped.example:{p4}/x.png", "https://169.254.169.254/latest/meta-data/",
            "https://[fe80::1]/x.png", "https://10.0.0.1/x.png", "https://172.16.0.1/x.png",
            "https://192.168.1.1/x.png", "https://100.64.0.1/x.png", "https://0.0.0.0/x.png",
            "https://[::]/x.png", "https://[fd00::1]/x.png", "https://[64:ff9b::a00:1]/x.png",
            "https://[2002:a00:1::]/x.png", "https://internal.example/x.png", "https://metadata.example/x.png",
            "http://127.0.0.2/x.png", "https://user:pw@127.0.0.2/x.png"]


def _fetch(url: str):
    return fetch_url(url, make_cfg(None), where="images[0].image", resolver=test_resolver,
                     refuse=trust_only_the_public_server, timeout=5)


def test_the_public_stand_in_is_reachable(trusted):
    """Control: the setup does fetch from the allowed server, directly and through a redirect."""
    base = f"https://public.example:{trusted['port']}"
    assert _fetch(f"{base}/ok.png") == PNG
    assert _fetch(f"{base}/redirect?to={base}/ok.png") == PNG


@pytest.mark.parametrize("index", range(27))
def test_private_targets_are_refused_directly_and_after_a_redirect(trusted, index):
    target = private_targets(trusted)[index]
    base = f"https://public.example:{trusted['port']}"
    before = (trusted["v4"].hits, trusted["v6"].hits)
    for url in (target, f"{base}/redirect?to={target}"):
        with pytest.raises(InputError) as exc:
            _fetch(url)
        msg = str(exc.value)
        assert "\n" not in msg and "images[0].image" in msg
        assert any(w in msg for w in ("is loopback", "is private", "is link-local", "is reserved", "is non-public",
                                      "a loopback address", "a private address", "a link-local address",
                                      "a reserved address", "a non-public address", "is local",
                                      "plain http is refused", "credentials are refused")), msg
        assert "cannot fetch" not in msg and "answered HTTP" not in msg, msg
    assert (trusted["v4"].hits, trusted["v6"].hits) == before, "the guard connected before refusing"
    assert any(p.startswith("/redirect") for p in trusted["seen"]), "the redirect hop was never made"


@pytest.mark.parametrize("url", ["https://127.0.0.1/x.png", "https://169.254.169.254/", "https://[::1]/",
                                 "https://[::ffff:169.254.169.254]/", "https://10.1.2.3/", "https://172.16.0.1/",
                                 "https://192.168.0.1/", "https://localhost/x.png", "https://a.localhost/",
                                 "http://example.com/x.png", "https://[fe80::1%25eth0]/"])
def test_job_validation_refuses_literal_private_urls(url):
    with pytest.raises(InputError) as exc:
        parse_job("j", {"workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}},
                        "images": [{"name": "a.png", "image": url}]}, make_cfg(None))
    assert "images[0].image" in str(exc.value)


def test_a_job_with_a_private_url_fails_clearly_through_the_handler(comfy_ctx):
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}}
    res = handle({"id": "ssrf", "input": {"workflow": wf, "images": [
        {"name": "a.png", "image": "https://169.254.169.254/latest/meta-data/iam"}]}}, comfy_ctx)
    assert res["details"]["code"] == "invalid_input" and "link-local" in res["error"], res


def test_base64_images_still_work(comfy_ctx):
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "ok"}}}
    res = handle({"id": "ok", "input": {"workflow": wf, "images": [{"name": "a.png", "image": PNG_B64}]}}, comfy_ctx)
    assert "error" not in res, res
