"""The GPU gate task: runs before every GPU stage, records its plan, shows it (and where the stage runs) as an
artifact."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from faithforge.core.config import PipelineConfig
from faithforge.offload.dispatch import runs_here
from faithforge.stages.context import StageContext
from faithforge.stages.gate import GateRecord, gate
from faithforge.stages.ui_report import plan_markdown, runs_on


def _cuda_available() -> bool:
    import torch  # the stage behind this gate imports it anyway

    return torch.cuda.is_available()


@task(name="gpu-gate", cache_policy=NO_CACHE)
def gate_task(config: PipelineConfig, run_id: str | None, stage: str) -> GateRecord:
    # runs_here (no Prefect, below the stages) works on the record's JSON: a stage that cannot be offloaded
    # runs on this machine's CPU, and its record says so.
    plan = GateRecord.model_validate(runs_here(gate(StageContext.open(config, run_id), stage).to_dict()))
    get_run_logger().info("gate %s: %s", stage, plan.reason)
    where = runs_on(plan.to_dict(), _cuda_available())
    create_markdown_artifact(key=f"gpu-plan-{stage}".replace("_", "-"), markdown=plan_markdown(plan.to_dict(), where),
                             description=f"GPU gate decision for {stage}: runs on {where}")
    return plan
