"""Docs lint: every command, path, flag and environment variable named in README.md and docs/*.md
exists, so the documents cannot drift from the code without failing CI.

What is checked, per document:
- shell commands in ```bash / ``` blocks (continuations joined, comments dropped): a command we
  own (``scripts/…``, ``python3 scripts/…``, ``.venv/bin/python …``, ``python3 -m rp_handler``)
  names an existing file, an existing ``version.py`` subcommand, and only flags that the matching
  argparse parser (or build_docker.sh's ``case``) accepts; ``NAME=value`` prefixes and ``-e NAME=``
  are environment variables; plain ``python`` or ``python3`` running anything but an entry point
  that re-executes itself in .venv (builder/entry.py) is refused: use ``.venv/bin/python``;
- inline code naming a version.py subcommand with flags (the CLI table): those flags;
- repository paths in inline code, commands and relative links: they exist;
- environment variables in inline code and commands: in the table the project reads
  (``rp_handler.config.ALL_ENV``), or read by the file named in ``OTHER_ENV``, or set for another
  program (``FOREIGN_ENV``).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import runpy
import shlex
from functools import lru_cache
from pathlib import Path

import pytest

from builder.cli import build_parser
from builder.entry import REQUIRED
from builder.models.cli import build_parser as verify_parser
from rp_handler.config import ALL_ENV
from rp_handler.localrun import _handler_parser, _ui_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "workflows" / "README.md"]
TOP = ("builder", "rp_handler", "scripts", "tests", "docs", "workflows", "versions", "bench", "comfy_nodes",
       "requirements")
# Read (or, for constants, defined) by a file other than the config modules; checked: the file names it.
OTHER_ENV = {
    "RUNPOD_API_KEY": "scripts/submit.py", "VERSION_ID": "scripts/quickstart.sh", "COMFY_VENV": "scripts/quickstart.sh",
    "COMFYUI_DIR": "tests/helpers.py", "COMFYUI_PYTHON": "tests/helpers.py", "REAL_E2E": "tests/e2e/test_real_quickstart.py",
    "FAULT_TRIALS": "tests/faults/harness.py", "IMAGE": "docker-compose.yml",
    "FAKE_COMFY_BOOT_DELAY_S": "tests/fakes/comfyui/main.py", "FAKE_COMFY_FAULTS": "tests/fakes/comfyui/main.py",
    "RUNPOD_ENDPOINT_ID": "tests/faults/fake_job_api.py",
    "CORE_LOADER_FOLDERS": "rp_handler/cache/refs.py", "MADV_DONTNEED": "builder/models/checksum.py",
    "LEASE_S": "rp_handler/cache/leases.py", "DOCKER_E2E": "tests/docker/test_image_e2e.py",
    "DOCKER_E2E_KEEP": "tests/docker/test_image_e2e.py", "DOCKER_E2E_REPORT": "tests/docker/test_image_e2e.py",
}
# Set for another program (runpod, ComfyUI, Python, pip/uv, docker, CUDA, the OS).
FOREIGN_ENV = {
    "HOME", "PATH", "PYTHONPATH", "PYTHONPYCACHEPREFIX", "PYTHONUNBUFFERED", "SOURCE_DATE_EPOCH", "UV_CACHE_DIR",
    "UV_COMPILE_BYTECODE", "UV_LINK_MODE", "PIP_CONSTRAINT", "UV_CONSTRAINT", "PIP_FIND_LINKS", "UV_FIND_LINKS",
    "PIP_INDEX_URL", "HF_HOME", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "CUDA_VISIBLE_DEVICES",
    "DOCKER_BUILDKIT", "BUILDKIT_PROGRESS", "RUNPOD_POD_ID", "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "RUNPOD_WEBHOOK_PING",
    "RUNPOD_WEBHOOK_GET_JOB", "RUNPOD_AI_API_KEY", "RUNPOD_DEBUG_LEVEL", "RUNPOD_REALTIME_PORT", "PR_SET_PDEATHSIG",
    "BUILDKIT_SYNTAX",
}
VERSION_PY = ("scripts/version.py",)
SELF_REEXEC = {"scripts/version.py", "scripts/verify_models.py", "scripts/submit.py", "scripts/env_table.py"}
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
PATH_TOKEN = re.compile(rf"^(?:{'|'.join(TOP)})/[\w.@/-]*$")


# --- the parsers the docs may name -----------------------------------------------------
def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def version_parser():
    """scripts/version.py's parser: builder.cli's commands plus the worker's, as the script names them."""
    worker_commands = runpy.run_path(str(REPO / "scripts" / "version.py"), run_name="version_for_lint")
    return build_parser(worker_commands["WORKER_COMMANDS"])


@lru_cache(maxsize=None)
def parsers() -> dict[str, set[str]]:
    """Command key → the flags its argparse parser accepts."""
    out: dict[str, set[str]] = {"version.py": _flags(version_parser())}
    subs = version_parser()._subparsers._group_actions[0].choices
    for name, sub in subs.items():
        out[f"version.py {name}"] = _flags(sub) | out["version.py"]
    out["version.py run-handler"] |= _flags(_handler_parser())
    out["version.py run-ui"] |= _flags(_ui_parser())
    out["version.py verify-models"] |= _flags(verify_parser())
    out["verify_models.py"] = _flags(verify_parser())
    spec = importlib.util.spec_from_file_location("submit_for_lint", REPO / "scripts" / "submit.py")
    submit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submit)
    out["submit.py"] = _flags(submit.build_parser())
    from runpod.serverless import parser as runpod_parser  # what `python -m rp_handler` accepts
    out["rp_handler"] = _flags(runpod_parser) | {"-h", "--help"}
    script = (REPO / "scripts" / "build_docker.sh").read_text()
    out["build_docker.sh"] = set(re.findall(r"^\s*(--[a-z-]+)\)", script, re.M)) | {"-h", "--help"}
    out["env_table.py"] = {"--write", "-h", "--help"}
    return out


@lru_cache(maxsize=1)
def existing_test_files() -> set[str]:
    return {p.name for p in (REPO / "tests").rglob("test_*.py")}


@lru_cache(maxsize=1)
def subcommands() -> frozenset[str]:
    return frozenset(version_parser()._subparsers._group_actions[0].choices)


# --- extraction ------------------------------------------------------------------------
def shell_commands(text: str) -> list[str]:
    """Commands in bash / unlabelled fenced blocks: continuations joined, split at && || ; |."""
    out = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if lang not in ("bash", "sh", ""):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"^\s*(\d+\.\s+|\$\s+)", "", line)
            out += [part.strip() for part in re.split(r"\s(?:&&|\|\||;|\|)\s", line) if part.strip()]
    return out


def inline_code(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", text)


def words(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # an unbalanced quote in a synopsis: fall back to whitespace
        return command.split("#", 1)[0].split()


# --- checks ----------------------------------------------------------------------------
@lru_cache(maxsize=1)
def docker_args() -> set[str]:
    return set(re.findall(r"^ARG (\w+)", (REPO / "Dockerfile").read_text(encoding="utf-8"), re.M))


def check_env(name: str, where: str) -> list[str]:
    if name in {v.name for v in ALL_ENV} or name in FOREIGN_ENV or name in docker_args():
        return []
    reader = OTHER_ENV.get(name)
    if reader and name in (REPO / reader).read_text(encoding="utf-8"):
        return []
    return [f"{where}: environment variable {name} is read nowhere (not in rp_handler.config.ALL_ENV, "
            "OTHER_ENV or FOREIGN_ENV of tests/unit/test_docs_lint.py)"]


def check_path(token: str, where: str, base: Path = REPO) -> list[str]:
    token = token.rstrip(".,:;)").split("#", 1)[0]
    if not token or any(c in token for c in "<>*…{}$[") or "..." in token:
        return []
    if not (base / token).exists() and not (REPO / token).exists():
        return [f"{where}: {token} does not exist"]
    return []


def check_flags(key: str, argv: list[str], where: str) -> list[str]:
    known = parsers()[key]
    problems = []
    for word in argv:
        if word == "--":
            break  # the rest goes to another program (ComfyUI, docker build)
        flag = word.lstrip("[(").rstrip("])|,").split("=", 1)[0]
        if re.fullmatch(r"--?[a-zA-Z][\w-]*", flag) and flag not in known:
            problems.append(f"{where}: {key} has no option {flag}")
    return problems


def owned_command(argv: list[str]) -> tuple[str, list[str], bool] | None:
    """(script path, its arguments, plain-python?) for a command that runs our code, else None."""
    if not argv:
        return None
    prog, rest = argv[0], argv[1:]
    plain = prog in ("python", "python3")
    if plain or prog.endswith(".venv/bin/python"):
        if rest[:2] == ["-m", "rp_handler"]:
            return "-m rp_handler", rest[2:], False
        if rest[:2] == ["-m", "pytest"]:
            return "-m pytest", rest[2:], plain
        if rest and rest[0].endswith(".py") and PATH_TOKEN.match(rest[0]):
            return rest[0], rest[1:], plain and rest[0] not in SELF_REEXEC
        return None  # the standard library (-m venv, -c ...) or another program's file (ComfyUI's main.py)
    if prog == "pytest":
        return "-m pytest", rest, True
    if prog.startswith(("scripts/", "bench/", "./scripts/")):
        return prog.removeprefix("./"), rest, False
    return None


def check_command(command: str, where: str) -> list[str]:
    argv = words(command)
    problems = []
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):  # NAME=value prefixes
        problems += check_env(argv.pop(0).split("=", 1)[0], where)
    if argv[:1] == ["export"]:
        return problems + [p for w in argv[1:] if "=" in w for p in check_env(w.split("=", 1)[0], where)]
    if argv[:1] == ["docker"]:
        for i, w in enumerate(argv[:-1]):
            if w == "-e" and "=" in argv[i + 1]:
                problems += check_env(argv[i + 1].split("=", 1)[0], where)
    owned = owned_command(argv)
    if owned is None:
        return problems + [p for w in argv if PATH_TOKEN.match(w) for p in check_path(w, where)]
    script, rest, plain = owned
    if plain:
        problems.append(f"{where}: `{command}` runs with a plain python that lacks the pinned packages; "
                        "write .venv/bin/python (only scripts/*.py and -m rp_handler re-exec themselves)")
    if script == "-m rp_handler":
        return problems + check_flags("rp_handler", rest, where)
    if script.startswith("-m "):
        return problems
    problems += check_path(script, where)
    name = Path(script).name
    if script in VERSION_PY:
        sub = next((w for w in rest if not w.startswith("-")), None)
        if sub is None:
            return problems + check_flags("version.py", rest, where)
        if sub not in subcommands():
            return problems + [f"{where}: version.py has no subcommand {sub!r}"]
        problems += check_flags(f"version.py {sub}", rest, where)
    elif name in parsers():
        problems += check_flags(name, rest, where)
    return problems + [p for w in rest if PATH_TOKEN.match(w) for p in check_path(w, where)]


def lint(name: str, text: str, base: Path = REPO) -> list[str]:
    """Every problem in one document's text."""
    problems: list[str] = []
    for command in shell_commands(text):
        problems += check_command(command, f"{name}: `{command[:70]}`")
    for code in inline_code(text):
        where = f"{name}: `{code[:70]}`"
        first = code.split()[0] if code.split() else ""
        if re.match(r"(python3?|\.venv/bin/python|scripts/\w+\.(py|sh)|pytest) ", code):
            problems += check_command(code, where)  # a command in running text
        elif first in subcommands() and re.search(r"(^|[\s\[(])--\w", code):
            problems += check_flags(f"version.py {first}", words(code)[1:], where)
        for token in code.split():
            token = token.strip("`'\",;:()")
            if ENV_NAME.match(token.split("=", 1)[0]):
                problems += check_env(token.split("=", 1)[0], where)
            elif PATH_TOKEN.match(token):
                problems += check_path(token, where)
            elif re.fullmatch(r"test_\w+\.py", token) and token not in existing_test_files():
                problems.append(f"{where}: no test file {token} under tests/")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            problems += check_path(target, f"{name}: link {target}", base)
    return problems


# --- tests -----------------------------------------------------------------------------
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_name_in_the_docs_exists(doc):
    problems = lint(str(doc.relative_to(REPO)), doc.read_text(encoding="utf-8"), doc.parent)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("original, changed, says", [
    ("--out-file out.png", "--out-fil out.png", "version.py run-handler has no option --out-fil"),
    ("(workflows/README.md)", "(workflows/READ.md)", "workflows/READ.md does not exist"),
    ("`comfy_nodes/nvme_cache/`", "`comfy_nodes/nvme/`", "comfy_nodes/nvme/ does not exist"),
    ("COMFY_PYTHON=~", "COMFY_PYTHN=~", "environment variable COMFY_PYTHN is read nowhere"),
    ("--rp_api_port 8000", "--rp-api-port 8000", "rp_handler has no option --rp-api-port"),
    ("lock --check sdxl-base", "lock --chek sdxl-base", "version.py lock has no option --chek"),
    ("version.py validate", "version.py validat", "version.py has no subcommand 'validat'"),
    ("--template cpu_invert", "--templ cpu_invert", "submit.py has no option --templ"),
    ("python3 scripts/version.py validate sdxl-base", "python3 -m pytest tests/unit",
     "runs with a plain python that lacks the pinned packages"),
])
def test_a_changed_name_in_the_readme_fails_the_lint(original, changed, says):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert original in text
    problems = lint("README.md", text.replace(original, changed, 1))
    assert any(says in p for p in problems), problems


@pytest.mark.parametrize("doc, original, changed, says", [
    ("docs/worker.md", "`COMFY_BOOT_TIMEOUT_S`", "`COMFY_BOOT_TIMEOUT_SEC`", "COMFY_BOOT_TIMEOUT_SEC is read nowhere"),
    ("docs/worker.md", "`test_real_comfy_worker.py`", "`test_real_comfy.py`", "no test file test_real_comfy.py"),
    ("docs/worker.md", "--extra-args", "--extra-argz", "version.py run-ui has no option --extra-argz"),
    ("docs/builder.md", "[--wheels-dir D]", "[--wheel-dir D]", "version.py realize has no option --wheel-dir"),
    ("docs/runpod.md", "--mode hybrid", "--flavour hybrid", "build_docker.sh has no option --flavour"),
])
def test_a_changed_name_in_a_doc_fails_the_lint(doc, original, changed, says):
    path = REPO / doc
    text = path.read_text(encoding="utf-8")
    assert original in text
    problems = lint(doc, text.replace(original, changed, 1), path.parent)
    assert any(says in p for p in problems), problems


def test_entry_requirements_match_runtime_in():
    """builder.entry re-execs when one of runtime.in's packages is missing: keep the lists in step."""
    names = [ln.split("#")[0].strip() for ln in (REPO / "requirements" / "runtime.in").read_text().splitlines()]
    import_names = {"websocket-client": "websocket", "google-cloud-storage": "google.cloud.storage",
                    "PyYAML": "yaml", "huggingface_hub": "huggingface_hub", "Pillow": "PIL"}
    assert sorted(import_names.get(n, n) for n in names if n) == sorted(REQUIRED)
