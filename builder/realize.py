"""Realize a locked spec into COMFY_HOME: observe → plan (pure) → execute.

Layout: ``COMFY_HOME`` is the ComfyUI checkout itself; custom nodes go to
``COMFY_HOME/custom_nodes/<name>``; ``COMFY_HOME/.version-state.json`` records
what was realized (SHAs, pip inputs digest, models digest) so that a second
realize of the same lock does nothing.  New checkouts are built beside their
target as ``<name>.<random>.incomplete`` (``….incomplete.disabled`` inside
custom_nodes, a suffix ComfyUI never imports) and renamed into place.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import secrets
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import bytecode
from .config import BuildConfig
from .errors import BuildError, LockError, OfflineMissingError, TargetModifiedError
from .extras import NVME_NODE_SOURCE, fetch_object_info, install_tree, snapshot_key, tree_digest, write_snapshot
from .gitcache import GitCache, is_dirty, is_git_checkout, read_head
from .lock import atomic_write, build_lock, check, read_lock, write_lock
from .pip_install import (InstallRequest, closure, constraint_lines, find_installer, install,
                          installed_versions, requirement_roots, run_install_py)
from .plan import EXTRA_PATHS_HEADER, NVME_NODE_NAME, SNAPSHOT_RELPATH, STATE_FILE, Action, Checkout, Flags, Observed, Plan, digest, make_plan
from .resolve import resolve_spec
from .spec import Spec

log = logging.getLogger(__name__)

NODE_TMP_SUFFIX = ".incomplete.disabled"
COMFY_FOLDERS = ("audio_encoders", "checkpoints", "clip", "clip_vision", "configs", "controlnet", "diffusers",
                 "diffusion_models", "embeddings", "gligen", "hypernetworks", "loras", "model_patches",
                 "photomaker", "style_models", "text_encoders", "unet", "upscale_models", "vae", "vae_approx")


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


@dataclass
class RealizeResult:
    home: Path
    lock_path: Path
    plan: Plan
    done: list[str] = field(default_factory=list)
    lock_written: bool = False

    dry_run: bool = False

    def to_dict(self) -> dict:
        return {"home": str(self.home), "lock": str(self.lock_path), "plan": self.plan.lines(),
                "done": self.done, "lock_written": self.lock_written, "dry_run": self.dry_run}


# --- lock --------------------------------------------------------------------------
def ensure_lock(cfg: BuildConfig, spec: Spec, *, offline: bool, write: bool) -> tuple[dict, bool]:
    """The fresh lock for ``spec``: read it, or resolve a missing one. Stale/corrupt → LockError."""
    path = cfg.lock_path(spec.version_id)
    lock = read_lock(path)
    fresh, reason = check(spec, lock)
    if fresh:
        return lock, False
    if lock is not None:
        raise LockError(f"lock {path} is stale ({reason}): run `version.py resolve {spec.version_id}`")
    log.info("no lock for %s yet: resolving", spec.version_id)
    res = resolve_spec(spec, GitCache(cfg.git_cache), offline=offline)
    lock = build_lock(spec, res)
    return lock, (write_lock(path, lock) if write else False)


# --- observe -----------------------------------------------------------------------
def read_state(home: Path) -> dict:
    try:
        data = json.loads((home / STATE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_state(home: Path, state: dict) -> None:
    atomic_write(home / STATE_FILE, (json.dumps(state, sort_keys=True, indent=2) + "\n").encode())


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
    folders = set(COMFY_FOLDERS)
    for rec in lock["models"]:
        if not rec["target"].startswith("$COMFY_HOME/") and "/" in rec["target"]:
            folders.add(rec["target"].split("/", 1)[0])
    lines = [EXTRA_PATHS_HEADER.decode() + ": models live outside COMFY_HOME.", "runpod_comfy_models:",
             f"  base_path: {json.dumps(str(models_dir))}", "  is_default: true"]
    lines += [f"  {name}: {name}" for name in sorted(folders)]
    return ("\n".join(lines) + "\n").encode()


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


# --- execute -----------------------------------------------------------------------
class _Executor:
    def __init__(self, cfg: BuildConfig, spec: Spec, lock: dict, home: Path, opts: RealizeOptions, state: dict):
        self.cfg, self.spec, self.lock, self.home, self.opts = cfg, spec, lock, home, opts
        self.cache = GitCache(cfg.git_cache)
        self.state = dict(state)
        self.state.setdefault("nodes", {})
        self.lock_dirty = False
        self.site_changed = False  # pip or an install.py ran in this realize

    def save(self) -> None:
        if self.home.is_dir():
            write_state(self.home, self.state)

    def _mark(self, path: Path, add: bool) -> None:
        pending = set(self.state.get("pending", []))
        (pending.add if add else pending.discard)(str(path))
        self.state["pending"] = sorted(pending)
        self.save()

    def run(self, action: Action) -> None:
        getattr(self, f"do_{action.kind}")(action)

    def do_clean(self, a: Action) -> None:
        if a.path.is_dir():
            shutil.rmtree(a.path, ignore_errors=True)
        else:
            a.path.unlink(missing_ok=True)

    def do_fetch(self, a: Action) -> None:
        self.cache.fetch(a.repo)
        if not self.cache.has_commit(a.repo, a.sha) and not self.cache.fetch_commit(a.repo, a.sha):
            raise BuildError(f"{a.name}: commit {a.sha} is no longer in {a.repo} "
                             f"(run `version.py resolve {self.spec.version_id}` to pick a new one)")

    def _record(self, a: Action) -> None:
        if a.path == self.home:
            self.state["comfy"] = a.sha
        else:
            self.state["nodes"][a.name] = a.sha

    def do_clone(self, a: Action) -> None:
        suffix = NODE_TMP_SUFFIX if a.path != self.home else ".incomplete"
        self.cache.checkout_new(a.repo, a.sha, a.path, tmp_suffix=suffix)
        self._record(a)
        self.save()

    def do_update(self, a: Action) -> None:
        self._mark(a.path, True)
        self.cache.update(a.repo, a.sha, a.path, force=a.force)
        self._record(a)
        self._mark(a.path, False)

    def do_remove_node(self, a: Action) -> None:
        if a.force:
            dest = a.path.with_name(f"{a.path.name}.{secrets.token_hex(3)}.disabled")
            os.replace(a.path, dest)
            log.warning("%s is no longer in the spec; kept your modified copy as %s", a.path.name, dest)
        else:
            shutil.rmtree(a.path)
        self.state["nodes"].pop(a.name, None)
        self.state.get("install_py", {}).pop(a.name, None)
        self.save()

    def do_pip(self, a: Action) -> None:
        spec, opts = self.spec, self.opts
        if self.state.get("pip_digest") == pip_inputs_digest(self.home, spec, self.lock, opts):
            log.info("requirements unchanged since the last install: pip step skipped")
            if self.lock["pip"].get("installed") is None:
                self.do_record_pip(a)
            return
        pinned = installed_versions(opts.python, list(spec.options.pin_installed))
        locked = self.lock["pip"].get("installed") or {}
        req = InstallRequest(
            python=opts.python, requirement_files=tuple(requirement_files(self.home, self.lock)),
            packages=spec.python_packages,
            constraints=tuple(constraint_lines(list(spec.pip_constraints), pinned, locked)),
            wheels_dir=opts.wheels_dir, offline=opts.offline, index_url=spec.options.pip_index_url,
            extra_index_urls=spec.options.pip_extra_index_urls, pinned=tuple(sorted(pinned)))
        self.site_changed = True
        install(find_installer(opts.installer), req)
        self.state["pip_digest"] = pip_inputs_digest(self.home, spec, self.lock, opts)
        self.save()
        self.do_record_pip(a)

    def do_record_pip(self, a: Action) -> None:
        roots = requirement_roots(requirement_files(self.home, self.lock), list(self.spec.python_packages))
        versions = closure(self.opts.python, roots)
        if versions != self.lock["pip"].get("installed"):
            self.lock["pip"]["installed"] = versions
            self.lock_dirty = True

    def do_install_py(self, a: Action) -> None:
        self.site_changed = True
        run_install_py(self.opts.python, a.path)
        self.state.setdefault("install_py", {})[a.name] = next(
            n["commit"] for n in self.lock["custom_nodes"] if n["name"] == a.name)
        self.save()

    def do_nvme_node(self, a: Action) -> None:
        if a.force and a.path.exists():  # a folder of that name we did not install: kept aside, never deleted
            dest = a.path.with_name(f"{a.path.name}.{secrets.token_hex(3)}.disabled")
            os.replace(a.path, dest)
            log.warning("%s was not installed by version.py; kept it as %s", a.path, dest)
        self.state["nvme_cache_node"] = install_tree(NVME_NODE_SOURCE, a.path)
        self.save()

    def do_remove_nvme_node(self, a: Action) -> None:
        shutil.rmtree(a.path, ignore_errors=True)
        self.state.pop("nvme_cache_node", None)
        self.save()

    def do_object_info(self, a: Action) -> None:
        info = fetch_object_info(self.opts.python, self.home, timeout_s=self.opts.snapshot_timeout_s)
        write_snapshot(a.path, info)
        node = tree_digest(self.home / "custom_nodes" / NVME_NODE_NAME) if self.spec.options.nvme_cache_node else None
        key = snapshot_key(self.lock, pip_inputs_digest(self.home, self.spec, self.lock, self.opts), node)
        self.state["object_info"] = {"key": key, "classes": len(info)}
        self.save()

    def do_extra_paths(self, a: Action) -> None:
        atomic_write(a.path, extra_model_paths_yaml(self.cfg.models_dir, self.lock))

    def do_bytecode(self, a: Action) -> None:
        python = str(self.opts.python)
        done = dict(self.state.get("bytecode") or {})
        if done.get("python") != python or done.get("mode") != a.detail:
            done = {"python": python, "mode": a.detail}
        targets = list(a.targets)
        if (bytecode.SITE in targets and not self.site_changed and done.get("site_dirs")
                and bytecode.packages_digest(done["site_dirs"]) == done.get("packages")):
            log.info("installed packages unchanged since the last compile: site-packages not compiled again")
            targets.remove(bytecode.SITE)
        facts = bytecode.compile_targets(self.opts.python, self.home, targets, mode=a.detail)
        nodes = {n["name"]: n["commit"] for n in self.lock["custom_nodes"]}
        compiled = {name: sha for name, sha in (done.get("nodes") or {}).items() if name in nodes}
        for target in targets:
            if target == bytecode.COMFY:
                done["comfy"] = self.lock["comfy"]["commit"]
            elif target == bytecode.SITE:
                done["site_dirs"], done["packages"] = facts["site_dirs"], facts["packages"]
            elif target == bytecode.node_target(NVME_NODE_NAME) and NVME_NODE_NAME not in nodes:
                done["nvme_node"] = tree_digest(self.home / "custom_nodes" / NVME_NODE_NAME)
            else:
                name = target.split("/", 1)[1]
                compiled[name] = nodes[name]
        done["nodes"] = compiled
        self.state["bytecode"] = done
        self.save()

    def do_models(self, a: Action) -> None:
        try:
            from . import models  # the models area owns this package; imported only when needed
        except ImportError:
            raise BuildError("this spec has models but builder.models is missing from this checkout "
                             "(pass --skip-models, or install the models package)") from None

        entries = []
        for spec_entry, rec in zip(self.spec.models, self.lock["models"]):
            entry = dict(spec_entry)
            for key in ("sha256", "size", "resolved_source"):
                if rec.get(key) is not None:
                    entry[key] = rec[key]
            entries.append(entry)
        offline = self.opts.offline or self.cfg.offline or self.spec.options.offline
        extra = {}
        if "comfy_home" in inspect.signature(models.realize_models).parameters:
            extra["comfy_home"] = self.home  # for $COMFY_HOME in target_path when --target differs
        results = models.realize_models(entries, cfg=self.cfg, models_dir=self.cfg.models_dir, offline=offline,
                                        overwrite=self.opts.force, jobs=self.opts.jobs, **extra)
        if len(results) == len(self.lock["models"]):
            pairs = list(zip(self.lock["models"], results))
        else:
            by_source = {r.get("source"): r for r in results}
            pairs = [(rec, by_source.get(rec["source"], {})) for rec in self.lock["models"]]
        for rec, got in pairs:
            for key in ("sha256", "size"):
                if got.get(key) is not None and rec.get(key) != got[key]:
                    rec[key] = got[key]
                    self.lock_dirty = True
            resolved = got.get("resolved_source")
            if isinstance(resolved, str) and "://" in resolved and rec.get("resolved_source") != resolved:
                rec["resolved_source"] = resolved
                self.lock_dirty = True
        self.state["models_digest"] = models_digest(self.lock, self.cfg.models_dir)
        self.save()


def _offline(cfg: BuildConfig, spec: Spec, opts: RealizeOptions) -> bool:
    return opts.offline or cfg.offline or spec.options.offline


def realize(cfg: BuildConfig, spec: Spec, opts: RealizeOptions) -> RealizeResult:
    """Bring the target to the lock of ``spec``; a no-op when it already matches."""
    offline = _offline(cfg, spec, opts)
    opts = replace(opts, offline=offline)
    lock, lock_written = ensure_lock(cfg, spec, offline=offline, write=not opts.dry_run)
    home = (opts.target or cfg.comfy_home_for(spec.version_id)).expanduser().absolute()
    flags = Flags(offline=offline, force=opts.force, skip_models=opts.skip_models, bytecode=opts.bytecode,
                  bytecode_mode=opts.pyc_mode)
    plan = make_plan(spec, lock, observe(cfg, spec, lock, home, opts), flags)
    result = RealizeResult(home=home, lock_path=cfg.lock_path(spec.version_id), plan=plan, lock_written=lock_written,
                           dry_run=opts.dry_run)
    if opts.dry_run:
        return result
    if plan.problems:
        raise TargetModifiedError(plan.problems[0] + (f" (and {len(plan.problems) - 1} more)" if len(plan.problems) > 1 else ""))
    if plan.missing_offline:
        raise OfflineMissingError(list(plan.missing_offline))
    if plan.empty:
        log.info("%s already matches the lock: nothing to do", home)
        return result
    ex = _Executor(cfg, spec, lock, home, opts, read_state(home))
    ex.state["version_id"] = spec.version_id
    try:
        for action in plan.actions:
            log.info("realize: %s", action.describe())
            ex.run(action)
            result.done.append(action.describe())
    finally:
        ex.save()
        if ex.lock_dirty:  # facts recorded by the actions that ran (installed versions, model hashes)
            result.lock_written = write_lock(result.lock_path, lock) or result.lock_written
    return result
