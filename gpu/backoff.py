"""The OOM safety net: when CUDA runs out of memory anyway, shrink the micro-batch and try again.

Each back-off halves the micro-batch (the largest proper divisor, so the effective batch stays exact) and
multiplies gradient accumulation to match; the work runs again (in the caller's loop over `oom_backoff`) and is
expected to resume from its last checkpoint. torch is never imported here: OOM is recognised by class name or message.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

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


class OomAttempt:
    """One try of a stage's work at `plan`, as a context manager that catches a CUDA OOM (and nothing else).

    After the `with` block: `backoff` says what the next try changes (None when the work finished or the
    back-offs are spent; then the loop ends or `oom_backoff` raises)."""

    def __init__(self, plan: Plan, number: int, max_backoffs: int, measure_peak: Callable[[], int | None]):
        self.plan = plan
        """The plan this try runs at (micro-batch and accumulation)."""
        self.number = number
        """Back-offs before this try (0: the first try)."""
        self.backoff: BackoffEvent | None = None
        """Set when this try ran out of memory and another try comes (for the caller's log)."""
        self._max_backoffs, self._measure_peak = max_backoffs, measure_peak
        self._given_up: str | None = None

    def __enter__(self) -> "OomAttempt":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not isinstance(exc, Exception) or not is_cuda_oom(exc):
            return False  # finished, or another error: it propagates untouched
        peak, current = self._measure_peak(), self.plan
        smaller = _smaller(current.batch_size)
        if self.number >= self._max_backoffs or smaller is None:
            self._given_up = (
                f"{current.stage}: CUDA out of memory after {self.number} back-off(s) "
                f"(plan: {current.model}, batch {current.batch_size} × accumulation {current.grad_accum}, "
                f"{current.max_tokens} tokens, estimated {format_gib(current.estimated_peak_bytes)}; measured "
                f"peak reserved {format_gib(peak, unknown='not measured')}); close other programs using the GPU, "
                f"shorten the sequences, choose a smaller model, run `faithforge gpu calibrate`, or offload "
                f"(gpu.offload_pool)")
        else:
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            next_plan = current.with_micro_batch(smaller, current.grad_accum * (current.batch_size // smaller))
            self.backoff = BackoffEvent(self.number + 1, current, next_plan, error, peak)
        return True  # the loop decides (after the error's frames, and the tensors they hold, are gone)


def oom_backoff(plan: Plan, *, max_backoffs: int = 3,
                measure_peak: Callable[[], int | None] = _measured_peak_bytes) -> Iterator[OomAttempt]:
    """Tries of a stage's work: the first at `plan`, each after a CUDA OOM at a smaller micro-batch, up to
    `max_backoffs` back-offs. The caller's loop runs the work itself (no callback into the stage):

        for attempt in oom_backoff(plan):
            with attempt:
                result = train(attempt.plan)   # resumes from its last checkpoint on a later try
            if attempt.backoff:
                log(attempt.backoff)

    After the last allowed back-off (or at micro-batch 1) raises `OomBackoffExhausted` naming the plan, the
    measured peak and what to do."""
    current, number = plan, 0
    while True:
        attempt = OomAttempt(current, number, max_backoffs, measure_peak)
        yield attempt
        if attempt.backoff is None and attempt._given_up is None:
            return  # the work finished
        _free_cuda_cache()  # the OOM's traceback is gone by now: its tensors can go too
        if attempt._given_up is not None:
            raise OomBackoffExhausted(attempt._given_up)
        current, number = attempt.backoff.next_plan, number + 1


def run_with_oom_backoff(step_fn: Callable[[Plan], T], plan: Plan, *, max_backoffs: int = 3,
                         on_backoff: Callable[[BackoffEvent], None] | None = None,
                         measure_peak: Callable[[], int | None] = _measured_peak_bytes) -> T:
    """`oom_backoff` as one call: `step_fn(plan)`, again at a smaller micro-batch after each CUDA OOM
    (`on_backoff` hears of each). Other exceptions propagate untouched."""
    for attempt in oom_backoff(plan, max_backoffs=max_backoffs, measure_peak=measure_peak):
        with attempt:
            return step_fn(attempt.plan)
        if on_backoff is not None and attempt.backoff is not None:
            on_backoff(attempt.backoff)
    raise AssertionError("unreachable: oom_backoff ends by a return above or by raising")
