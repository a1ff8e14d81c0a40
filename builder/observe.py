"""What realize sees before it plans: the target's checkouts, state file, digests and extras.

Reads only (disk and the local git mirror): :func:`observe` returns the :class:`Observed` facts that
``builder.plan.make_plan`` turns into actions, so a second realize of the same lock plans nothing.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from . import bytecode, extra_paths
from .config import BuildConfig
from .extras import NVME_NODE_SOURCE, snapshot_key, tree_digest
from .gitcache import GitCache, is_dirty, is_git_checkout, read_head
from .plan import EXTRA_PATHS_HEADER, NVME_NODE_NAME, SNAPSHOT_RELPATH, STATE_FILE, Checkout, Observed, digest
from .spec import Spec

log = logging.getLogger(__name__)

NODE_TMP_SUFFIX = ".incomplete.disabled"


@dataclass(frozen=True)
class RealizeOptions:
    target: Path | None = None
    offline: bool = False
    wheels_dir: Path | None = None
    dry_run: bool = False
    force: bool = False
    python: Path = Path(sys.executable)
    skip_models: bool = False
    installer: str = "auto"
    jobs: int = 4
    snapshot_object_info: bool = False  # also when the spec sets options.snapshot_object_info
    snapshot_timeout_s: float = 300.0
    bytecode: bool = True  # compile ComfyUI, nodes and site-packages to .pyc (--no-bytecode: off)
    pyc_mode: str = "checked-hash"  # --pyc-mode / PYC_MODE: unchecked-hash for an image, checked-hash elsewhere



def read_state(home: Path) -> dict:
    try:
        data = json.loads((home / STATE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _observe_checkout(path: Path, sha: str, repo: str, cache: GitCache, pending: set[str]) -> Checkout:
    exists = path.exists()
    git = exists and is_git_checkout(path)
    head = read_head(path) if git else None
    dirty = None
    if git and (head != sha or str(path) in pending):
        dirty = is_dirty(path)
    mirror_has = True
    if head != sha:
        mirror_has = cache.has_commit(repo, sha)
    return Checkout(path=path, exists=exists, is_git=git, head=head, dirty=dirty, mirror_has=mirror_has)


def requirement_files(home: Path, lock: dict) -> list[Path]:
    files = [home / "requirements.txt"]
    files += [home / "custom_nodes" / n["name"] / "requirements.txt" for n in lock["custom_nodes"]]
    return [f for f in files if f.is_file()]


def pip_inputs_digest(home: Path, spec: Spec, lock: dict, opts: RealizeOptions) -> str:
    files = {str(f.relative_to(home)): f.read_bytes().decode("utf-8", "replace") for f in requirement_files(home, lock)}
    return digest({"python": str(opts.python), "files": files, "packages": list(spec.python_packages),
                   "constraints": list(spec.pip_constraints), "pins": list(spec.options.pin_installed),
                   "index": [spec.options.pip_index_url, list(spec.options.pip_extra_index_urls)]})


def model_path(rec: dict, home: Path, models_dir: Path) -> Path:
    target = rec["target"]
    if target.startswith("$COMFY_HOME/"):
        return home / target[len("$COMFY_HOME/"):]
    return models_dir / target


def models_digest(lock: dict, models_dir: Path) -> str:
    return digest({"dir": str(models_dir),
                   "models": [[m["source"], m["target"], m.get("sha256"), m.get("size")] for m in lock["models"]]})


def models_present(lock: dict, state: dict, home: Path, models_dir: Path) -> bool:
    if state.get("models_digest") != models_digest(lock, models_dir):
        return False
    for rec in lock["models"]:
        if rec.get("size") is None:
            return False
        try:
            if model_path(rec, home, models_dir).stat().st_size != rec["size"]:
                return False
        except OSError:
            return False
    return True


def extra_model_paths_yaml(models_dir: Path, lock: dict) -> bytes:
    """ComfyUI's extra_model_paths.yaml pointing every model folder at MODELS_DIR."""
    folders = set(extra_paths.MODEL_SUBDIRS)
    for rec in lock["models"]:
        if not rec["target"].startswith("$COMFY_HOME/") and "/" in rec["target"]:
            folders.add(rec["target"].split("/", 1)[0])
    doc = {"runpod_comfy_models": extra_paths.models_dir_group(models_dir, folders, is_default=True)}
    return extra_paths.render(doc, EXTRA_PATHS_HEADER.decode().removeprefix("# ") + ": models live outside COMFY_HOME.")


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def observe(cfg: BuildConfig, spec: Spec, lock: dict, home: Path, opts: RealizeOptions) -> Observed:
    cache = GitCache(cfg.git_cache)
    state = read_state(home)
    pending = set(state.get("pending", []))
    comfy = _observe_checkout(home, lock["comfy"]["commit"], lock["comfy"]["repo"], cache, pending)
    nodes_dir = home / "custom_nodes"
    nodes = {n["name"]: _observe_checkout(nodes_dir / n["name"], n["commit"], n["repo"], cache, pending)
             for n in lock["custom_nodes"]}
    leftovers = sorted(home.parent.glob(f"{home.name}.*.incomplete"))
    if nodes_dir.is_dir():
        leftovers += sorted(nodes_dir.glob(f"*{NODE_TMP_SUFFIX}"))
        leftovers += sorted(p for p in home.glob("*.incomplete") if p.is_file())
    stray = {}
    for name in sorted(set(state.get("nodes", {})) - set(nodes)):
        path = nodes_dir / name
        if path.exists() and is_git_checkout(path):
            stray[name] = Checkout(path=path, exists=True, is_git=True, head=read_head(path), dirty=is_dirty(path))
    all_ok = comfy.head == lock["comfy"]["commit"] and all(
        nodes[n["name"]].head == n["commit"] for n in lock["custom_nodes"])
    leftovers += sorted((home / SNAPSHOT_RELPATH).parent.glob("*.incomplete"))
    models_dir = cfg.models_dir
    wanted = None if _inside(models_dir, home) else extra_model_paths_yaml(models_dir, lock)
    try:
        current = (home / "extra_model_paths.yaml").read_bytes()
    except OSError:
        current = None
    pip_digest = pip_inputs_digest(home, spec, lock, opts) if all_ok else None
    node_wanted = node_current = None
    if spec.options.nvme_cache_node:
        node_wanted = tree_digest(NVME_NODE_SOURCE)
        if node_wanted is None:
            log.warning("%s is missing from this checkout: the OnDemand cache node is not installed", NVME_NODE_SOURCE)
    if spec.options.nvme_cache_node or state.get("nvme_cache_node"):
        node_current = tree_digest(nodes_dir / NVME_NODE_NAME)
    snap_wanted = snap_current = None
    if opts.snapshot_object_info or spec.options.snapshot_object_info:
        snap_wanted = snapshot_key(lock, pip_digest, node_current if spec.options.nvme_cache_node else None)
        if (home / SNAPSHOT_RELPATH).is_file():
            snap_current = state.get("object_info", {}).get("key")
    python = str(opts.python)
    done = state.get("bytecode") or {}
    site_digest = None
    if opts.bytecode and done.get("python") == python and done.get("site_dirs"):
        site_digest = bytecode.packages_digest(done["site_dirs"])
    return Observed(
        python=python, site_digest=site_digest,
        home=home, comfy=comfy, nodes=nodes, state=state, leftovers=tuple(leftovers), stray_nodes=stray,
        pip_digest=pip_digest,
        models_ok=models_present(lock, state, home, models_dir) if lock["models"] else True,
        extra_paths_wanted=wanted, extra_paths_current=current,
        nvme_node_wanted=node_wanted, nvme_node_current=node_current,
        snapshot_wanted=snap_wanted, snapshot_current=snap_current,
    )
