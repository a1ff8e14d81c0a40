"""Jobs per minute with JOB_CONCURRENCY=1 vs 2, side by side, through runpod's own job loop.

    python bench/throughput.py [--jobs 20] [--rounds 1] [--exec-s 1.0] [--gcs-delay 0.15] [--take-latency 0.1]

Each round runs ``python -m rp_handler`` against the stand-in RunPod job API
(tests/worker/fake_runpod_api.py) with all jobs queued, once per concurrency, alternating. A job
executes for about ``--exec-s`` on the fake ComfyUI and writes 4 images, uploaded to GCS
(gcp-storage-emulator) through a proxy that stalls every request by ``--gcs-delay`` seconds
(tests/faults/gcs_proxy.py). Jobs per minute counts from the first job handed out to the last result;
a job's latency is hand-out → result. Prints the ratio of concurrency 2 to concurrency 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO, fake_home, median, p95  # noqa: E402


def workflow(i: int, exec_s: float) -> dict:
    """4 images of 256×256 (one SaveImage, batch of 4); ImageInvert takes ``exec_s`` (fault class_delay_s)."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 256, "batch_size": 4, "color": i}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"tp{i}"}},
    }


def run_once(concurrency: int, args, home: Path, gcs_url: str, bucket: str, seed: int) -> dict:
    import json

    from tests.worker.fake_runpod_api import FakeRunPodApi
    from tests.worker.loop import worker_loop

    api = FakeRunPodApi(take_latency_s=args.take_latency)
    root = Path(tempfile.mkdtemp(prefix=f"throughput-c{concurrency}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env.update(PYTHONPATH=str(REPO), COMFY_HOME=str(home), COMFY_FORCE_CPU="true", COMFY_IO_DIR=str(root / "io"),
               COMFY_CACHE_ROOT=str(root / "cache"), HOME=str(root), JOB_CONCURRENCY=str(concurrency),
               OUTPUT_MODE="gcs", GCS_BUCKET=bucket, STORAGE_EMULATOR_HOST=gcs_url, GCS_PREFIX=f"c{concurrency}",
               LOG_LEVEL="WARNING", FAKE_COMFY_FAULTS=json.dumps({"class_delay_s": {"ImageInvert": args.exec_s}}),
               **api.env())
    ids = [f"c{concurrency}-{seed}-{i}" for i in range(args.jobs)]
    try:
        with worker_loop(env, root / "worker.log"):
            for n, job_id in enumerate(ids):
                api.queue(job_id, {"workflow": workflow(seed * 1000 + n, args.exec_s), "output": "gcs"})
            results = {job_id: api.wait_result(job_id, 600) for job_id in ids}
    finally:
        api.close()
        shutil.rmtree(root, ignore_errors=True)
    bad = [r["error"] for r in results.values() if "error" in r]
    if bad:
        raise RuntimeError(f"{len(bad)} job(s) failed, first: {bad[0]}")
    assert all(len(r["output"]["outputs"]) == 4 for r in results.values())
    start = min(api.taken_times[j] for j in ids)
    end = max(api.result_times[j] for j in ids)
    latencies = [api.result_times[j] - api.taken_times[j] for j in ids]
    return {"jobs_per_min": len(ids) / (end - start) * 60, "latencies": latencies, "wall": end - start}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--exec-s", type=float, default=1.0, help="seconds each job executes in ComfyUI")
    p.add_argument("--gcs-delay", type=float, default=0.15, help="seconds the proxy adds to every GCS request")
    p.add_argument("--take-latency", type=float, default=0.1, help="seconds the job API takes to hand out jobs")
    args = p.parse_args(argv)

    from tests.faults.gcs_proxy import GcsFaultProxy
    from tests.helpers import gcs_emulator, storage_client

    home = fake_home(Path(tempfile.mkdtemp(prefix="throughput-home-")))
    runs: dict[int, list[dict]] = {1: [], 2: []}
    with gcs_emulator() as emulator:
        storage_client(emulator).create_bucket("throughput")
        proxy = GcsFaultProxy(emulator).start()
        proxy.set(delay_s=args.gcs_delay, delay_all=True)
        try:
            for r in range(args.rounds):
                for c in ((1, 2) if r % 2 == 0 else (2, 1)):
                    runs[c].append(run_once(c, args, home, proxy.url, "throughput", seed=r * 10 + c))
        finally:
            proxy.stop()
            shutil.rmtree(home.parent, ignore_errors=True)
    print(f"throughput: {args.jobs} jobs x {args.rounds} round(s), ~{args.exec_s:g} s execution, 4 outputs each to "
          f"GCS (+{args.gcs_delay * 1000:.0f} ms per request), job hand-out {args.take_latency * 1000:.0f} ms, fake ComfyUI")
    rate = {}
    for c, rs in runs.items():
        rate[c] = median([r["jobs_per_min"] for r in rs])
        lat = [x for r in rs for x in r["latencies"]]
        print(f"  JOB_CONCURRENCY={c}: {rate[c]:.1f} jobs/min  job latency median {median(lat):.2f} s  "
              f"p95 {p95(lat):.2f} s  (wall {median([r['wall'] for r in rs]):.1f} s)")
    print(f"  ratio concurrency 2 / 1: {rate[2] / rate[1]:.2f} x jobs per minute (goal >= 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
