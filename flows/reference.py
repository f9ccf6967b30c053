"""Flow: the reference log-prob cache for a model and a pairs file (gated; offloaded when the plan says so)."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from faithforge.core.config import PipelineConfig
from faithforge.stages.outputs import ModelOutput, PairsOutput, ReferenceOutput
from faithforge.stages.reference import reference_logps
from faithforge.gpu.planner import Plan
from faithforge.tasks.gated_stage import enter_gated_stage
from faithforge.tasks.stage_runner import run_stage


@flow(name="faithforge-reference", log_prints=False)
def reference_flow(config: PipelineConfig, model: ModelOutput, pairs: PairsOutput, run_id: str | None = None,
                   offloaded: bool = False) -> ReferenceOutput | dict:
    """Score every training pair with the reference model once and store the result on disk.

    Args:
        config: The pipeline configuration.
        model: The model stage's output (`{"path": ...}`).
        pairs: The pairs stage's output (`{"path", "train", "val", ...}`).
        run_id: The FaithForge run this stage belongs to (empty: none).
        offloaded: Set by the pipeline when it runs this stage on the offload pool: paths are `@storage/`
            references, outputs are published to the storage URL (and returned as that JSON).
    """
    stage = enter_gated_stage("reference", config, run_id, offloaded=offloaded, inputs={"model": model, "pairs": pairs},
                              input_types={"model": ModelOutput, "pairs": PairsOutput}, output_type=ReferenceOutput)
    if stage.done is not None:
        return stage.done
    with stage.slot():
        out = reference_task(stage.config, stage.run_id, stage.inputs["model"], stage.inputs["pairs"], stage.plan)
    return stage.finish(out)


@task(name="reference-logps", cache_policy=NO_CACHE, retries=1)
def reference_task(config: PipelineConfig, run_id: str | None, model: ModelOutput, pairs: PairsOutput,
                   plan: Plan) -> ReferenceOutput:
    # retries=1: a killed or failed pass resumes from its last complete shard.
    return run_stage("reference", config, run_id, reference_logps, model, pairs, plan)
