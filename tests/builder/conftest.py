"""Fixtures: local bare repos (fake ComfyUI + nodes), a wheels dir, a venv, a config."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.config import BuildConfig

from .fixtures import fake_comfy, make_venv, node_repo, standard_wheels, write_spec


@dataclass
class World:
    tmp: Path
    env: dict
    cfg: BuildConfig
    versions: Path
    wheels: Path
    comfy: object
    node_a: object
    node_b: object
    node_c: object

    def spec(self, vid: str = "demo", nodes: list[dict] | None = None, **extra) -> Path:
        if nodes is None:
            nodes = [{"repo": self.node_a.url, "ref": "v1"}, {"repo": self.node_b.url, "ref": "main"},
                     {"repo": self.node_c.url, "commit": self.node_c.sha("v2")}]
        return write_spec(self.versions, vid, {"repo": self.comfy.url, "ref": "v0.2"}, nodes, **extra)

    def with_env(self, **kv: str) -> "World":
        env = {**self.env, **kv}
        return World(self.tmp, env, BuildConfig.from_env(env, volume_root=self.tmp / "no-volume", container=False),
                     self.versions, self.wheels, self.comfy, self.node_a, self.node_b, self.node_c)


@pytest.fixture(scope="session")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    return {
        "comfy": fake_comfy(root),
        "a": node_repo(root, "node-a", requirements="tinybar==2.0\n"),
        "b": node_repo(root, "node-b", requirements="tinyextra\n"),
        "c": node_repo(root, "node-c"),
        "root": root,
    }


@pytest.fixture(scope="session")
def wheels(tmp_path_factory):
    return standard_wheels(tmp_path_factory.mktemp("wheels"))


@pytest.fixture
def world(tmp_path, repos, wheels) -> World:
    env = {"HOME": str(tmp_path / "home"), "COMFY_CACHE_ROOT": str(tmp_path / "cache"),
           "VERSIONS_DIR": str(tmp_path / "versions"), "COMFY_HOME": str(tmp_path / "target" / "ComfyUI"),
           "PATH": os.environ.get("PATH", "")}
    cfg = BuildConfig.from_env(env, volume_root=tmp_path / "no-volume", container=False)
    return World(tmp_path, env, cfg, tmp_path / "versions", wheels, repos["comfy"], repos["a"], repos["b"], repos["c"])


@pytest.fixture
def venv_python(tmp_path) -> Path:
    return make_venv(tmp_path / "venv")
