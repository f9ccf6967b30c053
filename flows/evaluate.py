"""Flow: hallucination rate before and after training, with its confidence interval (gated; offloaded when the
plan says so)."""

from __future__ import annotations

from prefect import flow

from faithforge.core.config import PipelineConfig
from faithforge.stages.outputs import (AdapterOutput, ControlOutput, DatasetOutput, EvaluationOutput, ModelOutput,
                                       PairsOutput)
from tasks.evaluate import evaluate_task
from tasks.gate import gate_task
from tasks.offload import gpu_slot, offload_task, receive_task, send_task


@flow(name="faithforge-evaluate", log_prints=False)
def evaluate_flow(config: PipelineConfig, model: ModelOutput, dataset: DatasetOutput, pairs: PairsOutput,
                  dpo: AdapterOutput, control: ControlOutput | None = None, run_id: str | None = None,
                  offloaded: bool = False) -> EvaluationOutput | dict:
    """Summarize the held-out sources with each model, judge them, and compare.

    Args:
        config: The pipeline configuration.
        model: The model stage's output (`{"path": ...}`).
        dataset: The generate stage's output (`{"path", "files", ...}`).
        pairs: The pairs stage's output (checked for overlap with the evaluation sources).
        dpo: The DPO adapter (`{"path": ...}`).
        control: The SFT control adapter, if one was trained.
        run_id: The FaithForge run this stage belongs to (empty: none).
        offloaded: Set by the pipeline when it runs this stage on the offload pool: paths are `@storage/`
            references, outputs are published to the storage URL (and returned as that JSON).
    """
    inputs = {"model": model, "dataset": dataset, "pairs": pairs, "dpo": dpo, "control": control}
    if offloaded:
        received = receive_task(config, "evaluate", inputs)
        config, run_id = PipelineConfig.model_validate(received["config"]), received["run_id"]
        model, dataset, pairs, dpo, control = _typed_inputs(received["inputs"])
        inputs = {"model": model, "dataset": dataset, "pairs": pairs, "dpo": dpo, "control": control}
    plan = gate_task(config, run_id, "evaluate")
    if plan.placement == "offload":
        return EvaluationOutput.model_validate(offload_task(config, run_id, "evaluate", plan, inputs))
    with gpu_slot(config, plan):
        out = evaluate_task(config, run_id, model, dataset, pairs, dpo, control, plan)
    return send_task(config, run_id, "evaluate", out)["outputs"] if offloaded else out


def _typed_inputs(inputs: dict) -> tuple:
    """The received JSON inputs as the stage outputs they are."""
    control = inputs.get("control")
    return (ModelOutput.model_validate(inputs["model"]), DatasetOutput.model_validate(inputs["dataset"]),
            PairsOutput.model_validate(inputs["pairs"]), AdapterOutput.model_validate(inputs["dpo"]),
            ControlOutput.model_validate(control) if control else None)
