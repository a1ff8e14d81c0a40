"""Cold start with a model on a throttled "volume": time to first result in each cache state.

    python bench/coldstart_cache.py [--runs 3] [--boot-delay 2.0] [--model-mib 512] [--volume-mibps 128]

Each run spawns ``python -m rp_handler`` in RunPod's production loop (stand-in job API
tests/worker/fake_runpod_api.py, one job already queued) and measures spawn → result POST for a
job whose UpscaleModelLoader needs a ``--model-mib`` file that sits on the "volume" (a folder under
/tmp). States, interleaved run by run:

- ``volume_only``: NVME_CACHE_DIR unset; ComfyUI reads the model from the volume.
- ``cold``: the cache on and empty; the copy starts when the job arrives, the job does not wait.
- ``cold_wait``: as cold with CACHE_WAIT_S=600 (the job waits for its copy before submitting).
- ``nvme_warm``: the model already in the cache (a hit); ComfyUI reads the NVMe copy.

The volume is imitated on both readers: the worker's copier through CACHE_READ_THROTTLE_MBPS and
ComfyUI through a stand-in main.py around the fake ComfyUI whose UpscaleModelLoader reads the whole
file, at ``--volume-mibps`` when the file is under the volume folder and at disk speed otherwise. The
two throttles are independent (a real volume shares its bandwidth between them, which makes the
cold state's concurrent reads slower than here). The baseline is the same worker with the model
already in ComfyUI's own ``models/`` (no volume at all).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import cleanup, fake_home, median, p95, queued_job_run, temp_dir  # noqa: E402

MODEL = "bench_2x.safetensors"
STATES = ("volume_only", "cold", "cold_wait", "nvme_warm")

# ComfyUI stand-in: the fake, with a loader that reads the whole model (throttled on the volume).
WRAPPER = '''
import os, sys, time
from pathlib import Path
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import nodes as fake_nodes
VOLUME = os.path.realpath(os.environ["BENCH_VOLUME_DIR"]) + os.sep
BPS = float(os.environ["BENCH_VOLUME_MIBPS"]) * (1 << 20)
_orig = fake_nodes.NODES["UpscaleModelLoader"]

async def loader(ctx, i):
    path = ctx.paths.resolve("upscale_models", i["model_name"])
    if path is not None:
        slow = os.path.realpath(path).startswith(VOLUME)
        t0, done = time.monotonic(), 0
        with open(path, "rb", buffering=0) as fh:
            while True:
                block = fh.read(1 << 20)
                if not block:
                    break
                done += len(block)
                if slow:
                    ahead = done / BPS - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        print(f"bench loader: read {done} bytes from {'volume' if slow else 'local disk'} "
              f"in {time.monotonic() - t0:.2f} s", flush=True)
    return await _orig(ctx, i)

fake_nodes.NODES["UpscaleModelLoader"] = loader
import fake_main
sys.exit(fake_main.main())
'''


def workflow(color: int) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": MODEL}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bench"}},
    }


def write_model(path: Path, mib: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        fh.write(b"body.0.weight")
        for _ in range(mib):
            fh.write(block)


def stand_in_home(root: Path) -> Path:
    home = fake_home(root)
    if not (home / "fake_main.py").exists():
        os.replace(home / "main.py", home / "fake_main.py")
        (home / "main.py").write_text(WRAPPER)
    return home


def one_run(home: Path, env_extra: dict[str, str], color: int) -> tuple[float, dict]:
    return queued_job_run(home, sys.executable, {"workflow": workflow(color), "output": "base64"}, env_extra)


def warm_cache(nvme: Path, volume: Path) -> None:
    """Fill ``nvme`` the way the worker does (a cache hit on the next start)."""
    from rp_handler.cache import ModelCache
    from rp_handler.config import WorkerConfig

    cfg = WorkerConfig.from_env({"NVME_CACHE_DIR": str(nvme), "CACHE_MIN_SIZE_MB": "1"}).cache
    cache = ModelCache(cfg, volume)
    try:
        report = cache.warm(models=[f"upscale_models/{MODEL}"], wait=True)
        assert report["models"][0]["status"] == "cached", report
    finally:
        cache.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--boot-delay", type=float, default=2.0, help="FAKE_COMFY_BOOT_DELAY_S")
    p.add_argument("--model-mib", type=int, default=512)
    p.add_argument("--volume-mibps", type=float, default=128.0)
    args = p.parse_args(argv)
    try:
        return run(args)
    finally:
        cleanup()


def run(args) -> int:
    root = temp_dir("ccache-")
    volume = root / "volume" / "models"
    write_model(volume / "upscale_models" / MODEL, args.model_mib)
    home = stand_in_home(root)
    local_home = stand_in_home(root / "local")  # baseline: the model in ComfyUI's own models/
    (local_home / "models" / "upscale_models").mkdir(parents=True, exist_ok=True)
    shutil.copy2(volume / "upscale_models" / MODEL, local_home / "models" / "upscale_models" / MODEL)
    warm_nvme = root / "nvme-warm"
    warm_cache(warm_nvme, volume)
    common = {"FAKE_COMFY_BOOT_DELAY_S": str(args.boot_delay), "MODELS_DIR": str(volume),
              "BENCH_VOLUME_DIR": str(volume), "BENCH_VOLUME_MIBPS": str(args.volume_mibps),
              "CACHE_READ_THROTTLE_MBPS": str(args.volume_mibps), "CACHE_MIN_SIZE_MB": "1"}
    copy_s = args.model_mib / args.volume_mibps
    print(f"coldstart_cache on the fake ComfyUI (boot {args.boot_delay} s), {args.model_mib} MiB model on a "
          f"{args.volume_mibps:g} MiB/s volume (copy alone {copy_s:.2f} s); {args.runs} runs per state, interleaved")
    times: dict[str, list[float]] = {s: [] for s in ("baseline", *STATES)}
    local_at: dict[str, list[float]] = {s: [] for s in STATES}
    for i in range(args.runs):
        order = ["baseline", *STATES] if i % 2 == 0 else ["baseline", *reversed(STATES)]
        for j, state in enumerate(order):
            color = 1000 * i + j
            if state == "baseline":
                elapsed, _ = one_run(local_home, {"FAKE_COMFY_BOOT_DELAY_S": str(args.boot_delay),
                                                  "BENCH_VOLUME_DIR": str(volume),
                                                  "BENCH_VOLUME_MIBPS": str(args.volume_mibps)}, color)
                times[state].append(elapsed)
                continue
            env = dict(common)
            nvme = temp_dir("ccache-nvme-") / "cache"
            if state == "nvme_warm":
                shutil.copytree(warm_nvme, nvme)
            if state != "volume_only":
                env["NVME_CACHE_DIR"] = str(nvme)
            if state == "cold_wait":
                env["CACHE_WAIT_S"] = "600"
            elapsed, out = one_run(home, env, color)
            times[state].append(elapsed)
            rep = out.get("cache") or {}
            if state == "nvme_warm":
                assert rep.get("hits") == 1, rep
            if state.startswith("cold"):
                assert rep.get("misses") == 1, rep
            for m in out.get("timings", {}).get("models_local", []):
                local_at[state].append(m["at"])
            shutil.rmtree(nvme.parent, ignore_errors=True)
    base = median(times["baseline"])
    print(f"baseline (model in ComfyUI's own models/): first result median {base:.3f} s (p95 "
          f"{p95(times['baseline']):.3f})")
    for state in STATES:
        xs = times[state]
        extra = f"; model local at {median(local_at[state]):.2f} s" if local_at[state] else ""
        print(f"{state:12s} first result median {median(xs):.3f} s (p95 {p95(xs):.3f}); ratio to baseline "
              f"{median(xs) / base:.2f}{extra}")
    vo, cold, warm = median(times["volume_only"]), median(times["cold"]), median(times["nvme_warm"])
    cw = median(times["cold_wait"])
    print(f"volume_only / nvme_warm = {vo / warm:.2f}x | cold / nvme_warm = {cold / warm:.2f}x | "
          f"cold_wait / cold = {cw / cold:.2f} | cold / volume_only = {cold / vo:.2f}")
    print(json.dumps({f"{k}_median_s": round(median(v), 4) for k, v in times.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
