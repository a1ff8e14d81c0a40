"""Cold starts of the worker: every phase from process start, and the first result vs ComfyUI's own boot.

    python bench/coldstart.py [--runs 6] [--boot-delay 3.0] [--take-latency 0.05] [--modes early,...]
                              [--comfy-dir DIR ...]

Each run spawns ``python -m rp_handler`` in RunPod's production loop against a local stand-in for
RunPod's job API (tests/worker/fake_runpod_api.py) with one job already queued, and measures spawn →
result POST. The baseline, interleaved with the worker runs, is plain ComfyUI started by hand with its
default flags (spawn main.py, wait for /system_stats, run the same job with a bare client). Modes:
``early`` (the defaults: the runpod loop starts while ComfyUI boots, its fitness checks wait for the
boot), ``fitness_nowait`` (FITNESS_WAIT_COMFY=false), ``comfy_defaults`` (ComfyUI's own start-up:
API nodes loaded, no boot GC threshold), ``wait_ready`` (WAIT_READY_BEFORE_LOOP=true) and
``early_nice10`` (WORKER_BOOT_NICE=10). ComfyUI is the fake with FAKE_COMFY_BOOT_DELAY_S (a
realistic boot), or a real one with --comfy-dir / COMFYUI_DIR.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._bare import tiny_workflow  # noqa: E402
from bench._common import (add_comfy_args, boot_plus_job, cleanup, comfy_target, median, p95,  # noqa: E402
                           queued_job_run)

PHASES = ("module_imported", "imports_done", "comfy_spawned", "runpod_imported", "loop_started", "job_received",
          "comfy_ready", "submitted", "first_node_executing", "execution_done", "last_output_uploaded",
          "result_returned")


MODES = {  # name -> worker environment
    "early": {"WAIT_READY_BEFORE_LOOP": "false", "WORKER_BOOT_NICE": "0"},
    # the defaults, except that the ComfyUI fitness check does not wait for the boot
    "fitness_nowait": {"WAIT_READY_BEFORE_LOOP": "false", "WORKER_BOOT_NICE": "0", "FITNESS_WAIT_COMFY": "false"},
    # ComfyUI's own start-up as the worker skipped none of it (API nodes, GC threshold)
    "comfy_defaults": {"WAIT_READY_BEFORE_LOOP": "false", "WORKER_BOOT_NICE": "0", "COMFY_BOOT_GC_THRESHOLD": "0",
                       "COMFY_API_NODES": "true"},
    "wait_ready": {"WAIT_READY_BEFORE_LOOP": "true", "WORKER_BOOT_NICE": "0"},
    "early_nice10": {"WAIT_READY_BEFORE_LOOP": "false", "WORKER_BOOT_NICE": "10"},
}


def one_worker_run(home: Path, python: str, extra: dict[str, str], take_latency: float, color: int,
                   mode_env: dict[str, str]) -> tuple[float, dict]:
    elapsed, output = queued_job_run(home, python, {"workflow": tiny_workflow(color), "output": "base64"},
                                     {**extra, **mode_env}, take_latency=take_latency)
    return elapsed, output["timings"]["cold_start"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=6)
    p.add_argument("--boot-delay", type=float, default=3.0, help="FAKE_COMFY_BOOT_DELAY_S (fake only)")
    p.add_argument("--take-latency", type=float, default=0.05, help="seconds the fake job API takes to hand out a job")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of: {', '.join(MODES)}")
    add_comfy_args(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    finally:
        cleanup()


def run(args) -> int:
    home, python, label = comfy_target(args)
    extra = {} if args.comfy_dir else {"FAKE_COMFY_BOOT_DELAY_S": str(args.boot_delay)}
    print(f"coldstart on {label}; {args.runs} runs per mode, interleaved; "
          f"boot delay {extra.get('FAKE_COMFY_BOOT_DELAY_S', 'n/a')} s; job-take latency {args.take_latency} s")
    base, boots = [], []
    wanted = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in MODES]
    if unknown or not wanted:
        raise SystemExit(f"--modes: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODES)}")
    modes: dict[str, list[float]] = {m: [] for m in wanted}
    phases: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    for i in range(args.runs):
        io_b = Path(tempfile.mkdtemp(prefix="coldstart-b-"))
        boot, total = boot_plus_job(home, python, io_b, tiny_workflow(100 + i), extra)
        shutil.rmtree(io_b, ignore_errors=True)
        base.append(total)
        boots.append(boot)
        for j, mode in enumerate(modes if i % 2 == 0 else reversed(list(modes))):
            elapsed, cold = one_worker_run(home, python, extra, args.take_latency, 200 + 10 * i + j, MODES[mode])
            modes[mode].append(elapsed)
            for k, v in cold.items():
                phases[mode].setdefault(k, []).append(v)
    mb = median(base)
    print(f"baseline: ComfyUI boot median {median(boots):.3f} s; boot + one bare job median {mb:.3f} s "
          f"(p95 {p95(base):.3f})")
    for mode, xs in modes.items():
        print(f"\nmode {mode}: spawn -> result POST median {median(xs):.3f} s p95 {p95(xs):.3f} s; "
              f"ratio to boot+job {median(xs) / mb:.3f} (goal <= 0.90)")
        print(f"  {'phase (s since process start)':34s} {'median':>8s} {'p95':>8s}")
        for name in PHASES:
            vals = phases[mode].get(name)
            if vals:
                print(f"  {name:34s} {median(vals):8.3f} {p95(vals):8.3f}")
    if "early" in modes:
        e = median(modes["early"])
        print(f"\ncold start (defaults): process start -> first result {e:.3f} s = {e / mb:.3f} x plain ComfyUI "
              f"(default flags) boot + the same job {mb:.3f} s (goal <= 0.90)")
        for other, what in (("wait_ready", "WAIT_READY_BEFORE_LOOP=true"), ("early_nice10", "WORKER_BOOT_NICE=10"),
                            ("fitness_nowait", "FITNESS_WAIT_COMFY=false"),
                            ("comfy_defaults", "ComfyUI's own start-up (API nodes, no GC threshold)")):
            if other in modes:
                o = median(modes[other])
                print(f"defaults vs {what}: {e:.3f} s vs {o:.3f} s ({(o - e) * 1000:+.0f} ms)")
    print(json.dumps({"baseline_median_s": round(mb, 4), **{f"{m}_median_s": round(median(v), 4)
                                                            for m, v in modes.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
