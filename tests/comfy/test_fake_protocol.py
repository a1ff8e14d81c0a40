"""The fake ComfyUI against the transcripts recorded from a real server (tests/data/protocol)."""

from __future__ import annotations

import json
import struct
import time
import uuid

import pytest
import requests

from tests.comfy.wsrec import Recorder, summary_of, transcript
from tests.fakes.comfyui.pngfile import decode_png


def _post(fake, body, path="/prompt"):
    return requests.post(fake.url + path, json=body, timeout=10)


def _run(fake, workflow, *, cid=None, flags=False):
    cid = cid or uuid.uuid4().hex
    rec = Recorder(fake.url, cid, feature_flags=flags)
    if flags:
        rec.wait_for(lambda f: f.get("type") == "feature_flags")
    r = _post(fake, {"prompt": workflow, "client_id": cid})
    assert r.status_code == 200, r.text
    pid = r.json()["prompt_id"]
    rec.wait_done(pid)
    rec.close()
    return rec, pid


def _strip_tb(obj):
    if isinstance(obj, dict):
        return {k: _strip_tb(v) for k, v in obj.items() if k != "traceback"}
    if isinstance(obj, list):
        return [_strip_tb(v) for v in obj]
    return obj


@pytest.mark.parametrize("name", ["01_success_basic", "03_success_chain", "04_success_batch2"])
def test_message_order_matches_transcript(fake, name):
    t = transcript(name)
    rec, pid = _run(fake, t["workflow"])
    assert rec.types() == summary_of(t)
    hist = requests.get(f"{fake.url}/history/{pid}", timeout=5).json()[pid]
    recorded = next(e["response"]["body_json"] for e in t["events"] if e["kind"] == "http"
                    and e["request"]["path"].startswith("/history/") and e["response"].get("body_json"))
    rec_entry = next(iter(recorded.values()))
    assert list(hist) == list(rec_entry)  # prompt, outputs, status, meta
    assert hist["prompt"][2:] == [t["workflow"], {"client_id": hist["prompt"][3]["client_id"]},
                                  rec_entry["prompt"][4]]
    assert [m[0] for m in hist["status"]["messages"]] == [m[0] for m in rec_entry["status"]["messages"]]
    assert {k: [dict(i, filename="") for i in v["images"]] for k, v in hist["outputs"].items()} == \
        {k: [dict(i, filename="") for i in v["images"]] for k, v in rec_entry["outputs"].items()}
    assert hist["meta"] == rec_entry["meta"]


def test_success_output_names_and_png(fake):
    t = transcript("01_success_basic")
    rec, pid = _run(fake, t["workflow"])
    executed = rec.wait_for(lambda f: f["type"] == "executed")
    assert executed["data"]["output"] == {"images": [
        {"filename": "capture_basic_00001_.png", "subfolder": "", "type": "output"}]}
    r = requests.get(f"{fake.url}/view", params={"filename": "capture_basic_00001_.png",
                                                 "subfolder": "", "type": "output"}, timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    assert r.headers["Content-Disposition"] == 'filename="capture_basic_00001_.png"'
    img = decode_png(r.content)
    assert (img.width, img.height) == (64, 64) and img.data[:3] == bytes([0xFF, 0x80, 0x00])
    assert b"tEXtprompt" in r.content


def test_view_errors_and_unknown_history(fake):
    _run(fake, transcript("01_success_basic")["workflow"])
    cases = {
        "/view?filename=does_not_exist.png&subfolder=&type=output": 404,
        "/view?filename=../x.png&type=output": 400,
        "/view?filename=capture_basic_00001_.png&type=bogus": 400,
        "/view?filename=capture_basic_00001_.png&subfolder=../..&type=output": 403,
        "/api/view?filename=capture_basic_00001_.png&type=output": 200,
    }
    for path, status in cases.items():
        r = requests.get(fake.url + path, timeout=5)
        assert r.status_code == status, path
        if status != 200:
            assert r.content == b""
    assert requests.get(fake.url + "/history/00000000-0000-0000-0000-000000000000", timeout=5).json() == {}


def test_cached_resubmit_replays_old_filenames(fake):
    t = transcript("02_success_cached_resubmit")
    wf1, wf2 = t["workflows"].values() if isinstance(t["workflows"], dict) else t["workflows"]
    cid = uuid.uuid4().hex
    rec = Recorder(fake.url, cid)
    pids = []
    for wf in (t["workflow"] if "workflow" in t else wf1, wf1, wf2):
        pid = _post(fake, {"prompt": wf, "client_id": cid}).json()["prompt_id"]
        rec.wait_done(pid)
        pids.append(pid)
    rec.close()
    types = rec.types()
    first_end = types.index("executing(None)") + 1
    assert types[first_end:] == summary_of(t)[1:]  # without the connect status
    replay = [f for f in rec.frames if f["type"] == "executed" and f["data"]["prompt_id"] == pids[1]][0]
    assert replay["data"]["output"]["images"][0]["filename"].endswith("_00001_.png")
    ps = [f for f in rec.frames if f["type"] == "progress_state" and f["data"]["prompt_id"] == pids[1]]
    assert ps[-1]["data"]["nodes"]["2"]["value"] == 1 and isinstance(ps[-1]["data"]["nodes"]["2"]["value"], int)
    hist = requests.get(f"{fake.url}/history/{pids[1]}", timeout=5).json()[pids[1]]
    assert hist["status"]["messages"][1][1]["nodes"] == ["1", "2"]


def test_binary_preview_frames_legacy_and_feature_flags(fake):
    t = transcript("05_websocket_binary_images")
    rec, _ = _run(fake, t["workflow"])
    assert rec.types() == summary_of(t, "ws_legacy")
    frame = [f for f in rec.frames if f["type"] == "__binary__"][0]["raw"]
    assert struct.unpack(">II", frame[:8]) == (1, 2) and frame[8:16] == b"\x89PNG\r\n\x1a\n"
    rec2, pid = _run(fake, t["workflow"], flags=True)
    # the second run has node 1 cached, exactly like the recording
    assert rec2.types() == summary_of(t, "ws_flags")
    raw = [f for f in rec2.frames if f["type"] == "__binary__"][0]["raw"]
    n = struct.unpack(">I", raw[4:8])[0]
    meta = json.loads(raw[8:8 + n])
    assert meta == {"node_id": "2", "prompt_id": pid, "display_node_id": "2", "parent_node_id": None,
                    "real_node_id": "2", "image_type": "image/png"}
    assert raw[8 + n:8 + n + 8] == b"\x89PNG\r\n\x1a\n"


def test_upscale_model_and_runtime_errors(fake_with_models):
    fake = fake_with_models
    t6 = transcript("06_model_upscale")
    rec, pid = _run(fake, t6["workflow"])
    assert rec.types() == summary_of(t6)
    out = requests.get(f"{fake.url}/history/{pid}", timeout=5).json()[pid]["outputs"]["4"]["images"][0]
    png = requests.get(f"{fake.url}/view", params=out, timeout=5).content
    assert (decode_png(png).width, decode_png(png).height) == (64, 64)
    assert requests.get(f"{fake.url}/models/upscale_models", timeout=5).json() == \
        ["broken_not_a_model.safetensors", "tiny_compact_2x.safetensors"]
    t9 = transcript("09_runtime_error_bad_model")
    rec, pid = _run(fake, t9["workflow"])
    err = rec.wait_for(lambda f: f["type"] == "execution_error")["data"]
    assert err["exception_type"] == "spandrel.__helpers.registry.UnsupportedModelError"
    assert err["node_id"] == "2" and err["node_type"] == "UpscaleModelLoader"
    hist = requests.get(f"{fake.url}/history/{pid}", timeout=5).json()[pid]
    assert hist["outputs"] == {} and hist["status"]["status_str"] == "error"
    assert hist["status"]["completed"] is False and hist["status"]["messages"][-1][0] == "execution_error"


def test_loadimage_not_an_image(fake):
    t = transcript("08_runtime_error_loadimage")
    r = requests.post(fake.url + "/upload/image", files={"image": ("not_an_image.png", b"this is not a png")},
                      data={"overwrite": "true"}, timeout=5)
    assert r.json() == {"name": "not_an_image.png", "subfolder": "", "type": "input"}
    rec, _ = _run(fake, t["workflow"])
    assert rec.types() == summary_of(t)
    err = rec.wait_for(lambda f: f["type"] == "execution_error")["data"]
    assert err["exception_type"] == "PIL.UnidentifiedImageError"
    assert err["exception_message"].startswith("cannot identify image file")


def test_validation_errors_match_transcript(fake):
    t = transcript("07_validation_errors")
    posts = [e for e in t["events"] if e["kind"] == "http" and e["request"]["path"] == "/prompt"]
    assert len(posts) == len(t["cases"])
    for (case, wf), event in zip(t["cases"].items(), posts):
        r = _post(fake, {"prompt": wf, "client_id": "x"})
        assert r.status_code == t["statuses"][case], case
        body = r.json()
        if r.status_code == 400:
            assert _strip_tb(body) == _strip_tb(event["response"]["body_json"]), case
        else:
            assert body["node_errors"] == event["response"]["body_json"]["node_errors"], case


def test_missing_upscale_model_is_a_runtime_error(fake):
    wf = transcript("07_validation_errors")["cases"]["missing_upscale_model_file"]
    rec, pid = _run(fake, wf)
    err = rec.wait_for(lambda f: f["type"] == "execution_error")["data"]
    assert err["exception_type"] == "FileNotFoundError"
    assert err["exception_message"] == "Model in folder 'upscale_models' with filename 'nope.safetensors' not found.\n"


def test_partial_validity_runs_good_outputs_only(fake):
    wf = transcript("07_validation_errors")["cases"]["one_good_one_bad_output"]
    cid = uuid.uuid4().hex
    rec = Recorder(fake.url, cid)
    r = _post(fake, {"prompt": wf, "client_id": cid})
    assert r.status_code == 200 and set(r.json()["node_errors"]) == {"3"}
    pid = r.json()["prompt_id"]
    rec.wait_done(pid)
    rec.close()
    hist = requests.get(f"{fake.url}/history/{pid}", timeout=5).json()[pid]
    assert hist["prompt"][4] == ["2"] and list(hist["outputs"]) == ["2"]


def test_malformed_bodies_match_transcript(fake):
    t = transcript("14_malformed_bodies")
    for e in t["events"]:
        if e["kind"] != "http":
            continue
        req, resp = e["request"], e["response"]
        headers = req.get("headers") or {}
        if "body_json" in req:
            data = json.dumps(req["body_json"]).encode()
        elif req.get("body_raw") is not None:
            data = req["body_raw"].encode()
        else:
            data = None
        r = requests.request(req["method"], fake.url + req["path"], data=data, headers=headers, timeout=5)
        assert r.status_code == resp["status"], (req, r.text)
        if resp.get("body_text"):
            assert r.text == resp["body_text"] and r.headers["Content-Type"].startswith("text/plain")
        elif resp.get("body_json") is not None:
            assert _strip_tb(r.json()) == _strip_tb(resp["body_json"])
        else:
            assert r.content == b""


def test_misc_endpoints(fake):
    get = lambda p: requests.get(fake.url + p, timeout=5)  # noqa: E731
    assert get("/queue").json() == {"queue_running": [], "queue_pending": []}
    assert get("/api/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    stats = get("/system_stats").json()
    assert set(stats) == {"system", "devices"} and stats["devices"][0]["name"] == "cpu"
    assert set(stats["system"]) == set(transcript("00_startup")["events"][0]["response"]["body_json"]["system"])
    assert requests.post(fake.url + "/free", json={"unload_models": True, "free_memory": True}).status_code == 200
    assert get("/object_info/NoSuchNodeClass").json() == {}
    assert get("/object_info/CheckpointLoaderSimple").json()["CheckpointLoaderSimple"]["input"]["required"][
        "ckpt_name"][0] == []
    assert get("/models").json()[:3] == ["checkpoints", "configs", "loras"]
    assert get("/models/nope").status_code == 404
    assert get("/embeddings").json() == []
    assert get("/features").json() == {"supports_preview_metadata": True, "max_upload_size": 104857600}
    assert len(get("/object_info").json()) == 478


def test_upload_semantics(fake):
    up = lambda data, **fields: requests.post(  # noqa: E731
        fake.url + "/upload/image", files={"image": ("capture_upload.png", data)}, data=fields, timeout=5)
    assert up(b"A").json()["name"] == "capture_upload.png"
    assert up(b"A").json()["name"] == "capture_upload.png"
    assert up(b"B").json()["name"] == "capture_upload (1).png"
    assert up(b"C", overwrite="true").json()["name"] == "capture_upload.png"
    assert (fake.input_dir / "capture_upload.png").read_bytes() == b"C"
    r = requests.post(fake.url + "/upload/image", files={"image": ("u.png", b"U")},
                      data={"subfolder": "capture_sub", "type": "input"}, timeout=5)
    assert r.json() == {"name": "u.png", "subfolder": "capture_sub", "type": "input"}
    r = requests.post(fake.url + "/upload/image", files={"notimage": ("a.png", b"x")}, timeout=5)
    assert r.status_code == 400 and r.content == b""
    combo = requests.get(fake.url + "/object_info/LoadImage", timeout=5).json()["LoadImage"]
    assert combo["input"]["required"]["image"][0] == ["capture_upload (1).png", "capture_upload.png"]


def test_queue_mistake_origin_and_prompt_options(fake):
    wf = transcript("01_success_basic")["workflow"]
    for path in ("/api/queue", "/queue"):
        r = _post(fake, {"prompt": wf, "client_id": "x"}, path)
        assert r.status_code == 200 and r.content == b""
    time.sleep(0.2)
    assert requests.get(fake.url + "/history", timeout=5).json() == {}
    r = requests.post(fake.url + "/prompt", json={"prompt": wf}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and r.content == b""
    r = _post(fake, {"prompt": wf, "prompt_id": "my-own-prompt-id-123", "extra_data": {"note": "x"},
                     "front": True}, "/api/prompt")
    assert r.json()["prompt_id"] == "my-own-prompt-id-123" and r.json()["number"] <= 0
    assert _post(fake, {"prompt": wf, "number": 7.5}).json()["number"] == 7.5
    deadline = time.monotonic() + 5
    while not requests.get(fake.url + "/history/my-own-prompt-id-123", timeout=5).json():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    entry = requests.get(fake.url + "/history/my-own-prompt-id-123", timeout=5).json()["my-own-prompt-id-123"]
    assert entry["prompt"][3] == {"note": "x"}
    assert requests.post(fake.url + "/history", json={"delete": ["my-own-prompt-id-123"]}).content == b""
    assert requests.get(fake.url + "/history/my-own-prompt-id-123", timeout=5).json() == {}
    assert len(requests.get(fake.url + "/history?max_items=1", timeout=5).json()) == 1


SLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 1}},
        "10": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 10.0}},
        "11": {"class_type": "ImageBlur", "inputs": {"image": ["10", 0], "blur_radius": 31, "sigma": 10.0}},
        "12": {"class_type": "ImageBlur", "inputs": {"image": ["11", 0], "blur_radius": 31, "sigma": 10.0}},
        "99": {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}}}
FAST = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 2}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fast"}}}


def test_interrupt_and_queue_ops(fake):
    fake.set_faults({"class_delay_s": {"ImageBlur": 0.3}})
    cid = uuid.uuid4().hex
    rec = Recorder(fake.url, cid)
    a = _post(fake, {"prompt": SLOW, "client_id": cid}).json()["prompt_id"]
    b = _post(fake, {"prompt": FAST, "client_id": cid}).json()["prompt_id"]
    c = _post(fake, {"prompt": dict(FAST, **{"1": {"class_type": "EmptyImage", "inputs": {
        "width": 8, "height": 8, "batch_size": 1, "color": 3}}}), "client_id": cid}).json()["prompt_id"]
    rec.wait_for(lambda f: f["type"] == "executing" and f["data"].get("node") == "10")
    q = requests.get(fake.url + "/queue", timeout=5).json()
    assert [i[1] for i in q["queue_running"]] == [a] and [i[1] for i in q["queue_pending"]] == [b, c]
    assert requests.get(fake.url + "/prompt", timeout=5).json() == {"exec_info": {"queue_remaining": 3}}
    assert requests.post(fake.url + "/queue", json={"delete": [c]}).status_code == 200
    requests.post(fake.url + "/interrupt", json={"prompt_id": b})  # not running: no effect
    requests.post(fake.url + "/interrupt", json={"prompt_id": a})
    rec.wait_done(b)
    intr = rec.wait_for(lambda f: f["type"] == "execution_interrupted")["data"]
    assert intr["prompt_id"] == a and intr["node_id"] == "11" and sorted(intr["executed"]) == ["1", "10"]
    types = rec.types()
    i = types.index("execution_interrupted")
    assert types[i - 1] == "executing(11)" and types[i + 1:i + 3] == ["status", "executing(None)"]
    ha = requests.get(f"{fake.url}/history/{a}", timeout=5).json()[a]
    assert ha["outputs"] == {} and ha["status"]["messages"][-1][0] == "execution_interrupted"
    assert requests.get(f"{fake.url}/history/{b}", timeout=5).json()[b]["status"]["status_str"] == "success"
    assert requests.get(f"{fake.url}/history/{c}", timeout=5).json() == {}
    # a global interrupt with malformed JSON
    d = _post(fake, {"prompt": dict(SLOW, **{"1": {"class_type": "EmptyImage", "inputs": {
        "width": 64, "height": 64, "batch_size": 1, "color": 9}}}), "client_id": cid}).json()["prompt_id"]
    rec.wait_for(lambda f: f["type"] == "executing" and f["data"].get("prompt_id") == d
                 and f["data"].get("node") == "10")
    requests.post(fake.url + "/interrupt", data=b"{bad", headers={"Content-Type": "application/json"})
    rec.wait_done(d)
    assert requests.get(f"{fake.url}/history/{d}", timeout=5).json()[d]["status"]["messages"][-1][0] == \
        "execution_interrupted"
    rec.close()


def test_reconnect_same_client_id(fake):
    t = transcript("11_ws_reconnect_same_client_id")
    fake.set_faults({"class_delay_s": {"ImageBlur": 0.4}})  # room for the second socket to connect
    cid = uuid.uuid4().hex
    ws1 = Recorder(fake.url, cid)
    ws1.wait_for(lambda f: f["type"] == "status")
    pid = _post(fake, {"prompt": t["workflow"], "client_id": cid}).json()["prompt_id"]
    ws1.wait_for(lambda f: f["type"] == "executing" and f["data"].get("node") == "10")
    ws2 = Recorder(fake.url, cid)
    ws2.wait_done(pid)
    assert ws2.frames[0]["data"]["sid"] == cid and ws2.frames[1] == {"type": "executing", "data": {"node": "10"}}
    assert ws1.types() == summary_of(t, "ws1") and ws2.types() == summary_of(t, "ws2")
    ws1.close()
    ws2.close()
    # run b: the old socket closed after the new one connected → the new one gets nothing more
    cid = uuid.uuid4().hex
    ws3 = Recorder(fake.url, cid)
    pid = _post(fake, {"prompt": dict(SLOW, **{"1": {"class_type": "EmptyImage", "inputs": {
        "width": 64, "height": 64, "batch_size": 1, "color": 5}}}), "client_id": cid}).json()["prompt_id"]
    ws3.wait_for(lambda f: f["type"] == "executing" and f["data"].get("node") == "10")
    ws4 = Recorder(fake.url, cid)
    ws4.wait_for(lambda f: f["type"] == "executing")
    ws3.close()
    deadline = time.monotonic() + 5
    while not requests.get(f"{fake.url}/history/{pid}", timeout=5).json():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.1)
    assert ws4.types() == ["status", "executing(10)"]
    ws4.close()


def test_client_id_routing(fake):
    obs = Recorder(fake.url, uuid.uuid4().hex)
    anon = Recorder(fake.url)
    anon.wait_for(lambda f: f["type"] == "status")
    assert len(anon.frames[0]["data"]["sid"]) == 32
    p1 = _post(fake, {"prompt": FAST, "client_id": uuid.uuid4().hex}).json()["prompt_id"]
    p2 = _post(fake, {"prompt": dict(FAST, **{"2": {"class_type": "SaveImage", "inputs": {
        "images": ["1", 0], "filename_prefix": "none"}}})}).json()["prompt_id"]
    for p in (p1, p2):
        deadline = time.monotonic() + 5
        while not requests.get(f"{fake.url}/history/{p}", timeout=5).json():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    time.sleep(0.1)
    kinds = set(obs.types())
    assert kinds <= {"status", "progress_state"} and "progress_state" in kinds
    obs.close()
    anon.close()


def test_history_present_after_completion_and_delay_fault(fake):
    cid = uuid.uuid4().hex
    rec = Recorder(fake.url, cid)
    for _ in range(3):
        pid = _post(fake, {"prompt": FAST, "client_id": cid}).json()["prompt_id"]
        rec.wait_done(pid)
        assert pid in requests.get(f"{fake.url}/history/{pid}", timeout=5).json()
    fake.set_faults({"history_delay_s": 0.3})
    pid = _post(fake, {"prompt": dict(FAST, **{"1": {"class_type": "EmptyImage", "inputs": {
        "width": 8, "height": 8, "batch_size": 1, "color": 77}}}), "client_id": cid}).json()["prompt_id"]
    rec.wait_done(pid)
    assert requests.get(f"{fake.url}/history/{pid}", timeout=5).json() == {}
    time.sleep(0.35)
    assert pid in requests.get(f"{fake.url}/history/{pid}", timeout=5).json()
    rec.close()


def test_extra_model_paths_yaml(tmp_path):
    from tests.comfy.conftest import write_safetensors
    from tests.fakes.comfyui.server import FakeComfyServer

    extra = tmp_path / "models_extra"
    write_safetensors(extra / "upscale_models" / "tiny_compact_2x_extra.safetensors", ["body.0.weight"])
    write_safetensors(tmp_path / "comfy" / "models" / "upscale_models" / "tiny_compact_2x.safetensors",
                      ["body.0.weight"])
    yml = tmp_path / "extra_model_paths.yaml"
    yml.write_text(f"capture_extra:\n    base_path: {extra}\n    upscale_models: upscale_models\n")
    with FakeComfyServer(tmp_path / "comfy", extra_model_paths=[yml]) as fake:
        assert requests.get(fake.url + "/models/upscale_models", timeout=5).json() == \
            ["tiny_compact_2x.safetensors", "tiny_compact_2x_extra.safetensors"]
        info = requests.get(fake.url + "/object_info/UpscaleModelLoader", timeout=5).json()
        assert info["UpscaleModelLoader"]["input"]["required"]["model_name"][1]["options"] == \
            ["tiny_compact_2x.safetensors", "tiny_compact_2x_extra.safetensors"]
        wf = transcript("15_extra_model_paths")["workflow"]
        rec, pid = _run(fake, wf)
        assert "execution_success" in rec.types()


def test_model_resolution_follows_yaml_order(tmp_path):
    """A file present in two yaml entries is loaded from the first (the NVMe cache comes first)."""
    from tests.comfy.conftest import write_safetensors
    from tests.fakes.comfyui.server import FakeComfyServer

    cache, volume = tmp_path / "cache", tmp_path / "volume"
    write_safetensors(cache / "upscale_models" / "m.safetensors", ["body.0.weight"])
    write_safetensors(volume / "upscale_models" / "m.safetensors", ["not_a_model"])
    write_safetensors(volume / "upscale_models" / "only_volume.safetensors", ["body.0.weight"])
    yml = tmp_path / "extra_model_paths.yaml"
    yml.write_text(f"cache:\n  base_path: {cache}\n  upscale_models: upscale_models\n"
                   f"volume:\n  base_path: {volume}\n  upscale_models: upscale_models\n")
    wf = transcript("15_extra_model_paths")["workflow"]
    with FakeComfyServer(tmp_path / "comfy", extra_model_paths=[yml]) as fake:
        assert requests.get(fake.url + "/api/models/upscale_models", timeout=5).json() == \
            ["m.safetensors", "only_volume.safetensors"]
        for name in ("m.safetensors", "only_volume.safetensors"):
            rec, _ = _run(fake, dict(wf, **{"2": {"class_type": "UpscaleModelLoader",
                                                  "inputs": {"model_name": name}}}))
            assert "execution_success" in rec.types(), name
    yml.write_text(f"volume:\n  base_path: {volume}\n  upscale_models: upscale_models\n"
                   f"cache:\n  base_path: {cache}\n  upscale_models: upscale_models\n")
    with FakeComfyServer(tmp_path / "comfy2", extra_model_paths=[yml]) as fake:
        rec, _ = _run(fake, dict(wf, **{"2": {"class_type": "UpscaleModelLoader",
                                              "inputs": {"model_name": "m.safetensors"}}}))
        assert "execution_error" in rec.types()


def _wait_history(fake, pid, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not requests.get(f"{fake.url}/history/{pid}", timeout=5).json():
        assert time.monotonic() < deadline, pid
        time.sleep(0.02)


@pytest.mark.parametrize("name", ["09_runtime_error_bad_model", "12_client_id_routing", "16_history_race",
                                  "06_model_upscale"])
def test_replayed_posts_give_the_recorded_frames(fake_with_models, name):
    """Replay the scenario's POST /prompt bodies in order; the first socket sees the recorded frames."""
    t = transcript(name)
    fake = fake_with_models
    first_ws = t["ws_summary"][0].split(":")[0]
    recorded_cid = next(e["url"].split("clientId=")[-1] for e in t["events"]
                        if e["kind"] == "ws_open" and e["ws"] == first_ws)
    cid = uuid.uuid4().hex
    rec = Recorder(fake.url, cid)
    rec.wait_for(lambda f: f["type"] == "status")
    for e in t["events"]:
        if e["kind"] == "http" and e["request"]["method"] == "POST" and e["request"]["path"] == "/prompt":
            body = dict(e["request"]["body_json"])
            if body.get("client_id") == recorded_cid:
                body["client_id"] = cid
            pid = _post(fake, body).json()["prompt_id"]
            _wait_history(fake, pid)
            if body.get("client_id") == cid:
                rec.wait_done(pid)
    time.sleep(0.1)
    rec.close()
    assert rec.types() == summary_of(t, first_ws)
