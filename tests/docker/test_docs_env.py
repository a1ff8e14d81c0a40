"""docs/runpod.md's variable table is rp_handler.config.ALL_ENV, and only config modules read env."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from rp_handler.config import ALL_ENV
from scripts.env_table import BEGIN, END, render_table, replace_table
from tests.docker.dockerfile_model import REPO_ROOT

DOC = REPO_ROOT / "docs" / "runpod.md"
CONFIG_MODULES = {"builder/config.py", "rp_handler/config.py"}
SOURCE_DIRS = ("builder", "rp_handler", "scripts", "comfy_nodes")
# Reads of the environment outside the config modules, each with its reason: {("path", "NAME"): why}.
# Keep this empty unless there is no other way; docs/runpod.md names each entry.
EXCEPTIONS: dict[tuple[str, str], str] = {}
# Standard variables the config modules read besides ALL_ENV (docs/runpod.md mentions them).
STANDARD = {"HOME"}
FIX = "run `python3 scripts/env_table.py --write` after changing ALL_ENV"


def table_section() -> str:
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"docs/runpod.md lost its table markers; {FIX}"
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)]


def table_names(section: str) -> list[str]:
    return re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, flags=re.M)


def test_every_config_variable_is_in_the_table_and_nothing_else():
    names = table_names(table_section())
    assert len(names) == len(set(names)), "a variable is listed twice"
    wanted = {var.name for var in ALL_ENV}
    assert not wanted - set(names), f"missing from docs/runpod.md: {sorted(wanted - set(names))}; {FIX}"
    assert not set(names) - wanted, f"documented but not in ALL_ENV: {sorted(set(names) - wanted)}; {FIX}"


def test_table_is_exactly_what_the_generator_writes():
    assert table_section().strip() == render_table().strip(), f"docs/runpod.md's table is stale; {FIX}"


def test_generator_replaces_only_between_the_markers():
    doc = f"intro\n{BEGIN}\nold rows\n{END}\noutro\n"
    out = replace_table(doc, "| new |\n")
    assert out == f"intro\n{BEGIN}\n| new |\n{END}\noutro\n"
    with pytest.raises(ValueError, match="markers not found"):
        replace_table("no markers", "x")


def test_table_escapes_pipes_in_help_text():
    rows = render_table().splitlines()[2:]
    assert len(rows) == len(ALL_ENV)
    for row in rows:
        cells = re.split(r"(?<!\\)\|", row)
        assert len(cells) == 6, row  # leading and trailing empty + 4 columns


# --- who reads the environment -------------------------------------------------------------
def _is_os_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ"
            and isinstance(node.value, ast.Name) and node.value.id == "os") or (
        isinstance(node, ast.Name) and node.id == "environ")


def env_reads(tree: ast.AST) -> list[tuple[int, str | None]]:
    """(line, NAME) for each read of one variable; NAME None when it is not a literal."""
    reads: list[tuple[int, str | None]] = []

    def literal(arg: ast.AST | None) -> str | None:
        return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None

    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_os_environ(node.value) and isinstance(node.ctx, ast.Load):
            reads.append((node.lineno, literal(node.slice)))
        elif isinstance(node, ast.Call):
            func = node.func
            first = node.args[0] if node.args else None
            if isinstance(func, ast.Attribute) and func.attr in ("get", "setdefault", "pop") \
                    and _is_os_environ(func.value):
                reads.append((node.lineno, literal(first)))
            elif (isinstance(func, ast.Attribute) and func.attr == "getenv") or (
                    isinstance(func, ast.Name) and func.id == "getenv"):
                reads.append((node.lineno, literal(first)))
        elif isinstance(node, ast.Compare) and any(_is_os_environ(c) for c in node.comparators) \
                and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            reads.append((node.lineno, literal(node.left)))
    return reads


def mapping_reads(tree: ast.AST, param: str = "env") -> list[tuple[int, str]]:
    """(line, NAME) for ``env.get("NAME")`` and ``env["NAME"]`` inside ``from_env(env: Mapping)``."""
    reads = []
    for node in ast.walk(tree):
        target = key = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            target, key = node.func.value, node.args[0] if node.args else None
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            target, key = node.value, node.slice
        if isinstance(target, ast.Name) and target.id == param and isinstance(key, ast.Constant) \
                and isinstance(key.value, str):
            reads.append((node.lineno, key.value))
    return reads


def test_config_modules_read_only_listed_names():
    known = {var.name for var in ALL_ENV} | STANDARD
    seen = set()
    for rel in sorted(CONFIG_MODULES):
        for line, name in mapping_reads(ast.parse((REPO_ROOT / rel).read_text())):
            seen.add(name)
            assert name in known, f"{rel}:{line} reads {name}, which ALL_ENV does not list; add it there"
    assert {"COMFY_HOME", "GCS_BUCKET", "NVME_CACHE_DIR"} <= seen, "the scanner no longer sees the config reads"


def product_sources() -> list[Path]:
    files = []
    for top in SOURCE_DIRS:
        files += [p for p in (REPO_ROOT / top).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(files)


def test_env_scanner_sees_every_form_of_read():
    code = (
        "import os\nfrom os import environ, getenv\n"
        "a = os.environ['A']\nb = os.environ.get('B')\nc = os.getenv('C')\nd = getenv('D')\n"
        "e = 'E' in os.environ\nf = environ.get(name)\nos.environ['W'] = '1'\ncfg = from_env(os.environ)\n"
    )
    assert env_reads(ast.parse(code)) == [(3, "A"), (4, "B"), (5, "C"), (6, "D"), (7, "E"), (8, None)]


def test_only_config_modules_read_the_environment():
    known = {var.name for var in ALL_ENV}
    files = product_sources()
    assert any(p.relative_to(REPO_ROOT).as_posix() in CONFIG_MODULES for p in files)
    problems = []
    for path in files:
        rel = path.relative_to(REPO_ROOT).as_posix()
        for line, name in env_reads(ast.parse(path.read_text(), filename=rel)):
            where = f"{rel}:{line}"
            if rel in CONFIG_MODULES:
                if name is not None and name not in known | STANDARD:
                    problems.append(f"{where}: reads {name}, which ALL_ENV does not list")
            elif (rel, name) not in EXCEPTIONS:
                problems.append(f"{where}: reads {name or 'the environment'} outside a config module "
                                f"(add it to a from_env and pass the config down)")
    assert not problems, "\n".join(problems)


def test_exceptions_are_documented():
    text = DOC.read_text()
    for (rel, name), why in EXCEPTIONS.items():
        assert why and f"`{name}`" in text and rel in text
