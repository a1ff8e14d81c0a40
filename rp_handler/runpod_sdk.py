"""Every use of the runpod SDK beyond ``runpod.serverless.start`` and ``progress_update``, in one place.

The SDK (``runpod==1.12.0`` in requirements/runtime.lock) offers no public way for three things
the worker needs; each leans on one of its internals, named here and checked against the installed
SDK by ``tests/worker/test_runpod_sdk.py``, which fails when an upgrade moves them:

1. :func:`import_runpod`: ``runpod.serverless.utils.rp_debugger`` calls ``cpuinfo.get_cpu_info()
   ["brand_raw"]`` once at import (py-cpuinfo starts a Python subprocess: ~1.2 s of CPU); a light
   stand-in answers it from /proc/cpuinfo during the import and is removed from ``sys.modules``
   afterwards, so any later ``import cpuinfo`` gets the real module.
2. :func:`has_job_api`: ``runpod.serverless.modules.rp_http.JOB_DONE_URL``, the URL results go to,
   tells whether there is a RunPod job API to send progress to (not in local ``--test_input`` runs).
3. :func:`forward_sigterm_first`: runpod's job loop installs its own SIGTERM handler when it starts
   and then calls ``concurrency_modifier`` in the main thread; the modifier returned here chains
   ``forward`` (e.g. to ComfyUI) in front of runpod's handler on its first call.
"""

from __future__ import annotations

import signal
import sys
import types
from typing import Any, Callable

STANDIN_DOC = "rp_handler's light stand-in for py-cpuinfo (see rp_handler.runpod_sdk)"


def _cpu_brand() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor()


def light_cpuinfo() -> bool:
    """Put the stand-in in ``sys.modules`` unless something imported the real module first."""
    if "cpuinfo" in sys.modules:
        return False
    stub = types.ModuleType("cpuinfo", STANDIN_DOC)

    def get_cpu_info() -> dict[str, str]:
        brand = _cpu_brand()
        return {"brand_raw": brand} if brand else {}

    stub.get_cpu_info = get_cpu_info  # type: ignore[attr-defined]
    sys.modules["cpuinfo"] = stub
    return True


def import_runpod() -> types.ModuleType:
    """``import runpod.serverless`` with the cpuinfo stand-in in place only while it imports."""
    installed = light_cpuinfo()
    try:
        import runpod.serverless
    finally:
        if installed and getattr(sys.modules.get("cpuinfo"), "__doc__", None) == STANDIN_DOC:
            del sys.modules["cpuinfo"]
    return runpod.serverless


def has_job_api() -> bool:
    """True when runpod will post results to a RunPod job API (so progress updates have a receiver)."""
    from runpod.serverless.modules import rp_http

    return str(rp_http.JOB_DONE_URL).startswith(("http://", "https://"))


def progress_sender() -> Callable[[dict, Any], None] | None:
    """runpod's ``progress_update`` when there is a RunPod job API to send to, else None (local runs)."""
    from runpod.serverless import progress_update

    return progress_update if has_job_api() else None


def forward_sigterm_first(forward: Callable[[int], None], ours: Any,
                          concurrency: Callable[[int], int] = lambda n: n) -> Callable[[int], int]:
    """A ``concurrency_modifier`` that, on its first call, puts ``forward(signum)`` before runpod's SIGTERM handler.

    ``ours`` is the worker's own handler (installed before runpod's loop): it is not chained.
    ``concurrency`` computes the answer the loop gets (by default the loop's own value).
    """
    chained = False

    def modifier(current: int) -> int:
        nonlocal chained
        if not chained:
            chained = True
            previous = signal.getsignal(signal.SIGTERM)
            if callable(previous) and previous is not ours:
                def forward_then_runpod(signum: int, frame: Any) -> None:
                    forward(signum)
                    previous(signum, frame)
                signal.signal(signal.SIGTERM, forward_then_runpod)
        return concurrency(current)

    return modifier
