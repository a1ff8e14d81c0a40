"""Output sinks: base64 limit, local folder, GCS through gcp-storage-emulator with the real client."""

from __future__ import annotations

import base64
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rp_handler.errors import OutputError
from rp_handler.gcs_sink import GcsSink, crc32c_b64
from rp_handler.outputs import (Base64Sink, LocalSink, OutputCollector, OutputFile, OutputText,
                                local_path, output_items)
from tests.worker.conftest import make_cfg

PNG = (Path(__file__).resolve().parents[1] / "data" / "protocol" / "sample_output_saveimage_64x64.png").read_bytes()


def test_output_items_every_kind():
    output = {"images": [{"filename": "a.png", "subfolder": "s", "type": "output"},
                         {"filename": "p.png", "subfolder": "", "type": "temp"}],
              "gifs": [{"filename": "v.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4"}],
              "audio": [{"filename": "a.flac", "subfolder": "", "type": "output"}],
              "text": ["hello"], "animated": [False]}
    items = output_items("9", output)
    kinds = [(i.kind, i.index) for i in items]
    assert kinds == [("images", 0), ("images", 1), ("gifs", 0), ("audio", 0), ("text", 0)]
    assert isinstance(items[-1], OutputText) and items[-1].text == "hello"
    assert items[1].type == "temp" and items[2].mime == "video/mp4"
    assert items[0].object_name == "9_0_a.png"


def test_local_path_stays_inside(tmp_path):
    out, tmp = tmp_path / "o", tmp_path / "t"
    good = OutputFile("1", "images", 0, "a.png", "jobs/x", "output")
    assert local_path(good, output_dir=out, temp_dir=tmp) == (out / "jobs/x/a.png").resolve()
    evil = OutputFile("1", "images", 0, "a.png", "../../etc", "output")
    assert local_path(evil, output_dir=out, temp_dir=tmp) is None
    assert local_path(OutputFile("1", "images", 0, "a", "", "bogus"), output_dir=out, temp_dir=tmp) is None


def test_base64_sink_and_20mb_refusal():
    item = OutputFile("1", "images", 0, "a.png", "", "output")
    sink = Base64Sink(max_result_bytes=1000)
    got = sink.put(item, PNG)
    assert base64.b64decode(got["data"]) == PNG and got["size"] == len(PNG)
    with pytest.raises(OutputError) as info:
        sink.put(item, b"x" * 1000)
    assert "20 MB" in str(info.value) and "gcs" in str(info.value)


def test_local_sink(tmp_path):
    sink = LocalSink(tmp_path, "job-1", "pre")
    got = sink.put(OutputFile("3", "images", 1, "a.png", "", "output"), PNG)
    assert Path(got["path"]) == tmp_path / "pre" / "job-1" / "3_1_a.png"
    assert Path(got["path"]).read_bytes() == PNG


def _gcs_cfg(emulator: str, **env):
    return make_cfg(STORAGE_EMULATOR_HOST=emulator, GCS_RETRY_BASE_SLEEP="0.01", **env).gcs


def test_gcs_upload_object_name_crc_and_overwrite(gcs_bucket, gcs_emulator, tmp_path):
    client, bucket = gcs_bucket
    gcs = _gcs_cfg(gcs_emulator)
    sink = GcsSink(gcs, bucket, "pre/fix", "job-7", client=client)
    item = OutputFile("9", "images", 0, "ComfyUI_00001_.png", "jobs/job-7", "output")
    src = tmp_path / "a.png"
    src.write_bytes(PNG)
    got = sink.put(item, src)
    assert got["object"] == "pre/fix/job-7/9_0_ComfyUI_00001_.png"
    assert got["crc32c"] == crc32c_b64(PNG) and got["size"] == len(PNG)
    blob = client.bucket(bucket).blob(got["object"])
    assert blob.download_as_bytes() == PNG
    # The plain emulator URL (no credentials) downloads the same bytes.
    assert urllib.request.urlopen(got["url"]).read() == PNG
    # A retry of the same job overwrites the same object.
    sink.put(item, b"second")
    assert blob.download_as_bytes() == b"second"


def _fake_service_account(path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "test", "private_key_id": "k1", "private_key": pem,
        "client_email": "worker@test.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token"}))
    return path


def test_gcs_signed_url_has_ttl_and_fetches(gcs_bucket, gcs_emulator, tmp_path):
    client, bucket = gcs_bucket
    creds = _fake_service_account(tmp_path / "sa.json")
    gcs = _gcs_cfg(gcs_emulator, GOOGLE_APPLICATION_CREDENTIALS=str(creds), GCS_SIGNED_URL_TTL="120")
    sink = GcsSink(gcs, bucket, "p", "j", client=client)
    got = sink.put(OutputFile("1", "images", 0, "a.png", "", "output"), PNG)
    assert "X-Goog-Expires=120" in got["url"] and "X-Goog-Signature=" in got["url"]
    assert got["url"].startswith(gcs_emulator)
    assert urllib.request.urlopen(got["url"]).read() == PNG


def test_gcs_public_url(gcs_bucket, gcs_emulator):
    client, bucket = gcs_bucket
    sink = GcsSink(_gcs_cfg(gcs_emulator, GCS_PUBLIC="true"), bucket, "p", "j", client=client)
    got = sink.put(OutputFile("1", "images", 0, "a.png", "", "output"), PNG)
    assert "Signature" not in got["url"] and got["url"].endswith("/p/j/1_0_a.png")


class _FlakyProxy:
    """Forwards to the emulator but answers 503 to the first ``failures`` upload requests."""

    def __init__(self, target: str, failures: int):
        outer = self
        self.failures = failures
        self.upload_attempts = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "POST" and "/upload/" in self.path:
                    outer.upload_attempts += 1
                    if outer.failures > 0:
                        outer.failures -= 1
                        self.send_response(503)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                req = urllib.request.Request(target + self.path, data=body if body else None,
                                             method=self.command, headers=headers)
                try:
                    resp = urllib.request.urlopen(req)
                    status, data, rh = resp.status, resp.read(), resp.headers
                except urllib.error.HTTPError as err:
                    status, data, rh = err.code, err.read(), err.headers
                self.send_response(status)
                for k, v in rh.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_gcs_retries_transient_503(gcs_bucket, gcs_emulator):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    _, bucket = gcs_bucket
    proxy = _FlakyProxy(gcs_emulator, failures=2)
    try:
        client = storage.Client(project="test", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": proxy.url})
        sink = GcsSink(_gcs_cfg(proxy.url, GCS_RETRIES="3"), bucket, "p", "j", client=client)
        got = sink.put(OutputFile("1", "images", 0, "a.png", "", "output"), PNG)
        assert proxy.upload_attempts == 3 and got["crc32c"] == crc32c_b64(PNG)
        proxy.failures = 5
        with pytest.raises(OutputError) as info:
            sink.put(OutputFile("1", "images", 1, "b.png", "", "output"), PNG)
        assert "gs://" in str(info.value) and "\n" not in str(info.value)
    finally:
        proxy.close()


def test_collector_ships_during_job_and_reconciles_history(tmp_path):
    out = tmp_path / "out"
    (out / "s").mkdir(parents=True)
    for n in ("a.png", "b.png"):
        (out / "s" / n).write_bytes(PNG)
    sink = LocalSink(tmp_path / "sink", "j")
    located = []

    def locate(item):
        located.append(item.filename)
        return out / item.subfolder / item.filename

    col = OutputCollector(sink, locate)
    col.add("2", {"images": [{"filename": "a.png", "subfolder": "s", "type": "output"}]})
    col.add("2", {"images": [{"filename": "a.png", "subfolder": "s", "type": "output"}]})  # duplicate: once
    history = {"2": {"images": [{"filename": "a.png", "subfolder": "s", "type": "output"}]},
               "10": {"images": [{"filename": "b.png", "subfolder": "s", "type": "output"}], "text": ["t"]}}
    results = col.finish(history)
    assert sorted(located) == ["a.png", "b.png"]
    assert [(r["node"], r["kind"]) for r in results] == [("2", "images"), ("10", "images"), ("10", "text")]
    assert json.loads(json.dumps(results)) == results


# ----------------------------------------------------------------------------- output formats
def _item(filename: str = "ComfyUI_00001_.png", kind: str = "images") -> OutputFile:
    return OutputFile(node="9", kind=kind, index=0, filename=filename, subfolder="jobs/j", type="output")


def test_png_default_ships_comfyuis_bytes_unchanged():
    from rp_handler.encode import FormatSink

    res = FormatSink(Base64Sink(10**8)).put(_item(), PNG)
    assert base64.b64decode(res["data"]) == PNG and res["format"] == "png" and res["size"] == len(PNG)


@pytest.mark.parametrize("fmt, pil_name, suffix", [("webp", "WEBP", ".webp"), ("jpeg", "JPEG", ".jpg")])
def test_images_are_reencoded_as_asked(tmp_path, fmt, pil_name, suffix):
    import io

    from PIL import Image

    from rp_handler.encode import FormatSink

    src = tmp_path / "ComfyUI_00001_.png"
    src.write_bytes(PNG)
    res = {**_item().describe(), **FormatSink(LocalSink(tmp_path / "out", "job-1"), fmt, 80).put(_item(), src)}
    out = Path(res["path"])
    assert out.name == "9_0_ComfyUI_00001_" + suffix and res["filename"] == "ComfyUI_00001_" + suffix
    assert res["format"] == fmt and res["size"] == out.stat().st_size and res["mime"] == f"image/{fmt}"
    assert res["original"] == {"filename": "ComfyUI_00001_.png", "format": "png", "size": len(PNG)}
    with Image.open(io.BytesIO(out.read_bytes())) as im, Image.open(io.BytesIO(PNG)) as orig:
        assert im.format == pil_name and im.size == orig.size
    assert src.read_bytes() == PNG  # ComfyUI's original is left for the job's cleanup


def test_videos_animations_and_unreadable_files_pass_through():
    import io

    from PIL import Image

    from rp_handler.encode import FormatSink

    sink = FormatSink(Base64Sink(10**8), "jpeg", 80)
    video = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64
    res = sink.put(_item("clip.mp4", kind="gifs"), video)
    assert base64.b64decode(res["data"]) == video and res["format"] == "mp4"
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:])
    res = sink.put(_item("anim.webp"), buf.getvalue())
    assert base64.b64decode(res["data"]) == buf.getvalue() and res["format"] == "webp"
    res = sink.put(_item("broken.png"), b"\x89PNG\r\n\x1a\nnot really")
    assert base64.b64decode(res["data"]) == b"\x89PNG\r\n\x1a\nnot really" and res["format"] == "png"


def test_job_with_webp_output_returns_webp_and_removes_the_original(live_worker):
    import io

    from PIL import Image

    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 255}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fmt"}}}
    res = live_worker.run({"workflow": wf, "output": {"mode": "base64", "format": "webp", "quality": 70}})
    assert "error" not in res, res
    [out] = res["outputs"]
    assert out["format"] == "webp" and out["filename"].endswith(".webp") and out["original"]["format"] == "png"
    data = base64.b64decode(out["data"])
    assert out["size"] == len(data)
    with Image.open(io.BytesIO(data)) as im:
        r, g, b = im.convert("RGB").getpixel((0, 0))
        assert im.format == "WEBP" and im.size == (64, 64) and b > 240 and r < 16 and g < 16  # lossy blue
    output_jobs = live_worker.ctx.dirs.output / "jobs"
    assert not output_jobs.exists() or not any(output_jobs.iterdir())
