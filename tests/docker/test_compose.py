"""docker-compose.yml: a local endpoint that only this machine can reach."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.docker.dockerfile_model import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and doc.get("services"), "docker-compose.yml has no services"
    return doc["services"]


def _host_ip(port) -> str | None:
    """The host address of a compose port entry (short or long syntax); None when unbound."""
    if isinstance(port, dict):
        return port.get("host_ip")
    text = re.sub(r"\$\{[^}]*\}", "VAR", str(port)).split("/")[0]  # ${PORT:-8000} → VAR; drop /tcp
    if text.startswith("["):
        return text[1:text.index("]")]
    parts = text.split(":")
    return parts[0] if len(parts) == 3 else None  # "8000" or "8000:8000": every interface


def test_every_published_port_binds_to_loopback_only(services):
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports", []):
            published += 1
            assert _host_ip(port) == "127.0.0.1", f"{name}: port {port!r} must be published on 127.0.0.1 only"
        assert svc.get("network_mode") != "host", f"{name}: host networking would expose every port"
    assert published, "the endpoint must publish its API port"


def test_host_ip_parser_rejects_wildcards():
    assert _host_ip("8000:8000") is None
    assert _host_ip("8000") is None
    assert _host_ip("0.0.0.0:8000:8000") == "0.0.0.0"
    assert _host_ip("127.0.0.1:${PORT:-8000}:8000") == "127.0.0.1"
    assert _host_ip({"target": 8000, "published": 8000}) is None


def test_worker_serves_the_runpod_api_on_all_container_interfaces(services):
    svc = services["worker"]
    cmd = svc["command"]
    assert isinstance(cmd, list), "exec form: each argument its own item"
    assert "--rp_serve_api" in cmd
    assert cmd[cmd.index("--rp_api_host") + 1] == "0.0.0.0", "inside the container, or Docker cannot forward"
    port = cmd[cmd.index("--rp_api_port") + 1]
    assert any(str(p).endswith(f":{port}") for p in svc["ports"]), "the published port must be the API port"
    assert "entrypoint" not in svc, "the image's entrypoint (the worker) must run"


def test_volume_folder_is_the_network_volume_and_gpus_are_reserved(services):
    svc = services["worker"]
    assert "./volume:/runpod-volume" in svc["volumes"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_version_id_passes_through_only_when_set(services):
    env = services["worker"].get("environment", [])
    if isinstance(env, dict):
        assert env.get("COMFY_VERSION_ID") is None, "an empty default would override a baked image's version"
    else:
        assert "COMFY_VERSION_ID" in env, "pass COMFY_VERSION_ID through from the shell (no value)"
