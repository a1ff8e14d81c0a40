"""Install Python requirements into the target interpreter, with uv when present.

One resolver run covers ComfyUI's ``requirements.txt``, every node's
``requirements.txt`` and the spec's ``python_packages``, so a later group cannot
silently downgrade an earlier one.  Constraints: the spec's ``pip_constraints``,
the versions of ``options.pin_installed`` (torch, torchvision, torchaudio by
default) already installed in the target interpreter, and the versions a
previous realize recorded in the lock.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import InstallError
from .proc import run_logged

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Installer:
    kind: str  # "uv" or "pip"
    argv: tuple[str, ...]


def find_installer(prefer: str = "auto") -> Installer:
    """uv (next to this interpreter, else on PATH) unless ``prefer == "pip"``; else pip."""
    if prefer in ("auto", "uv"):
        for cand in (Path(sys.executable).parent / "uv", shutil.which("uv")):
            if cand and Path(cand).is_file():
                return Installer("uv", (str(cand), "pip", "install"))
        if prefer == "uv":
            raise InstallError("uv was asked for but is not installed (pip install uv, or use --installer pip)")
    return Installer("pip", (sys.executable, "-m", "pip"))


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# Runs inside the target interpreter: stdlib only.
_VERSIONS_SNIPPET = r"""
import json, sys
from importlib import metadata
out = {}
for name in json.loads(sys.argv[1]):
    try:
        out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
print(json.dumps(out))
"""

_CLOSURE_SNIPPET = r"""
import json, re, sys
from importlib import metadata
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
dists = {}
for d in metadata.distributions():
    name = d.metadata["Name"]
    if name:
        dists.setdefault(norm(name), d)
done = {}
stack = [(norm(n), {norm(e) for e in extras}) for n, extras in json.loads(sys.argv[1])]
while stack:
    name, extras = stack.pop()
    dist = dists.get(name)
    if dist is None:
        continue
    first = name not in done
    new = extras - done.get(name, set())
    if not first and not new:
        continue
    done[name] = done.get(name, set()) | extras
    for req in dist.requires or []:
        spec, _, marker = req.partition(";")
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?", spec)
        if not m:
            continue
        wanted = {norm(e) for e in re.findall(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)}
        if wanted and not (wanted & new):
            continue
        if not wanted and not first:
            continue
        sub = {x.strip() for x in (m.group(2) or "[]")[1:-1].split(",") if x.strip()}
        stack.append((norm(m.group(1)), sub))
print(json.dumps({n: dists[n].version for n in done}, sort_keys=True))
"""


def _run_snippet(python: Path, snippet: str, arg: object) -> dict:
    try:
        proc = subprocess.run([str(python), "-I", "-c", snippet, json.dumps(arg)], capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise InstallError(f"target interpreter {python} does not exist (pass --python PATH)") from None
    if proc.returncode != 0:
        raise InstallError(f"target interpreter {python} failed to run: {_tail(proc.stderr)}")
    return json.loads(proc.stdout)


def installed_versions(python: Path, names: list[str]) -> dict[str, str]:
    """Versions of ``names`` installed in ``python`` (absent ones left out)."""
    return _run_snippet(python, _VERSIONS_SNIPPET, list(names)) if names else {}


def closure(python: Path, roots: list[tuple[str, list[str]]]) -> dict[str, str]:
    """name → version of every installed distribution reachable from ``roots``.

    Dependencies behind environment markers are followed when installed; ones behind
    ``extra ==`` markers only for requested extras.
    """
    return _run_snippet(python, _CLOSURE_SNIPPET, [list(r) for r in roots]) if roots else {}


def requirement_roots(files: list[Path], packages: list[str]) -> list[tuple[str, list[str]]]:
    """(name, extras) of every requirement in ``files`` (``-r`` followed) and ``packages``."""
    lines: list[str] = list(packages)
    seen: set[Path] = set()

    def read(path: Path) -> None:
        if path in seen or not path.is_file():
            return
        seen.add(path)
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith(("-r ", "--requirement ")):
                read(path.parent / line.split(None, 1)[1].strip())
                continue
            if line.startswith("-"):
                continue
            lines.append(line)

    for f in files:
        read(f)
    from packaging.requirements import InvalidRequirement, Requirement

    roots: dict[str, set[str]] = {}
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        roots.setdefault(normalize(req.name), set()).update(req.extras)
    return sorted((n, sorted(e)) for n, e in roots.items())


def constraint_lines(spec_constraints: list[str], pinned: dict[str, str], locked: dict[str, str]) -> list[str]:
    """Spec constraints win, then installed pins, then the lock's recorded versions."""
    from packaging.requirements import Requirement

    out: dict[str, str] = {}
    for line in spec_constraints:
        out.setdefault(normalize(Requirement(line).name), line)
    for name, version in sorted(pinned.items()):
        out.setdefault(normalize(name), f"{name}=={version}")
    for name, version in sorted(locked.items()):
        out.setdefault(normalize(name), f"{name}=={version}")
    return [out[k] for k in sorted(out)]


@dataclass(frozen=True)
class InstallRequest:
    python: Path
    requirement_files: tuple[Path, ...]
    packages: tuple[str, ...]
    constraints: tuple[str, ...]
    wheels_dir: Path | None = None
    offline: bool = False
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    pinned: tuple[str, ...] = ()  # names held at their installed version (for the error message)


def command(inst: Installer, req: InstallRequest, constraints_file: Path | None) -> list[str]:
    if inst.kind == "uv":
        cmd = [*inst.argv, "--python", str(req.python)]
    else:
        cmd = [*inst.argv, "--python", str(req.python), "install", "--disable-pip-version-check",
               "--no-input", "--progress-bar", "off"]
    for f in req.requirement_files:
        cmd += ["-r", str(f)]
    cmd += list(req.packages)
    if constraints_file:
        cmd += ["-c", str(constraints_file)]
    if req.wheels_dir:
        cmd += ["--no-index", "--find-links", str(req.wheels_dir)]
    else:
        if req.index_url:
            cmd += ["--index-url", req.index_url]
        for url in req.extra_index_urls:
            cmd += ["--extra-index-url", url]
        if req.extra_index_urls and inst.kind == "uv":
            cmd += ["--index-strategy", "unsafe-best-match"]  # pick versions across indexes like pip does
        if req.offline:
            cmd += ["--offline"] if inst.kind == "uv" else ["--no-index"]
    return cmd


def install(inst: Installer, req: InstallRequest) -> None:
    """Run one install; raise InstallError naming what failed."""
    if not req.requirement_files and not req.packages:
        return
    with tempfile.TemporaryDirectory(prefix="version-py-") as tmp:
        cfile = None
        if req.constraints:
            cfile = Path(tmp) / "constraints.txt"
            cfile.write_text("\n".join(req.constraints) + "\n", encoding="utf-8")
        cmd = command(inst, req, cfile)
        log.info("installing %d requirement file(s) and %d package(s) with %s into %s",
                 len(req.requirement_files), len(req.packages), inst.kind, req.python)
        try:
            proc = run_logged(cmd, what=f"{inst.kind} install", timeout=7200)
        except subprocess.TimeoutExpired:
            raise InstallError(f"{inst.kind} install did not finish within 2 h (check the network or use --wheels-dir)") from None
        except FileNotFoundError:
            raise InstallError(f"{inst.kind} could not be started ({cmd[0]}); install it or use --installer pip") from None
    if proc.returncode != 0:
        hint = "check the package names/versions"
        if req.wheels_dir:
            hint = f"add the missing wheels to {req.wheels_dir}"
        elif req.offline:
            hint = "run once online, or pass --wheels-dir"
        if req.pinned:
            hint += f"; {', '.join(req.pinned)} stay at their installed versions (options.pin_installed)"
        what = ", ".join([f.parent.name + "/" + f.name for f in req.requirement_files] + list(req.packages))
        raise InstallError(f"{inst.kind} install failed for {what}: {_tail(proc.stderr or proc.stdout)} ({hint})")
    log.debug("%s output: %s", inst.kind, (proc.stderr or "")[-2000:])


def run_install_py(python: Path, node_dir: Path) -> None:
    """Run a node's own install.py (only for nodes with ``run_install_py: true``)."""
    script = node_dir / "install.py"
    if not script.is_file():
        raise InstallError(f"{node_dir.name}: run_install_py is true but the node has no install.py "
                           "(set run_install_py to false)")
    log.info("running %s", script)
    try:
        proc = run_logged([str(python), "install.py"], what=f"{node_dir.name}/install.py", timeout=3600, cwd=node_dir)
    except subprocess.TimeoutExpired:
        raise InstallError(f"{node_dir.name}/install.py did not finish within 1 h (set run_install_py to false)") from None
    if proc.returncode != 0:
        raise InstallError(f"{node_dir.name}/install.py failed (exit {proc.returncode}): {_tail(proc.stderr or proc.stdout)} "
                           "(fix the node, or set run_install_py to false)")


def _tail(text: str, n: int = 2) -> str:
    """The installer's error lines (uv: error/cause/hint; pip: ERROR), else its last line, as one line."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    errs = [ln for ln in lines if re.match(r"^(error|ERROR|cause|×|╰─▶|Because|hint)", ln)]
    pick = errs[:n] if errs else lines[-1:]
    return " ".join(pick)[:600] if pick else "(no output)"
