"""Flow: QLoRA DPO training on cached reference log-probs, and the SFT control (gated)."""

from __future__ import annotations

from prefect import flow

from faithforge.config import PipelineConfig
from tasks.gate import gate_task
from tasks.train import control_task, dpo_task


@flow(name="faithforge-train", log_prints=True)
def train_flow(config: PipelineConfig, model: dict, pairs: dict, reference: dict, run_id: str | None = None) -> dict:
    """Train the DPO adapter (and, if configured, the LoRA SFT control with the same budget)."""
    plan = gate_task(config, run_id, "train")
    dpo = dpo_task(config, run_id, model, pairs, reference, plan)
    control = control_task(config, run_id, model, pairs, plan) if config.control.sft_on_chosen else None
    return {"dpo": dpo, "control": control}
