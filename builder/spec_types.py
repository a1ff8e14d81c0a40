"""The version spec's data model: a validated ``versions/<id>.json`` as frozen dataclasses.

``builder.spec.validate`` builds these; everything downstream (resolve, plan, realize, the worker)
reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_PINNED = ("torch", "torchvision", "torchaudio")


@dataclass(frozen=True)
class RepoSpec:
    """A git repository at a ref or commit (commit wins when both are given)."""

    repo: str
    ref: str | None = None
    commit: str | None = None

    @property
    def wanted(self) -> str:
        return self.commit or self.ref or "HEAD"


@dataclass(frozen=True)
class NodeSpec(RepoSpec):
    name: str = ""
    run_install_py: bool = False


@dataclass(frozen=True)
class Options:
    offline: bool = False
    skip_models: bool = False
    pin_installed: tuple[str, ...] = DEFAULT_PINNED
    pip_index_url: str | None = None
    pip_extra_index_urls: tuple[str, ...] = ()
    nvme_cache_node: bool = True  # install the worker's OnDemand node into custom_nodes/nvme_cache
    snapshot_object_info: bool = False  # boot ComfyUI once at realize and keep its /object_info
    warm_models: tuple[str, ...] = ()  # read by the worker: copied onto NVMe at start
    limits: dict = field(default_factory=dict)  # read by the worker: {LIMIT_KEY: int}, the stricter value wins
    comfy_api_nodes: bool = False  # read by the worker: load ComfyUI's API nodes (off by default: faster boot)


@dataclass(frozen=True)
class Spec:
    version_id: str
    comfy: RepoSpec
    custom_nodes: tuple[NodeSpec, ...]
    models: tuple[dict, ...]
    python_packages: tuple[str, ...]
    pip_constraints: tuple[str, ...]
    env: dict = field(default_factory=dict)
    options: Options = Options()
    digest: str = ""
    raw: dict = field(default_factory=dict, repr=False, compare=False)
