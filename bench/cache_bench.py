"""NVMe cache benchmarks: fill speed vs ``cp``, and time to first result cold / warm / overlapped.

    python bench/cache_bench.py [--fill-gib 2] [--model-mib 512] [--volume-mibps 256] [--boot-s 3 | --boot-8]

1. Cache fill: a ``--fill-gib`` file copied by ``cp`` (the baseline) and by the
   cache's copier with sha256 verification, interleaved, best of ``--rounds``;
   once across filesystems (source in /dev/shm: the production case, where cp
   cannot use copy_file_range either) and once within /tmp.
   Goal: cache speed ≥ 0.9 × cp.
2. Time to first result of a job whose model (``--model-mib``) sits on a
   "volume" throttled to ``--volume-mibps``; the job reads the model where
   ComfyUI would (cache copy if complete, else the volume), after a simulated
   ComfyUI boot (a subprocess that sleeps ``--boot-s``):
   cold (no cache: boot, then read from the volume), warm (already cached),
   overlapped (preload scheduled at spawn, in parallel with the boot).
   Goal: overlapped ≤ 1.1 × max(boot, copy).
Big files live under a temp dir in /tmp and are deleted at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rp_handler.cache import ModelCache  # noqa: E402
from rp_handler.cache.copier import copy_file  # noqa: E402
from rp_handler.config import CacheConfig  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30


def make_file(path: Path, size: int) -> str:
    """Write ``size`` pseudo-random bytes; returns their sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(64 * MiB)
    sha = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            piece = memoryview(block)[: min(left, len(block))]
            fh.write(piece)
            sha.update(piece)
            left -= len(piece)
    return sha.hexdigest()


def drop(path: Path) -> None:
    path.unlink(missing_ok=True)


def bench_fill(src_dir: Path, work: Path, size: int, rounds: int, label: str, durable: bool = False) -> None:
    """cp vs the cache copier with sha256 (a checksum is known) and without (size/mtime checks only).

    ``durable``: every copy ends with an fsync of the file (``cp`` then ``sync FILE``).
    """
    src = src_dir / "fill.safetensors"
    sha = make_file(src, size)
    times: dict[str, list[float]] = {"cp": [], "sha256": [], "plain": []}
    for _ in range(rounds):
        for kind in times:
            dst = work / "nvme" / "checkpoints" / f"fill-{kind}.safetensors"
            dst.parent.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            if kind == "cp":
                subprocess.run(["cp", str(src), str(dst)], check=True)
                if durable:
                    subprocess.run(["sync", str(dst)], check=True)
            else:
                result = copy_file(src, dst, expected_sha256=sha if kind == "sha256" else None, fsync=durable)
                assert result.size == size
            times[kind].append(time.perf_counter() - t)
            drop(dst)
    drop(src)
    cp, verified, plain = (min(times[k]) for k in ("cp", "sha256", "plain"))
    print(f"fill {size / GiB:.2f} GiB {label}{', durable (fsync)' if durable else ''} [best of {rounds}]:")
    print(f"  cp {size / cp / 1e9:.2f} GB/s ({cp:.2f} s) | cache copy + sha256 verify "
          f"{size / verified / 1e9:.2f} GB/s ({verified:.2f} s) | cache copy, size/mtime checks only "
          f"{size / plain / 1e9:.2f} GB/s ({plain:.2f} s)")
    print(f"  ratio vs cp: sha256-verified {cp / verified:.2f}x, size/mtime-checked {cp / plain:.2f}x (goal >= 0.9)")


def other_filesystem(work: Path) -> Path | None:
    """A scratch dir on another filesystem than ``work`` (/dev/shm), where cp cannot use copy_file_range."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and shm.stat().st_dev != work.stat().st_dev:
            return Path(tempfile.mkdtemp(prefix="cache-bench-", dir=shm))
    except OSError:
        pass
    return None


def read_model(path: Path, throttle_bps: float | None) -> None:
    """What 'loading the model' costs: read it all, at the volume's speed when on the volume."""
    started = time.monotonic()
    done = 0
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(8 * MiB)
        while n := fh.readinto(buf):
            done += n
            if throttle_bps:
                ahead = done / throttle_bps - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)


def boot(seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


def workflow(name: str) -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}}}


def bench_first_result(work: Path, model_size: int, volume_bps: float, boot_s: float) -> None:
    volume = work / "volume"
    make_file(volume / "checkpoints" / "model.safetensors", model_size)
    cfg = CacheConfig(root=work / "nvme", min_size_mb=1, budget_bytes=0, categories=(), verbose=False)
    wf = workflow("model.safetensors")
    src = volume / "checkpoints" / "model.safetensors"

    # copy alone (the cache's copier reading the throttled volume)
    t = time.monotonic()
    copy_file(src, work / "copy-alone.safetensors", read_throttle_bps=volume_bps)
    copy_s = time.monotonic() - t
    drop(work / "copy-alone.safetensors")

    # cold: no cache; ComfyUI boots, then the job reads the model from the volume
    t = time.monotonic()
    boot(boot_s).wait()
    read_model(src, volume_bps)
    cold = time.monotonic() - t

    # overlapped: preload scheduled when the worker starts, ComfyUI boots meanwhile
    cache = ModelCache(cfg, volume, None, read_throttle_bps=volume_bps)
    try:
        t = time.monotonic()
        proc = boot(boot_s)
        cache.preload_workflow(wf, job_id="job")
        proc.wait()
        cache.wait("job", timeout=600)
        [model] = cache.job_report("job")["models"]
        assert model["read_from"] == "cache", model
        read_model(Path(model["path"]), None)
        overlapped = time.monotonic() - t
        cache.release("job")

        # warm: the model is already in the cache
        t = time.monotonic()
        proc = boot(boot_s)
        [st] = cache.preload_workflow(wf, job_id="job2")
        proc.wait()
        assert st.status == "cached"
        read_model(Path(st.path), None)
        warm = time.monotonic() - t
    finally:
        cache.close()
    bound = max(boot_s, copy_s)
    print(f"first result, {model_size / MiB:.0f} MiB model on a {volume_bps / MiB:.0f} MiB/s volume, "
          f"boot {boot_s:.1f} s: copy alone {copy_s:.2f} s")
    print(f"  cold {cold:.2f} s | warm {warm:.2f} s | overlapped {overlapped:.2f} s")
    print(f"  overlapped / max(boot, copy) = {overlapped / bound:.2f} (goal <= 1.1) | "
          f"cold / overlapped = {cold / overlapped:.2f}x | warm / overlapped = {warm / overlapped:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fill-gib", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model-mib", type=int, default=512)
    ap.add_argument("--volume-mibps", type=float, default=256.0)
    ap.add_argument("--boot-s", type=float, default=3.0)
    ap.add_argument("--boot-8", action="store_true", help="simulate an 8 s ComfyUI boot")
    ap.add_argument("--skip-fill", action="store_true")
    ap.add_argument("--durable", action="store_true", help="also compare fsync'd copies (cp + sync FILE)")
    args = ap.parse_args(argv)
    boot_s = 8.0 if args.boot_8 else args.boot_s
    work = Path(tempfile.mkdtemp(prefix="cache-bench-", dir="/tmp"))
    try:
        if not args.skip_fill:
            size = int(args.fill_gib * GiB)
            other = other_filesystem(work)
            if other is not None:
                label = f"cross-filesystem ({other.parent} -> /tmp, like volume -> NVMe)"
                bench_fill(other, work, size, args.rounds, label)
                if args.durable:
                    bench_fill(other, work, size, args.rounds, label, durable=True)
                shutil.rmtree(other, ignore_errors=True)
            bench_fill(work / "volume", work, size, args.rounds, "same filesystem (cp may use copy_file_range)")
        bench_first_result(work, args.model_mib * MiB, args.volume_mibps * MiB, boot_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
