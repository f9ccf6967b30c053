"""Task: the reference log-prob pass (once per model, tokenizer, template, length, quantization and pairs)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from faithforge.core.config import PipelineConfig
from faithforge.stages.outputs import ModelOutput, PairsOutput, ReferenceOutput
from faithforge.stages.reference import reference_logps
from gpu.planner import Plan
from tasks.common import run_stage


@task(name="reference-logps", cache_policy=NO_CACHE, retries=1)
def reference_task(config: PipelineConfig, run_id: str | None, model: ModelOutput, pairs: PairsOutput,
                   plan: Plan) -> ReferenceOutput:
    # retries=1: a killed or failed pass resumes from its last complete shard.
    return run_stage("reference", config, run_id, reference_logps, model, pairs, plan)
