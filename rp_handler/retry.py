"""Whole-job retry policy: at most one more attempt, only for transient failures.

::

    def on_retry(err, attempt):      # e.g. POST /free after OutOfMemory,
        ...                          # restart ComfyUI after ComfyDied
    result = run_with_retry(lambda: run_job(job), on_retry=on_retry)

An error is retried when it has ``retryable = True`` (``ComfyDied``,
``ComfyProtocolError``, ``OutOfMemory``, or any ``WorkerError`` instance whose
``retryable`` was set, such as a transient GCS failure) and is not a validation
error (``InputError``, ``PromptRejected``).  ``fn`` runs at most
``MAX_ATTEMPTS`` (2) times; the last error is re-raised unchanged.  If
``on_retry`` raises, that error ends the job.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_any, wait_fixed

from rp_handler.errors import InputError, PromptRejected

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ATTEMPTS = 2
NEVER_RETRIED = (InputError, PromptRejected)


def is_retryable(err: BaseException) -> bool:
    """True for transient failures worth one more attempt of the whole job."""
    return getattr(err, "retryable", False) is True and not isinstance(err, NEVER_RETRIED)


def run_with_retry(
    fn: Callable[[], T],
    *,
    on_retry: Callable[[BaseException, int], None] | None = None,
    wait_s: float = 0.0,
    attempts: int = MAX_ATTEMPTS,
    give_up: Callable[[], bool] | None = None,
) -> T:
    """Call ``fn``; on a retryable error call ``on_retry(err, attempt)`` and try once more, unless
    ``give_up()`` says no retry may start (e.g. the job's deadline has passed)."""

    def before_sleep(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        log.warning("attempt %d failed with %s: %s; retrying once", state.attempt_number, type(err).__name__, err)
        if on_retry is not None and err is not None:
            on_retry(err, state.attempt_number)

    retrying = Retrying(
        stop=stop_any(stop_after_attempt(max(1, min(attempts, MAX_ATTEMPTS))),
                      lambda state: give_up is not None and give_up()),
        retry=retry_if_exception(is_retryable),
        wait=wait_fixed(wait_s),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)
