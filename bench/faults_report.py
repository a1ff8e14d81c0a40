"""Fault-injection report: every fault of tests/faults, N trials each, one table.

    python bench/faults_report.py [--trials 20] [--only SUBSTRING] [--markdown]

For each fault: how many trials passed (the faulty job got the right result or a clear one-line
error within the bound, no output lost or duplicated, nothing half-written, the next job succeeded)
and the worst time to recover (fault injected → next good result). The baseline, measured in the
same run on the same kind of worker, is a plain job with no fault; the last column is the worst
recovery as a multiple of it. FAULT_TRIALS sets the default trial count.
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
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=trials_from_env())
    ap.add_argument("--only", default="", help="run only faults whose name contains this")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--verbose", action="store_true", help="show the worker's log (faults make it noisy)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL, stream=sys.stderr)
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
