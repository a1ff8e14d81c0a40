"""ComfyClient against the fake ComfyUI, one scenario per test."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rp_handler import errors
from rp_handler.comfy import ComfyClient
from rp_handler.events import ExecutionCached, Executed, Executing, ExecutionStart
from tests.comfy.wsrec import Recorder, transcript
from tests.conftest import REPO_ROOT
from tests.fakes.comfyui.pngfile import decode_png
from tests.fakes.comfyui.server import FakeComfyServer

BASIC = transcript("01_success_basic")["workflow"]


def wf_color(color: int, prefix: str = "t") -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1,
                                                          "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


def slow(color: int = 1) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1,
                                                          "color": color}},
            "10": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 3, "sigma": 1.0}},
            "11": {"class_type": "ImageBlur", "inputs": {"image": ["10", 0], "blur_radius": 3, "sigma": 1.0}},
            "99": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "slow"}}}


@pytest.fixture
def client(fake):
    c = ComfyClient(fake.url)
    c.connect()
    yield c
    c.close()


def run(c: ComfyClient, wf: dict, timeout: float = 10, **kw):
    pid = c.submit(wf)
    return c.wait(pid, deadline=time.monotonic() + timeout, **kw)


def test_success_outputs_events_and_view(fake, client):
    seen = []
    res = run(client, BASIC, on_event=seen.append)
    assert res.outputs == {"2": {"images": [{"filename": "capture_basic_00001_.png", "subfolder": "",
                                             "type": "output"}]}}
    assert res.status["status_str"] == "success" and res.status["completed"] is True
    assert seen == res.events and isinstance(res.events[0], ExecutionStart)
    assert isinstance(res.events[-1], Executing) and res.events[-1].node is None
    assert res.started_at is not None and res.finished_at is not None and res.finished_at >= res.started_at
    img = decode_png(client.view("capture_basic_00001_.png", "", "output"))
    assert (img.width, img.height) == (64, 64)
    with pytest.raises(errors.OutputError):
        client.view("missing.png", "", "output")


def test_workflows_only_go_to_prompt_and_one_socket_is_reused(fake, client):
    for color in range(3):
        run(client, wf_color(color))
    posts = [p for m, p in fake.requests if m == "POST"]
    assert posts.count("/prompt") == 3
    assert not {"/queue", "/api/queue"} & set(posts)
    assert [p for m, p in fake.requests if p == "/ws"] == ["/ws"]


def test_cached_resubmit_returns_old_filenames(fake, client):
    first = run(client, BASIC)
    again = run(client, BASIC)
    assert again.outputs == first.outputs
    cached = [e for e in again.events if isinstance(e, ExecutionCached)][0]
    assert set(cached.nodes) == {"1", "2"}
    assert not [e for e in again.events if isinstance(e, Executing) and e.node is not None]
    assert len(list(fake.output_dir.glob("capture_basic_*.png"))) == 1


def test_batch_subfolder_and_preview_temp(fake, client):
    res = run(client, transcript("04_success_batch2")["workflow"])
    imgs = res.outputs["2"]["images"]
    assert [i["subfolder"] for i in imgs] == ["capture", "capture"] and len({i["filename"] for i in imgs}) == 2
    assert all((fake.output_dir / "capture" / i["filename"]).is_file() for i in imgs)
    res = run(client, transcript("03_success_chain")["workflow"])
    assert list(res.outputs) == ["5", "4"]
    temp = res.outputs["5"]["images"][0]
    assert temp["type"] == "temp" and re.match(r"ComfyUI_temp_[a-z]{5}_00001_\.png", temp["filename"])
    assert client.view(temp["filename"], "", "temp")[:8] == b"\x89PNG\r\n\x1a\n"


def test_frames_buffered_for_prompts_not_waited_yet(fake, client):
    a = client.submit(wf_color(10))
    b = client.submit(wf_color(11))
    rb = client.wait(b, deadline=time.monotonic() + 10)
    ra = client.wait(a, deadline=time.monotonic() + 10)
    assert ra.prompt_id == a and rb.prompt_id == b
    assert isinstance(ra.events[0], ExecutionStart) and ra.events[-1].node is None


def test_validation_400_is_structured(fake, client):
    case = transcript("07_validation_errors")["cases"]["missing_required_input"]
    with pytest.raises(errors.PromptRejected) as info:
        client.submit(case)
    err = info.value
    assert err.details["node_errors"]["2"]["class_type"] == "ImageInvert"
    assert err.details["node_errors"]["2"]["errors"][0]["type"] == "required_input_missing"
    assert err.details["error"]["type"] == "prompt_outputs_failed_validation"
    assert "node 2 (ImageInvert): Required input is missing: image" in str(err)
    assert errors.to_payload(err)["details"]["code"] == "prompt_validation"
    with pytest.raises(errors.PromptRejected, match="NoSuchNodeClass does not exist"):
        client.submit(transcript("07_validation_errors")["cases"]["unknown_node_class"])
    with pytest.raises(errors.PromptRejected, match="ckpt_name: 'nope.safetensors' not in"):
        client.submit(transcript("07_validation_errors")["cases"]["missing_model_file"])
    with pytest.raises(errors.PromptRejected, match="HTTP 500"):
        client.submit(["not", "a", "graph"])  # type: ignore[arg-type]
    assert client.system_stats()["devices"][0]["type"] == "cpu"  # nothing broke


def test_partial_validity_runs_good_outputs(fake, client):
    res = run(client, transcript("07_validation_errors")["cases"]["one_good_one_bad_output"])
    assert list(res.outputs) == ["2"] and set(res.node_errors) == {"3"}


def test_runtime_errors_are_typed(fake, client):
    with pytest.raises(errors.ExecutionFailed) as info:
        run(client, transcript("07_validation_errors")["cases"]["missing_upscale_model_file"])
    assert not isinstance(info.value, errors.OutOfMemory)
    d = info.value.details
    assert (d["node_id"], d["node_type"], d["exception_type"]) == ("2", "UpscaleModelLoader", "FileNotFoundError")
    assert d["exception_message"] == "Model in folder 'upscale_models' with filename 'nope.safetensors' not found."
    fake.set_faults({"oom_on_node": "SaveImage"})
    with pytest.raises(errors.OutOfMemory) as info:
        run(client, wf_color(5))
    assert info.value.details["exception_type"] == "torch.OutOfMemoryError"
    assert info.value.retryable and errors.to_payload(info.value)["details"]["code"] == "out_of_memory"
    fake.set_faults({})
    assert run(client, wf_color(6)).status["status_str"] == "success"


def test_upload_then_loadimage_and_bad_image(fake, client):
    png = client.view(run(client, wf_color(0x123456, "src")).outputs["2"]["images"][0]["filename"], "", "output")
    up = client.upload_image("in.png", png)
    assert up == {"name": "in.png", "subfolder": "", "type": "input"}
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
          "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}}}
    out = run(client, wf).outputs["3"]["images"][0]
    assert decode_png(client.view(out["filename"], "", "output")).data[:3] == bytes([0xED, 0xCB, 0xA9])
    client.upload_image("bad.png", b"not an image")
    with pytest.raises(errors.ExecutionFailed, match="UnidentifiedImageError"):
        run(client, dict(wf, **{"1": {"class_type": "LoadImage", "inputs": {"image": "bad.png"}}}))


def test_interrupted_by_someone_else(fake, client):
    fake.set_faults({"class_delay_s": {"ImageBlur": 0.2}})
    pid = client.submit(slow(3))

    def on_event(ev):
        if isinstance(ev, Executing) and ev.node == "10":
            client.interrupt()

    with pytest.raises(errors.Interrupted) as info:
        client.wait(pid, deadline=time.monotonic() + 10, on_event=on_event)
    assert info.value.details["node_id"] == "11"


def test_deadline_interrupts_and_raises_timeout(fake, client):
    fake.set_faults({"hang": True})
    pid = client.submit(wf_color(7))
    with pytest.raises(errors.ComfyTimeout):
        client.wait(pid, deadline=time.monotonic() + 0.5)
    assert ("POST", "/interrupt") in fake.requests
    assert [item[1] for item in client.queue()["queue_running"]] == [pid]  # still stuck in the node
    fake.set_faults({})  # the hang ends; the interrupt stops the prompt at the next node
    res = run(client, wf_color(8))
    assert res.status["status_str"] == "success"
    assert client.history(pid)["status"]["messages"][-1][0] == "execution_interrupted"


def test_ws_dropped_before_completion_reconciles_with_history(fake, client):
    fake.set_faults({"drop_ws_before_completion": True})
    res = run(client, wf_color(20))
    assert res.status["status_str"] == "success" and res.outputs["2"]["images"]
    assert client.reconnects >= 1
    fake.set_faults({})
    assert run(client, wf_color(21)).status["completed"] is True
    assert [p for _, p in fake.requests].count("/ws") >= 2


def test_ws_dropped_after_completion_next_job_works(fake, client):
    fake.set_faults({"drop_ws_after_completion": True})
    first = run(client, wf_color(30))
    fake.set_faults({})
    second = run(client, wf_color(31))
    assert first.status["completed"] and second.status["completed"]
    # the drop may be noticed only after the second POST: then history completes the job
    assert second.from_history or isinstance(second.events[-1], Executing)
    assert second.outputs["2"]["images"][0]["filename"].startswith("t_")


def test_history_race_is_retried(fake, client):
    fake.set_faults({"history_delay_s": 0.3})
    res = run(client, wf_color(40))
    assert res.status["status_str"] == "success" and res.outputs["2"]["images"][0]["filename"].startswith("t_")


def test_orphaned_socket_same_client_id_completes_via_history(fake):
    """Transcript 11 run b: another socket with our clientId opens and closes; ours gets nothing more."""
    fake.set_faults({"class_delay_s": {"ImageBlur": 0.2}})
    with ComfyClient(fake.url, history_poll_s=0.3) as c:
        pid = c.submit(slow(50))

        def on_event(ev):
            if isinstance(ev, Executing) and ev.node == "10":
                intruder = Recorder(fake.url, c.client_id)
                intruder.wait_for(lambda f: f["type"] == "status")
                intruder.close()

        res = c.wait(pid, deadline=time.monotonic() + 10, on_event=on_event)
        assert res.from_history and res.outputs["99"]["images"]
        assert not any(isinstance(e, Executed) for e in res.events)


def test_client_reconnect_closes_old_socket_first(fake):
    """A reconnect by the client itself must keep receiving frames (old socket closed first)."""
    fake.set_faults({"class_delay_s": {"ImageBlur": 0.2}})
    with ComfyClient(fake.url, history_poll_s=30) as c:
        pid = c.submit(slow(60))

        def on_event(ev):
            if isinstance(ev, Executing) and ev.node == "10":
                c.connect()  # what _reconnect does

        res = c.wait(pid, deadline=time.monotonic() + 10, on_event=on_event)
        assert not res.from_history
        assert any(isinstance(e, Executed) and e.node == "99" for e in res.events)


def test_in_thread_death_raises_comfy_died(tmp_path):
    with FakeComfyServer(tmp_path / "c", faults={"die_during_prompt": 1}) as fake:
        with ComfyClient(fake.url) as c:
            pid = c.submit(wf_color(70))
            with pytest.raises(errors.ComfyDied):
                c.wait(pid, deadline=time.monotonic() + 10)


def test_alive_callback_false_raises_comfy_died(fake):
    fake.set_faults({"hang": True})
    with ComfyClient(fake.url, alive=lambda: False) as c:
        pid = c.submit(wf_color(71))
        with pytest.raises(errors.ComfyDied, match="process exited"):
            c.wait(pid, deadline=time.monotonic() + 10)
    fake.set_faults({})


def _start_subprocess_fake(home: Path, faults: str) -> tuple[subprocess.Popen, str]:
    shutil.copytree(REPO_ROOT / "tests" / "fakes" / "comfyui", home,
                    ignore=shutil.ignore_patterns("__pycache__", "input", "output", "temp", "user"))
    env = dict(os.environ, FAKE_COMFY_FAULTS=faults)
    proc = subprocess.Popen([sys.executable, str(home / "main.py"), "--listen", "127.0.0.1", "--port", "0",
                             "--cpu", "--disable-auto-launch", "--some-unknown-flag"],
                            cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        m = re.search(r"To see the GUI go to: (http://127\.0\.0\.1:\d+)", line)
        if m:
            return proc, m.group(1)
        assert time.monotonic() < deadline
    raise AssertionError(f"fake exited: {proc.wait()}")


def test_subprocess_fake_killed_mid_job_raises_comfy_died(tmp_path):
    proc, url = _start_subprocess_fake(tmp_path / "ComfyUI", '{"die_during_prompt": 2}')
    try:
        with ComfyClient(url) as c:
            assert run(c, wf_color(80)).status["completed"]
            assert (tmp_path / "ComfyUI" / "output").is_dir()
            pid = c.submit(wf_color(81))
            with pytest.raises(errors.ComfyDied):
                c.wait(pid, deadline=time.monotonic() + 20)
        assert proc.wait(10) != 0
    finally:
        proc.kill()
        proc.wait()


def test_misc_calls(fake, client):
    res = run(client, wf_color(90))
    assert "EmptyImage" in client.object_info()
    client.free()
    client.delete_history([res.prompt_id])
    assert client.history(res.prompt_id) == {}
    assert client.history(str(uuid.uuid4())) == {}
    client.interrupt()
    assert run(client, wf_color(91)).status["completed"]


def test_rejected_websocket_and_fault_endpoint(fake):
    import requests

    r = requests.post(fake.url + "/__fake__/faults", json={"reject_ws": True}, timeout=5)
    assert r.json() == {"reject_ws": True}
    with pytest.raises(errors.ComfyProtocolError, match="refused the websocket"):
        ComfyClient(fake.url).connect()
    requests.post(fake.url + "/__fake__/faults", json={}, timeout=5)
    with ComfyClient(fake.url) as c:
        assert run(c, wf_color(95)).status["completed"]


def test_unreachable_comfy_raises_comfy_died():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = ComfyClient(f"http://127.0.0.1:{port}")
    with pytest.raises(errors.ComfyDied):
        c.connect()
    with pytest.raises(errors.ComfyDied):
        c.system_stats()


def test_subprocess_boot_delay_and_defaults(tmp_path, monkeypatch):
    home = tmp_path / "ComfyUI"
    monkeypatch.setenv("FAKE_COMFY_BOOT_DELAY_S", "0.2")
    proc, url = _start_subprocess_fake(home, "{}")
    try:
        (home / "models" / "checkpoints").mkdir(parents=True)
        (home / "models" / "checkpoints" / "tiny.safetensors").write_bytes(b"x")
        with ComfyClient(url) as c:
            combo = c.object_info()["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
            assert combo == ["tiny.safetensors"]
            out = run(c, wf_color(96, "sub/x")).outputs["2"]["images"][0]
            assert (home / "output" / "sub" / out["filename"]).is_file()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_comfy_restarted_on_same_port_between_jobs(tmp_path):
    """Stale keep-alive connection and dead socket after a restart: the next job still runs once."""
    with FakeComfyServer(tmp_path / "a") as first:
        c = ComfyClient(first.url)
        c.connect()
        assert run(c, wf_color(100)).status["completed"]
        port = first.port
    with FakeComfyServer(tmp_path / "b", port=port) as second:
        res = run(c, wf_color(101))
        assert res.status["completed"]
        assert [p for m, p in second.requests if m == "POST"] == ["/prompt"]
        c.close()


def test_ignored_interrupt_times_out_and_prompt_still_finishes(fake, client):
    fake.set_faults({"ignore_interrupt": True, "node_delay_s": 0.3, "slow_view_s": 0.01})
    pid = client.submit(wf_color(110))
    with pytest.raises(errors.ComfyTimeout):
        client.wait(pid, deadline=time.monotonic() + 0.1)
    deadline = time.monotonic() + 10
    while not client.history(pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    entry = client.history(pid)
    assert entry["status"]["status_str"] == "success"
    img = entry["outputs"]["2"]["images"][0]
    assert client.view(img["filename"], img["subfolder"], img["type"])[:4] == b"\x89PNG"


def test_error_on_node_fault(fake, client):
    fake.set_faults({"error_on_node": "EmptyImage"})
    with pytest.raises(errors.ExecutionFailed, match=r"node 1 \(EmptyImage\) failed: RuntimeError"):
        run(client, wf_color(111))


def test_submit_never_queues_twice_when_the_connection_dies_during_validation(fake):
    """The POST's connection dies while ComfyUI still validates: the prompt is queued once."""
    fake.set_faults({"drop_prompt_connection_s": 0.5})
    with ComfyClient(fake.url) as c:
        c.system_stats()  # a reused keep-alive connection, as in a worker
        pid = c.submit(wf_color(97))
        res = c.wait(pid, deadline=time.monotonic() + 10)
        assert res.status["completed"]
        time.sleep(0.7)  # a second POST, if any, would have been queued by now
        assert fake.requests.count(("POST", "/prompt")) == 1
        assert fake.comfy.number == 1 and not fake.comfy.pending and fake.comfy.running is None
