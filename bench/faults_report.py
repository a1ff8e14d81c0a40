"""Fault-injection report: every fault of tests/faults, N trials each, one table.

    python bench/faults_report.py [--trials 20] [--only SUBSTRING] [--markdown]
    COMFYUI_DIR=... COMFYUI_PYTHON=... python bench/faults_report.py --real [--trials 20] [--markdown]

For each fault: how many trials passed (the faulty job got the right result or a clear one-line
error within the bound, no output lost or duplicated, nothing half-written, the next job succeeded)
and the worst time to recover (fault injected → next good result). The baseline, measured in the
same run on the same kind of worker, is a plain job with no fault; the last column is the worst
recovery as a multiple of it. FAULT_TRIALS sets the default trial count.

``--real`` runs the faults of a real ComfyUI instead (tests/faults/real_scenarios.py, injected from
outside the worker; the ``ss -K`` and tmpfs ones need root): per kind, the trials that passed, the
worst time from the job's start to its result or error, how many next jobs succeeded, and that
worst time as a multiple of a plain job on the same real ComfyUI, measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.faults.gcs_scenarios import gcs_scenarios  # noqa: E402
from tests.faults.harness import Report, run_scenario, trials_from_env  # noqa: E402
from tests.faults.model_scenarios import cache_scenarios, model_scenarios  # noqa: E402
from tests.faults.sigterm_scenario import SigtermDuringJob  # noqa: E402
from tests.faults.worker_scenarios import check_outputs, comfy_scenarios, workflow  # noqa: E402


def baseline_job_s(root: Path, n: int = 20) -> float:
    """Median wall time of a good job (2 images, base64) on a supervised fake ComfyUI."""
    from tests.worker.conftest import LiveWorker

    w = LiveWorker(root)
    try:
        times = []
        for i in range(n):
            t = time.monotonic()
            res = w.run({"workflow": workflow(0x101010 + i)}, f"base-{i}")
            times.append(time.monotonic() - t)
            check_outputs(w, res, 0x101010 + i)
        return statistics.median(times)
    finally:
        w.close()


def all_scenarios() -> list:
    return [*comfy_scenarios(), SigtermDuringJob(), *gcs_scenarios(), *model_scenarios(), *cache_scenarios()]


def table(rows: list[Report], baseline: float, markdown: bool) -> str:
    head = ("fault", "trials", "passed", "worst time to recover (s)", "worst / baseline job")
    body = [(r.name, str(r.trials), str(r.passed), f"{r.worst_s:.2f}", f"{r.worst_s / baseline:.0f}x")
            for r in rows]
    return _render(head, body, markdown)


def real_table(rows: list[Report], baseline: float, markdown: bool) -> str:
    head = ("kind", "trials OK", "worst time to result or error (s)", "next job OK", "worst / baseline job")
    body = [(r.name.removeprefix("real: "), f"{r.passed}/{r.trials}", f"{r.worst_result_s:.1f}",
             f"{r.next_ok}/{r.trials}", f"{r.worst_result_s / baseline:.1f}x") for r in rows]
    return _render(head, body, markdown)


def _render(head: tuple[str, ...], body: list[tuple[str, ...]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body])


def run_real(args: argparse.Namespace, root: Path) -> int:
    """The real-ComfyUI faults, one shared supervised ComfyUI, ``args.trials`` trials each."""
    from tests.faults.real_scenarios import RealFaultWorker, check_image, real_scenarios, slow_workflow
    from tests.helpers import COMFYUI_DIR, COMFYUI_PYTHON

    if not (COMFYUI_DIR and COMFYUI_PYTHON):
        print("error: --real needs COMFYUI_DIR and COMFYUI_PYTHON (a ComfyUI checkout and its interpreter)",
              file=sys.stderr)
        return 2
    w = RealFaultWorker(root / "real")
    try:
        times = []
        for i in range(5):
            t = time.monotonic()
            check_image(w, w.run({"workflow": slow_workflow(0x404040 + i)}, f"base-{i}"))
            times.append(time.monotonic() - t)
        baseline = statistics.median(times)
        print(f"baseline: a plain job on the real ComfyUI takes {baseline:.2f} s (median of 5)", flush=True)
        rows = []
        for i, scenario in enumerate(real_scenarios()):
            if args.only and args.only not in scenario.name:
                continue
            scenario.worker = w
            report = run_scenario(scenario, args.trials, root / f"r{i}")
            rows.append(report)
            print(f"{report.name}: {report.passed}/{report.trials} passed, worst answer "
                  f"{report.worst_result_s:.1f} s; last answer: {scenario.last_answer[:200]}", flush=True)
            for failure in report.failures[:3]:
                print(f"    {failure[:300]}", flush=True)
    finally:
        w.close()
    print()
    print(real_table(rows, baseline, args.markdown))
    return 0 if all(r.ok for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=trials_from_env())
    ap.add_argument("--only", default="", help="run only faults whose name contains this")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--verbose", action="store_true", help="show the worker's log (faults make it noisy)")
    ap.add_argument("--real", action="store_true", help="the faults of a real ComfyUI (COMFYUI_DIR, COMFYUI_PYTHON)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL, stream=sys.stderr)
    if args.real:
        with tempfile.TemporaryDirectory(prefix="faults-report-") as tmp:
            return run_real(args, Path(tmp))
    with tempfile.TemporaryDirectory(prefix="faults-report-") as tmp:
        root = Path(tmp)
        baseline = baseline_job_s(root / "baseline")
        print(f"baseline: a plain job takes {baseline * 1000:.1f} ms (median of 20)", flush=True)
        rows = []
        for i, scenario in enumerate(all_scenarios()):
            if args.only and args.only not in scenario.name:
                continue
            try:
                report = run_scenario(scenario, args.trials, root / f"s{i}")
            except PermissionError as err:  # e.g. no right to mount the small tmpfs
                print(f"skipped {scenario.name}: {err}", flush=True)
                continue
            rows.append(report)
            print(f"{report.name}: {report.passed}/{report.trials} passed, worst {report.worst_s:.2f} s", flush=True)
            for failure in report.failures[:3]:
                print(f"    {failure[:300]}", flush=True)
    print()
    print(table(rows, baseline, args.markdown))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
