"""Benchmark: a real ComfyUI's boot without .pyc, with Python's own .pyc, and with ours.

Needs a real ComfyUI checkout and the venv it runs in::

    COMFYUI_DIR=/path/ComfyUI COMFYUI_PYTHON=/path/venv/bin/python python bench/bytecode_bench.py

(skips with a message when they are not set).  Nothing in them is changed: the
checkout and the whole venv are copied (``cp -a``, mtimes kept) under /tmp, and
every ``__pycache__`` of the copies (ComfyUI and site-packages) is deleted, which is
exactly the state ``uv pip install`` without ``--compile-bytecode`` leaves.  Each
round then measures boot = spawn of ``main.py --cpu`` → first 200 on
``/system_stats``:

(a) no .pyc at all, first start (Python compiles and writes what it imports);
(b) the second start after (a): the baseline, Python's own .pyc;
(c) the .pyc deleted again, ``builder.bytecode.compile_targets`` run (the realize
    step), first start;
(d) after (c), every source's mtime moved (as a copy without ``-p`` or an image
    layer with rewritten timestamps does), first start.

Prints medians and the ratios (c)/(b) (goal <= 1.05), (a)/(b) and (d)/(b), the
compile time and how many .pyc each start wrote.  Every boot starts after ``sync``, so
writeback of just-written .pyc does not compete with it (an image is built long before
it starts).  The copies are deleted afterwards.

With ``--uv`` it instead measures, in fresh venvs filled from uv's cache
(``uv pip freeze`` of COMFYUI_PYTHON; one untimed install fills the cache, the
timed ones run ``--offline``), ``uv pip install`` + our
site-packages compile without and with uv's own ``--compile-bytecode``.

With ``--import-cost CODE`` it times ``python -c CODE`` in COMFYUI_PYTHON with
timestamp, checked-hash and unchecked-hash .pyc of its site-packages, kept apart under
``-X pycache_prefix`` dirs (the venv itself is not touched), interleaved.

Usage: python bench/bytecode_bench.py [--repeat 3] [--mode checked-hash|timestamp|unchecked-hash]
       [--uv | --import-cost "import torch"]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder import bytecode  # noqa: E402
from rp_handler.process import free_port  # noqa: E402

log = logging.getLogger("bytecode_bench")


def venv_prefix(python: Path) -> Path:
    code = "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix]))"
    prefix, base = json.loads(subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True,
                                             check=True).stdout)
    if prefix == base:
        raise SystemExit("COMFYUI_PYTHON must be a venv's python: the bench copies the venv to delete its .pyc")
    return Path(prefix)


def pycache_dirs(roots: list[Path]) -> list[Path]:
    out = []
    for root in roots:
        for dirpath, dirnames, _ in os.walk(root):
            if "__pycache__" in dirnames:
                out.append(Path(dirpath) / "__pycache__")
            dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".git")]
    return out


def clear_pyc(roots: list[Path]) -> None:
    for d in pycache_dirs(roots):
        shutil.rmtree(d)


def count_pyc(roots: list[Path]) -> int:
    return sum(1 for d in pycache_dirs(roots) for f in os.listdir(d) if f.endswith(".pyc"))


def move_mtimes(roots: list[Path], seconds: int) -> int:
    n = 0
    for root in roots:
        for dirpath, dirnames, files in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".git")]
            for f in files:
                if f.endswith(".py"):
                    p = os.path.join(dirpath, f)
                    st = os.stat(p)
                    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))
                    n += 1
    return n


def boot(python: Path, comfy: Path, work: Path, tag: str, deadline_s: float = 300) -> float:
    """Seconds from spawn to the first 200 on /system_stats; then stop ComfyUI."""
    port = free_port()
    dirs = {k: work / "run" / k for k in ("temp", "output", "user", "input")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    cmd = [str(python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           "--temp-directory", str(dirs["temp"]), "--output-directory", str(dirs["output"]),
           "--user-directory", str(dirs["user"]), "--input-directory", str(dirs["input"])]
    os.sync()  # no writeback of just-written .pyc competing with the boot (an image is built long before)
    logf = open(work / f"boot-{tag}.log", "wb")
    url = f"http://127.0.0.1:{port}/system_stats"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=comfy, env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        last_log = t0
        while True:
            now = time.perf_counter()
            if proc.poll() is not None:
                raise SystemExit(f"ComfyUI exited with {proc.returncode} during boot; see {logf.name}")
            if now - t0 > deadline_s:
                raise SystemExit(f"ComfyUI not ready after {deadline_s} s; see {logf.name}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                pass
            if now - last_log > 15:
                log.info("still waiting for ComfyUI (%s) after %.0f s", tag, now - t0)
                last_log = now
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logf.close()


def uv_compare(python_in: Path, work: Path, repeat: int, mode: str) -> None:
    """uv install + our compile, without and with ``uv --compile-bytecode`` (fresh venvs, uv's cache)."""
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    freeze = subprocess.run([uv, "pip", "freeze", "--python", str(python_in)], capture_output=True, text=True,
                            check=True).stdout
    reqs = work / "freeze.txt"
    reqs.write_text(freeze)
    base = subprocess.run([str(python_in), "-c", "import sys; print(sys._base_executable)"], capture_output=True,
                          text=True, check=True).stdout.strip()
    warm = work / "uv-warm"  # fills uv's cache (the packages pip put there come from the index once)
    subprocess.run([uv, "venv", "-q", "--python", base, str(warm)], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(warm / "bin" / "python"), "-r", str(reqs)], check=True)
    shutil.rmtree(warm)
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for i in range(repeat):
        for flag in (False, True):
            venv = work / f"uv-{i}-{int(flag)}"
            subprocess.run([uv, "venv", "-q", "--python", base, str(venv)], check=True)
            py = venv / "bin" / "python"
            cmd = [uv, "pip", "install", "-q", "--python", str(py), "--offline", "-r", str(reqs)]
            os.sync()
            t0 = time.perf_counter()
            subprocess.run(cmd + (["--compile-bytecode"] if flag else []), check=True)
            t1 = time.perf_counter()
            bytecode.compile_targets(py, work / "no-comfy", [bytecode.SITE], mode=mode)
            t2 = time.perf_counter()
            times[flag].append((t1 - t0, t2 - t1))
            log.info("uv round %d, --compile-bytecode=%s: install %.1f s, our compile %.1f s", i + 1, flag,
                     t1 - t0, t2 - t1)
            shutil.rmtree(venv)
    med = {f: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for f, v in times.items()}
    plain, comp = sum(med[False]), sum(med[True])
    n = len([ln for ln in freeze.splitlines() if ln.strip()])
    print(f"fresh venv, {n} packages from uv's cache, {repeat} runs, median: uv install {med[False][0]:.1f} s + "
          f"our compile ({mode}) {med[False][1]:.1f} s = {plain:.1f} s (baseline); with uv --compile-bytecode: "
          f"{med[True][0]:.1f} s + {med[True][1]:.1f} s = {comp:.1f} s, ratio {comp / plain:.3f}")


def import_cost(python_in: Path, work: Path, repeat: int, code: str) -> None:
    """``python -c CODE`` with timestamp vs checked-hash vs unchecked-hash .pyc, interleaved.

    Each mode's .pyc live under their own ``-X pycache_prefix`` (nothing in the venv is
    touched); one warm-up run per mode, then ``repeat`` interleaved runs.
    """
    modes = ("timestamp", "checked-hash", "unchecked-hash")
    site = bytecode.site_dirs(python_in)
    for mode in modes:
        prefix = work / f"prefix-{mode}"
        subprocess.run([str(python_in), "-X", f"pycache_prefix={prefix}", "-m", "compileall", "-q", "-j", "0",
                        "--invalidation-mode", mode, *map(str, site)], capture_output=True)
        subprocess.run([str(python_in), "-X", f"pycache_prefix={prefix}", "-c", code], check=True, capture_output=True)
    got: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}  # the child's user + system time: robust to a busy box
    for i in range(repeat):
        for mode in (modes if i % 2 == 0 else modes[::-1]):
            os.sync()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run([str(python_in), "-X", f"pycache_prefix={work / f'prefix-{mode}'}", "-c", code],
                           check=True, capture_output=True)
            got[mode].append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[mode].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    for what, data in (("wall", got), ("CPU", cpu)):
        med = {m: statistics.median(v) for m, v in data.items()}
        print(f"python -c {code!r}, {repeat} interleaved runs, median {what}: timestamp .pyc {med['timestamp']:.2f} s "
              f"(baseline), checked-hash {med['checked-hash']:.2f} s (ratio {med['checked-hash'] / med['timestamp']:.3f}), "
              f"unchecked-hash {med['unchecked-hash']:.2f} s (ratio {med['unchecked-hash'] / med['timestamp']:.3f}); "
              f"unchecked / checked {med['unchecked-hash'] / med['checked-hash']:.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mode", default=bytecode.MODE, choices=("checked-hash", "timestamp", "unchecked-hash"))
    ap.add_argument("--phases", default="abcd", help="which of a, b, c, d to run (b is the baseline)")
    ap.add_argument("--uv", action="store_true", help="compare uv install + compile with/without --compile-bytecode")
    ap.add_argument("--import-cost", metavar="CODE", help="time `python -c CODE` with each .pyc mode instead")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    comfy_dir, python_in = os.environ.get("COMFYUI_DIR"), os.environ.get("COMFYUI_PYTHON")
    if not comfy_dir or not python_in:
        print("skipped: set COMFYUI_DIR (a real ComfyUI checkout) and COMFYUI_PYTHON (its venv's python)")
        return 0
    prefix = venv_prefix(Path(python_in))
    work = Path(tempfile.mkdtemp(prefix="bytecode-bench-", dir="/tmp"))
    try:
        if args.uv:
            uv_compare(Path(python_in), work, args.repeat, args.mode)
            return 0
        if args.import_cost:
            import_cost(Path(python_in), work, args.repeat, args.import_cost)
            return 0
        comfy = work / "ComfyUI"
        subprocess.run(["cp", "-a", comfy_dir, str(comfy)], check=True)
        subprocess.run(["cp", "-a", str(prefix), str(work / "venv")], check=True)
        python = work / "venv" / Path(python_in).relative_to(prefix)
        site = bytecode.site_dirs(python)
        if not all(str(d).startswith(str(work)) for d in site):
            raise SystemExit(f"the copied venv still points elsewhere: {site}")
        roots = [comfy, *site]
        res: dict[str, list[float]] = {k: [] for k in ("a", "b", "c", "d", "compile")}
        writes: dict[str, list[int]] = {k: [] for k in ("a", "c", "d")}
        for i in range(args.repeat):
            clear_pyc(roots)
            if "a" in args.phases:
                before = count_pyc(roots)
                res["a"].append(boot(python, comfy, work, f"a{i}"))
                writes["a"].append(count_pyc(roots) - before)
            if "b" in args.phases:
                if "a" not in args.phases:
                    boot(python, comfy, work, f"warm{i}")
                res["b"].append(boot(python, comfy, work, f"b{i}"))
            if "c" in args.phases or "d" in args.phases:
                clear_pyc(roots)
                t0 = time.perf_counter()
                bytecode.compile_targets(python, comfy, [bytecode.COMFY, bytecode.SITE], mode=args.mode)
                res["compile"].append(time.perf_counter() - t0)
                before = count_pyc(roots)
                res["c"].append(boot(python, comfy, work, f"c{i}"))
                writes["c"].append(count_pyc(roots) - before)
            if "d" in args.phases:
                move_mtimes(roots, 10 + i)
                stamp = time.time()  # a rewritten .pyc keeps its name: count the ones written from now on
                res["d"].append(boot(python, comfy, work, f"d{i}"))
                writes["d"].append(sum(1 for d in pycache_dirs(roots) for f in os.scandir(d)
                                       if f.stat().st_mtime >= stamp))
            log.info("round %d: %s", i + 1, {k: round(v[-1], 2) for k, v in res.items() if v})
        med = {k: statistics.median(v) for k, v in res.items() if v}
        n = args.repeat
        head = f"real ComfyUI boot on CPU (spawn -> first 200 on /system_stats), {n} runs, median"
        if "b" in med:
            print(f"{head}: (b) second start, Python's own .pyc: {med['b']:.2f} s (baseline)")
            if "a" in med:
                print(f"(a) no .pyc, first start: {med['a']:.2f} s, (a)/(b) ratio {med['a'] / med['b']:.3f}; "
                      f".pyc written by it: {statistics.median(writes['a']):.0f}")
            if "c" in med:
                print(f"(c) compiled at build ({args.mode}), first start: {med['c']:.2f} s, "
                      f"(c)/(b) ratio {med['c'] / med['b']:.3f} (goal <= 1.05); "
                      f".pyc written by it: {statistics.median(writes['c']):.0f}")
            if "d" in med:
                print(f"(d) compiled at build ({args.mode}), then every source mtime moved, first start: "
                      f"{med['d']:.2f} s, (d)/(b) ratio {med['d'] / med['b']:.3f}; "
                      f".pyc rewritten by it: {statistics.median(writes['d']):.0f}")
        if "compile" in med:
            print(f"compile step (ComfyUI + site-packages, -j 0, {args.mode}): {med['compile']:.1f} s, "
                  f"{count_pyc(roots)} .pyc")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
