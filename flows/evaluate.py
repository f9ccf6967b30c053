"""Flow: hallucination rate before and after training, with its confidence interval (gated; offloaded when the
plan says so)."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from faithforge.core.config import PipelineConfig
from faithforge.stages.evaluate import evaluate_models
from faithforge.stages.outputs import (AdapterOutput, ControlOutput, DatasetOutput, EvaluationOutput, ModelOutput,
                                       PairsOutput)
from faithforge.stages.ui_report import image_markdown
from faithforge.gpu.planner import Plan
from faithforge.tasks.gated_stage import enter_gated_stage
from faithforge.tasks.stage_runner import run_stage
from faithforge.tasks.judging import judging_mapper


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
    stage = enter_gated_stage(
        "evaluate", config, run_id, offloaded=offloaded,
        inputs={"model": model, "dataset": dataset, "pairs": pairs, "dpo": dpo, "control": control},
        input_types={"model": ModelOutput, "dataset": DatasetOutput, "pairs": PairsOutput, "dpo": AdapterOutput,
                     "control": ControlOutput}, output_type=EvaluationOutput)
    if stage.done is not None:
        return stage.done
    i = stage.inputs
    with stage.slot():
        out = evaluate_task(stage.config, stage.run_id, i["model"], i["dataset"], i["pairs"], i["dpo"], i["control"],
                            stage.plan)
    return stage.finish(out)


@task(name="evaluate", cache_policy=NO_CACHE, log_prints=False)
def evaluate_task(config: PipelineConfig, run_id: str | None, model: ModelOutput, dataset: DatasetOutput,
                  pairs: PairsOutput, dpo: AdapterOutput, control: ControlOutput | None,
                  plan: Plan) -> EvaluationOutput:
    """Judge and compare, then publish the report (with the rates chart inside) and the table as artifacts."""
    out = run_stage("evaluate", config, run_id, evaluate_models, model, dataset, pairs, dpo, control, plan,
                    judging_mapper(config))
    chart = image_markdown("Hallucination rate before and after DPO", out.chart)
    create_markdown_artifact(key="hallucination-report", markdown=f"{chart}\n\n{out.markdown}",
                             description="Hallucination rate before and after DPO, with the SFT control")
    # The table stays in the output (a few rows): the pipeline run shows it too, also when this ran offloaded.
    create_table_artifact(key="hallucination-table", table=out.table,
                          description="Rates, confidence intervals and recall per model")
    return out.model_copy(update={"markdown": None})  # the full report lives in the artifact
