"""The GPU gate task: runs before every GPU stage, records its plan, shows it as an artifact."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from faithforge.config import PipelineConfig
from faithforge.stages.context import StageContext
from faithforge.stages.gate import gate


def _gib(n) -> str:
    return "—" if n is None else f"{n / 2**30:.2f} GiB"


@task(name="gpu-gate", cache_policy=NO_CACHE)
def gate_task(config: PipelineConfig, run_id: str | None, stage: str) -> dict:
    plan = gate(StageContext.open(config, run_id), stage)
    get_run_logger().info("gate %s: %s", stage, plan["reason"])
    create_markdown_artifact(
        key=f"gpu-plan-{stage}",
        markdown=(f"### GPU plan for `{stage}`\n\n| placement | model | micro-batch × accumulation | estimated peak | "
                  f"usable |\n|---|---|---|---|---|\n| {plan['placement']} | {plan['model']} | {plan['batch_size']} × "
                  f"{plan['grad_accum']} | {_gib(plan['estimated_peak_bytes'])} | {_gib(plan['usable_bytes'])} |\n\n"
                  f"{plan['reason']}\n"),
        description=f"GPU gate decision for {stage}",
    )
    return plan
