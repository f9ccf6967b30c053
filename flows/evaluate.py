"""Flow: hallucination rate before and after training, with its confidence interval (gated; offloaded when the
plan says so)."""

from __future__ import annotations

from prefect import flow

from faithforge.core.config import PipelineConfig
from tasks.evaluate import evaluate_task
from tasks.gate import gate_task
from tasks.offload import gpu_slot, offload_task, receive_task, send_task


@flow(name="faithforge-evaluate", log_prints=False)
def evaluate_flow(config: PipelineConfig, model: dict, dataset: dict, pairs: dict, dpo: dict,
                  control: dict | None = None, run_id: str | None = None, offloaded: bool = False) -> dict:
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
            references, outputs are published to the storage URL.
    """
    inputs = {"model": model, "dataset": dataset, "pairs": pairs, "dpo": dpo, "control": control}
    if offloaded:
        received = receive_task(config, "evaluate", inputs)
        config, run_id, inputs = PipelineConfig.model_validate(received["config"]), received["run_id"], received["inputs"]
    plan = gate_task(config, run_id, "evaluate")
    if plan["placement"] == "offload":
        return offload_task(config, run_id, "evaluate", plan, inputs)
    with gpu_slot(config, plan):
        out = evaluate_task(config, run_id, inputs["model"], inputs["dataset"], inputs["pairs"], inputs["dpo"],
                            inputs["control"], plan)
    return send_task(config, run_id, "evaluate", out)["outputs"] if offloaded else out
