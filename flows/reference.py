"""Flow: the reference log-prob cache for a model and a pairs file (gated; offloaded when the plan says so)."""

from __future__ import annotations

from prefect import flow

from faithforge.core.config import PipelineConfig
from faithforge.stages.outputs import ModelOutput, PairsOutput, ReferenceOutput
from tasks.gated import gated_stage
from tasks.reference import reference_task


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
    return gated_stage("reference", config, run_id, offloaded=offloaded, inputs={"model": model, "pairs": pairs},
                       input_types={"model": ModelOutput, "pairs": PairsOutput}, output_type=ReferenceOutput,
                       work=lambda cfg, rid, i, plan: reference_task(cfg, rid, i["model"], i["pairs"], plan))
