"""Load and validate version specs (``versions/<id>.json``, schema v2).

Validation collects every problem at once, each as ``json.path: message``, and
raises one :class:`~builder.errors.SpecError`.  A valid spec becomes a frozen
:class:`Spec`; its :func:`spec_digest` is what a lock records to detect staleness.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import posixpath
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .errors import SpecError
from .spec_types import DEFAULT_PINNED, NodeSpec, Options, RepoSpec, Spec

SCHEMA_VERSION = 2

TOP_KEYS = {"schema_version", "version_id", "description", "comfy", "custom_nodes", "models",
            "python_packages", "pip_constraints", "env", "options"}
REPO_KEYS = {"repo", "ref", "commit"}
NODE_KEYS = REPO_KEYS | {"name", "run_install_py"}
MODEL_KEYS = {"source", "target_subdir", "target_path", "name", "checksum"}
OPTION_KEYS = {"offline", "skip_models", "pin_installed", "pip_index_url", "pip_extra_index_urls",
               "nvme_cache_node", "snapshot_object_info", "warm_models", "limits", "comfy_api_nodes"}
# options.limits: the worker's request limits for this version (the stricter of these and LIMIT_* wins).
LIMIT_KEYS = ("max_pixels", "max_batch", "max_steps", "max_frames", "max_input_bytes")
NVME_NODE_NAME = "nvme_cache"  # custom_nodes/<this> is the worker's own OnDemand node (builder/extras.py)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")
HEX_RE = re.compile(r"^[0-9a-f]{4,40}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CHECKSUM_RE = {"sha256": re.compile(r"^[0-9a-f]{64}$"), "md5": re.compile(r"^[0-9a-f]{32}$")}
SCP_RE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^/\s][^\s]*$")  # git@host:org/repo.git
BAD_REF_RE = re.compile(r"(\s|\.\.|[~^:?*\[\\]|@\{|^-|^/|/$|\.lock$)")


# --- helpers shared with create / lock -------------------------------------------
def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def spec_digest(raw: dict) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(raw)).hexdigest()


def is_git_url(url: str) -> bool:
    """https://, ssh://, git@host:path, file:// or a local path."""
    if not isinstance(url, str) or not url.strip() or url != url.strip():
        return False
    if SCP_RE.match(url):
        return True
    parsed = urlparse(url)
    if parsed.scheme in ("https", "ssh"):
        return bool(parsed.netloc) and len(parsed.path.strip("/")) > 0
    if parsed.scheme == "file":
        return parsed.path.startswith("/")
    if parsed.scheme:
        return False
    return url.startswith(("/", "./", "../", "~"))


def default_node_name(repo: str) -> str:
    tail = re.split(r"[/:]", repo.rstrip("/"))[-1]
    return tail[:-4] if tail.endswith(".git") else tail


def model_filename(entry: dict) -> str:
    """The file name a model gets: ``name``, else the last path part of ``source``."""
    if entry.get("name"):
        return str(entry["name"])
    src = str(entry.get("source", ""))
    path = urlparse(src).path if "://" in src else src
    return posixpath.basename(unquote(path).rstrip("/")) or "model"


def model_target(entry: dict) -> str | None:
    """Target relative to the models dir (posix), or ``$COMFY_HOME/...``; None if it escapes."""
    raw = entry.get("target_path")
    root = ""
    if raw:
        raw = str(raw).replace("\\", "/")
        for prefix in ("$MODELS_DIR/", "${MODELS_DIR}/"):
            if raw.startswith(prefix):
                raw = raw[len(prefix):]
        for prefix in ("$COMFY_HOME/", "${COMFY_HOME}/"):
            if raw.startswith(prefix):
                raw, root = raw[len(prefix):], "$COMFY_HOME/"
        rel = raw
    else:
        rel = posixpath.join(str(entry.get("target_subdir") or "").replace("\\", "/"), model_filename(entry))
    if rel.startswith(("/", "~")) or "$" in rel:  # plan expands '~': it would leave the models dir
        return None
    norm = posixpath.normpath(rel)
    if norm in (".", "") or norm == ".." or norm.startswith("../"):
        return None
    return root + norm


def did_you_mean(key: str, allowed: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(sorted(allowed))})"


# --- validation ------------------------------------------------------------------
def _printable(text: str) -> str:
    """Control characters (a key like "\\n" in a spec) shown escaped: every problem stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Problems(list):
    def add(self, path: str, msg: str) -> None:
        self.append(_printable(f"{path}: {msg}"))


def _check_keys(obj: dict, allowed: set[str], path: str, out: _Problems) -> None:
    for key in obj:
        if key not in allowed:
            out.add(f"{path}.{key}" if path else str(key), "unknown key" + did_you_mean(str(key), allowed))


def _check_repo(obj: Any, path: str, out: _Problems) -> None:
    if not isinstance(obj, dict):
        out.add(path, "must be an object with 'repo' and 'ref' or 'commit'")
        return
    repo = obj.get("repo")
    if repo is None:
        out.add(f"{path}.repo", "missing (a git URL: https://, ssh://, git@host:org/repo, file:// or a local path)")
    elif not is_git_url(repo):
        out.add(f"{path}.repo", f"not a git URL: {repo!r} (use https://, ssh://, git@host:org/repo, file:// or a local path)")
    ref, commit = obj.get("ref"), obj.get("commit")
    if ref is not None and (not isinstance(ref, str) or not ref or BAD_REF_RE.search(ref)):
        out.add(f"{path}.ref", f"not a valid git ref name: {ref!r}")
    if commit is not None and (not isinstance(commit, str) or not HEX_RE.match(commit)):
        out.add(f"{path}.commit", f"not a commit SHA (4-40 lowercase hex): {commit!r}")


def _check_requirements(value: Any, path: str, out: _Problems, *, constraint: bool) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        out.add(path, "must be a list of pip requirement strings")
        return
    if value:
        from packaging.requirements import InvalidRequirement, Requirement  # only when needed: keeps start-up fast
    for i, item in enumerate(value):
        if not isinstance(item, str):
            out.add(f"{path}[{i}]", "must be a string like 'package==1.0'")
            continue
        try:
            req = Requirement(item)
        except InvalidRequirement as exc:
            out.add(f"{path}[{i}]", f"not a pip requirement: {item!r} ({str(exc).splitlines()[0]})")
            continue
        if constraint and not (req.specifier or req.url):
            out.add(f"{path}[{i}]", f"a constraint needs a version specifier, e.g. '{req.name}==1.0'")
        if constraint and req.extras:
            out.add(f"{path}[{i}]", "constraints cannot have extras")


def _check_models(models: Any, out: _Problems) -> None:
    if models is None:
        return
    if not isinstance(models, list):
        out.add("models", "must be a list of objects with 'source'")
        return
    seen: dict[str, int] = {}
    for i, entry in enumerate(models):
        path = f"models[{i}]"
        if not isinstance(entry, dict):
            out.add(path, "must be an object with 'source'")
            continue
        _check_keys(entry, MODEL_KEYS, path, out)
        src = entry.get("source")
        if not isinstance(src, str) or not src.strip():
            out.add(f"{path}.source", "missing (a URL, hf://org/repo/file, gs://bucket/object or a local path)")
        for key in ("target_subdir", "target_path", "name"):
            if key in entry and (not isinstance(entry[key], str) or not entry[key]):
                out.add(f"{path}.{key}", "must be a non-empty string")
        if isinstance(entry.get("name"), str) and "/" in entry["name"]:
            out.add(f"{path}.name", "must be a file name without '/' (use target_subdir for folders)")
        if "target_path" in entry and "target_subdir" in entry:
            out.add(path, "give either target_path or target_subdir, not both")
        checksum = entry.get("checksum")
        if checksum is not None:
            algo, _, hexd = str(checksum).partition(":")
            if algo not in CHECKSUM_RE:
                out.add(f"{path}.checksum", f"malformed {checksum!r}: use 'sha256:<64 hex>' or 'md5:<32 hex>'")
            elif not CHECKSUM_RE[algo].match(hexd):
                n = 64 if algo == "sha256" else 32
                out.add(f"{path}.checksum", f"malformed {checksum!r}: {algo} needs {n} lowercase hex digits")
        if not isinstance(src, str) or any(not isinstance(entry.get(k, ""), str) for k in ("target_path", "target_subdir", "name")):
            continue
        target = model_target(entry)
        if target is None:
            out.add(f"{path}.target_path" if entry.get("target_path") else f"{path}.target_subdir",
                    "target escapes the models dir (use a relative path without '..')")
        elif target in seen:
            out.add(path, f"duplicate target {target!r} (also models[{seen[target]}])")
        else:
            seen[target] = i


def _check_options(options: Any, out: _Problems) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        out.add("options", "must be an object")
        return
    _check_keys(options, OPTION_KEYS, "options", out)
    for key in ("offline", "skip_models", "nvme_cache_node", "snapshot_object_info", "comfy_api_nodes"):
        if key in options and not isinstance(options[key], bool):
            out.add(f"options.{key}", "must be true or false")
    warm = options.get("warm_models")  # read by the worker (rp_handler/cache/worker.py), not by realize
    if warm is not None and (not isinstance(warm, list) or not all(isinstance(m, str) and "/" in m for m in warm)):
        out.add("options.warm_models", "must be a list of 'folder/name' model files (e.g. "
                "[\"checkpoints/sdxl.safetensors\"]) for the worker to copy onto NVMe at start")
    limits = options.get("limits")  # read by the worker (rp_handler/main.py), not by realize
    if limits is not None:
        if not isinstance(limits, dict):
            out.add("options.limits", "must be an object like {\"max_steps\": 50, \"max_pixels\": 1048576}")
        else:
            for key, value in limits.items():
                if key not in LIMIT_KEYS:
                    out.add(f"options.limits.{key}", f"unknown limit; known: {', '.join(LIMIT_KEYS)}")
                elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    out.add(f"options.limits.{key}", "must be a whole number >= 0 (0: no limit)")
    pins = options.get("pin_installed")
    if pins is not None and (not isinstance(pins, list) or not all(isinstance(p, str) and p for p in pins)):
        out.add("options.pin_installed", "must be a list of package names (e.g. [\"torch\"]; [] pins nothing)")
    index = options.get("pip_index_url")
    if index is not None and not (isinstance(index, str) and index.startswith(("https://", "http://", "file://"))):
        out.add("options.pip_index_url", "must be an http(s):// or file:// URL")
    extra = options.get("pip_extra_index_urls")
    if extra is not None and (not isinstance(extra, list) or not all(
            isinstance(u, str) and u.startswith(("https://", "http://", "file://")) for u in extra)):
        out.add("options.pip_extra_index_urls", "must be a list of http(s):// or file:// URLs")


def validate(data: Any, source: str = "spec", *, expected_id: str | None = None) -> Spec:
    """Return a :class:`Spec` or raise SpecError listing every problem.

    Long on purpose: one check a line in the spec's own key order, so every problem is collected in
    one pass and the order of the messages follows the file.
    """
    out = _Problems()
    if not isinstance(data, dict):
        raise SpecError(source, ["(root): must be a JSON object"])
    _check_keys(data, TOP_KEYS, "", out)
    if data.get("schema_version") != SCHEMA_VERSION:
        out.add("schema_version", f"must be {SCHEMA_VERSION} (got {data.get('schema_version')!r})")
    vid = data.get("version_id")
    if not isinstance(vid, str) or not ID_RE.match(vid):
        out.add("version_id", f"must match {ID_RE.pattern} (got {vid!r})")
    elif expected_id is not None and vid != expected_id:
        out.add("version_id", f"{vid!r} does not match the file name {expected_id!r}.json")
    if "comfy" not in data:
        out.add("comfy", "missing (an object with 'repo' and 'ref' or 'commit')")
    else:
        _check_repo(data["comfy"], "comfy", out)
        if isinstance(data["comfy"], dict):
            _check_keys(data["comfy"], REPO_KEYS, "comfy", out)
    nodes = data.get("custom_nodes") or []
    if not isinstance(nodes, list):
        out.add("custom_nodes", "must be a list")
        nodes = []
    names: dict[str, int] = {}
    raw_options = data.get("options") if isinstance(data.get("options"), dict) else {}
    nvme_node_on = raw_options.get("nvme_cache_node", True) is not False
    for i, node in enumerate(nodes):
        path = f"custom_nodes[{i}]"
        _check_repo(node, path, out)
        if not isinstance(node, dict):
            continue
        _check_keys(node, NODE_KEYS, path, out)
        if "run_install_py" in node and not isinstance(node["run_install_py"], bool):
            out.add(f"{path}.run_install_py", "must be true or false")
        name = node.get("name") or (default_node_name(node["repo"]) if isinstance(node.get("repo"), str) else None)
        if name is None:
            continue
        if not isinstance(name, str) or not NAME_RE.match(name):
            out.add(f"{path}.name", f"not a safe folder name: {name!r} (letters, digits, . _ -)")
        elif name.lower() == NVME_NODE_NAME and nvme_node_on:
            out.add(f"{path}.name", f"{name!r} is reserved for the worker's OnDemand cache node: set 'name' to "
                    "another folder name, or set options.nvme_cache_node to false")
        elif name.lower() in names:
            out.add(f"{path}.name", f"duplicate node name {name!r} (also custom_nodes[{names[name.lower()]}]); set 'name'")
        else:
            names[name.lower()] = i
    _check_models(data.get("models"), out)
    _check_requirements(data.get("python_packages"), "python_packages", out, constraint=False)
    _check_requirements(data.get("pip_constraints"), "pip_constraints", out, constraint=True)
    env = data.get("env")
    if env is not None:
        if not isinstance(env, dict):
            out.add("env", "must be an object of NAME: string")
        else:
            for key, value in env.items():
                if not ENV_RE.match(str(key)):
                    out.add(f"env.{key}", "not a valid environment variable name")
                if not isinstance(value, str):
                    out.add(f"env.{key}", "value must be a string")
    _check_options(data.get("options"), out)
    if out:
        raise SpecError(source, out)
    return _build(data)


def _build(data: dict) -> Spec:
    comfy = data["comfy"]
    nodes = tuple(
        NodeSpec(repo=n["repo"], ref=n.get("ref"), commit=n.get("commit"),
                 name=n.get("name") or default_node_name(n["repo"]),
                 run_install_py=bool(n.get("run_install_py", False)))
        for n in data.get("custom_nodes") or []
    )
    opts = data.get("options") or {}
    options = Options(
        offline=bool(opts.get("offline", False)),
        skip_models=bool(opts.get("skip_models", False)),
        pin_installed=tuple(opts.get("pin_installed", DEFAULT_PINNED)),
        pip_index_url=opts.get("pip_index_url"),
        pip_extra_index_urls=tuple(opts.get("pip_extra_index_urls") or ()),
        nvme_cache_node=bool(opts.get("nvme_cache_node", True)),
        snapshot_object_info=bool(opts.get("snapshot_object_info", False)),
        warm_models=tuple(m.strip() for m in opts.get("warm_models") or () if m.strip()),
        limits=dict(opts.get("limits") or {}),
        comfy_api_nodes=bool(opts.get("comfy_api_nodes", False)),
    )
    return Spec(
        version_id=data["version_id"],
        comfy=RepoSpec(repo=comfy["repo"], ref=comfy.get("ref"), commit=comfy.get("commit")),
        custom_nodes=nodes,
        models=tuple(dict(m) for m in data.get("models") or []),
        python_packages=tuple(data.get("python_packages") or ()),
        pip_constraints=tuple(data.get("pip_constraints") or ()),
        env=dict(data.get("env") or {}),
        options=options,
        digest=spec_digest(data),
        raw=data,
    )


def load_json(path: Path, what: str = "spec") -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), [f"(file): {what} not found (create it with `version.py create`)"]) from None
    except OSError as exc:
        raise SpecError(str(path), [f"(file): cannot read: {exc.strerror}"]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(str(path), [f"(file): invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]) from None


def load_spec(path: Path) -> Spec:
    """Read and validate ``path``; the file name (minus .json) must equal version_id."""
    return validate(load_json(path), str(path), expected_id=path.name[:-5] if path.name.endswith(".json") else None)
