"""The FaithForge pipeline: generate → pairs → reference log-probs → DPO → evaluate, each GPU stage gated.

Reads top to bottom like the diagram in the README. Every step is a task or a subflow whose logic lives in
`faithforge.stages` (plain Python); this file only composes them and imports no torch.
"""

from __future__ import annotations

from prefect import flow

from faithforge.config import PipelineConfig
from faithforge.stages.generate import generation_parameters
from flows.evaluate import evaluate_flow
from flows.generate import generate_flow
from flows.reference import reference_flow
from flows.train import train_flow
from tasks.data import base_model_task, generate_task, import_generated_task, pairs_task, warm_start_task
from tasks.gate import gate_task
from tasks.offload import gpu_slot
from tasks.runs import finish_run_task, start_run_task


@flow(name="faithforge-pipeline", log_prints=True)
def pipeline(config: PipelineConfig = PipelineConfig()) -> dict:
    """Run the whole pipeline and return where everything was written and the before/after rates."""
    run_id = start_run_task(config, "pipeline")
    stages: dict[str, dict] = {}
    try:
        if config.generate.backend == "template":
            gate_task(config, run_id, "generate")
            stages["generate"] = dataset = generate_task(config, run_id)
        else:  # an LLM writes the data: the spec-driven generation flow (gated inside) runs as a subflow
            generated = generate_flow(generation_parameters(config))
            stages["generate"] = dataset = import_generated_task(config, run_id, generated["export"])
        stages["base_model"] = base = base_model_task(config, run_id)
        warm_plan = gate_task(config, run_id, "train")  # the warm start is a training stage
        # An offload plan runs the warm start on this CPU: it exists for the tiny model (turn it off for your own).
        with gpu_slot(config, warm_plan):
            stages["warm_start"] = model = warm_start_task(config, run_id, base, dataset, warm_plan)
        # On-policy pairs sample from the warm-started model: a generation workload, gated like one.
        pairs_plan = gate_task(config, run_id, "evaluate") if config.pairs.builder == "on-policy" else None
        stages["pairs"] = pairs = pairs_task(config, run_id, dataset, model, pairs_plan)
        stages["reference"] = reference = reference_flow(config, model, pairs, run_id=run_id)
        trained = train_flow(config, model, pairs, reference, run_id=run_id)
        stages["train"], stages["control"] = trained["dpo"], trained["control"]
        stages["evaluate"] = evaluate_flow(config, model, dataset, pairs, trained["dpo"], trained["control"],
                                           run_id=run_id)
    except BaseException as exc:
        finish_run_task(config, run_id, "failed", {"error": str(exc)[:2000], "stages": stages})
        raise
    summary = {"run_id": run_id, "workspace": config.workspace, "stages": stages}
    finish_run_task(config, run_id, "completed", summary)
    return summary
