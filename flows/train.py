"""Flow: QLoRA DPO training on cached reference log-probs, and the SFT control (gated; offloaded when the plan
says so)."""

from __future__ import annotations

from prefect import flow

from faithforge.core.config import PipelineConfig
from faithforge.stages.outputs import ModelOutput, PairsOutput, ReferenceOutput, TrainOutputs
from gpu.planner import Plan
from tasks.gated import gated_stage
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
    return gated_stage("train", config, run_id, offloaded=offloaded,
                       inputs={"model": model, "pairs": pairs, "reference": reference},
                       input_types={"model": ModelOutput, "pairs": PairsOutput, "reference": ReferenceOutput},
                       output_type=TrainOutputs, work=_train_here)


def _train_here(config: PipelineConfig, run_id: str | None, inputs: dict, plan: Plan) -> TrainOutputs:
    """DPO, then the SFT control with the same budget when configured (both inside the one `gpu` slot)."""
    model, pairs, reference = inputs["model"], inputs["pairs"], inputs["reference"]
    dpo = dpo_task(config, run_id, model, pairs, reference, plan)
    control = control_task(config, run_id, model, pairs, plan) if config.control.sft_on_chosen else None
    return TrainOutputs(dpo=dpo, control=control)
