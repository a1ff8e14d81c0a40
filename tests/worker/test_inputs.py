"""Input staging: URL fetches against a local HTTP server, SSRF refusals after DNS, per-job folders."""

from __future__ import annotations

import socket

import pytest

from rp_handler.errors import InputError
from rp_handler.inputs import CACHE_BUST_INPUT, cleanup_job, fetch_url, job_subfolder, rewrite_workflow, stage_images
from rp_handler.job import ImageInput
from tests.worker.conftest import make_cfg

PNG = bytes.fromhex("89504e470d0a1a0a") + b"payload" * 10


def test_fetch_from_local_server_when_allowed(httpserver):
    httpserver.expect_request("/img.png").respond_with_data(PNG, content_type="image/png")
    cfg = make_cfg(ALLOW_PRIVATE_URLS="true")
    assert fetch_url(httpserver.url_for("/img.png"), cfg) == PNG


def test_fetch_follows_redirect_and_rechecks(httpserver):
    httpserver.expect_request("/r").respond_with_data("", status=302, headers={"Location": "/img.png"})
    httpserver.expect_request("/img.png").respond_with_data(PNG)
    assert fetch_url(httpserver.url_for("/r"), make_cfg(ALLOW_PRIVATE_URLS="true")) == PNG


def test_fetch_refuses_loopback_without_config(httpserver):
    httpserver.expect_request("/img.png").respond_with_data(PNG)
    with pytest.raises(InputError, match="https"):
        fetch_url(httpserver.url_for("/img.png"), make_cfg())
    with pytest.raises(InputError, match="loopback"):
        fetch_url(f"https://127.0.0.1:{httpserver.port}/img.png", make_cfg())
    assert not httpserver.log  # never connected


def test_name_resolving_to_loopback_is_refused_after_dns():
    host = socket.gethostname()
    try:
        addrs = {i[4][0] for i in socket.getaddrinfo(host, 443)}
    except OSError:
        pytest.skip("hostname does not resolve")
    if not any(a.startswith("127.") or a == "::1" or a.startswith(("10.", "192.168.", "172.")) for a in addrs):
        pytest.skip("hostname resolves to a public address here")
    with pytest.raises(InputError, match="resolves to a (loopback|private) address"):
        fetch_url(f"https://{host}/x.png", make_cfg())


def test_fetch_size_cap(httpserver):
    httpserver.expect_request("/big").respond_with_data(b"x" * 5000)
    with pytest.raises(InputError, match="MAX_INPUT_BYTES"):
        fetch_url(httpserver.url_for("/big"), make_cfg(ALLOW_PRIVATE_URLS="true", MAX_INPUT_BYTES="1000"))


def test_fetch_http_error_is_one_line_without_query(httpserver):
    httpserver.expect_request("/gone").respond_with_data("nope", status=404)
    with pytest.raises(InputError) as info:
        fetch_url(httpserver.url_for("/gone") + "?X-Goog-Signature=secret", make_cfg(ALLOW_PRIVATE_URLS="true"))
    assert "404" in str(info.value) and "secret" not in str(info.value)


def test_stage_rewrite_and_cleanup(tmp_path, httpserver):
    httpserver.expect_request("/u.png").respond_with_data(PNG)
    cfg = make_cfg(ALLOW_PRIVATE_URLS="true")
    inp, out = tmp_path / "input", tmp_path / "output"
    images = [ImageInput(name="a.png", data=b"A"), ImageInput(name="u.png", url=httpserver.url_for("/u.png"))]
    sub = job_subfolder("job/1", "ab12")
    assert "/" not in sub.split("jobs/", 1)[1] and sub.endswith("-ab12")
    mapping = stage_images(images, inp, sub, cfg)
    assert (inp / sub / "a.png").read_bytes() == b"A" and (inp / sub / "u.png").read_bytes() == PNG
    assert not list((inp / sub).glob("*.incomplete"))
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "../../evil/x"}},
          "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    new = rewrite_workflow(wf, mapping, sub)
    assert new["1"]["inputs"]["image"] == f"{sub}/a.png"
    assert new["2"]["inputs"]["filename_prefix"] == f"{sub}/evil/x"
    assert new["3"]["inputs"] == {"images": ["1", 0], CACHE_BUST_INPUT: sub}  # preview: fresh cache key
    assert wf["1"]["inputs"]["image"] == "a.png" and CACHE_BUST_INPUT not in wf["3"]["inputs"]  # input untouched
    (out / sub).mkdir(parents=True)
    (out / sub / "o.png").write_bytes(b"o")
    tmpfile = tmp_path / "temp" / "p.png"
    tmpfile.parent.mkdir()
    tmpfile.write_bytes(b"p")
    cleanup_job(sub, input_dir=inp, output_dir=out, extra_files=[tmpfile])
    assert not (inp / sub).exists() and not (out / sub).exists() and not tmpfile.exists()
    assert inp.exists() and out.exists()


@pytest.fixture
def dripping_server():
    """A server that announces 100 kB and sends one byte every 50 ms (each read is quick)."""
    import http.server
    import threading
    import time

    stop = threading.Event()

    class Drip(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(1200):  # at most 60 s, ends early when the client hangs up
                if stop.is_set():
                    return
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.05)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    stop.set()
    server.shutdown()
    server.server_close()


def test_dripping_url_image_fails_the_job_at_its_deadline(dripping_server, tmp_path):
    """Per-read timeouts never fire on a drip; the job's deadline bounds the whole fetch."""
    from tests.worker.conftest import LiveWorker

    w = LiveWorker(tmp_path, ALLOW_PRIVATE_URLS="true")
    try:
        wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "slow.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "s"}}}
        url = dripping_server + "/slow.png?X-Amz-Signature=secret-token"
        res = w.run({"workflow": wf, "images": [{"name": "slow.png", "image": url}], "timeout_s": 1.5})
        assert "error" in res, res
        assert "did not finish before the job's deadline" in res["error"]
        assert "127.0.0.1" in res["error"] and "secret-token" not in str(res) and "\n" not in res["error"]
    finally:
        w.close()
