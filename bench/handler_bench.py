"""Worker job time vs a bare persistent client on the same ComfyUI; and first result vs boot + job.

    python bench/handler_bench.py [--jobs 40] [--starts 3] [--boot-delay 2.5] [--probe-timeout 3] [--comfy-dir DIR --comfy-python PY]

Part 1: the same tiny workflow (EmptyImage 64x64 → ImageInvert → SaveImage, a new color per job so
nothing is cached) run interleaved by ``rp_handler.handler.handle`` (base64 output, per-job folders,
cleanup, progress, timings) and by the bare client of ``bench/_bare.py`` (one websocket + one
keep-alive connection: POST, wait, history, view, base64). Prints medians, the ratio and the ms added.
Part 2: process start → first result of ``python -m rp_handler --test_input`` vs spawning ComfyUI,
waiting for /system_stats and running the job with the bare client, interleaved.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._bare import BareClient, tiny_workflow  # noqa: E402
from bench._common import (add_comfy_args, boot_plus_job, cleanup, comfy_target, median, p95,  # noqa: E402
                           run_worker_once, temp_dir, worker_env)


def part_jobs(home: Path, python: str, n: int, warmup: int = 5, probe_timeout: str = "3") -> None:
    from rp_handler.config import WorkerConfig
    from rp_handler.context import WorkerContext
    from rp_handler.handler import handle
    from rp_handler.main import client_factory, start_comfy

    io_dir = temp_dir("bench-io-")
    cfg = WorkerConfig.from_env({"HOME": str(io_dir), "COMFY_HOME": str(home), "COMFY_PYTHON": python,
                                 "COMFY_PORT": "0", "COMFY_CACHE_ROOT": str(io_dir / "cache"),
                                 "COMFY_IO_DIR": str(io_dir), "COMFY_PROBE_TIMEOUT_S": probe_timeout})
    # Production-like logging: INFO records formatted and written (to /dev/null here).
    sink = logging.StreamHandler(open(os.devnull, "w"))
    sink.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger().handlers[:] = [sink]
    logging.getLogger().setLevel(logging.INFO)
    sup = start_comfy(cfg, io_dir=io_dir)
    sup.ensure_ready(300)
    ctx = WorkerContext(cfg=cfg, dirs=sup.proc.dirs, client_factory=client_factory(sup), supervisor=sup)
    bare = BareClient(sup.proc.url)
    color = [1000]

    def next_wf(prefix: str) -> dict:
        color[0] += 1
        return tiny_workflow(color[0], prefix)

    def run_worker(i: int) -> float:
        t0 = time.perf_counter()
        res = handle({"id": f"bench-{i}", "input": {"workflow": next_wf("w"), "output": "base64"}}, ctx)
        dt = time.perf_counter() - t0
        assert "error" not in res and res["outputs"][0]["data"], res
        return dt

    def run_bare() -> float:
        t0 = time.perf_counter()
        out = bare.run(next_wf("b"))
        dt = time.perf_counter() - t0
        assert out and out[0]
        return dt

    try:
        for i in range(warmup):
            run_worker(-1 - i)
            run_bare()
        w, b = [], []
        for i in range(n):
            if i % 2 == 0:
                w.append(run_worker(i))
                b.append(run_bare())
            else:
                b.append(run_bare())
                w.append(run_worker(i))
    finally:
        bare.close()
        ctx.close()
        sup.stop()
    mw, mb = median(w) * 1000, median(b) * 1000
    print(f"jobs: {n} each, interleaved, after {warmup} warm-up pairs")
    print(f"  bare persistent client : median {mb:.2f} ms  p95 {p95(b) * 1000:.2f} ms")
    print(f"  worker handle()        : median {mw:.2f} ms  p95 {p95(w) * 1000:.2f} ms")
    print(f"  ratio worker/bare      : {mw / mb:.3f}  (added {mw - mb:+.2f} ms per job; goal <= 1.10)")


def part_first_result(home: Path, python: str, starts: int, boot_delay: float) -> None:
    extra = {"FAKE_COMFY_BOOT_DELAY_S": str(boot_delay)} if boot_delay else {}
    wb, ww = [], []
    boots = []
    for i in range(starts):
        io_b = temp_dir("bench-cold-b-")
        boot, total = boot_plus_job(home, python, io_b, tiny_workflow(7000 + i), extra)
        boots.append(boot)
        wb.append(total)
        io_w = temp_dir("bench-cold-w-")
        elapsed, result = run_worker_once(worker_env(home, python, io_w, **extra),
                                          {"input": {"workflow": tiny_workflow(8000 + i), "output": "base64"}})
        assert "error" not in result, result
        ww.append(elapsed)
    mw, mb = median(ww), median(wb)
    print(f"cold starts: {starts} each, interleaved, FAKE_COMFY_BOOT_DELAY_S={boot_delay}")
    print(f"  ComfyUI boot alone            : median {median(boots):.3f} s")
    print(f"  ComfyUI boot + one bare job   : median {mb:.3f} s")
    print(f"  worker start -> first result  : median {mw:.3f} s")
    print(f"  ratio first result/(boot+job) : {mw / mb:.3f}  (added {(mw - mb) * 1000:+.0f} ms; goal <= 1.05)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=40)
    p.add_argument("--starts", type=int, default=3)
    p.add_argument("--boot-delay", type=float, default=2.5, help="FAKE_COMFY_BOOT_DELAY_S for part 2 (fake only)")
    p.add_argument("--skip-cold", action="store_true")
    p.add_argument("--probe-timeout", default="3",
                   help="COMFY_PROBE_TIMEOUT_S for part 1 (0: no /system_stats liveness probe before each job)")
    add_comfy_args(p)
    args = p.parse_args(argv)
    try:
        home, python, label = comfy_target(args)
        print(f"handler_bench on {label} (python {python})")
        part_jobs(home, python, args.jobs, probe_timeout=args.probe_timeout)
        if not args.skip_cold:
            part_first_result(home, python, args.starts, 0.0 if args.comfy_dir else args.boot_delay)
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
