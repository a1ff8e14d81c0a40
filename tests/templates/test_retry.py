"""Whole-job retries: once, only for retryable errors, never for validation errors."""

from __future__ import annotations

import pytest

from rp_handler.errors import (ComfyDied, ComfyTimeout, ExecutionFailed, InputError, OutOfMemory,
                               OutputError, PromptRejected)
from rp_handler.retry import MAX_ATTEMPTS, is_retryable, run_with_retry


class Flaky:
    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return f"ok after {self.calls}"


@pytest.mark.parametrize("err", [ComfyDied("comfy exited"), OutOfMemory("CUDA out of memory")])
def test_retryable_error_once_then_success(err):
    fn, seen = Flaky(err), []
    assert run_with_retry(fn, on_retry=lambda e, n: seen.append((e, n))) == "ok after 2"
    assert fn.calls == 2 and seen == [(err, 1)]


@pytest.mark.parametrize("err", [InputError("bad"), PromptRejected("invalid prompt"), ExecutionFailed("boom"),
                                 ComfyTimeout("late"), ValueError("plain")])
def test_not_retried(err):
    fn, seen = Flaky(err), []
    with pytest.raises(type(err)) as exc:
        run_with_retry(fn, on_retry=lambda e, n: seen.append(n))
    assert exc.value is err and fn.calls == 1 and seen == []


def test_validation_error_is_never_retried_even_if_marked_retryable():
    err = PromptRejected("invalid prompt")
    err.retryable = True
    fn = Flaky(err)
    with pytest.raises(PromptRejected):
        run_with_retry(fn)
    assert fn.calls == 1


def test_never_more_than_two_attempts():
    fn, seen = Flaky(ComfyDied("1"), ComfyDied("2"), ComfyDied("3")), []
    with pytest.raises(ComfyDied, match="2"):
        run_with_retry(fn, on_retry=lambda e, n: seen.append(n))
    assert fn.calls == MAX_ATTEMPTS == 2 and seen == [1]


def test_instance_marked_retryable_is_retried():
    transient = OutputError("GCS 503")
    transient.retryable = True  # e.g. a transient GCS failure
    assert is_retryable(transient) and not is_retryable(OutputError("bucket missing"))
    fn = Flaky(transient)
    assert run_with_retry(fn) == "ok after 2"


def test_on_retry_failure_ends_the_job():
    def on_retry(err, attempt):
        raise ComfyDied("restart failed")

    fn = Flaky(OutOfMemory("oom"))
    with pytest.raises(ComfyDied, match="restart failed"):
        run_with_retry(fn, on_retry=on_retry)
    assert fn.calls == 1


def test_no_retry_starts_once_give_up_says_so():
    """The job's deadline bounds its retries: a retryable failure after it is the job's answer."""
    fn = Flaky(ComfyDied("comfy exited"))
    with pytest.raises(ComfyDied):
        run_with_retry(fn, give_up=lambda: True)
    assert fn.calls == 1
    assert run_with_retry(Flaky(ComfyDied("comfy exited")), give_up=lambda: False) == "ok after 2"
