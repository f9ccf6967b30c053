"""What every pipeline task does around its stage: open the context, show progress, time it, record it.

Tasks return small JSON only (paths, keys, metrics): Prefect keeps every task result for dependency
tracking, so a model or tensor returned here would stay in memory for the whole flow run.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from prefect import get_run_logger
from prefect.events import emit_event

from faithforge.core.config import PipelineConfig
from faithforge.core import progress as progress_registry
from faithforge.core.progress import fan_out
from faithforge.core.errors import redact_credentials
from faithforge.stages.context import StageContext
from faithforge.stages.outputs import StageOutput
from faithforge.tasks.progress_artifact import is_wait, stage_progress_artifact

#: keys too large or too internal to store with a stage record
_BULKY = {"markdown", "table", "history"}


def _log_waits(logger) -> Callable[[str, int, int, str], None]:
    """Waits (another run's lock on this stage's output) as lines of the run's Prefect log."""

    def sink(stage: str, done: int, total: int, message: str) -> None:  # noqa: ARG001
        if is_wait(message):
            logger.info("%s: %s", stage, message)

    return sink


def run_stage(stage: str, config: PipelineConfig, run_id: str | None, fn: Callable[..., StageOutput],
              *args: Any) -> StageOutput:
    logger = get_run_logger()
    artifact = stage_progress_artifact(stage)
    ctx = StageContext.open(config, run_id, progress=fan_out(artifact, _log_waits(logger)))
    ctx.log = lambda line: logger.info("%s", line)  # e.g. every torchrun rank's lines, into this task's log
    started = time.perf_counter()
    progress_registry.begin(stage)
    try:
        with artifact:  # flushes its last value after a success; a failed or stopped stage waits for no server
            out = fn(ctx, *args)
            wall = round(time.perf_counter() - started, 2)  # the stage's own time, before the flush
    except Exception as exc:
        progress_registry.end(stage, f"failed after {time.perf_counter() - started:.1f} s")
        if run_id:
            ctx.store.record_stage(run_id, stage, status="failed", message=redact_credentials(str(exc))[:2000],
                                   wall_seconds=time.perf_counter() - started)
        raise
    out = out.model_copy(update={"wall_seconds": wall})
    # A stage that is turned off (the warm start for your own model) was neither run nor reused: say so.
    skipped = bool(getattr(out, "skipped", False))
    reused = out.reused and not skipped
    if run_id:
        ctx.store.record_stage(run_id, stage, status="completed", reused=reused, wall_seconds=wall,
                               outputs=out.model_dump(mode="json", exclude=_BULKY))
    done = "skipped (turned off)" if skipped else "reused existing output" if reused else "completed"
    logger.info("%s %s in %.1f s", stage, done, wall)
    progress_registry.end(stage, "skipped (turned off)" if skipped else "reused (already computed)" if reused
                          else f"done in {wall:.1f} s")
    emit_event(event="faithforge.stage.completed", resource={"prefect.resource.id": f"faithforge.stage.{stage}"},
               payload={"stage": stage, "run_id": run_id, "reused": reused, "skipped": skipped, "wall_seconds": wall})
    return out
