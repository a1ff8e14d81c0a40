"""``python3 scripts/version.py``: manage pinned ComfyUI versions.

Exit codes: 0 ok, 1 failed (one-line error on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from dataclasses import dataclass
from typing import Mapping, Sequence

from .cli_helpers import emit, json_or_file, load, sha256_file, spec_path_for, split_repo_ref
from .config import PYC_MODES, BuildConfig
from .errors import BuildError, LockError, SpecError, TargetModifiedError, UsageError

log = logging.getLogger(__name__)
PATH_COMMANDS = ("resolve", "realize", "lock", "delete", "verify-models")


@dataclass(frozen=True)
class PassThrough:
    """A command another package implements: ``module.func(argv, env=...)``, imported only when run.

    The builder never names the worker: ``scripts/version.py`` hands these in (``run-ui``,
    ``run-handler``), so ``builder`` imports nothing of ``rp_handler``, not even by name.
    """

    name: str
    module: str
    func: str
    help: str


# --- commands ----------------------------------------------------------------------
def cmd_create(cfg: BuildConfig, args: argparse.Namespace) -> int:
    from .atomic import write_if_changed
    from .spec import SCHEMA_VERSION, model_target, validate

    nodes = [split_repo_ref(n) if isinstance(n, str) else n for n in json_or_file(args.nodes, "nodes")]
    models = [{"source": m} if isinstance(m, str) else dict(m) for m in json_or_file(args.models, "models")]
    if args.auto_checksum:
        if not args.models_root:
            raise UsageError("--auto-checksum needs --models-root DIR (where the model files are)")
        root = Path(args.models_root)
        for m in models:
            if m.get("checksum"):
                continue
            target = model_target(m) if isinstance(m.get("source"), str) else None
            cands = [root / target] if target and not target.startswith("$") else []
            src = str(m.get("source", ""))
            if src.startswith("file://"):
                cands.append(Path(src[7:]))
            elif "://" not in src and src:
                cands += [root / src, Path(src)]
            found = next((c for c in cands if c.is_file()), None)
            if found is None:
                raise UsageError(f"--auto-checksum: no local file for model {src!r} under {root}")
            m["checksum"] = "sha256:" + sha256_file(found)
    data = {"schema_version": SCHEMA_VERSION, "version_id": args.id, "comfy": split_repo_ref(args.repo),
            "custom_nodes": nodes, "models": models, "python_packages": [], "env": {}, "options": {}}
    out = Path(args.output) if args.output else cfg.spec_path(args.id)
    validate(data, str(out), expected_id=out.name[:-5] if out.name.endswith(".json") else None)
    if out.exists() and not args.force:
        raise BuildError(f"{out} already exists (pass --force to overwrite, or choose another id/--output)")
    write_if_changed(out, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())
    emit(args, {"spec": str(out)}, f"wrote {out}")
    return 0


def cmd_validate(cfg: BuildConfig, args: argparse.Namespace) -> int:
    try:
        spec = load(cfg, args.id)
    except SpecError as exc:
        if args.json:
            emit(args, {"ok": False, "source": exc.source, "problems": exc.problems}, "")
            return 1
        print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    emit(args, {"ok": True, "version_id": spec.version_id, "digest": spec.digest},
         f"{spec.version_id}: valid ({len(spec.custom_nodes)} node(s), {len(spec.models)} model(s))")
    return 0


def cmd_resolve(cfg: BuildConfig, args: argparse.Namespace) -> int:
    from .gitcache import GitCache
    from .lock import build_lock, read_lock, write_lock
    from .resolve import resolve_spec

    spec = load(cfg, args.id)
    path = cfg.lock_path(spec.version_id)
    try:
        previous = read_lock(path)
    except LockError:
        previous = None  # a corrupt lock is replaced
    res = resolve_spec(spec, GitCache(cfg.git_cache), offline=args.offline or cfg.offline or spec.options.offline)
    lock = build_lock(spec, res, previous)
    if previous and previous.get("spec_digest") == spec.digest and previous.get("comfy") == lock["comfy"] \
            and previous.get("custom_nodes") == lock["custom_nodes"]:
        lock["pip"]["installed"] = previous["pip"].get("installed")
    written = write_lock(path, lock)
    lines = [f"comfy  {lock['comfy']['commit']}"] + [f"{n['name']}  {n['commit']}" for n in lock["custom_nodes"]]
    lines.append(f"{'wrote' if written else 'unchanged'} {path}")
    emit(args, {"lock": str(path), "written": written, "comfy": lock["comfy"]["commit"],
                "custom_nodes": {n["name"]: n["commit"] for n in lock["custom_nodes"]}}, lines)
    return 0


def cmd_realize(cfg: BuildConfig, args: argparse.Namespace) -> int:
    from .realize import RealizeOptions, realize

    spec = load(cfg, args.id)
    wheels = Path(args.wheels_dir).expanduser() if args.wheels_dir else None
    if wheels is not None and not wheels.is_dir():
        raise UsageError(f"--wheels-dir {wheels} is not a directory")
    if not args.python and not args.dry_run:
        from .entry import running_in_project_venv
        if running_in_project_venv():  # plain python3 re-ran us here: never install ComfyUI's packages into it
            raise UsageError("realize needs --python: the default would be the worker's own .venv; give ComfyUI "
                             "its own interpreter, e.g. `python3 -m venv ~/comfy-venv` and --python ~/comfy-venv/bin/python")
    python = Path(args.python).expanduser() if args.python else Path(sys.executable)
    if not python.exists():
        raise UsageError(f"--python {python} does not exist (give the interpreter ComfyUI runs with)")
    opts = RealizeOptions(target=Path(args.target) if args.target else None, offline=args.offline,
                          wheels_dir=wheels.absolute() if wheels else None, dry_run=args.dry_run, force=args.force,
                          python=python, skip_models=args.skip_models, installer=args.installer, jobs=args.jobs,
                          snapshot_object_info=args.snapshot_object_info,
                          bytecode=not args.no_bytecode, pyc_mode=args.pyc_mode or cfg.pyc_mode)
    result = realize(cfg, spec, opts)
    if args.dry_run:
        emit(args, result.to_dict(), [f"plan for {result.home} (dry run, nothing changed):"]
             + [f"  {ln}" for ln in result.plan.lines()])
    else:
        text = [f"realized {spec.version_id} into {result.home}"] + [f"  {d}" for d in result.done]
        if not result.done:
            text = [f"{result.home} already matches the lock: nothing to do"]
        emit(args, result.to_dict(), text)
    return 0


def cmd_lock(cfg: BuildConfig, args: argparse.Namespace) -> int:
    from .lock import check, read_lock

    spec = load(cfg, args.id)
    path = cfg.lock_path(spec.version_id)
    try:
        lock = read_lock(path)
    except LockError as exc:
        emit(args, {"fresh": False, "lock": str(path), "reason": str(exc)}, str(exc))
        return 1
    if not args.check:
        if lock is None:
            raise LockError(f"no lock at {path}: run `version.py resolve {spec.version_id}`")
        sys.stdout.write(path.read_text())
        return 0
    fresh, reason = check(spec, lock)
    fix = "" if fresh else f" (run `version.py resolve {spec.version_id}`)"
    emit(args, {"fresh": fresh, "lock": str(path), "reason": reason},
         f"{'fresh' if fresh else 'stale'}: {path}: {reason}{fix}")
    return 0 if fresh else 1


def cmd_clone(cfg: BuildConfig, args: argparse.Namespace) -> int:
    from .atomic import write_if_changed
    from .spec import load_json, validate

    src = spec_path_for(cfg, args.src)
    data = load_json(src)
    validate(data, str(src))
    data["version_id"] = args.dst
    out = cfg.spec_path(args.dst)
    validate(data, str(out), expected_id=args.dst)
    if out.exists() and not args.force:
        raise BuildError(f"{out} already exists (pass --force to overwrite, or choose another id)")
    write_if_changed(out, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())
    emit(args, {"spec": str(out)}, f"wrote {out}")
    return 0


def cmd_delete(cfg: BuildConfig, args: argparse.Namespace) -> int:
    from .gitcache import is_dirty, is_git_checkout
    from .plan import STATE_FILE
    from .realize import read_state

    vid = args.id
    home = (Path(args.target) if args.target else cfg.comfy_home_for(vid)).expanduser().absolute()
    removed: list[str] = []
    if home.exists():
        state = read_state(home)
        if state.get("version_id") != vid:
            raise BuildError(f"{home} was not realized by version.py for {vid!r} (no matching {STATE_FILE}); "
                             "remove it by hand if you are sure")
        dirty = [p for p in [home, *(home / "custom_nodes" / n for n in state.get("nodes", {}))]
                 if is_git_checkout(p) and is_dirty(p)]
        if dirty and not args.force:
            raise TargetModifiedError(f"{dirty[0]} has local modifications: commit or copy them, or pass --force")
        shutil.rmtree(home)
        removed.append(str(home))
    lock = cfg.lock_path(vid)
    if lock.exists():
        lock.unlink()
        removed.append(str(lock))
    if args.remove_spec:
        spec = cfg.spec_path(vid)
        if spec.exists():
            spec.unlink()
            removed.append(str(spec))
    emit(args, {"removed": removed}, [f"removed {r}" for r in removed] or [f"nothing to delete for {vid}"])
    return 0


def _dispatch(module: str, func: str, argv: list[str], what: str, env: Mapping[str, str] | None) -> int:
    """Call ``module.func(argv)`` (imported only now); say in one line when the module is absent."""
    import importlib
    import inspect
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            if {"-h", "--help"} & set(argv):
                print(f"usage: version.py {what} ARGS... (runs {module}.{func}, which this checkout lacks)")
                return 0
            raise BuildError(f"{what} is not available: module {module} is missing from this checkout") from None
        raise
    target = getattr(mod, func)
    kwargs = {"env": env} if env is not None and "env" in inspect.signature(target).parameters else {}
    return int(target(argv, **kwargs) or 0)


def _pass_through(cmd: PassThrough):
    def run(cfg: BuildConfig, args: argparse.Namespace) -> int:
        return _dispatch(cmd.module, cmd.func, args.rest, cmd.name, args.env)
    return run


def cmd_verify_models(cfg: BuildConfig, args: argparse.Namespace) -> int:
    return _dispatch("builder.models.cli", "main", ["--spec", str(spec_path_for(cfg, args.id)), *args.rest],
                     "verify-models", args.env)


# --- parser ------------------------------------------------------------------------
def build_parser(pass_through: Sequence[PassThrough] = ()) -> argparse.ArgumentParser:
    """The whole command line, one declaration a line (long on purpose: a table, read top to bottom)."""
    p = argparse.ArgumentParser(prog="version.py", description="Pinned ComfyUI versions: spec → lock → realized install.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_: str, *, json_flag: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    sp = add("create", cmd_create, "write versions/<id>.json from a ComfyUI repo, nodes and models")
    sp.add_argument("id")
    sp.add_argument("--repo", required=True, help="ComfyUI repo as URL@REF (REF: branch, tag or 40-hex commit)")
    sp.add_argument("--nodes", help="JSON list or a JSON/YAML file: [{repo, ref?, commit?, name?}] or ['URL@REF']")
    sp.add_argument("--models", help="JSON list or a JSON/YAML file: [{source, target_subdir?, target_path?, name?, checksum?}]")
    sp.add_argument("--models-root", help="local folder holding the model files (for --auto-checksum)")
    sp.add_argument("--auto-checksum", action="store_true", help="fill sha256 checksums from files under --models-root")
    sp.add_argument("--output", help="where to write the spec (default versions/<id>.json)")
    sp.add_argument("--force", action="store_true", help="overwrite an existing spec")

    sp = add("validate", cmd_validate, "check a spec and list every problem (no network)")
    sp.add_argument("id", help="version id or path to a spec file")

    sp = add("resolve", cmd_resolve, "resolve refs to commit SHAs and write the lock")
    sp.add_argument("id", help="version id or path to a spec file")
    sp.add_argument("--offline", action="store_true", help="use only the local git cache")

    sp = add("realize", cmd_realize, "check out ComfyUI and nodes, install requirements and models")
    sp.add_argument("id", help="version id or path to a spec file")
    sp.add_argument("--target", help="COMFY_HOME to realize into (default: COMFY_HOME or the seed-003 default)")
    sp.add_argument("--offline", action="store_true", help="use only local caches; fail listing what is missing")
    sp.add_argument("--wheels-dir", help="install Python packages only from this folder of wheels (no index)")
    sp.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    sp.add_argument("--force", action="store_true", help="update checkouts with local changes (saved by git stash)")
    sp.add_argument("--python", help="interpreter to install requirements into (default: the one running "
                                     "version.py, unless that is the project's .venv)")
    sp.add_argument("--skip-models", action="store_true", help="do not fetch models")
    sp.add_argument("--installer", choices=("auto", "uv", "pip"), default="auto", help="uv when present (auto) or pip")
    sp.add_argument("--jobs", type=int, default=4, help="parallel model downloads")
    sp.add_argument("--snapshot-object-info", action="store_true",
                    help="boot the realized ComfyUI once on CPU and save its /object_info for the model cache "
                         "(also options.snapshot_object_info; skipped when nothing changed)")
    sp.add_argument("--no-bytecode", action="store_true",
                    help="do not compile ComfyUI, nodes and site-packages to .pyc (they are by default)")
    sp.add_argument("--pyc-mode", choices=PYC_MODES, default=None,
                    help="the .pyc invalidation mode (default: PYC_MODE, else checked-hash); unchecked-hash only "
                         "where nothing changes the sources after realize (an image)")

    sp = add("lock", cmd_lock, "print the lock, or --check whether it is fresh for the spec (no network)")
    sp.add_argument("id", help="version id or path to a spec file")
    sp.add_argument("--check", action="store_true", help="exit 0 when fresh, 1 when stale, missing or corrupt")

    sp = add("clone", cmd_clone, "copy versions/<src>.json to versions/<dst>.json with the new id")
    sp.add_argument("src")
    sp.add_argument("dst")
    sp.add_argument("--force", action="store_true", help="overwrite an existing destination spec")

    sp = add("delete", cmd_delete, "remove a realized version and its lock (the git cache and a MODELS_DIR outside the target are kept)")
    sp.add_argument("id")
    sp.add_argument("--target", help="the COMFY_HOME to remove (default: as realize computes it)")
    sp.add_argument("--remove-spec", action="store_true", help="also delete versions/<id>.json")
    sp.add_argument("--force", action="store_true", help="delete even with local modifications")

    for cmd in pass_through:
        sp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, add_help=False)
        sp.set_defaults(func=_pass_through(cmd))
        sp.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed on (try --help)")
    sp = sub.add_parser("verify-models", help="check/fetch a version's models (builder.models.cli)",
                        description="check/fetch a version's models (builder.models.cli)")
    sp.set_defaults(func=cmd_verify_models)
    sp.add_argument("id", help="version id or path to a spec file")
    sp.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed on to verify_models")
    return p


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """The one-line error on stderr; with --json also ``{"ok": false, "error": ...}`` on stdout."""
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": message}))
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
         pass_through: Sequence[PassThrough] = ()) -> int:
    """Run one command; ``pass_through`` adds commands whose arguments all go to another package."""
    parser = build_parser(pass_through)
    argv = list(sys.argv[1:] if argv is None else argv)
    i = next((n for n, a in enumerate(argv) if not a.startswith("-")), len(argv))
    if i < len(argv) and argv[i] in {c.name for c in pass_through}:  # the rest belongs to that command's parser
        args = parser.parse_args(argv[:i + 1])
        args.rest = argv[i + 1:]
    else:
        args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = BuildConfig.from_env(os.environ if env is None else env)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.env = env
    if args.command in PATH_COMMANDS:
        log.info("%s", cfg.describe())  # once: which case (volume, container, plain machine) was chosen
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)  # `docker stop`: clean up like Ctrl-C
    try:
        return args.func(cfg, args)
    except BuildError as exc:
        return _fail(args, str(exc), exc.exit_code)
    except OSError as exc:  # disk full, permissions, ...: one line, no traceback
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(args, f"{exc.strerror or exc}{where} (free space or fix permissions, then rerun)", 1)
    except KeyboardInterrupt:
        return _fail(args, "interrupted; run the same command again to complete", 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
