"""Stage: the GPU gate. Reads the GPU (NVML or a simulated profile) and plans each stage before it loads anything.

`plan_pipeline` turns the pipeline configuration into one `faithforge.gpu.planner` request per stage (what the gate task
and `faithforge gpu` show); `gate` plans one stage for a run and records the decision as a `GateRecord`: the
stage's `Plan` plus what the gate saw (`snapshot`), whether the stage is turned off (`skipped`) and, for a stage
that cannot be offloaded, the placement that was planned before it was moved here (`planned_placement`). A
`GateRecord` is a `Plan`: the stage functions take it as their plan.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict

from faithforge.core.backend_registry import BACKENDS
from faithforge.core.config import PipelineConfig
from faithforge.stages.context import StageContext, reads
from faithforge.gpu.corrections import Corrections
from faithforge.gpu.model_shape import ModelShape, load_model_shape
from faithforge.gpu.ollama_sizes import ollama_model
from faithforge.gpu.planner import STAGES, Placement, Plan, StageRequest, plan_stage
from faithforge.gpu.profiles import profile_snapshot
from faithforge.gpu.snapshot import GpuSnapshot

TINY_VOCAB_SIZE = 1024  # upper bound for the tiny model's word-level tokenizer (~120 words)
WARM_START_MAX_LENGTH = 128  # faithforge.training.sft.train_sft's default max_length, which the warm start uses
#: Pipeline steps planned as another stage's workload: on-policy pairs sample answers from the model being trained,
#: the evaluate stage's workload (same model, same prompts, generation); their record keeps their own name.
PLANNED_AS = {"pairs": "evaluate"}


class GateSnapshot(BaseModel):
    """What the gate read: where the GPU numbers came from, how many GPUs, the simulated profile (if any)."""

    model_config = ConfigDict(frozen=True)

    source: str
    devices: int
    profile: Optional[str] = None


class GateRecord(Plan):
    """The gate's record of one stage (stored with the run, shown as an artifact, passed to the stage)."""

    snapshot: Optional[GateSnapshot] = None
    skipped: bool = False
    """The stage is turned off (warm_start.enabled false): nothing is planned, refused or run."""
    planned_placement: Optional[Placement] = None
    """Set by `faithforge.offload.dispatch.runs_here` when a stage that cannot be offloaded runs here instead."""
    step: Optional[str] = None
    """The pipeline step this plan is for when it is planned as another stage's workload (`PLANNED_AS`)."""


def train_model_shape(cfg: PipelineConfig) -> ModelShape:
    """The model the reference/train/evaluate stages run: gpu.sizing_model, else model.path, else tiny."""
    source = cfg.gpu.sizing_model or cfg.model.path
    if source:
        return load_model_shape(source)
    tiny = cfg.model.tiny
    return ModelShape(name="tiny", model_type="llama", hidden_size=tiny.hidden_size,
                      intermediate_size=tiny.intermediate_size, num_layers=tiny.num_layers,
                      num_attention_heads=tiny.num_heads, num_kv_heads=tiny.num_heads,
                      head_dim=tiny.hidden_size // tiny.num_heads, vocab_size=TINY_VOCAB_SIZE)


def stage_requests(cfg: PipelineConfig) -> dict[str, StageRequest]:
    """What each stage asks for, from the pipeline configuration."""
    quant = "bf16" if cfg.train.quantization == "none" else "nf4"
    return {
        "generate": StageRequest(batch_size=cfg.gpu.generation_batch_size,
                                 max_tokens=cfg.gpu.generation_max_tokens,
                                 min_max_tokens=cfg.gpu.generation_min_max_tokens,
                                 prompt_tokens=cfg.gpu.generation_prompt_tokens, quantization=quant),
        "reference": StageRequest(batch_size=cfg.reference.batch_size, seq_len=cfg.reference.max_length,
                                  quantization=quant),
        # The GPU train stage: paged 8-bit AdamW and gradient checkpointing (faithforge/stages/train.py).
        "train": StageRequest(batch_size=cfg.train.batch_size, seq_len=cfg.reference.max_length, quantization=quant,
                              lora_r=cfg.train.lora_r, ref_strategy=cfg.gpu.ref_strategy,
                              optimizer="paged-adamw-8bit"),
        # The warm start trains every weight with torch AdamW (faithforge/training/sft.py, max_length 128): a full
        # fine-tune in 16-bit on a GPU, never on 4-bit weights.
        "warm_start": StageRequest(batch_size=cfg.warm_start.batch_size, seq_len=WARM_START_MAX_LENGTH,
                                   quantization="bf16"),
        # Evaluate keeps the trained LoRA adapter unmerged on 4-bit weights (rank train.lora_r).
        "evaluate": StageRequest(batch_size=cfg.evaluate.batch_size, max_tokens=cfg.evaluate.max_new_tokens,
                                 prompt_tokens=cfg.reference.max_length, quantization=quant, lora_r=cfg.train.lora_r),
    }


def calibration_path(cfg: PipelineConfig) -> Path:
    return Path(cfg.gpu.calibration_file or Path(cfg.workspace) / "gpu_calibration.json")


def plan_pipeline(cfg: PipelineConfig, snapshot: GpuSnapshot, corrections: Corrections | None = None,
                  cpu_memory_bytes: int | None = None) -> dict[str, Plan]:
    """A plan for every stage with the configured models (what the gate task and `faithforge gpu` show)."""
    shape = train_model_shape(cfg)
    generation, unplanned = _generation_models(cfg)
    offload = profile_snapshot(cfg.gpu.offload_profile)
    requests = stage_requests(cfg)
    plans = {
        stage: plan_stage(snapshot, stage, generation if stage == "generate" else [shape], requests[stage],
                          policy=cfg.gpu.policy, offload_target=cfg.gpu.offload_pool, corrections=corrections,
                          offload_snapshot=offload, cpu_max_params=cfg.gpu.cpu_max_params,
                          cpu_memory_bytes=cpu_memory_bytes, max_processes=cfg.distributed.max_gpus,
                          cpu_processes=cfg.distributed.cpu_processes)
        for stage in STAGES if (stage != "warm_start" or cfg.warm_start.enabled)
        and (stage != "generate" or not unplanned)
    }
    for stage in cfg.gpu.offload_stages:  # offloaded on purpose (a GPU rented for one stage)
        plans[stage] = offloaded_on_purpose(cfg, stage, shape, requests[stage], offload, corrections)
    return plans


def generation_not_planned(cfg: PipelineConfig) -> str | None:
    """Why `plan_pipeline` has no plan for generate (None when it has one): the LLM backend's model is not one the
    gate sizes here, so the run generates with the configured values, as `generation.model_tiers.decide` says."""
    return _generation_models(cfg)[1]


def _generation_models(cfg: PipelineConfig) -> tuple[list, str | None]:
    """The models the generate stage is planned for, else why none is. `gpu.generation_models` first; without
    them, the model `generate` runs (`generate.model` and its fallbacks), sized as the run's own gate sizes it
    (`sized_tiers`). `faithforge gpu` said the template teacher writes the data when the config named an Ollama
    model, and `demo` then used Ollama (an attack, 2026-12-07)."""
    if cfg.gpu.generation_models or not BACKENDS.get(cfg.generate.backend).runs_model:
        return [ollama_model(tag) for tag in cfg.gpu.generation_models], None
    from faithforge.generation.model_tiers import sized_tiers

    tags = [cfg.generate.model, *cfg.generate.fallback_models]
    candidates, why = sized_tiers(cfg.generate.backend, tags, cfg.generate.base_url)
    if candidates:
        return candidates, None
    return [], f"generate runs {', '.join(tags)} on the {cfg.generate.backend} backend, not planned here: {why}"


def offloaded_on_purpose(cfg: PipelineConfig, stage: str, shape: ModelShape, request: StageRequest,
                         offload_snapshot: GpuSnapshot, corrections: Corrections | None) -> Plan:
    """`gpu.offload_stages`: the stage runs on `gpu.offload_pool` whatever fits here, sized for that pool's GPU.

    The planner's offload branch does the sizing: asked with no local GPU and no CPU allowance, it plans the
    stage for `offload_snapshot` (the pool's profile) exactly as it does for a stage that does not fit here.
    """
    plan = plan_stage(GpuSnapshot(source="none", note="gpu.offload_stages"), stage, [shape], request,
                      policy=cfg.gpu.policy, offload_target=cfg.gpu.offload_pool, corrections=corrections,
                      offload_snapshot=offload_snapshot, cpu_max_params=0)
    sizing = plan.reason[plan.reason.find(" sized for "):] if " sized for " in plan.reason else f": {plan.reason}"
    return plan.model_copy(update={"reason": f"gpu.offload_stages lists {stage}, so it is offloaded to the pool "
                                             f"{cfg.gpu.offload_pool!r}{sizing}"})


@reads("gpu", "generate", "model", "warm_start", "reference", "train", "evaluate", "distributed", "workspace")
def gate(ctx: StageContext, stage: str) -> GateRecord:
    """The plan for `stage`: placement, model, micro-batch × accumulation, estimate, and the reason.

    Raises `PlanNotRunnableError` (a one-line message naming the ways out) when the stage must be offloaded
    and no offload pool is configured.
    """
    from faithforge.gpu_calibration.calibrate import load_corrections
    from faithforge.gpu import read_snapshot, require_runnable

    snapshot = read_snapshot(ctx.config.gpu.profile)
    if stage == "warm_start" and not ctx.config.warm_start.enabled:  # nothing runs, nothing to plan or refuse
        return GateRecord(**Plan.manual(stage, "cpu", reason="warm_start.enabled is false: the warm start is "
                                        "skipped").model_dump(), skipped=True)
    workload = PLANNED_AS.get(stage, stage)
    plan = plan_pipeline(ctx.config, snapshot, corrections=load_corrections(calibration_path(ctx.config)))[workload]
    record = GateRecord(**plan.model_dump(), step=stage if stage != workload else None, snapshot=GateSnapshot(
        source=snapshot.source, devices=len(snapshot.devices),
        profile=ctx.config.gpu.profile or os.environ.get("FAITHFORGE_GPU_PROFILE")))
    if ctx.run_id:
        ctx.store.record_stage(ctx.run_id, f"gate:{stage}", status="planned", plan=record.to_dict(),
                               message=plan.reason)
    require_runnable(plan)
    return record
