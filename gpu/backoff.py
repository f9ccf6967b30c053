"""The OOM safety net: when CUDA runs out of memory anyway, shrink the micro-batch and try again.

Each back-off halves the micro-batch (the largest proper divisor, so the effective batch stays exact) and
multiplies gradient accumulation to match; `step_fn(plan)` is called again and is expected to resume from
its last checkpoint. torch is never imported here: OOM is recognised by class name or message.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from typing import Callable, TypeVar

from faithforge.gpu.errors import OomBackoffExhausted
from faithforge.gpu.planner import Plan
from faithforge.gpu.units import format_gib

T = TypeVar("T")
OOM_CLASS_NAMES = ("OutOfMemoryError",)
OOM_MESSAGE = "CUDA out of memory"


@dataclass(frozen=True)
class BackoffEvent:
    """One back-off, for logging: the plan that failed, the plan tried next, and the error text."""

    attempt: int
    failed: Plan
    next_plan: Plan
    error: str
    measured_peak_bytes: int | None


def is_cuda_oom(exc: BaseException) -> bool:
    """True for `torch.cuda.OutOfMemoryError` (by class name) or any error saying 'CUDA out of memory'."""
    return type(exc).__name__ in OOM_CLASS_NAMES or OOM_MESSAGE in str(exc)


def _smaller(batch: int) -> int | None:
    """The largest proper divisor of `batch` (≈ half for even batches); None at 1."""
    for d in range(batch // 2, 0, -1):
        if batch % d == 0:
            return d
    return None


def _measured_peak_bytes() -> int | None:
    """torch.cuda.max_memory_reserved() if torch is already loaded and CUDA is up; never imports torch."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.max_memory_reserved())
    except Exception:  # a broken CUDA state after OOM must not hide the original error
        return None
    return None


def _free_cuda_cache() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:  # a CUDA context broken by the OOM: freeing is best effort, the retry will tell
        pass


def run_with_oom_backoff(step_fn: Callable[[Plan], T], plan: Plan, *, max_backoffs: int = 3,
                         on_backoff: Callable[[BackoffEvent], None] | None = None,
                         measure_peak: Callable[[], int | None] = _measured_peak_bytes) -> T:
    """Run `step_fn(plan)`; on CUDA OOM retry with a smaller micro-batch up to `max_backoffs` times.

    Other exceptions propagate untouched. After the last allowed back-off (or at micro-batch 1) raises
    `OomBackoffExhausted` naming the plan, the measured peak and what to do.
    """
    current, attempt = plan, 0
    while True:
        try:
            return step_fn(current)
        except Exception as exc:
            if not is_cuda_oom(exc):
                raise
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            peak = measure_peak()
            del exc
            _free_cuda_cache()
            smaller = _smaller(current.batch_size)
            if attempt >= max_backoffs or smaller is None:
                peak_text = format_gib(peak, unknown="not measured")
                raise OomBackoffExhausted(
                    f"{current.stage}: CUDA out of memory after {attempt} back-off(s) "
                    f"(plan: {current.model}, batch {current.batch_size} × accumulation {current.grad_accum}, "
                    f"{current.max_tokens} tokens, estimated {format_gib(current.estimated_peak_bytes)}; measured "
                    f"peak reserved {peak_text}); close other programs using the GPU, shorten the sequences, "
                    f"choose a smaller model, run `faithforge gpu calibrate`, or offload (gpu.offload_pool)"
                ) from None
            attempt += 1
            next_plan = current.with_micro_batch(smaller, current.grad_accum * (current.batch_size // smaller))
            if on_backoff is not None:
                on_backoff(BackoffEvent(attempt, current, next_plan, error, peak))
            current = next_plan
