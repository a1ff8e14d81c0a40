"""The three runpod internals rp_handler.runpod_sdk leans on are still there in the installed SDK.

An SDK upgrade that moves one of them fails here, naming it, instead of silently losing the cheap
cpuinfo import, the progress updates or SIGTERM forwarding to ComfyUI.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from rp_handler import runpod_sdk

REPO = Path(__file__).resolve().parents[2]


def test_the_installed_sdk_is_the_locked_one():
    pinned = re.search(r"^runpod==(\S+)$", (REPO / "requirements" / "runtime.lock").read_text(), re.M)
    assert pinned and importlib.metadata.version("runpod") == pinned.group(1)


def test_rp_debugger_reads_only_brand_raw_of_cpuinfo_at_import():
    from runpod.serverless.utils import rp_debugger

    calls = re.findall(r"cpuinfo\.\w+\([^)]*\)(?:\[[^]]*\])?", inspect.getsource(rp_debugger))
    assert calls == ['cpuinfo.get_cpu_info()["brand_raw"]'], calls


def test_job_done_url_is_where_runpod_posts_results():
    from runpod.serverless.modules import rp_http

    assert isinstance(rp_http.JOB_DONE_URL, str)
    assert "JOB_DONE_URL" in inspect.getsource(rp_http.send_result)
    assert runpod_sdk.has_job_api() is rp_http.JOB_DONE_URL.startswith(("http://", "https://"))


def test_the_job_loop_installs_sigterm_then_asks_the_concurrency_modifier():
    from runpod.serverless.modules.rp_scale import JobScaler

    start = inspect.getsource(JobScaler.start)
    assert start.index("signal.signal(signal.SIGTERM") < start.index("asyncio.run(")
    assert "self.concurrency_modifier(" in inspect.getsource(JobScaler.set_scale)


def test_the_modifier_chains_forwarding_before_the_loops_handler():
    seen: list[str] = []
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, lambda signum, frame: seen.append("runpod"))
        modifier = runpod_sdk.forward_sigterm_first(lambda signum: seen.append(f"forward {signum}"), ours=None,
                                                    concurrency=lambda n: n + 1)
        assert modifier(1) == 2 and modifier(2) == 3  # chained once
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert seen == [f"forward {int(signal.SIGTERM)}", "runpod"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_stand_in_is_gone_after_the_import():
    code = ("import sys; from rp_handler.runpod_sdk import import_runpod; import_runpod(); "
            "print('cpuinfo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "False", out.stderr
