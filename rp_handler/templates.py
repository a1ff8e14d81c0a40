"""Workflow templates: named params expanded into an API-format ComfyUI workflow.

A template is two files in ``workflows/``: ``<name>.json`` (the API-format
graph) and ``<name>.manifest.json``::

    {"name": "sd15_txt2img", "workflow": "sd15_txt2img.json", "description": "...",
     "models": [{"folder": "checkpoints", "name": "..."}],
     "params": {"steps": {"type": "int", "default": 20, "min": 1, "max": 150,
                          "targets": [{"node": "3", "input": "steps"}]}, ...}}

Param fields: ``type`` (int, float, string, bool, model, image), ``targets``
(one or more node inputs that receive the value), ``default`` (absent: the
param is required), ``min``/``max``, ``multiple_of``, ``choices``,
``max_length`` (strings), ``random_if`` (a value, e.g. -1, that means "pick at
random"), ``folder`` (models), ``description``.

Use::

    workflow, used = expand_template("sd15_txt2img", {"prompt": "a cat", "seed": -1},
                                     rng=random.Random())
    # used == every param's final value, including the seed that was picked

Bad params raise ``InputError`` with one line naming the template, the param
and the bound.  A broken manifest raises ``TemplateError`` when loading.
Pure: no I/O except reading ``workflows/`` once (cached per directory).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from rp_handler.errors import InputError

WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "workflows"
MANIFEST_SUFFIX = ".manifest.json"
PARAM_TYPES = ("int", "float", "string", "bool", "model", "image")
# Random seeds stay below 2**53 so that every JSON client reads them back exactly.
RANDOM_SEED_LIMIT = 2**53


class TemplateError(ValueError):
    """A manifest or template file is broken (a packaging bug, not bad user input)."""


@dataclass(frozen=True)
class Target:
    node: str
    input: str


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    targets: tuple[Target, ...]
    default: Any = None
    required: bool = False
    min: float | None = None
    max: float | None = None
    multiple_of: int | None = None
    choices: tuple[Any, ...] | None = None
    max_length: int | None = None
    random_if: Any = None
    folder: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    workflow: dict[str, Any]
    params: dict[str, Param]
    models: tuple[dict[str, str], ...] = ()

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (for listings and docs)."""
        out: dict[str, Any] = {}
        for p in self.params.values():
            entry: dict[str, Any] = {"type": p.type}
            if p.required:
                entry["required"] = True
            else:
                entry["default"] = p.default
            for key in ("min", "max", "multiple_of", "choices", "max_length", "random_if", "folder"):
                value = getattr(p, key)
                if value is not None:
                    entry[key] = list(value) if key == "choices" else value
            if p.description:
                entry["description"] = p.description
            out[p.name] = entry
        return {"name": self.name, "description": self.description, "models": list(self.models), "params": out}


# ----------------------------------------------------------------------------- loading


def _param_from_manifest(where: str, name: str, raw: Mapping[str, Any], workflow: Mapping[str, Any]) -> Param:
    if not isinstance(raw, Mapping):
        raise TemplateError(f"{where}: param {name!r} must be an object")
    type_ = raw.get("type")
    if type_ not in PARAM_TYPES:
        raise TemplateError(f"{where}: param {name!r} has type {type_!r}; use one of {', '.join(PARAM_TYPES)}")
    targets_raw = raw.get("targets")
    if not isinstance(targets_raw, list) or not targets_raw:
        raise TemplateError(f"{where}: param {name!r} needs a non-empty 'targets' list")
    targets = []
    for t in targets_raw:
        node, inp = str(t.get("node")), t.get("input")
        node_def = workflow.get(node)
        if not isinstance(node_def, Mapping):
            raise TemplateError(f"{where}: param {name!r} targets node {node!r}, which the workflow lacks")
        if inp not in node_def.get("inputs", {}):
            raise TemplateError(f"{where}: param {name!r} targets input {inp!r} that node {node!r} lacks")
        if isinstance(node_def["inputs"][inp], list):
            raise TemplateError(f"{where}: param {name!r} targets {node}.{inp}, which is a link, not a value")
        targets.append(Target(node, inp))
    choices = raw.get("choices")
    param = Param(
        name=name,
        type=type_,
        targets=tuple(targets),
        default=raw.get("default"),
        required="default" not in raw,
        min=raw.get("min"),
        max=raw.get("max"),
        multiple_of=raw.get("multiple_of"),
        choices=tuple(choices) if choices is not None else None,
        max_length=raw.get("max_length"),
        random_if=raw.get("random_if"),
        folder=raw.get("folder"),
        description=raw.get("description", ""),
    )
    if not param.required:
        try:
            _coerce(param, param.default, template=where)
        except InputError as err:
            raise TemplateError(f"{where}: default of param {name!r} is invalid: {err}") from None
    return param


def load_template(manifest_path: Path) -> Template:
    """Read one ``<name>.manifest.json`` and the workflow it names."""
    where = manifest_path.name
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        workflow = json.loads((manifest_path.parent / manifest["workflow"]).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TemplateError(f"{where}: cannot read the manifest or its workflow: {err}") from None
    name = manifest.get("name") or manifest_path.name[: -len(MANIFEST_SUFFIX)]
    if not isinstance(workflow, dict) or not workflow:
        raise TemplateError(f"{where}: workflow {manifest['workflow']!r} is not an API-format graph")
    params = {
        pname: _param_from_manifest(where, pname, praw, workflow)
        for pname, praw in (manifest.get("params") or {}).items()
    }
    return Template(
        name=name,
        description=manifest.get("description", ""),
        workflow=workflow,
        params=params,
        models=tuple(manifest.get("models") or ()),
    )


@functools.lru_cache(maxsize=8)
def _load_dir(directory: Path) -> dict[str, Template]:
    templates = {}
    for path in sorted(directory.glob("*" + MANIFEST_SUFFIX)):
        tpl = load_template(path)
        if tpl.name in templates:
            raise TemplateError(f"{path.name}: template name {tpl.name!r} is used twice")
        templates[tpl.name] = tpl
    return templates


def load_templates(directory: Path | str = WORKFLOWS_DIR) -> dict[str, Template]:
    """All templates in ``directory`` by name (read once, then cached)."""
    return _load_dir(Path(directory).resolve())


# ----------------------------------------------------------------------------- expanding


def _bad(template: str, param: str, what: str) -> InputError:
    return InputError(f"template {template!r}: param {param!r} {what}", {"template": template, "param": param})


def _number(p: Param, value: Any, template: str, kind: type) -> int | float:
    if isinstance(value, bool):
        raise _bad(template, p.name, f"must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind is float else int(value.strip())
        except ValueError:
            raise _bad(template, p.name, f"must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise _bad(template, p.name, f"must be an integer, got {value!r}")
    else:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad(template, p.name, f"must be a finite number, got {value!r}")
        value = float(value)
    if p.random_if is not None and value == p.random_if:
        return value
    if p.min is not None and value < p.min:
        raise _bad(template, p.name, f"={value!r} is below the minimum {p.min}")
    if p.max is not None and value > p.max:
        raise _bad(template, p.name, f"={value!r} is above the maximum {p.max}")
    if p.multiple_of and value % p.multiple_of:
        raise _bad(template, p.name, f"={value!r} must be a multiple of {p.multiple_of}")
    return value


def _file_name(p: Param, value: Any, template: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(template, p.name, f"must be the name of {what}, got {value!r}")
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise _bad(template, p.name, f"={value!r} must be a relative name without '..' (the name of {what})")
    return value


def _coerce(p: Param, value: Any, *, template: str) -> Any:
    """Check and normalise one value; raises InputError naming param, bound, template."""
    if p.type == "int":
        value = _number(p, value, template, int)
    elif p.type == "float":
        value = _number(p, value, template, float)
    elif p.type == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise _bad(template, p.name, f"must be true or false, got {value!r}")
    elif p.type == "string":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise _bad(template, p.name, f"must be a string, got {type(value).__name__}")
        if p.max_length is not None and len(value) > p.max_length:
            raise _bad(template, p.name, f"is {len(value)} characters long, above the maximum {p.max_length}")
    elif p.type == "model":
        value = _file_name(p, value, template, f"a model file in models/{p.folder or '...'}")
    elif p.type == "image":
        value = _file_name(p, value, template, "an uploaded image")
    if p.choices is not None and value not in p.choices:
        raise _bad(template, p.name, f"={value!r} is not one of: {', '.join(map(str, p.choices))}")
    return value


def expand_template(
    name: str,
    params: Mapping[str, Any] | None,
    *,
    rng: random.Random | None = None,
    templates: Mapping[str, Template] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(workflow, used_params)`` for template ``name`` with ``params`` applied.

    A param given as ``None`` takes its default.  ``used_params`` holds every
    param's final value (defaults included, random seeds resolved).  ``rng`` picks values for ``random_if`` params (default: a
    fresh ``random.Random()``).  ``templates`` defaults to ``load_templates()``.
    """
    templates = load_templates() if templates is None else templates
    if not isinstance(name, str) or name not in templates:
        raise InputError(
            f"unknown template {name!r}; available templates: {', '.join(sorted(templates))}",
            {"template": name},
        )
    tpl = templates[name]
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise InputError(f"template {name!r}: params must be an object of name: value, got {type(params).__name__}")
    unknown = sorted(set(params) - set(tpl.params))
    if unknown:
        raise InputError(
            f"template {name!r} has no param {unknown[0]!r}; known params: {', '.join(sorted(tpl.params))}",
            {"template": name, "param": unknown[0]},
        )
    rng = rng if rng is not None else random.Random()
    workflow = copy.deepcopy(tpl.workflow)
    used: dict[str, Any] = {}
    for pname, p in tpl.params.items():
        if pname in params and params[pname] is not None:
            value = _coerce(p, params[pname], template=name)
        elif p.required:
            raise _bad(name, pname, f"is required ({p.description or p.type})")
        else:
            value = p.default
        if p.random_if is not None and value == p.random_if:
            upper = RANDOM_SEED_LIMIT if p.max is None else min(int(p.max) + 1, RANDOM_SEED_LIMIT)
            lower = max(0, int(p.min)) if p.min is not None else 0
            value = rng.randrange(lower, upper)
        used[pname] = value
        for t in p.targets:
            workflow[t.node]["inputs"][t.input] = value
    return workflow, used
