"""Flow: the reference log-prob cache for a model and a pairs file (gated; offloaded when the plan says so)."""

from __future__ import annotations

from prefect import flow

from faithforge.core.config import PipelineConfig
from faithforge.stages.outputs import ModelOutput, PairsOutput, ReferenceOutput
from tasks.gate import gate_task
from tasks.offload import gpu_slot, offload_task, receive_task, send_task
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
    if offloaded:
        received = receive_task(config, "reference", {"model": model, "pairs": pairs})
        config, run_id = PipelineConfig.model_validate(received["config"]), received["run_id"]
        model = ModelOutput.model_validate(received["inputs"]["model"])
        pairs = PairsOutput.model_validate(received["inputs"]["pairs"])
    plan = gate_task(config, run_id, "reference")
    if plan.placement == "offload":
        return ReferenceOutput.model_validate(
            offload_task(config, run_id, "reference", plan, {"model": model, "pairs": pairs}))
    with gpu_slot(config, plan):
        out = reference_task(config, run_id, model, pairs, plan)
    return send_task(config, run_id, "reference", out)["outputs"] if offloaded else out
