"""Every environment variable the builder reads, read once.

Entrypoints call ``BuildConfig.from_env(os.environ)`` and pass the result down;
tests pass plain dicts.  Defaults follow seed 003:

* ``COMFY_HOME``: ``/runpod-volume/builds/comfy-<id>`` when a network volume is
  mounted (``/runpod-volume`` is a mount point, or ``NETWORK_VOLUME=true`` declares it; a
  folder of that name alone is not one: realize itself creates it in a container), ``/runpod-volume/ComfyUI`` inside a container without one, and
  ``~/comfy-<id>`` on a workstation.
* ``COMFY_CACHE_ROOT``: ``/runpod-volume/cache/runpod-comfy`` on a volume or in a
  container, else ``~/.cache/runpod-comfy``.
* ``MODELS_DIR``: ``<COMFY_CACHE_ROOT>/models``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

VOLUME_ROOT = Path("/runpod-volume")
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    help: str


# The one table of environment variables the builder reads; docs/runpod.md lists each.
BUILD_ENV: tuple[EnvVar, ...] = (
    EnvVar("COMFY_HOME", "see Paths", "Where a version is realized (ComfyUI checkout, custom_nodes, venv)."),
    EnvVar("MODELS_DIR", "<COMFY_CACHE_ROOT>/models", "Models directory ComfyUI reads (checkpoints/, loras/, ...)."),
    EnvVar("COMFY_CACHE_ROOT", "see Paths", "Shared cache: git objects, model blobs, resolved locks."),
    EnvVar("NETWORK_VOLUME", "auto", "auto: /runpod-volume is a network volume when it is a mount point; true/false: declare it."),
    EnvVar("COMFY_OFFLINE", "false", "true: resolve/realize use only local caches, never the network."),
    EnvVar("VERSIONS_DIR", "<repo>/versions", "Where version specs versions/<id>.json live."),
    EnvVar("HF_TOKEN", "", "Hugging Face token, sent only to the Hugging Face host."),
    EnvVar("CIVITAI_TOKEN", "", "Civitai token, sent only to civitai.com."),
    EnvVar("HF_ENDPOINT", "https://huggingface.co", "Hugging Face endpoint (tests point it at a local server)."),
    EnvVar("MODEL_DOWNLOAD_CONNECTIONS", "4", "Parallel ranged connections for large HTTP model downloads."),
    EnvVar("PYC_MODE", "checked-hash", "realize's .pyc mode: unchecked-hash in an image build (sources never change), checked-hash where a checkout can change (a volume, a workstation)."),
    EnvVar("CIVITAI_ENDPOINT", "https://civitai.com", "Civitai endpoint for civitai:<id> sources (tests point it at a local server)."),
)


PYC_MODES = ("checked-hash", "unchecked-hash")


def _pyc_mode(raw: str | None) -> str:
    mode = (raw or "checked-hash").strip().lower()
    if mode not in PYC_MODES:
        raise ValueError(f"PYC_MODE={raw!r} is not one of {', '.join(PYC_MODES)}")
    return mode


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def in_container(root: Path = Path("/")) -> bool:
    return (root / ".dockerenv").exists() or (root / "run/.containerenv").exists()


def is_mount_point(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """True when ``path`` is a mount point (a bind mount of the same filesystem included)."""
    if os.path.ismount(path):
        return True
    try:
        lines = mountinfo.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    # field 5 is the mount point, octal-escaped (\040 for a space)
    points = {ln.split()[4].encode().decode("unicode_escape") for ln in lines if len(ln.split()) > 4}
    return str(path) in points


def volume_declared(env: Mapping[str, str], volume_root: Path) -> bool:
    """NETWORK_VOLUME=true/false declares it; auto (default) asks whether volume_root is a mount point."""
    raw = (env.get("NETWORK_VOLUME") or "auto").strip().lower()
    if raw == "auto":
        return is_mount_point(volume_root)
    if raw in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        return truthy(raw)
    raise ValueError(f"NETWORK_VOLUME={raw!r}: use auto, true or false")


@dataclass(frozen=True)
class BuildConfig:
    """Paths and switches for resolve/realize/verify-models."""

    comfy_home: Path | None  # None: derive per version id (see comfy_home_for)
    cache_root: Path
    models_dir: Path
    offline: bool
    versions_dir: Path
    volume_mounted: bool
    container: bool
    home: Path
    hf_endpoint: str
    download_connections: int
    hf_token: str = field(default="", repr=False)
    civitai_token: str = field(default="", repr=False)
    civitai_endpoint: str = "https://civitai.com"
    pyc_mode: str = "checked-hash"  # PYC_MODE

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        volume_root: Path = VOLUME_ROOT,
        container: bool | None = None,
    ) -> "BuildConfig":
        home = Path(env.get("HOME") or os.path.expanduser("~"))
        volume = volume_declared(env, volume_root)
        in_ctr = in_container() if container is None else container
        if env.get("COMFY_CACHE_ROOT"):
            cache_root = Path(env["COMFY_CACHE_ROOT"]).expanduser()
        elif volume or in_ctr:
            cache_root = volume_root / "cache" / "runpod-comfy"
        else:
            cache_root = home / ".cache" / "runpod-comfy"
        models_dir = Path(env["MODELS_DIR"]).expanduser() if env.get("MODELS_DIR") else cache_root / "models"
        comfy_home = Path(env["COMFY_HOME"]).expanduser() if env.get("COMFY_HOME") else None
        versions_dir = Path(env["VERSIONS_DIR"]).expanduser() if env.get("VERSIONS_DIR") else REPO_ROOT / "versions"
        connections = int(env.get("MODEL_DOWNLOAD_CONNECTIONS") or 4)
        return cls(
            comfy_home=comfy_home,
            cache_root=cache_root,
            models_dir=models_dir,
            offline=truthy(env.get("COMFY_OFFLINE")),
            versions_dir=versions_dir,
            volume_mounted=volume,
            container=in_ctr,
            home=home,
            hf_endpoint=(env.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/"),
            download_connections=max(1, connections),
            hf_token=env.get("HF_TOKEN", ""),
            civitai_token=env.get("CIVITAI_TOKEN", ""),
            civitai_endpoint=(env.get("CIVITAI_ENDPOINT") or "https://civitai.com").rstrip("/"),
            pyc_mode=_pyc_mode(env.get("PYC_MODE")),
        )

    def describe(self) -> str:
        """One line for the start-up log: which case was chosen and where the cache is."""
        case = ("network volume at /runpod-volume" if self.volume_mounted
                else "container without a network volume" if self.container else "plain machine (no container)")
        return f"paths: {case}; cache {self.cache_root}; models {self.models_dir}"

    # --- derived paths -------------------------------------------------------------
    def comfy_home_for(self, version_id: str) -> Path:
        if self.comfy_home is not None:
            return self.comfy_home
        if self.volume_mounted:
            return VOLUME_ROOT / "builds" / f"comfy-{version_id}"
        if self.container:
            return VOLUME_ROOT / "ComfyUI"
        return self.home / f"comfy-{version_id}"

    @property
    def git_cache(self) -> Path:
        return self.cache_root / "git"

    @property
    def store_dir(self) -> Path:
        """Root of the content-addressed model store: ``<store>/models/<algo>/<HH>/<hex>/blob``."""
        return self.cache_root / "store"

    @property
    def resolved_dir(self) -> Path:
        return self.cache_root / "resolved"

    def lock_path(self, version_id: str) -> Path:
        return self.resolved_dir / f"{version_id}.lock.json"

    def spec_path(self, version_id: str) -> Path:
        return self.versions_dir / f"{version_id}.json"
