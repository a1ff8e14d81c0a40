"""Fixtures for the fault suite: a worker context over an in-process fake ComfyUI."""

from __future__ import annotations

from pathlib import Path

import pytest

from rp_handler.comfy import ComfyClient
from rp_handler.context import WorkerContext
from rp_handler.process import ComfyDirs
from tests.fakes.comfyui.server import FakeComfyServer
from tests.worker.conftest import make_cfg


def connected(url: str) -> ComfyClient:
    client = ComfyClient(url)
    client.connect()
    return client


@pytest.fixture(scope="module")
def fake_comfy(tmp_path_factory):
    with FakeComfyServer(tmp_path_factory.mktemp("fake-comfy")) as fake:
        yield fake


def context_for(fake, root: Path, **env: str) -> WorkerContext:
    cfg = make_cfg(root, **env)
    return WorkerContext(cfg=cfg, dirs=ComfyDirs(fake.input_dir, fake.output_dir, fake.temp_dir),
                         client_factory=connected, base_url=fake.url, version_id="faults")


@pytest.fixture(scope="module")
def comfy_ctx(fake_comfy, tmp_path_factory):
    ctx = context_for(fake_comfy, tmp_path_factory.mktemp("ctx"), OUTPUT_LOCAL_DIR=str(tmp_path_factory.mktemp("local")))
    yield ctx
    ctx.close()
