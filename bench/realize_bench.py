"""Benchmark: first vs second realize, and uv vs pip installing the same wheels.

Builds, under a temp dir in /tmp (deleted afterwards): a fake ComfyUI repo and 3
node repos (local bare git repos), a folder of tiny wheels and empty venvs.  Then:

1. realize (cold git cache, clones + installs) vs the second realize of the same
   lock (should do nothing): median of ``--repeat`` runs, printed as a ratio.
2. The second realize again through the CLI in a fresh process (what a user sees).
3. ``uv pip install`` vs ``pip install`` of the same wheels into fresh venvs.

Usage: python bench/realize_bench.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.config import BuildConfig  # noqa: E402
from builder.pip_install import InstallRequest, Installer, find_installer, install  # noqa: E402
from builder.realize import RealizeOptions, realize  # noqa: E402
from builder.spec import load_spec  # noqa: E402
from tests.builder.fixtures import fake_comfy, make_venv, make_wheel, node_repo, write_spec  # noqa: E402


def build_world(tmp: Path) -> tuple[Path, Path]:
    comfy = fake_comfy(tmp / "repos", requirements="tinyfoo>=1.0\n")
    nodes = [node_repo(tmp / "repos", f"node-{i}", requirements=f"tinynode{i}\n") for i in range(3)]
    wheels = tmp / "wheels"
    make_wheel(wheels, "tinyfoo", "1.1", ["tinydep>=1"])
    make_wheel(wheels, "tinydep", "1.0")
    for i in range(3):
        make_wheel(wheels, f"tinynode{i}", "1.0", ["tinydep"])
    write_spec(tmp / "versions", "bench", {"repo": comfy.url, "ref": "v0.2"},
               [{"repo": n.url, "ref": "v1"} for n in nodes])
    return tmp / "versions" / "bench.json", wheels


def one_round(tmp: Path, spec_path: Path, wheels: Path, n: int) -> tuple[float, float, float]:
    env = {"HOME": str(tmp / "home"), "COMFY_CACHE_ROOT": str(tmp / f"cache{n}"),
           "COMFY_HOME": str(tmp / f"target{n}" / "ComfyUI"), "VERSIONS_DIR": str(spec_path.parent)}
    cfg = BuildConfig.from_env(env, volume_root=tmp / "no-volume", container=False)
    python = make_venv(tmp / f"venv{n}")
    opts = RealizeOptions(python=python, wheels_dir=wheels)
    t0 = time.perf_counter()
    first = realize(cfg, load_spec(spec_path), opts)
    t1 = time.perf_counter()
    second = realize(cfg, load_spec(spec_path), opts)
    t2 = time.perf_counter()
    assert first.done and not second.done, "second realize was expected to do nothing"
    cmd = [sys.executable, str(ROOT / "scripts" / "version.py"), "-q", "realize", "bench", "--python", str(python),
           "--wheels-dir", str(wheels)]
    t3 = time.perf_counter()
    proc = subprocess.run(cmd, env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    t4 = time.perf_counter()
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stderr
    return t1 - t0, t2 - t1, t4 - t3


def time_install(inst: Installer, tmp: Path, wheels: Path, n: int) -> float:
    python = make_venv(tmp / f"{inst.kind}-venv{n}")
    req = InstallRequest(python=python, requirement_files=(), wheels_dir=wheels, constraints=(),
                         packages=("tinyfoo", "tinynode0", "tinynode1", "tinynode2"))
    t0 = time.perf_counter()
    install(inst, req)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="realize-bench-", dir="/tmp"))
    try:
        spec_path, wheels = build_world(tmp)
        rounds = [one_round(tmp, spec_path, wheels, i) for i in range(args.repeat)]
        first = statistics.median(r[0] for r in rounds)
        second = statistics.median(r[1] for r in rounds)
        cli = statistics.median(r[2] for r in rounds)
        print(f"realize ComfyUI + 3 nodes (local repos, {args.repeat} runs, median): first {first * 1000:.1f} ms, "
              f"second {second * 1000:.2f} ms, second/first ratio {second / first:.4f} "
              f"({second / first * 100:.2f} %, goal <= 2 %)")
        print(f"second realize through the CLI in a new process (includes Python start-up): {cli * 1000:.0f} ms, "
              f"cli/first ratio {cli / first:.3f}")
        uv = find_installer("auto")
        pip = find_installer("pip")
        if uv.kind != "uv":
            print("uv not found: uv vs pip comparison skipped")
            return 0
        t_uv = statistics.median(time_install(uv, tmp, wheels, i) for i in range(args.repeat))
        t_pip = statistics.median(time_install(pip, tmp, wheels, i) for i in range(args.repeat))
        print(f"install 5 wheels from --wheels-dir into a fresh venv ({args.repeat} runs, median): "
              f"uv {t_uv * 1000:.0f} ms, pip {t_pip * 1000:.0f} ms, uv/pip ratio {t_uv / t_pip:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
