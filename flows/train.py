"""Flow: QLoRA DPO training on cached reference log-probs, and the SFT control (gated; offloaded when the plan
says so)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from faithforge.core.config import PipelineConfig
from faithforge.stages.outputs import (AdapterOutput, ControlOutput, ModelOutput, PairsOutput, ReferenceOutput,
                                       TrainOutputs)
from faithforge.stages.train import train_dpo, train_sft_control
from faithforge.stages.ui_report import image_markdown
from faithforge.gpu.planner import Plan
from faithforge.tasks.gated_stage import enter_gated_stage
from faithforge.tasks.stage_runner import run_stage


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
    stage = enter_gated_stage("train", config, run_id, offloaded=offloaded,
                              inputs={"model": model, "pairs": pairs, "reference": reference},
                              input_types={"model": ModelOutput, "pairs": PairsOutput, "reference": ReferenceOutput},
                              output_type=TrainOutputs)
    if stage.done is not None:
        return stage.done
    config, run_id, inputs, plan = stage.config, stage.run_id, stage.inputs, stage.plan
    with stage.slot():  # DPO, then the SFT control with the same budget: both inside the one `gpu` slot
        dpo = dpo_task(config, run_id, inputs["model"], inputs["pairs"], inputs["reference"], plan)
        control = (control_task(config, run_id, inputs["model"], inputs["pairs"], plan)
                   if config.control.sft_on_chosen else None)
    return stage.finish(TrainOutputs(dpo=dpo, control=control))


# log_prints=False on the training tasks: datasets hashes functions with dill, whose detect.py disassembles
# them with dis.dis under a stdout capture; Prefect's print capture sent those 160-212 lines of bytecode to the
# run log instead. Everything FaithForge reports goes through the run logger and artifacts.


@task(name="dpo-train", cache_policy=NO_CACHE, retries=1, log_prints=False)
def dpo_task(config: PipelineConfig, run_id: str | None, model: ModelOutput, pairs: PairsOutput,
             reference: ReferenceOutput, plan: Plan) -> AdapterOutput:
    # retries=1: training resumes from its newest checkpoint.
    out = run_stage("train", config, run_id, train_dpo, model, pairs, reference, plan)
    adapter = Path(out.path)
    history = json.loads((adapter / "history.json").read_text())
    every = max(1, len(history) // 32)  # a readable table: about 32 rows whatever the step count
    create_table_artifact(
        key="dpo-training", table=[h for i, h in enumerate(history) if i % every == 0 or i == len(history) - 1],
        description="DPO loss, reward margin and reward accuracy per step (curves: the dpo-training-curves artifact)")
    create_markdown_artifact(
        key="dpo-training-curves", description=f"DPO training curves ({len(history)} steps)",
        markdown=f"### DPO training curves\n\n{image_markdown('DPO loss, reward margin and accuracy per step', adapter / 'training.png')}\n")
    return out


@task(name="sft-control", cache_policy=NO_CACHE, log_prints=False)
def control_task(config: PipelineConfig, run_id: str | None, model: ModelOutput, pairs: PairsOutput,
                 plan: Plan) -> ControlOutput:
    return run_stage("control", config, run_id, train_sft_control, model, pairs, plan)
