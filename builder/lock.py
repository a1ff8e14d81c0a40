"""The lock: what a spec resolved to, as facts.

``<COMFY_CACHE_ROOT>/resolved/<id>.lock.json`` holds the SHAs, each model's
source/target/sha256/size, the pip versions realize installed, and the digest of
the spec it came from.  It is written with sorted keys and no timestamps or
absolute paths, so the same spec gives byte-identical locks anywhere.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .atomic import write_if_changed
from .errors import LockError
from .resolve import Resolution
from .spec import Spec, model_target

LOCK_VERSION = 1
SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def build_lock(spec: Spec, res: Resolution, previous: dict | None = None) -> dict:
    """A fresh lock for ``spec``; model facts of ``previous`` are kept where the entry is unchanged."""
    old_models = {}
    if previous and previous.get("spec_digest"):
        old_models = {(m.get("source"), m.get("target")): m for m in previous.get("models", []) if isinstance(m, dict)}
    models = []
    for entry in spec.models:
        target = model_target(entry)
        rec: dict[str, Any] = {"source": entry["source"], "target": target, "sha256": None, "size": None}
        checksum = entry.get("checksum")
        if checksum:
            rec["checksum"] = checksum
            if checksum.startswith("sha256:"):
                rec["sha256"] = checksum.split(":", 1)[1]
        old = old_models.get((entry["source"], target))
        if old and old.get("checksum") == rec.get("checksum"):
            for key in ("sha256", "size", "resolved_source"):
                if old.get(key) is not None:
                    rec[key] = old[key]
        models.append(rec)
    return {
        "lock_version": LOCK_VERSION,
        "version_id": spec.version_id,
        "spec_digest": spec.digest,
        "comfy": {"repo": spec.comfy.repo, "ref": spec.comfy.ref, "commit": res.comfy},
        "custom_nodes": [
            {"name": n.name, "repo": n.repo, "ref": n.ref, "commit": res.nodes[n.name],
             "run_install_py": n.run_install_py}
            for n in spec.custom_nodes
        ],
        "models": models,
        "pip": {"constraints": list(spec.pip_constraints), "python_packages": list(spec.python_packages),
                "installed": None},  # None until a realize records what it installed
    }


def dumps(lock: dict) -> bytes:
    return (json.dumps(lock, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def write_lock(path: Path, lock: dict) -> bool:
    return write_if_changed(path, dumps(lock))


def shape_problems(lock: Any) -> list[str]:
    """What is wrong with a parsed lock (empty when it looks sound)."""
    if not isinstance(lock, dict):
        return ["not a JSON object"]
    out = []
    if lock.get("lock_version") != LOCK_VERSION:
        out.append(f"lock_version is {lock.get('lock_version')!r}, expected {LOCK_VERSION}")
    if not isinstance(lock.get("spec_digest"), str):
        out.append("spec_digest missing")
    comfy = lock.get("comfy")
    if not isinstance(comfy, dict) or not SHA_RE.match(str(comfy.get("commit"))):
        out.append("comfy.commit is not a 40-hex SHA")
    nodes = lock.get("custom_nodes")
    if not isinstance(nodes, list):
        out.append("custom_nodes is not a list")
    else:
        for i, n in enumerate(nodes):
            if not isinstance(n, dict) or not SHA_RE.match(str(n.get("commit"))) or not n.get("name"):
                out.append(f"custom_nodes[{i}] lacks a name or a 40-hex commit")
    if not isinstance(lock.get("models"), list):
        out.append("models is not a list")
    pip = lock.get("pip")
    if not isinstance(pip, dict) or not isinstance(pip.get("installed"), (dict, type(None))):
        out.append("pip.installed is not an object")
    return out


def read_lock(path: Path) -> dict | None:
    """The lock at ``path``, None when absent; LockError when corrupt."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LockError(f"cannot read lock {path}: {exc.strerror}") from None
    fix = f"delete it or run `version.py resolve {path.name.removesuffix('.lock.json')}`"
    try:
        lock = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LockError(f"lock {path} is corrupt (invalid JSON at line {exc.lineno}): {fix}") from None
    problems = shape_problems(lock)
    if problems:
        raise LockError(f"lock {path} is corrupt ({'; '.join(problems)}): {fix}")
    return lock


def check(spec: Spec, lock: dict | None) -> tuple[bool, str]:
    """(fresh?, reason) without network: the lock must come from this exact spec."""
    if lock is None:
        return False, "no lock yet"
    if lock.get("spec_digest") != spec.digest:
        return False, "the spec changed since the lock was written"
    names = [n.name for n in spec.custom_nodes]
    if [n.get("name") for n in lock["custom_nodes"]] != names:
        return False, "the lock's custom nodes differ from the spec"
    return True, "lock matches the spec"
