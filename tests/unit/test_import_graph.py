"""The import graph has one direction: the worker may use the builder, the builder never the worker.

Read from the source with ``ast``: ``import``/``from`` statements (relative ones resolved), and modules
named by string to ``importlib.import_module``, ``__import__``, ``importlib.util.find_spec`` or
``runpy.run_module``, or as any other string that spells a module of the worker. Then a fresh
interpreter imports every builder module and must not have loaded the worker.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKER = "rp_handler"
BY_NAME = {"import_module", "__import__", "find_spec", "run_module"}
NAMES_A_MODULE = re.compile(rf"^{WORKER}(\.[A-Za-z_][\w.]*)?(:\w+)?$")


def _module_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module name) for every module ``source`` imports, statically or by a name string."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    docs = _docstrings(tree)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((node.lineno, base))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in BY_NAME and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                out.append((node.lineno, node.args[0].value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                and NAMES_A_MODULE.match(node.value.strip()):
            out.append((getattr(node, "lineno", 0), node.value.strip()))
    return out


def worker_imports_in(package: str) -> list[str]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        mod = _module_of(path, REPO)
        for line, name in imported_names(path.read_text(encoding="utf-8"), mod, path.name == "__init__.py"):
            if name == WORKER or name.startswith(WORKER + "."):
                found.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return found


def test_the_checker_sees_every_way_of_importing():
    src = ("import rp_handler.main\nfrom rp_handler import handler\nimport importlib\n"
           "importlib.import_module('rp_handler.localrun')\n__import__('rp_handler')\n"
           "TABLE = {'run-ui': 'rp_handler.localrun:run_ui'}\n"
           "def f():\n    '''Mentions rp_handler in prose only.'''\n    from ..rp_handler import x\n")
    names = [n for _, n in imported_names(src, "builder.sub.mod")]
    assert names.count("rp_handler.main") == 1 and "rp_handler" in names
    assert "rp_handler.localrun" in names and "rp_handler.localrun:run_ui" in names
    assert "builder.rp_handler" in names  # relative imports are resolved against the package


def test_builder_never_imports_the_worker():
    assert worker_imports_in("builder") == []


def test_importing_all_of_builder_loads_nothing_of_the_worker():
    modules = sorted(_module_of(p, REPO) for p in (REPO / "builder").rglob("*.py"))
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n    importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m == {WORKER!r} or m.startswith({WORKER + '.'!r})))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
