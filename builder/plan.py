"""Decide what realize must do: a pure function of spec, lock and observed state.

:func:`make_plan` reads nothing and changes nothing; :mod:`builder.realize`
observes the disk, calls it, prints the plan for ``--dry-run`` and otherwise
executes it.  A second realize of the same lock plans nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .bytecode import COMFY, MODE, SITE, node_target
from .spec import NVME_NODE_NAME, Spec

STATE_FILE = ".version-state.json"
SNAPSHOT_RELPATH = Path(".runpod-comfy") / "object_info.json.gz"
# Actions after which ComfyUI may list other node classes: the object_info snapshot is taken again.
CHANGES_OBJECT_INFO = frozenset({"clone", "update", "remove_node", "pip", "install_py", "nvme_node",
                                 "remove_nvme_node"})
EXTRA_PATHS_HEADER = b"# Written by version.py realize"


@dataclass(frozen=True)
class Checkout:
    """What is on disk for one repo (``dirty`` is only probed when the HEAD is wrong)."""

    path: Path
    exists: bool
    is_git: bool
    head: str | None
    dirty: bool | None = None
    mirror_has: bool = False  # the shared cache already holds the wanted commit


@dataclass(frozen=True)
class Observed:
    home: Path
    comfy: Checkout
    nodes: dict[str, Checkout]
    state: dict
    leftovers: tuple[Path, ...] = ()
    stray_nodes: dict[str, Checkout] = field(default_factory=dict)  # realized before, gone from the lock
    pip_digest: str | None = None  # None: inputs unknown until checkouts change
    models_ok: bool = False
    extra_paths_wanted: bytes | None = None  # None: models live inside COMFY_HOME
    extra_paths_current: bytes | None = None
    nvme_node_wanted: str | None = None  # digest of the worker's node to install; None: not installed
    nvme_node_current: str | None = None  # digest of custom_nodes/nvme_cache on disk; None: absent
    snapshot_wanted: str | None = None  # snapshot key (builder.extras.snapshot_key); None: no snapshot
    snapshot_current: str | None = None  # key recorded with the snapshot on disk; None: none there
    python: str = ""  # the target interpreter
    site_digest: str | None = None  # installed distributions in the site dirs the last compile saw; None: unknown


@dataclass(frozen=True)
class Flags:
    offline: bool = False
    force: bool = False
    skip_models: bool = False
    bytecode: bool = False  # plan the .pyc compile (realize turns it on unless --no-bytecode)
    bytecode_mode: str = MODE


@dataclass(frozen=True)
class Action:
    kind: str  # clean, fetch, clone, update, remove_node, pip, record_pip, install_py, nvme_node,
    #            remove_nvme_node, extra_paths, models, object_info, bytecode
    name: str = ""
    repo: str = ""
    sha: str = ""
    path: Path | None = None
    force: bool = False
    detail: str = ""
    targets: tuple[str, ...] = ()  # bytecode: "ComfyUI", "custom_nodes/<name>", "site-packages"

    def describe(self) -> str:
        where = f" → {self.path}" if self.path else ""
        if self.kind in ("clone", "update"):
            return f"{self.kind} {self.name} {self.repo} @ {self.sha[:12]}{where}{' (force)' if self.force else ''}"
        if self.kind == "fetch":
            return f"fetch {self.repo} into the git cache (needs {self.sha[:12]})"
        if self.kind == "bytecode":
            return f"bytecode: compile {', '.join(self.targets)} to .pyc ({self.detail})"
        head = " ".join(part for part in (self.kind, self.name) if part)
        return f"{head}{where}{': ' + self.detail if self.detail else ''}"


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    problems: tuple[str, ...] = ()
    missing_offline: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.actions

    def lines(self) -> list[str]:
        out = [a.describe() for a in self.actions] or ["nothing to do: the target already matches the lock"]
        out += [f"PROBLEM {p}" for p in self.problems]
        out += [f"MISSING (offline) {m}" for m in self.missing_offline]
        return out


def digest(obj: object) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _checkout_actions(name: str, repo: str, sha: str, obs: Checkout, pending: set[str], flags: Flags,
                      actions: list[Action], problems: list[str], missing: list[str]) -> bool:
    """Append what moving ``obs`` to ``sha`` takes; True when the checkout changes."""
    if obs.exists and obs.is_git and obs.head == sha and not (str(obs.path) in pending and obs.dirty):
        return False
    if obs.exists and not obs.is_git:
        problems.append(f"{obs.path} exists but is not a git checkout: move it away or choose another --target")
        return True
    ours = str(obs.path) in pending  # a previous realize was interrupted while updating it
    if obs.exists and obs.dirty and not ours and not flags.force:
        problems.append(f"{obs.path} has local modifications: commit or stash them, or pass --force "
                        "(--force saves them with `git stash`)")
        return True
    if not obs.mirror_has:
        if flags.offline:
            missing.append(f"{name} ({repo} @ {sha[:12]})")
            return True
        actions.append(Action("fetch", name=name, repo=repo, sha=sha))
    if obs.exists:
        actions.append(Action("update", name=name, repo=repo, sha=sha, path=obs.path,
                              force=bool(obs.dirty) and (ours or flags.force)))
    else:
        actions.append(Action("clone", name=name, repo=repo, sha=sha, path=obs.path))
    return True


def bytecode_targets(lock: dict, obs: Observed, flags: Flags, comfy_changed: bool, changed_nodes: set[str],
                     pip_planned: bool) -> tuple[str, ...]:
    """Scopes whose .pyc are missing or stale, judged from what the state file says was compiled."""
    done = (obs.state or {}).get("bytecode") or {}
    same = done.get("python") == obs.python and done.get("mode") == flags.bytecode_mode
    if not same:
        done = {}
    out = []
    if comfy_changed or done.get("comfy") != lock["comfy"]["commit"]:
        out.append(COMFY)
    for node in lock["custom_nodes"]:
        if node["name"] in changed_nodes or done.get("nodes", {}).get(node["name"]) != node["commit"]:
            out.append(node_target(node["name"]))
    if obs.nvme_node_wanted is not None and done.get("nvme_node") != obs.nvme_node_wanted:
        out.append(node_target(NVME_NODE_NAME))  # the worker's OnDemand node, by content digest
    if pip_planned or obs.site_digest is None or obs.site_digest != done.get("packages"):
        out.append(SITE)
    return tuple(out)


def make_plan(spec: Spec, lock: dict, obs: Observed, flags: Flags) -> Plan:
    actions: list[Action] = []
    problems: list[str] = []
    missing: list[str] = []
    state = obs.state or {}
    pending = set(state.get("pending", []))
    for path in obs.leftovers:
        actions.append(Action("clean", name=path.name, path=path, detail="leftover of an interrupted realize"))

    changed = _checkout_actions("ComfyUI", lock["comfy"]["repo"], lock["comfy"]["commit"], obs.comfy, pending,
                                flags, actions, problems, missing)
    changed_nodes: set[str] = set()
    for node in lock["custom_nodes"]:
        if _checkout_actions(node["name"], node["repo"], node["commit"], obs.nodes[node["name"]], pending,
                             flags, actions, problems, missing):
            changed_nodes.add(node["name"])
    for name, stray in sorted(obs.stray_nodes.items()):
        if stray.dirty and not flags.force:
            problems.append(f"{stray.path} is no longer in the spec but has local modifications: "
                            "commit or stash them, or pass --force (it is then renamed to *.disabled)")
        else:
            actions.append(Action("remove_node", name=name, path=stray.path, force=bool(stray.dirty),
                                  detail="no longer in the spec"))

    _nvme_node_actions(spec, obs, flags, actions, problems)
    if changed or changed_nodes or obs.pip_digest is None or obs.pip_digest != state.get("pip_digest"):
        actions.append(Action("pip", detail="ComfyUI + node requirements + python_packages"))
    elif lock.get("pip", {}).get("installed") is None:
        actions.append(Action("record_pip", detail="record installed versions in the lock"))

    install_done = state.get("install_py", {})
    for node in lock["custom_nodes"]:
        if node.get("run_install_py") and install_done.get(node["name"]) != node["commit"]:
            actions.append(Action("install_py", name=node["name"], path=obs.nodes[node["name"]].path))

    if obs.extra_paths_wanted is not None and obs.extra_paths_wanted != obs.extra_paths_current:
        yaml_path = obs.home / "extra_model_paths.yaml"
        if obs.extra_paths_current is not None and not obs.extra_paths_current.startswith(EXTRA_PATHS_HEADER) \
                and not flags.force:
            problems.append(f"{yaml_path} exists and was not written by version.py: merge it by hand "
                            "(or pass --force to replace it)")
        else:
            actions.append(Action("extra_paths", path=yaml_path, detail="models live outside COMFY_HOME"))
    elif obs.extra_paths_wanted is None and (obs.extra_paths_current or b"").startswith(EXTRA_PATHS_HEADER):
        actions.append(Action("clean", name="extra_model_paths.yaml", path=obs.home / "extra_model_paths.yaml",
                              detail="models now live inside COMFY_HOME"))
    if flags.bytecode:
        pip_planned = any(a.kind in ("pip", "install_py") for a in actions)
        targets = bytecode_targets(lock, obs, flags, changed, changed_nodes, pip_planned)
        if targets:
            actions.append(Action("bytecode", targets=targets, detail=flags.bytecode_mode))
    if lock["models"] and not flags.skip_models and not spec.options.skip_models and not obs.models_ok:
        actions.append(Action("models", detail=f"{len(lock['models'])} model(s)"))
    changes_nodes = any(a.kind in CHANGES_OBJECT_INFO for a in actions)
    if obs.snapshot_wanted is not None and (changes_nodes or obs.snapshot_wanted != obs.snapshot_current):
        actions.append(Action("object_info", path=obs.home / SNAPSHOT_RELPATH,
                              detail="boot ComfyUI on CPU once and save GET /object_info"))
    return Plan(tuple(actions), tuple(problems), tuple(missing))


def _nvme_node_actions(spec: Spec, obs: Observed, flags: Flags, actions: list[Action], problems: list[str]) -> None:
    """Install (or, once disabled, remove) the worker's OnDemand node; never overwrite someone else's folder."""
    path = obs.home / "custom_nodes" / NVME_NODE_NAME
    recorded = (obs.state or {}).get("nvme_cache_node")
    if obs.nvme_node_wanted is not None:
        if obs.nvme_node_current == obs.nvme_node_wanted:
            return
        ours = obs.nvme_node_current is None or obs.nvme_node_current == recorded
        if ours or flags.force:
            actions.append(Action("nvme_node", name=NVME_NODE_NAME, path=path, force=not ours,
                                  detail="the worker's OnDemand model-cache node"))
        else:
            problems.append(f"{path} exists and was not installed by version.py: move it away, pass --force "
                            "(it is then renamed to *.disabled), or set options.nvme_cache_node to false")
    elif not spec.options.nvme_cache_node and recorded and obs.nvme_node_current == recorded:
        actions.append(Action("remove_nvme_node", name=NVME_NODE_NAME, path=path,
                              detail="options.nvme_cache_node is false"))
