"""Model store benchmark: every number is a ratio against a baseline measured in this run.

    /work/venv/bin/python bench/models_bench.py [--size-gib 1|4] [--rounds 2] [--skip-rss]

Files live under /tmp (deleted at the end).  Prints one line per goal (issue 3):

* peak RSS (ru_maxrss) of copy + verify for a 1 GiB and a 4 GiB file, each in its own process
* verify (mmap hash of a page-cached file) vs in-memory sha256 and vs ``openssl dgst -sha256``
* verified copy into place vs ``cp``
* loopback download + verify + atomic placement vs the best raw Python download (the file server
  runs in its own process, tests/fakes/model_server.py, serving with sendfile)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.config import BuildConfig  # noqa: E402
from builder.models import realize_models  # noqa: E402
from builder.models.checksum import hash_file  # noqa: E402
from builder.models.copy import copy_verified  # noqa: E402

GiB = 1024**3
BLOCK = 16 * 1024 * 1024


def make_file(path: Path, size: int) -> None:
    block = os.urandom(BLOCK)
    with open(path, "wb") as f:
        for off in range(0, size, BLOCK):
            f.write(block[: min(BLOCK, size - off)])


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 * 1024 * 1024):
            pass


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def best(fn, rounds: int, setup=None) -> float:
    times = []
    for _ in range(rounds):
        if setup:
            setup()
        times.append(timed(fn))
    return min(times)


def rate(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e9:.2f} GB/s"


def bench_verify(src: Path, size: int, rounds: int) -> float:
    """Returns our verify time (the floor of any verified copy of this file)."""
    buf = src.read_bytes() if size <= GiB else os.urandom(GiB)
    view = memoryview(buf)

    def in_memory():  # the same bytes in the same 8 MiB slices as ours, no I/O
        h = hashlib.sha256()
        for off in range(0, len(buf), 8 << 20):
            h.update(view[off : off + (8 << 20)])

    mem, ssl, ours = [], [], []
    for _ in range(rounds):  # interleaved so all three see the same machine state
        mem.append(timed(in_memory) / len(buf))
        ssl.append(timed(lambda: subprocess.run(["openssl", "dgst", "-sha256", str(src)], check=True,
                                                stdout=subprocess.DEVNULL)) / size)
        ours.append(timed(lambda: hash_file(src)) / size)
    view.release()
    del buf
    t_mem, t_ssl, t_ours = min(mem), min(ssl), min(ours)
    print(f"verify: ours {1 / t_ours / 1e9:.2f} GB/s | in-memory sha256 {1 / t_mem / 1e9:.2f} GB/s -> "
          f"{t_mem / t_ours:.2f}x (goal >= 0.9) | openssl dgst -sha256 {1 / t_ssl / 1e9:.2f} GB/s -> "
          f"{t_ssl / t_ours:.2f}x (goal >= 1.0; best of {rounds})", flush=True)
    return t_ours * size


def bench_copy(src: Path, size: int, work: Path, rounds: int, t_hash: float) -> None:
    dst = work / "copy.out"

    def clean():
        dst.unlink(missing_ok=True)
        os.sync()

    cp_times, our_times = [], []
    for _ in range(rounds):  # interleaved so both see the same machine state
        clean()
        cp_times.append(timed(lambda: subprocess.run(["cp", str(src), str(dst)], check=True)))
        clean()

        def ours():
            tmp = work / "copy.out.x.incomplete"
            copy_verified(src, tmp)
            os.replace(tmp, dst)

        our_times.append(timed(ours))
    clean()
    t_cp, t_ours = min(cp_times), min(our_times)
    print(f"verified copy: ours {rate(size, t_ours)} vs cp {rate(size, t_cp)} -> {t_cp / t_ours:.2f}x "
          f"(goal >= 1.0; best of {rounds}); sha256 alone of these bytes takes {t_hash:.2f} s, "
          f"so at most {t_cp / t_hash:.2f}x is reachable here", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_download(src: Path, size: int, work: Path, rounds: int, t_hash: float) -> None:
    import requests
    import urllib3

    port = _free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "fakes" / "model_server.py"),
                               "--root", str(src.parent), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        server.stdout.readline()
        url = f"http://127.0.0.1:{port}/{src.name}"
        expected = hash_file(src).hexdigest()
        out = work / "raw.out"

        def raw_urllib3():
            pool = urllib3.PoolManager()
            r = pool.request("GET", url, preload_content=False)
            with open(out, "wb") as f:
                for chunk in r.stream(1024 * 1024):
                    f.write(chunk)
            r.release_conn()

        def raw_requests():
            with requests.get(url, stream=True) as r, open(out, "wb") as f:
                for chunk in r.iter_content(1024 * 1024):
                    f.write(chunk)

        def clean():
            out.unlink(missing_ok=True)
            shutil.rmtree(work / "store", ignore_errors=True)
            shutil.rmtree(work / "models", ignore_errors=True)
            os.sync()

        baselines = {"urllib3 stream(1 MiB)": best(raw_urllib3, rounds, clean),
                     "requests iter_content(1 MiB)": best(raw_requests, 1, clean)}
        base_name = min(baselines, key=baselines.get)
        t_base = baselines[base_name]
        for conns in (1, 4):
            cfg = BuildConfig.from_env({"HOME": str(work), "COMFY_CACHE_ROOT": str(work / "cache"),
                                        "MODEL_DOWNLOAD_CONNECTIONS": str(conns)}, container=False)
            entry = [{"source": url, "checksum": f"sha256:{expected}"}]

            def ours():
                [rec] = realize_models(entry, cfg=cfg, models_dir=work / "models", offline=False,
                                       cache_dir=work / "store", parallel_min=64 * 1024 * 1024)
                assert rec["status"] == "fetched", rec

            t = best(ours, rounds, clean)
            print(f"download+verify+place ({conns} connection{'s' if conns > 1 else ''}): ours {rate(size, t)} vs "
                  f"best raw Python ({base_name}) {rate(size, t_base)} -> {t_base / t:.2f}x (goal >= 0.8)",
                  flush=True)
        print(f"  (sha256 alone of these bytes takes {t_hash:.2f} s on one core, so at most "
              f"{t_base / t_hash:.2f}x is reachable even with a free core for it; the server shares the 2 cores)",
              flush=True)
        clean()
    finally:
        server.terminate()
        server.wait(10)


RSS_CHILD = """
import os, resource, sys
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from builder.models.checksum import hash_file
from builder.models.copy import copy_verified
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
copy_verified(src, dst)
hash_file(dst)
os.unlink(dst)
hwm = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm)
"""


def bench_rss(work: Path) -> None:
    """Run first, while this process is small: Linux carries ru_maxrss across exec into the child."""
    peaks, hwms = {}, {}
    for gib in (1, 4):
        src = work / f"rss-{gib}.bin"
        make_file(src, gib * GiB)
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(src), str(work / "rss.out"), str(REPO)],
                             check=True, capture_output=True, text=True).stdout.split()
        peaks[gib], hwms[gib] = int(out[0]) / 1024, int(out[1]) / 1024  # KiB on Linux
        src.unlink()
    print(f"peak RSS (verified copy + verify, one process per size): ru_maxrss 1 GiB {peaks[1]:.1f} MB, "
          f"4 GiB {peaks[4]:.1f} MB -> difference {peaks[4] - peaks[1]:+.1f} MB (goal within 10 MB); "
          f"VmHWM {hwms[1]:.1f} / {hwms[4]:.1f} MB", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-gib", type=int, default=1, choices=(1, 4))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-rss", action="store_true")
    args = p.parse_args(argv)
    size = args.size_gib * GiB
    work = Path(tempfile.mkdtemp(prefix="models-bench-", dir="/tmp"))
    started = time.monotonic()
    try:
        if not args.skip_rss:
            bench_rss(work)
        data_dir = work / "data"
        data_dir.mkdir()
        src = data_dir / "model.bin"
        make_file(src, size)
        os.sync()
        warm(src)
        print(f"file: {args.size_gib} GiB under {work}, {os.cpu_count()} cores", flush=True)
        t_hash = bench_verify(src, size, args.rounds)
        bench_copy(src, size, work, args.rounds, t_hash)
        bench_download(src, size, work, args.rounds, t_hash)
        print(f"total bench time {time.monotonic() - started:.0f} s; own peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
