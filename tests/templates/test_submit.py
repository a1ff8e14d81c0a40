"""scripts/submit.py against a stand-in RunPod API (pytest-httpserver) and a real local runpod API."""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import requests

from tests.conftest import PROTOCOL_DIR, REPO_ROOT
from tests.templates.fake_runpod import JOB_ID, FakeRunpod

_spec = importlib.util.spec_from_file_location("submit_cli", REPO_ROOT / "scripts" / "submit.py")
submit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(submit)

KEY = "rpa_TESTKEY_secret"
SIGNATURE = "X-Goog-Signature=0123deadbeefSIGNATURE"
PNG = (PROTOCOL_DIR / "sample_output_saveimage_64x64.png").read_bytes()
PNG2 = PNG[:-12] + b"\x00" * 12  # different bytes, same magic


@pytest.fixture(autouse=True)
def _quiet_test_server_log():
    """The stand-in server's access log (werkzeug) prints signed URLs; it is not the CLI's output, and a
    root handler left by an earlier in-process CLI test would put it into this test's stderr."""
    logger = logging.getLogger("werkzeug")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture
def gcs_object(httpserver):
    """A 'signed URL' on the local server; records whether it got an Authorization header."""
    seen = []

    def handler(request):
        from werkzeug import Response
        seen.append(dict(request.headers))
        if "X-Goog-Signature" not in request.args:
            return Response("missing signature", status=403)
        return Response(PNG2, content_type="image/png")

    httpserver.expect_request("/bucket/comfy-outputs/job/9_0_gcs_00001_.png", method="GET").respond_with_handler(handler)
    url = httpserver.url_for("/bucket/comfy-outputs/job/9_0_gcs_00001_.png") + "?X-Goog-Algorithm=GOOG4-RSA-SHA256&" + SIGNATURE
    return url, seen


def _output(gcs_url):
    return {"images": [{"filename": "ComfyUI_00001_.png", "type": "base64", "data": base64.b64encode(PNG).decode()},
                       {"filename": "gcs_00001_.png", "type": "url", "url": gcs_url}],
            "params": {"seed": 123456789, "image": "job-1/in.png"}, "timings": {"execution_s": 1.2}}


def _run(capsys, argv, env=None):
    rc = submit.main(argv, env={"RUNPOD_API_KEY": KEY} if env is None else env)
    out, err = capsys.readouterr()
    return rc, out, err


def _no_secrets(*texts):
    for text in texts:
        assert KEY not in text and "deadbeef" not in text and "SIGNATURE" not in text


def test_run_then_status_saves_base64_and_signed_url_outputs(httpserver, gcs_object, tmp_path, capsys):
    gcs_url, seen = gcs_object
    rp = FakeRunpod(httpserver, output=_output(gcs_url))
    rc, out, err = _run(capsys, ["--api-base", httpserver.url_for("/v2"), "--endpoint", "ep-test",
                                 "--template", "sd15_txt2img", "--param", "prompt=a cat, at night",
                                 "--param", "seed=-1", "--param", "cfg=6.5", "--param", "steps:=30",
                                 "--out", str(tmp_path / "out"), "--poll", "0.01"])
    assert rc == 0, err
    assert rp.runs == [{"input": {"template": "sd15_txt2img",
                                  "params": {"prompt": "a cat, at night", "seed": -1, "cfg": 6.5, "steps": 30}}}]
    assert set(rp.auth_seen) == {f"Bearer {KEY}"}
    assert [k for k, _ in rp.polls] == ["status"] * 4 and {m for _, m in rp.polls} == {"GET"}
    assert (tmp_path / "out" / "ComfyUI_00001_.png").read_bytes() == PNG
    assert (tmp_path / "out" / "gcs_00001_.png").read_bytes() == PNG2
    assert "Authorization" not in seen[0]  # the RunPod key never goes to storage
    assert not list((tmp_path / "out").glob("*.incomplete"))
    summary = json.loads(out)
    assert summary["status"] == "COMPLETED" and summary["output"]["params"]["seed"] == 123456789
    assert summary["output"]["images"][0]["data"] == f"<{len(PNG)} bytes>"
    assert summary["output"]["images"][1]["url"].endswith("9_0_gcs_00001_.png?…")
    assert "IN_QUEUE" in err and "IN_PROGRESS KSampler 3/20" in err and '"value":20' in err
    _no_secrets(out, err)


def test_stream_mode(httpserver, gcs_object, tmp_path, capsys):
    rp = FakeRunpod(httpserver, output=_output(gcs_object[0]))
    rc, out, err = _run(capsys, ["--api-base", httpserver.url_for("/v2"), "--endpoint", "ep-test", "--stream",
                                 "--template", "cpu_invert", "--out", str(tmp_path), "--poll", "0.01"])
    assert rc == 0, err
    assert [k for k, _ in rp.polls] == ["stream"] * 3
    assert "KSampler 10/20" in err
    # like RunPod's aggregate for streaming handlers: the output is the list of chunks
    chunks = json.loads(out)["output"]
    assert chunks[0] == {"progress": "KSampler 10/20"} and chunks[-1]["params"]["seed"] == 123456789
    assert (tmp_path / "ComfyUI_00001_.png").read_bytes() == PNG
    _no_secrets(out, err)


def test_runsync(httpserver, tmp_path, capsys):
    rp = FakeRunpod(httpserver, output={"images": [{"filename": "a.png", "type": "base64",
                                                    "data": "data:image/png;base64," + base64.b64encode(PNG).decode()}]})
    rc, out, err = _run(capsys, ["--api-base", httpserver.url_for("/v2"), "--endpoint", "ep-test", "--sync",
                                 "--template", "cpu_invert", "--param", "width=32", "--out", str(tmp_path),
                                 "--timeout", "120"])
    assert rc == 0, err
    assert rp.polls == [("runsync", "120000")]
    assert rp.runs[0]["input"]["params"] == {"width": 32}
    assert (tmp_path / "a.png").read_bytes() == PNG


def test_failed_job_exits_1_with_the_error(httpserver, tmp_path, capsys):
    error = json.dumps({"error": "template 'sd15_txt2img': param 'steps'=500 is above the maximum 150",
                        "details": {"code": "invalid_input"}})
    rp = FakeRunpod(httpserver, fail_with=error, statuses=[])
    argv = ["--api-base", httpserver.url_for("/v2"), "--endpoint", "ep-test", "--template", "sd15_txt2img",
            "--param", "steps=500", "--out", str(tmp_path / "o"), "--poll", "0.01"]
    rc, out, err = _run(capsys, argv)  # caught here, with the worker's own manifests: nothing is sent
    assert rc == 2 and rp.runs == [] and out == ""
    assert err == ("error: template 'sd15_txt2img': param 'steps' =500 is above the maximum 150 "
                   "(see workflows/README.md; --no-local-check sends it anyway)\n")
    rc, out, err = _run(capsys, [*argv, "--no-local-check"])  # the endpoint's answer
    assert rc == 1
    result = json.loads(out)
    assert result["status"] == "FAILED" and result["error"]["details"]["code"] == "invalid_input"
    assert "FAILED" in err and not (tmp_path / "o").exists()


def test_wrong_key_is_reported_without_printing_it(httpserver, tmp_path, capsys):
    FakeRunpod(httpserver, output={})
    rc, out, err = _run(capsys, ["--api-base", httpserver.url_for("/v2"), "--endpoint", "ep-test",
                                 "--template", "cpu_invert"], env={"RUNPOD_API_KEY": "rpa_WRONG_deadbeef"})
    assert rc == 3 and "401" in err and "RUNPOD_API_KEY" in err
    assert "rpa_WRONG" not in out + err


def test_argument_errors(httpserver, tmp_path, capsys):
    rc, _, err = _run(capsys, ["--endpoint", "ep", "--template", "cpu_invert"], env={})
    assert rc == 2 and "set RUNPOD_API_KEY" in err
    rc, _, err = _run(capsys, ["--template", "cpu_invert"])
    assert rc == 2 and "--endpoint" in err
    rc, _, err = _run(capsys, ["--url", "http://127.0.0.1:1", "--template", "x", "--param", "novalue"])
    assert rc == 2 and "name=value" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nodes": [], "links": []}))  # a UI-format workflow
    rc, _, err = _run(capsys, ["--url", "http://127.0.0.1:1", "--workflow", str(bad)])
    assert rc == 2 and "API-format" in err
    rc, _, err = _run(capsys, ["--url", "http://127.0.0.1:1", "--template", "cpu_invert", "--image", "a.png=/nope"])
    assert rc == 2 and "cannot read /nope" in err


def test_help_says_what_it_reads_from_the_environment(capsys):
    with pytest.raises(SystemExit):
        submit.build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "RUNPOD_API_KEY" in out and "--no-local-check" in out


def test_unreachable_endpoint(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, _, err = _run(capsys, ["--url", f"http://127.0.0.1:{port}", "--template", "cpu_invert"])
    assert rc == 3 and "ConnectionError" in err


def test_timeout_cancels_the_job(httpserver, tmp_path, capsys):
    rp = FakeRunpod(httpserver, statuses=[{"id": JOB_ID, "status": "IN_QUEUE"}] * 10_000, output={})
    rc, _, err = _run(capsys, ["--api-base", httpserver.url_for("/v2"), "--endpoint", "ep-test",
                               "--template", "cpu_invert", "--timeout", "0.3", "--poll", "0.02"])
    assert rc == 4 and "still IN_QUEUE" in err and "cancelled" in err
    assert rp.cancelled == [JOB_ID]


def test_workflow_file_and_image_upload_against_local_api_shape(httpserver, tmp_path, capsys):
    """--url to a local --rp_serve_api: POST-only /status, no /stream for plain handlers."""
    rp = FakeRunpod(httpserver, api_key=None, local=True, statuses=[],
                    output={"images": [{"filename": "x.png", "type": "base64", "data": base64.b64encode(PNG).decode()}]})
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}
    (tmp_path / "wf.json").write_text(json.dumps(wf))
    (tmp_path / "in.png").write_bytes(PNG2)
    rc, out, err = _run(capsys, ["--url", rp.base, "--stream", "--workflow", str(tmp_path / "wf.json"),
                                 "--image", f"in.png={tmp_path / 'in.png'}", "--out", str(tmp_path / "o"),
                                 "--poll", "0.01"], env={})
    assert rc == 0, err
    sent = rp.runs[0]["input"]
    assert sent["workflow"] == wf
    assert sent["images"] == [{"name": "in.png", "image": base64.b64encode(PNG2).decode()}]
    assert rp.polls == [("stream", "POST"), ("status", "POST")]
    assert "does not stream" in err
    assert (tmp_path / "o" / "x.png").read_bytes() == PNG
    # a second run into the same folder does not overwrite
    rp.status_script = [rp._final()]
    rc, _, err = _run(capsys, ["--url", rp.base, "--workflow", str(tmp_path / "wf.json"),
                               "--out", str(tmp_path / "o"), "--poll", "0.01"], env={})
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x.png", "x_1.png"]


def test_workflow_file_as_request_body(httpserver, tmp_path, capsys):
    rp = FakeRunpod(httpserver, statuses=[], output={"message": "ok"})
    body = {"input": {"template": "cpu_invert", "params": {"color": 5}, "output": "base64"}}
    (tmp_path / "req.json").write_text(json.dumps(body))
    rc, out, err = _run(capsys, ["--api-base", httpserver.url_for("/v2"), "--endpoint", "ep-test",
                                 "--workflow", str(tmp_path / "req.json"), "--out", str(tmp_path / "o"), "--poll", "0.01"])
    assert rc == 0, err
    assert rp.runs == [body] and json.loads(out)["output"] == {"message": "ok"}


def test_parse_param_and_redact():
    assert submit.parse_param("steps=30") == ("steps", 30)
    assert submit.parse_param("cfg=6.5") == ("cfg", 6.5)
    assert submit.parse_param("hires=true") == ("hires", True)
    assert submit.parse_param("prompt=a cat = cute") == ("prompt", "a cat = cute")
    assert submit.parse_param("prompt=42 cats") == ("prompt", "42 cats")
    assert submit.parse_param('prompt:="42"') == ("prompt", "42")
    assert submit.redact_url("https://storage.googleapis.com/b/o.png?X-Goog-Signature=abc#f") == \
        "https://storage.googleapis.com/b/o.png?…"
    assert submit.redact_url("https://user:pw@host:8443/p") == "https://host:8443/p"


HANDLER = textwrap.dedent('''
    import base64, sys
    import runpod
    PNG = open(sys.argv[1], "rb").read()
    def handler(job):
        inp = job["input"]
        if inp.get("template") == "boom":
            return {"error": "unknown template 'boom'"}
        return {"images": [{"filename": "out.png", "type": "base64", "data": base64.b64encode(PNG).decode()}],
                "echo": inp}
    runpod.serverless.start({"handler": handler})
''')


@pytest.mark.slow
def test_against_real_runpod_local_api(tmp_path):
    """The CLI as a subprocess against runpod's own --rp_serve_api server (real response shapes)."""
    (tmp_path / "handler.py").write_text(HANDLER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")} | {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true"}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "handler.py"), str(PROTOCOL_DIR / "sample_output_saveimage_64x64.png"),
                             "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/docs", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, "runpod local API exited"
                assert time.monotonic() < deadline, "runpod local API did not start"
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        cli = [sys.executable, str(REPO_ROOT / "scripts" / "submit.py"), "--url", url, "--out", str(tmp_path / "o"),
               "--poll", "0.05"]
        for extra in ([], ["--sync"], ["--stream"]):
            res = subprocess.run(cli + extra + ["--template", "cpu_invert", "--param", "width=8"],
                                 env=env, capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr
            result = json.loads(res.stdout)
            assert result["status"] == "COMPLETED"
            assert result["output"]["echo"] == {"template": "cpu_invert", "params": {"width": 8}}
        assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["out.png", "out_1.png", "out_2.png"]
        assert (tmp_path / "o" / "out.png").read_bytes() == PNG
        res = subprocess.run(cli + ["--template", "boom"], env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and res.stderr.startswith("error: unknown template 'boom'; available templates: ")
        res = subprocess.run(cli + ["--template", "boom", "--no-local-check"], env=env, capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 1 and "unknown template 'boom'" in res.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_expired_signed_url_is_reported_without_the_signature(httpserver, tmp_path, capsys):
    httpserver.expect_request("/bucket/expired.png").respond_with_data("<Error>ExpiredToken</Error>", status=400)
    url = httpserver.url_for("/bucket/expired.png") + "?X-Goog-Expires=1&" + SIGNATURE
    FakeRunpod(httpserver, statuses=[], output={"images": [{"filename": "e.png", "type": "url", "url": url}]})
    rc, out, err = _run(capsys, ["--api-base", httpserver.url_for("/v2"), "--endpoint", "ep-test",
                                 "--template", "cpu_invert", "--out", str(tmp_path / "o"), "--poll", "0.01"])
    assert rc == 3 and "/bucket/expired.png?… failed: HTTP 400" in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    _no_secrets(out, err)
