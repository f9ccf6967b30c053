"""Stage: the GPU gate. Reads the GPU (NVML or a simulated profile) and plans one stage before it loads anything."""

from __future__ import annotations

import dataclasses
import os

from faithforge.stages.context import StageContext


def gate(ctx: StageContext, stage: str) -> dict:
    """The plan for `stage`: placement, model, micro-batch × accumulation, estimate, and the reason.

    Raises `PlanNotRunnableError` (a one-line message naming the ways out) when the stage must be offloaded
    and no offload pool is configured.
    """
    from faithforge.calibration import load_corrections
    from faithforge.cli_gpu import calibration_path, plan_pipeline
    from gpu import read_snapshot, require_runnable

    snapshot = read_snapshot(ctx.config.gpu.profile)
    plan = plan_pipeline(ctx.config, snapshot, corrections=load_corrections(calibration_path(ctx.config)))[stage]
    record = {**plan.to_dict(), "stage": stage,
              "snapshot": {"source": snapshot.source, "devices": len(snapshot.devices),
                           "profile": ctx.config.gpu.profile or os.environ.get("FAITHFORGE_GPU_PROFILE")}}
    if ctx.run_id:
        ctx.store.record_stage(ctx.run_id, f"gate:{stage}", status="planned", plan=record, message=plan.reason)
    require_runnable(plan)
    return record


def plan_from_record(record: dict, micro_batch: int, grad_accum: int):
    """The gate's `Plan` back from its JSON record, with the micro-batch the stage actually starts with."""
    from gpu.planner import Plan

    names = {f.name for f in dataclasses.fields(Plan)}
    return Plan(**{**{k: v for k, v in record.items() if k in names}, "batch_size": micro_batch,
                   "grad_accum": grad_accum})
