"""Input validation: every bad input gives one clear line naming the field and the fix."""

from __future__ import annotations

import base64

import pytest

from rp_handler.errors import InputError, to_payload
from rp_handler.job import Action, Job, parse_job
from tests.worker.conftest import make_cfg

WF = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
PNG = bytes.fromhex("89504e470d0a1a0a") + b"\0" * 32


def parse(raw, **env):
    return parse_job("job-1", raw, make_cfg(**env))


def refused(raw, **env) -> str:
    with pytest.raises(InputError) as info:
        parse(raw, **env)
    payload = to_payload(info.value)
    assert "\n" not in payload["error"]
    assert payload["details"]["code"] == "invalid_input"
    return payload["error"]


def test_minimal_job_gets_defaults():
    job = parse({"workflow": WF})
    assert isinstance(job, Job)
    assert job.workflow == WF and job.images == ()
    assert job.output.mode == "base64" and job.timeout_s == 600.0


def test_workflow_as_json_string():
    import json
    assert parse({"workflow": json.dumps(WF)}).workflow == WF


@pytest.mark.parametrize("raw", [[1, 2], "text", None, 3])
def test_not_an_object(raw):
    assert "must be a JSON object" in refused(raw)


def test_no_workflow():
    msg = refused({"images": []})
    assert "no 'workflow'" in msg and "API" in msg


def test_ui_format_says_save_api():
    ui = {"last_node_id": 2, "nodes": [{"id": 1, "type": "EmptyImage"}], "links": [], "version": 0.4}
    assert "Save (API)" in refused({"workflow": ui})


def test_integer_beyond_64_bits_is_one_line_not_an_internal_error():
    # found by the handler fuzzer: orjson refuses it inside the POST to ComfyUI
    msg = refused({"workflow": {"3": {"class_type": "KSampler", "inputs": {"seed": 2 ** 70}}}})
    assert "64 bits" in msg and "\n" not in msg


def test_node_without_class_type():
    assert "'7'" in refused({"workflow": {"7": {"inputs": {}}}})


def test_limits():
    big = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 8192, "height": 8192, "batch_size": 1}}}
    assert "LIMIT_MAX_PIXELS" in refused({"workflow": big})
    steps = {"1": {"class_type": "KSampler", "inputs": {"steps": 500}}}
    assert "LIMIT_MAX_STEPS" in refused({"workflow": steps})
    assert parse({"workflow": steps}, LIMIT_MAX_STEPS="1000").workflow == steps


@pytest.mark.parametrize("mode", ["s3", "ftp", "GCSX"])
def test_unknown_output_mode(mode):
    assert "unknown output mode" in refused({"workflow": WF, "output": {"mode": mode}})


def test_output_mode_string_shorthand():
    assert parse({"workflow": WF, "output": "base64"}).output.mode == "base64"


def test_gcs_without_bucket_or_credentials():
    assert "needs a bucket" in refused({"workflow": WF, "output": "gcs"})
    assert "GOOGLE_APPLICATION_CREDENTIALS" in refused({"workflow": WF, "output": "gcs"}, GCS_BUCKET="b")
    job = parse({"workflow": WF}, GCS_BUCKET="b", GOOGLE_APPLICATION_CREDENTIALS="/x.json")
    assert job.output.mode == "gcs" and job.output.bucket == "b" and job.output.prefix == "comfy-outputs"


def test_gcs_prefix_traversal_refused():
    assert "prefix" in refused({"workflow": WF, "output": {"mode": "gcs", "prefix": "../up"}},
                               GCS_BUCKET="b", STORAGE_EMULATOR_HOST="http://127.0.0.1:1")


def test_local_mode_needs_configured_dir(tmp_path):
    assert "OUTPUT_LOCAL_DIR" in refused({"workflow": WF, "output": "local"})
    job = parse({"workflow": WF, "output": "local"}, OUTPUT_LOCAL_DIR=str(tmp_path))
    assert job.output.local_dir == str(tmp_path)


@pytest.mark.parametrize("value", [-1, 0, 1e9, "10", True, float("nan")])
def test_bad_timeouts(value):
    assert "timeout_s" in refused({"workflow": WF, "timeout_s": value})


def test_timeout_within_max():
    assert parse({"workflow": WF, "timeout_s": 30}).timeout_s == 30.0


@pytest.mark.parametrize("name", ["../../x.png", "a/b.png", "..png", ".hidden", "x\\y.png", "", "a\n.png"])
def test_image_names_refused(name):
    assert "name" in refused({"workflow": WF, "images": [{"name": name, "image": base64.b64encode(PNG).decode()}]})


def test_images_base64_and_data_uri():
    b64 = base64.b64encode(PNG).decode()
    job = parse({"workflow": WF, "images": [{"name": "a.png", "image": b64},
                                            {"name": "b.png", "image": f"data:image/png;base64,{b64}"}]})
    assert [i.data for i in job.images] == [PNG, PNG]


def test_invalid_base64():
    assert "not valid base64" in refused({"workflow": WF, "images": [{"name": "a.png", "image": "@@notb64@@"}]})


def test_100mb_base64_refused_before_decoding():
    huge = "A" * (100 * 1024 * 1024)
    msg = refused({"workflow": WF, "images": [{"name": "a.png", "image": huge}]})
    assert "MAX_INPUT_BYTES" in msg and "MB" in msg


def test_duplicate_image_names():
    b64 = base64.b64encode(PNG).decode()
    assert "twice" in refused({"workflow": WF, "images": [{"name": "a.png", "image": b64}] * 2})


@pytest.mark.parametrize("url", ["https://127.0.0.1/x.png", "https://10.1.2.3/x.png",
                                 "https://169.254.169.254/latest/meta-data", "https://[::1]/x.png",
                                 "https://localhost/x.png", "https://192.168.0.5/a.png",
                                 "http://example.com/a.png", "ftp://example.com/a.png",
                                 "https://user:pw@example.com/a.png"])
def test_urls_refused(url):
    refused({"workflow": WF, "images": [{"name": "a.png", "image": url}]})


def test_public_url_accepted_without_fetching():
    job = parse({"workflow": WF, "images": [{"name": "a.png", "image": "https://example.com/a.png"}]})
    assert job.images[0].url == "https://example.com/a.png" and job.images[0].data is None


def test_private_url_allowed_by_config():
    job = parse({"workflow": WF, "images": [{"name": "a.png", "image": "http://127.0.0.1:9/a.png"}]},
                ALLOW_PRIVATE_URLS="true")
    assert job.images[0].url


def test_status_action_and_unknown_action():
    assert parse({"action": "status"}) == Action(id="job-1", name="status")
    assert "unknown action" in refused({"action": "reboot"})


def test_output_format_and_quality():
    job = parse({"workflow": WF})
    assert (job.output.format, job.output.quality) == ("png", 90)
    job = parse({"workflow": WF, "output": {"mode": "base64", "format": "WEBP", "quality": 75}})
    assert (job.output.mode, job.output.format, job.output.quality) == ("base64", "webp", 75)
    assert parse({"workflow": WF, "output": {"format": "jpg"}}).output.format == "jpeg"


@pytest.mark.parametrize("output, words", [
    ({"format": "gif"}, "output.format must be one of png, webp, jpeg, got 'gif'"),
    ({"format": 3}, "output.format must be one of"),
    ({"format": "webp", "quality": 0}, "output.quality must be a whole number from 1 to 100"),
    ({"format": "jpeg", "quality": 101}, "got 101"),
    ({"format": "jpeg", "quality": "high"}, "got 'high'"),
    ({"format": "jpeg", "quality": 80.5}, "got 80.5"),
    ({"format": "jpeg", "quality": True}, "got True"),
])
def test_bad_output_format_or_quality_is_one_line(output, words):
    message = refused({"workflow": WF, "output": output})
    assert words in message and "\n" not in message
