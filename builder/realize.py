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
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import bytecode
from .atomic import write_if_changed
from .config import BuildConfig
from .errors import BuildError, LockError, OfflineMissingError, TargetModifiedError
from .extras import NVME_NODE_SOURCE, fetch_object_info, install_tree, snapshot_key, tree_digest, write_snapshot
from .gitcache import GitCache
from .lock import build_lock, check, read_lock, write_lock
from .observe import (NODE_TMP_SUFFIX, RealizeOptions, extra_model_paths_yaml, models_digest, observe,  # noqa: F401
                      pip_inputs_digest, read_state, requirement_files)
from .pip_install import (InstallRequest, closure, constraint_lines, find_installer, install,
                          installed_versions, requirement_roots, run_install_py)
from .plan import NVME_NODE_NAME, STATE_FILE, Action, Flags, Plan, make_plan
from .resolve import resolve_spec
from .spec import Spec

log = logging.getLogger(__name__)


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


def write_state(home: Path, state: dict) -> None:
    write_if_changed(home / STATE_FILE, (json.dumps(state, sort_keys=True, indent=2) + "\n").encode())



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
        write_if_changed(a.path, extra_model_paths_yaml(self.cfg.models_dir, self.lock))

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
