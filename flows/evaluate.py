"""Flow: hallucination rate before and after training, with its confidence interval (gated)."""

from __future__ import annotations

from prefect import flow

from faithforge.config import PipelineConfig
from tasks.evaluate import evaluate_task
from tasks.gate import gate_task


@flow(name="faithforge-evaluate", log_prints=True)
def evaluate_flow(config: PipelineConfig, model: dict, dataset: dict, pairs: dict, dpo: dict,
                  control: dict | None = None, run_id: str | None = None) -> dict:
    """Summarize the held-out sources with each model, judge them, and compare."""
    plan = gate_task(config, run_id, "evaluate")
    return evaluate_task(config, run_id, model, dataset, pairs, dpo, control, plan)
