"""Flow: hallucination rate before and after training, with its confidence interval (gated; offloaded when the
plan says so)."""

from __future__ import annotations

from prefect import flow

from faithforge.core.config import PipelineConfig
from faithforge.stages.outputs import (AdapterOutput, ControlOutput, DatasetOutput, EvaluationOutput, ModelOutput,
                                       PairsOutput)
from tasks.evaluate import evaluate_task
from tasks.gated import gated_stage


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
    return gated_stage(
        "evaluate", config, run_id, offloaded=offloaded,
        inputs={"model": model, "dataset": dataset, "pairs": pairs, "dpo": dpo, "control": control},
        input_types={"model": ModelOutput, "dataset": DatasetOutput, "pairs": PairsOutput, "dpo": AdapterOutput,
                     "control": ControlOutput}, output_type=EvaluationOutput,
        work=lambda cfg, rid, i, plan: evaluate_task(cfg, rid, i["model"], i["dataset"], i["pairs"], i["dpo"],
                                                     i["control"], plan))
