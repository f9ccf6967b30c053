"""Tasks that open and close a run in the FaithForge store (linked to the Prefect flow run)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from faithforge.core.config import PipelineConfig
from faithforge.stages.context import StageContext


@task(name="start-run", cache_policy=NO_CACHE)
def start_run_task(config: PipelineConfig, kind: str) -> str:
    ctx = StageContext.open(config)
    return ctx.store.start_run(kind, config.model_dump(mode="json"), prefect_flow_run_id=str(flow_run.id or ""))


@task(name="finish-run", cache_policy=NO_CACHE)
def finish_run_task(config: PipelineConfig, run_id: str, status: str, summary: dict) -> None:
    StageContext.open(config).store.finish_run(run_id, status, summary)


def cancel_run(config: PipelineConfig, run_id: str, stages: dict, why: str = "Ctrl-C or SIGTERM") -> None:
    """Mark the run `cancelled` (stopped on request) straight in the store: not a task, because a Ctrl-C also
    stops Prefect's embedded server, and a task would wait for it."""
    store = StageContext.open(config).store
    run = store.get_run(run_id)
    if run is not None and run.status == "running":
        store.finish_run(run_id, "cancelled", {"stages": stages, "cancelled": why})
