"""Task: before/after hallucination evaluation, published as markdown (with the rates chart inside) and table
artifacts."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from faithforge.core.config import PipelineConfig
from faithforge.stages.outputs import (AdapterOutput, ControlOutput, DatasetOutput, EvaluationOutput, ModelOutput,
                                       PairsOutput)
from faithforge.stages.evaluate import evaluate_models
from faithforge.stages.ui_report import image_markdown
from gpu.planner import Plan
from tasks.common import run_stage
from tasks.judging import judging_mapper


@task(name="evaluate", cache_policy=NO_CACHE, log_prints=False)
def evaluate_task(config: PipelineConfig, run_id: str | None, model: ModelOutput, dataset: DatasetOutput,
                  pairs: PairsOutput, dpo: AdapterOutput, control: ControlOutput | None,
                  plan: Plan) -> EvaluationOutput:
    out = run_stage("evaluate", config, run_id, evaluate_models, model, dataset, pairs, dpo, control, plan,
                    judging_mapper(config))
    chart = image_markdown("Hallucination rate before and after DPO", out.chart)
    create_markdown_artifact(key="hallucination-report", markdown=f"{chart}\n\n{out.markdown}",
                             description="Hallucination rate before and after DPO, with the SFT control")
    # The table stays in the output (a few rows): the pipeline run shows it too, also when this ran offloaded.
    create_table_artifact(key="hallucination-table", table=out.table,
                          description="Rates, confidence intervals and recall per model")
    return out.model_copy(update={"markdown": None})  # the full report lives in the artifact
