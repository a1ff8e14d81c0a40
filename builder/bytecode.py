"""Compile ComfyUI, its custom nodes and the target's site-packages to ``.pyc`` at build time.

A container started from an image without ``.pyc`` files compiles every module it
imports, on every cold start (``import torch`` 6.4 s instead of 2.6 s here).  Realize
therefore runs ``python -m compileall`` with the *target* interpreter (its magic
number and paths), in parallel (``-j 0``), over three kinds of scope:

* ``ComfyUI``: the checkout, minus ``.git``, the custom node folders and any
  site-packages that live inside it;
* each custom node of the lock (``custom_nodes/<name>``);
* ``site-packages``: the target's ``purelib`` and ``platlib``.

The ``.pyc`` files are ``checked-hash`` (see :data:`MODE`): valid whatever the
files' mtimes become in an image layer or a copy, and still rebuilt by Python
when a source really changes.  What was compiled is recorded in the state file
(per checkout SHA, and a digest of the installed distributions), so a second
realize plans no compile.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
from pathlib import Path

from .errors import InstallError
from .proc import run_logged

log = logging.getLogger(__name__)

# checked-hash: the .pyc holds a hash of its source; Python re-reads and hashes the
# source on import (cheap) instead of comparing mtimes, so a copy or an image layer
# that changes mtimes does not make every .pyc stale, and an edited source is still
# recompiled.  Measured against timestamp/unchecked-hash in docs/benchmarks.md.
MODE = "checked-hash"
SITE = "site-packages"
COMFY = "ComfyUI"



def node_target(name: str) -> str:
    return f"custom_nodes/{name}"


_SITE_SNIPPET = ("import json, sysconfig; p = sysconfig.get_paths(); "
                 "print(json.dumps(sorted({p['purelib'], p['platlib']})))")


def site_dirs(python: Path) -> list[Path]:
    """The target interpreter's purelib and platlib (one entry when they are the same)."""
    try:
        proc = subprocess.run([str(python), "-I", "-c", _SITE_SNIPPET], capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise InstallError(f"target interpreter {python} does not exist (pass --python PATH)") from None
    if proc.returncode != 0:
        raise InstallError(f"target interpreter {python} failed to report its site-packages: "
                           f"{(proc.stderr.strip().splitlines() or ['(no output)'])[-1]}")
    return [Path(p) for p in json.loads(proc.stdout)]


def packages_digest(dirs: list[str] | list[Path]) -> str:
    """Digest of the distributions installed in ``dirs`` (their ``*.dist-info``/``*.egg-info`` names).

    Reads directory listings only: cheap enough for every realize, no subprocess.
    """
    names = []
    for d in dirs:
        try:
            with os.scandir(d) as it:
                names += [f"{d}/{e.name}" for e in it if e.name.endswith((".dist-info", ".egg-info", ".pth"))]
        except OSError:
            names.append(f"{d}/<missing>")
    return "sha256:" + hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def _under(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def comfy_exclude(home: Path, inner_site: list[Path]) -> str:
    """compileall ``-x`` regex for the ComfyUI scope: .git, node folders, site-packages inside home."""
    parts = [re.escape(str(home)) + r"/custom_nodes/[^/]+/", r"/\.git/"]
    parts += [re.escape(str(d)) + "/" for d in inner_site]
    return "|".join(f"(?:{p})" for p in parts)


def compile_command(python: Path, paths: list[Path], exclude: str | None, *, mode: str = MODE) -> list[str]:
    """``python -I -m compileall -q -f -j 0 --invalidation-mode MODE [-x RX] PATHS``.

    ``-I`` keeps PYTHONPYCACHEPREFIX and friends from sending the files elsewhere.  ``-f``:
    compileall skips a file whose .pyc has a matching *timestamp* header whatever the
    mode asked for, so timestamp .pyc left by pip, ``uv --compile-bytecode`` or an
    earlier start would stay; a hash mode rewrites every file anyway.
    """
    cmd = [str(python), "-I", "-m", "compileall", "-q", "-f", "-j", "0", "--invalidation-mode", mode]
    if exclude:
        cmd += ["-x", exclude]
    return cmd + [str(p) for p in paths]


def _failures(output: str) -> list[str]:
    """Files compileall could not compile (its ``*** Error compiling '…'...`` lines under ``-q``)."""
    return sorted({m.group(2) for m in re.finditer(r"\*\*\* Error compiling (['\"])(.+?)\1\.\.\.", output)})


def run_compileall(python: Path, paths: list[Path], exclude: str | None, *, what: str, mode: str = MODE) -> int:
    """Compile ``paths``; return how many files failed (a syntax error in a package is a warning)."""
    paths = [p for p in paths if p.is_dir()]
    if not paths:
        return 0
    cmd = compile_command(python, paths, exclude, mode=mode)
    try:
        proc = run_logged(cmd, what=f"compileall ({what})", timeout=3600, start_new_session=True)
    except FileNotFoundError:
        raise InstallError(f"target interpreter {python} does not exist (pass --python PATH)") from None
    except subprocess.TimeoutExpired:
        raise InstallError(f"compiling {what} to .pyc did not finish within 1 h") from None
    out = (proc.stdout or "") + (proc.stderr or "")
    failed = _failures(out)
    if proc.returncode != 0 and not failed:
        tail = (out.strip().splitlines() or ["(no output)"])[-1]
        raise InstallError(f"compileall failed for {what} with {python}: {tail[:300]}")
    if failed:
        log.warning("%d file(s) in %s could not be compiled to .pyc (left as source; Python reports the same "
                    "error if it imports them), e.g. %s", len(failed), what, failed[0])
    return len(failed)


def compile_targets(python: Path, home: Path, targets: list[str] | tuple[str, ...], *, mode: str = MODE) -> dict:
    """Compile the named scopes (``ComfyUI``, ``custom_nodes/<name>``, ``site-packages``).

    Returns the facts to record: the target's ``site_dirs`` and ``packages``
    (see :func:`packages_digest`), measured after the compile.
    """
    dirs = site_dirs(python)
    if COMFY in targets:
        inner = [d for d in dirs if _under(d, home)]
        run_compileall(python, [home], comfy_exclude(home, inner), what=COMFY, mode=mode)
    rest = [home / t for t in targets if t.startswith("custom_nodes/")]
    if SITE in targets:
        rest += dirs
    names = ", ".join(t for t in targets if t != COMFY)
    if rest:
        run_compileall(python, rest, r"/\.git/", what=names, mode=mode)
    return {"site_dirs": [str(d) for d in dirs], "packages": packages_digest(dirs)}
