"""Entry points run in an interpreter that has the pinned dependencies (stdlib only here).

The rule, for every Python entry point (``scripts/*.py``, ``python -m rp_handler``): when the
interpreter that runs it lacks the packages of requirements/runtime.in (plain ``python3`` on a
fresh clone), it re-executes itself with the project's ``.venv/bin/python``, creating ``.venv``
first with ``scripts/bootstrap.sh`` when there is none. An interpreter that has them (the
project's ``.venv``, the Docker image's Python) runs the command as is.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV = REPO_ROOT / ".venv"
# Import names of requirements/runtime.in (tests/unit/test_docs_lint.py keeps the two in step).
REQUIRED = ("runpod", "websocket", "requests", "google.cloud.storage", "huggingface_hub", "orjson",
            "tenacity", "yaml", "PIL")


def missing_modules(modules: Sequence[str] = REQUIRED) -> list[str]:
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is missing (google.cloud)
            found = False
        if not found:
            missing.append(name)
    return missing


def running_in_project_venv() -> bool:
    try:
        return Path(sys.prefix).resolve() == VENV.resolve()
    except OSError:
        return False


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def ensure_project_python(argv: Sequence[str]) -> None:
    """Return when this interpreter has the dependencies; else exec ``.venv/bin/python *argv``."""
    missing = missing_modules()
    if not missing:
        return
    if running_in_project_venv():
        _fail(f"{VENV} lacks {', '.join(missing)}: run `scripts/bootstrap.sh` (or delete .venv and rerun)")
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"{sys.executable} lacks {', '.join(missing)}: creating {VENV} with scripts/bootstrap.sh "
              "(once; needs PyPI)", file=sys.stderr)
        done = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=REPO_ROOT)
        if done.returncode != 0 or not python.exists():
            _fail(f"scripts/bootstrap.sh could not create {VENV} (exit {done.returncode}); "
                  "check PyPI access (or PIP_INDEX_URL for a mirror) and rerun")
    os.execv(str(python), [str(python), *argv])


def ensure_for_script(script: str) -> None:
    """For ``scripts/<name>.py``: re-exec that script with the same arguments when needed."""
    ensure_project_python([script, *sys.argv[1:]])


def ensure_for_module(module: str) -> None:
    """For ``python -m <module>``."""
    ensure_project_python(["-m", module, *sys.argv[1:]])
