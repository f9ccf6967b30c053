"""Flow: the reference log-prob cache for a model and a pairs file (gated)."""

from __future__ import annotations

from prefect import flow

from faithforge.config import PipelineConfig
from tasks.gate import gate_task
from tasks.reference import reference_task


@flow(name="faithforge-reference", log_prints=True)
def reference_flow(config: PipelineConfig, model: dict, pairs: dict, run_id: str | None = None) -> dict:
    """Score every training pair with the reference model once and store the result on disk."""
    plan = gate_task(config, run_id, "reference")
    return reference_task(config, run_id, model, pairs, plan)
