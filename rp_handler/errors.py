"""One error hierarchy for the worker, turned into RunPod's payload in one place.

ComfyUI's own ``node_errors`` and ``execution_error`` data pass through unchanged
in ``details``.
"""

from __future__ import annotations

from typing import Any


class WorkerError(Exception):
    """Base: ``str(err)`` is one line; ``details`` is JSON-serialisable."""

    code = "worker_error"
    retryable = False  # a transient failure worth one more attempt of the whole job
    refresh_worker = False  # RunPod should replace this worker after the job

    def __init__(self, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.details = dict(details or {})


class InputError(WorkerError, ValueError):
    code = "invalid_input"


class ComfyStartError(WorkerError, RuntimeError):
    code = "comfy_start_failed"
    refresh_worker = True


class ComfyDied(WorkerError, ConnectionError):
    code = "comfy_died"
    retryable = True


class ComfyTimeout(WorkerError, TimeoutError):
    code = "timeout"


class ComfyProtocolError(WorkerError, RuntimeError):
    code = "comfy_protocol"
    retryable = True


class ComfyUnresponsive(ComfyProtocolError):
    """ComfyUI's process is alive but did not answer an HTTP request in time (frozen, deadlocked)."""

    code = "comfy_unresponsive"


class PromptRejected(WorkerError, ValueError):
    """ComfyUI answered POST /prompt with 400 (validation): never retried."""

    code = "prompt_validation"


class ExecutionFailed(WorkerError, RuntimeError):
    code = "execution_error"


class OutOfMemory(ExecutionFailed, MemoryError):
    code = "out_of_memory"
    retryable = True


class Interrupted(WorkerError, InterruptedError):
    code = "interrupted"


class Cancelled(Interrupted):
    """RunPod stopped the job (cancelled, or its execution timeout passed): its prompt was stopped."""

    code = "cancelled"


class OutputError(WorkerError, OSError):
    code = "output_error"


class CacheError(WorkerError, OSError):
    code = "cache_error"


def one_line(text: str, limit: int = 500) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def to_payload(err: BaseException) -> dict[str, Any]:
    """The RunPod error result for any exception: ``{"error", "details"}``."""
    if isinstance(err, WorkerError):
        payload: dict[str, Any] = {
            "error": one_line(str(err)),
            "details": {"code": err.code, **err.details},
        }
        if err.refresh_worker:
            payload["refresh_worker"] = True
        return payload
    return {
        "error": one_line(f"internal error: {type(err).__name__}: {err}"),
        "details": {"code": "internal", "type": type(err).__name__},
    }
