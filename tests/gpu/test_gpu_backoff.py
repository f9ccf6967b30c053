"""The OOM safety net: halve the micro-batch, keep the effective batch, give up after three back-offs."""

from __future__ import annotations

import pytest

from faithforge.gpu.backoff import is_cuda_oom, run_with_oom_backoff
from faithforge.gpu.errors import OomBackoffExhausted
from faithforge.gpu.model_shape import load_model_shape
from faithforge.gpu.planner import StageRequest, plan_stage
from faithforge.gpu.profiles import profile_snapshot


class OutOfMemoryError(RuntimeError):
    """Same class name as torch.cuda.OutOfMemoryError."""


def a100_plan(batch=8):
    return plan_stage(profile_snapshot("a100-80gb"), "train", [load_model_shape("llama-3-8b")],
                      StageRequest(batch_size=batch, seq_len=512))


def test_detects_oom_by_class_name_or_message_only():
    assert is_cuda_oom(OutOfMemoryError("boom"))
    assert is_cuda_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_cuda_oom(RuntimeError("shape mismatch"))


def test_backs_off_until_the_step_succeeds_and_logs_each_back_off():
    plan = a100_plan(8)
    assert (plan.batch_size, plan.grad_accum) == (8, 1)
    seen, events = [], []

    def step(p):
        seen.append((p.batch_size, p.grad_accum))
        if p.batch_size > 2:
            raise OutOfMemoryError("CUDA out of memory")
        return "done"

    assert run_with_oom_backoff(step, plan, on_backoff=events.append, measure_peak=lambda: 123) == "done"
    assert seen == [(8, 1), (4, 2), (2, 4)]
    assert [(e.attempt, e.next_plan.batch_size, e.next_plan.grad_accum, e.measured_peak_bytes) for e in events] == [
        (1, 4, 2, 123), (2, 2, 4, 123)]


def test_gives_up_after_three_back_offs_with_plan_peak_and_advice():
    calls = []

    def step(p):
        calls.append(p.batch_size)
        raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")

    with pytest.raises(OomBackoffExhausted) as err:
        run_with_oom_backoff(step, a100_plan(16), measure_peak=lambda: 40 * (1 << 30))
    assert calls == [16, 8, 4, 2]
    message = str(err.value)
    assert "after 3 back-off(s)" in message and "llama-3-8b" in message and "batch 2 × accumulation 8" in message
    assert "40.00 GiB" in message and "gpu.offload_pool" in message


def test_odd_batches_keep_the_effective_batch_and_other_errors_propagate():
    seen = []

    def step(p):
        seen.append(p.batch_size * p.grad_accum)
        if p.batch_size > 1:
            raise OutOfMemoryError()
        return p

    final = run_with_oom_backoff(step, a100_plan(6), measure_peak=lambda: None)
    assert (final.batch_size, final.grad_accum) == (1, 6) and set(seen) == {6}

    def broken(p):
        raise KeyError("not an OOM")

    with pytest.raises(KeyError):
        run_with_oom_backoff(broken, a100_plan(4))


def test_the_caller_runs_the_work_in_its_own_loop_and_logs_each_back_off():
    """The stages' form: no callback into the stage; the loop ends after the try that finished."""
    from faithforge.gpu.backoff import oom_backoff

    tries, logged = [], []
    for attempt in oom_backoff(a100_plan(8), measure_peak=lambda: None):
        with attempt:
            tries.append((attempt.number, attempt.plan.batch_size, attempt.plan.grad_accum))
            if attempt.plan.batch_size > 2:
                raise OutOfMemoryError("CUDA out of memory")
            result = "trained"
        if attempt.backoff:
            logged.append((attempt.backoff.attempt, attempt.backoff.failed.batch_size, attempt.backoff.next_plan.batch_size))
    assert result == "trained" and tries == [(0, 8, 1), (1, 4, 2), (2, 2, 4)]
    assert logged == [(1, 8, 4), (2, 4, 2)]

    with pytest.raises(KeyError):  # another error leaves the loop at once, untouched
        for attempt in oom_backoff(a100_plan(8)):
            with attempt:
                raise KeyError("not an OOM")
    with pytest.raises(OomBackoffExhausted, match="after 1 back-off"):
        for attempt in oom_backoff(a100_plan(8), max_backoffs=1, measure_peak=lambda: None):
            with attempt:
                raise OutOfMemoryError("CUDA out of memory")
