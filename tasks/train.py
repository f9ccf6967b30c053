"""Tasks: DPO on the cached reference log-probs, and the LoRA SFT control."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from faithforge.config import PipelineConfig
from faithforge.stages.train import train_dpo, train_sft_control
from tasks.common import run_stage


@task(name="dpo-train", cache_policy=NO_CACHE, retries=1)
def dpo_task(config: PipelineConfig, run_id: str | None, model: dict, pairs: dict, reference: dict, plan: dict) -> dict:
    # retries=1: training resumes from its newest checkpoint.
    return run_stage("train", config, run_id, train_dpo, model, pairs, reference, plan)


@task(name="sft-control", cache_policy=NO_CACHE)
def control_task(config: PipelineConfig, run_id: str | None, model: dict, pairs: dict, plan: dict) -> dict:
    return run_stage("control", config, run_id, train_sft_control, model, pairs, plan)
