"""Tokens go only to their own hosts and never into logs, errors or records."""

import json
import logging
import os

from tests.models.helpers import realize, sha

DATA = os.urandom(200_000)
CIV = "civ-secret-token-123"
HFT = "hf_secret_token_456"


def test_civitai_token_sent_only_to_civitai_and_dropped_on_redirect(server, make_cfg, models_dir, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = make_cfg(CIVITAI_TOKEN=CIV, CIVITAI_ENDPOINT=server.url, MODEL_DOWNLOAD_CONNECTIONS=1)
    # civitai answers with a redirect to a signed URL on another host (localhost vs 127.0.0.1)
    server.add("/cdn/file.safetensors", DATA)
    server.add("/api/download/models/777", require_token=CIV,
               redirect=server.alt_url + "/cdn/file.safetensors?sig=signed-secret")
    [rec] = realize([{"source": "civitai:777", "name": "lora.safetensors", "target_subdir": "loras"}], cfg, models_dir)
    assert rec["status"] == "fetched" and rec["sha256"] == sha(DATA)
    [api] = server.seen("/api/download/models/777")
    assert api.headers["authorization"] == f"Bearer {CIV}"
    [cdn] = server.seen("/cdn/file.safetensors")
    assert "authorization" not in cdn.headers and cdn.headers["host"].startswith("localhost")
    text = caplog.text + json.dumps(rec)
    assert CIV not in text and "signed-secret" not in text


def test_civitai_token_not_sent_to_other_hosts(server, make_cfg, models_dir):
    cfg = make_cfg(CIVITAI_TOKEN=CIV, MODEL_DOWNLOAD_CONNECTIONS=1)  # endpoint stays civitai.com
    url = server.add("/plain.bin", DATA)
    [rec] = realize([{"source": url}], cfg, models_dir)
    assert rec["status"] == "fetched"
    assert all("authorization" not in s.headers for s in server.requests)


def test_civitai_missing_and_wrong_token_name_the_variable(server, make_cfg, models_dir):
    server.add("/api/download/models/5", DATA, require_token=CIV)
    entry = {"source": "civitai:5", "name": "m.safetensors"}
    [rec] = realize([entry], make_cfg(CIVITAI_ENDPOINT=server.url), models_dir)
    assert rec["status"] == "missing" and "HTTP 401" in rec["error"] and "CIVITAI_TOKEN is not set" in rec["error"]
    [rec] = realize([entry], make_cfg(CIVITAI_ENDPOINT=server.url, CIVITAI_TOKEN="wrong"), models_dir)
    assert "HTTP 403" in rec["error"] and "CIVITAI_TOKEN was rejected" in rec["error"]
    assert "wrong" not in rec["error"].replace("wrong?", "")


def test_403_elsewhere_says_no_token_is_sent(server, cfg, models_dir):
    url = server.add("/private.bin", DATA, status=403)
    [rec] = realize([{"source": url}], cfg, models_dir)
    assert "no token is sent to this host" in rec["error"]


def test_hf_token_not_sent_to_cdn_and_not_logged(hub, make_cfg, models_dir, caplog):
    caplog.set_level(logging.DEBUG)
    data = os.urandom(50_000)
    hub.add_repo("org/private", {"m.safetensors": data}, token=HFT)
    cfg = make_cfg(HF_ENDPOINT=hub.url, HF_TOKEN=HFT)
    [rec] = realize([{"source": "hf://org/private/m.safetensors"}], cfg, models_dir)
    assert rec["status"] == "fetched"
    resolve = [s for s in hub.requests if "/resolve/" in s.path]
    cdn = [s for s in hub.requests if s.path.startswith("/cdn/")]
    assert resolve and all(s.headers.get("authorization") == f"Bearer {HFT}" for s in resolve)
    assert cdn and all("authorization" not in s.headers for s in cdn)
    assert HFT not in caplog.text and "secret-signature" not in caplog.text


def test_parallel_pieces_after_a_cross_host_redirect_carry_no_token(server, make_cfg, models_dir, monkeypatch):
    import builder.models.http as http

    monkeypatch.setattr(http, "PIECE", 64 * 1024)
    cfg = make_cfg(CIVITAI_TOKEN=CIV, CIVITAI_ENDPOINT=server.url, MODEL_DOWNLOAD_CONNECTIONS=3)
    server.add("/cdn/big.safetensors", DATA)
    server.add("/api/download/models/8", require_token=CIV,
               redirect=server.alt_url + "/cdn/big.safetensors?sig=signed-secret")
    [rec] = realize([{"source": "civitai:8", "name": "big.safetensors"}], cfg, models_dir, parallel_min=100_000)
    assert rec["status"] == "fetched" and rec["sha256"] == sha(DATA)
    cdn = server.seen("/cdn/big.safetensors")
    assert len(cdn) >= 3 and all("authorization" not in s.headers for s in cdn)
