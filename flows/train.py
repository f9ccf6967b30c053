"""Flow: QLoRA DPO training on cached reference log-probs, and the SFT control (gated; offloaded when the plan
says so)."""

from __future__ import annotations

from prefect import flow

from faithforge.core.config import PipelineConfig
from faithforge.stages.outputs import ModelOutput, PairsOutput, ReferenceOutput, TrainOutputs
from tasks.gate import gate_task
from tasks.offload import gpu_slot, offload_task, receive_task, send_task
from tasks.train import control_task, dpo_task


@flow(name="faithforge-train", log_prints=False)
def train_flow(config: PipelineConfig, model: ModelOutput, pairs: PairsOutput, reference: ReferenceOutput,
               run_id: str | None = None, offloaded: bool = False) -> TrainOutputs | dict:
    """Train the DPO adapter (and, if configured, the LoRA SFT control with the same budget).

    Args:
        config: The pipeline configuration.
        model: The model stage's output (`{"path": ...}`).
        pairs: The pairs stage's output (`{"path", "train", "val", ...}`).
        reference: The reference stage's output (`{"path", "key", "quantization", ...}`).
        run_id: The FaithForge run this stage belongs to (empty: none).
        offloaded: Set by the pipeline when it runs this stage on the offload pool: paths are `@storage/`
            references, outputs are published to the storage URL (and returned as that JSON).
    """
    if offloaded:
        received = receive_task(config, "train", {"model": model, "pairs": pairs, "reference": reference})
        config, run_id = PipelineConfig.model_validate(received["config"]), received["run_id"]
        model = ModelOutput.model_validate(received["inputs"]["model"])
        pairs = PairsOutput.model_validate(received["inputs"]["pairs"])
        reference = ReferenceOutput.model_validate(received["inputs"]["reference"])
    plan = gate_task(config, run_id, "train")
    if plan.placement == "offload":
        return TrainOutputs.model_validate(offload_task(config, run_id, "train", plan, {
            "model": model, "pairs": pairs, "reference": reference}))
    with gpu_slot(config, plan):
        dpo = dpo_task(config, run_id, model, pairs, reference, plan)
        control = control_task(config, run_id, model, pairs, plan) if config.control.sft_on_chosen else None
    out = TrainOutputs(dpo=dpo, control=control)
    return send_task(config, run_id, "train", out)["outputs"] if offloaded else out
