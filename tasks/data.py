"""Tasks that make the training data and the starting model."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from faithforge.core.config import PipelineConfig
from faithforge.generation.job import ExportedExamples
from faithforge.stages.outputs import BaseModelOutput, DatasetOutput, ModelOutput, PairsOutput, WarmStartOutput
from faithforge.stages.generate import generate_examples
from faithforge.stages.model import base_model, warm_start
from faithforge.stages.pairs import build_pairs
from gpu.planner import Plan
from tasks.common import run_stage


@task(name="generate-examples", cache_policy=NO_CACHE, retries=1)
def generate_task(config: PipelineConfig, run_id: str | None) -> DatasetOutput:
    return run_stage("generate", config, run_id, generate_examples)


@task(name="base-model", cache_policy=NO_CACHE)
def base_model_task(config: PipelineConfig, run_id: str | None) -> BaseModelOutput:
    return run_stage("base_model", config, run_id, base_model)


@task(name="warm-start-sft", cache_policy=NO_CACHE)
def warm_start_task(config: PipelineConfig, run_id: str | None, base: ModelOutput, dataset: DatasetOutput,
                    plan: Plan) -> WarmStartOutput:
    return run_stage("warm_start", config, run_id, warm_start, base, dataset, plan)


@task(name="preference-pairs", cache_policy=NO_CACHE)
def pairs_task(config: PipelineConfig, run_id: str | None, dataset: DatasetOutput, model: ModelOutput | None = None,
               plan: Plan | None = None) -> PairsOutput:
    # `model` and `plan` matter for on-policy pairs only (sampled from the warm-started model, gated).
    return run_stage("pairs", config, run_id, build_pairs, dataset, model, plan)


@task(name="import-generated-examples", cache_policy=NO_CACHE)
def import_generated_task(config: PipelineConfig, run_id: str | None, export: ExportedExamples) -> DatasetOutput:
    from faithforge.stages.generate import import_generated

    return run_stage("generate", config, run_id, import_generated, export)
