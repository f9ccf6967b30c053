"""`faithforge gpu`: show what the GPU gate sees and plans; `faithforge gpu calibrate`: measure and correct.

Registered in `faithforge/app/cli.py` as `faithforge gpu`. Its settings are the typed fields of `GpuConfig`; the
planning itself lives in `faithforge.stages.gate` (the same code the pipeline's gate task runs).
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Optional

import typer

from faithforge.gpu_calibration.calibrate import correction_factor, load_corrections, measure_stage, require_cuda, save_corrections
from faithforge.core.config import PipelineConfig, load_config
from faithforge.core.errors import USER_ERRORS, UserError
from faithforge.stages.gate import calibration_path, generation_not_planned, plan_pipeline
from faithforge.gpu.estimate import estimate_hf_generate, estimate_reference, estimate_train
from faithforge.gpu.model_shape import SHIPPED_MODELS, load_model_config, load_model_shape
from faithforge.gpu.planner import Plan
from faithforge.gpu.probe import probe_nvml, read_snapshot
from faithforge.gpu.profiles import PROFILE_ENV, known_profiles
from faithforge.gpu.snapshot import GpuSnapshot
from faithforge.gpu.units import format_gib

app = typer.Typer(help="The GPU gate: what the GPU has free, and where and how each stage will run.",
                  no_args_is_help=False)

def _ram_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _print_tables(snapshot: GpuSnapshot, plans: dict[str, Plan], not_planned: dict[str, str]) -> None:
    from rich.table import Table

    from faithforge.app.demo_report import table_console

    console = table_console()
    gib = partial(format_gib, unit=False)  # a table cell: the column header names the unit
    gpus = Table(title=f"GPU snapshot ({snapshot.source}{': ' + snapshot.note if snapshot.note else ''})")
    for column in ("cuda", "name", "total GiB", "free GiB", "used GiB", "processes (pid: GiB)"):
        gpus.add_column(column)
    for dev in snapshot.devices:
        procs = ", ".join(f"{p.pid}: {gib(p.used_bytes)}" for p in dev.processes) or "—"
        gpus.add_row(str(dev.index), dev.name + (" (MIG)" if dev.is_mig else ""), gib(dev.total_bytes),
                     gib(dev.free_bytes), gib(dev.used_bytes), procs)
    if snapshot.is_empty:
        gpus.add_row("—", "no GPU", "—", "—", "—", "—")
    console.print(gpus)
    table = Table(title="Plans")
    for column in ("stage", "placement", "strategy × processes", "model", "batch × accum", "tokens", "reference",
                   "peak GiB / GPU", "usable GiB", "headroom GiB"):
        table.add_column(column)
    for stage, plan in plans.items():
        where = plan.placement + (f" (cuda:{plan.gpu_index})" if plan.placement == "gpu" and plan.num_processes == 1
                                  else f" (cuda:0-{plan.num_processes - 1})" if plan.placement == "gpu" else "") + (
            f" → {plan.offload_target or 'not configured'}" if plan.placement == "offload" else "")
        table.add_row(stage, where, f"{plan.strategy} × {plan.num_processes}", plan.model,
                      f"{plan.batch_size} × {plan.grad_accum}", str(plan.max_tokens),
                      plan.ref_strategy or "—", gib(plan.estimated_peak_bytes), gib(plan.usable_bytes),
                      gib(plan.headroom_bytes))
    console.print(table)
    for stage, plan in plans.items():
        console.print(f"[bold]{stage}[/bold]: {plan.reason}")
    for stage, why in not_planned.items():
        console.print(f"[bold]{stage}[/bold]: {why}")


def _load(config: Optional[Path]) -> PipelineConfig:
    path = config or os.environ.get("FAITHFORGE_CONFIG") or None
    return load_config(path)


@app.callback(invoke_without_command=True)
def show(
    ctx: typer.Context,
    profile: Optional[str] = typer.Option(
        None, "--profile", help=f"Plan for a simulated GPU instead of the real one: {', '.join(known_profiles())}."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object {snapshot, plans, not_planned} instead of tables."),
    config: Optional[Path] = typer.Option(None, "--config", help="Pipeline YAML file (default: built-in defaults)."),
) -> None:
    """Show the GPU snapshot and the plan for every stage (generate, reference, train, evaluate)."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        cfg = _load(config)
        name = profile or os.environ.get(PROFILE_ENV) or cfg.gpu.profile
        snapshot = read_snapshot(name)
        plans = plan_pipeline(cfg, snapshot, load_corrections(calibration_path(cfg)), _ram_bytes())
        why = generation_not_planned(cfg)
        not_planned = {"generate": why} if why else {}
    except USER_ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({"snapshot": snapshot.to_dict(),
                               "plans": {stage: plan.to_dict() for stage, plan in plans.items()},
                               "not_planned": not_planned}))
    else:
        _print_tables(snapshot, plans, not_planned)


@app.command()
def calibrate(
    stage: str = typer.Option("train", help="Stage to measure: reference, train or evaluate."),
    model: Optional[str] = typer.Option(
        None, help=f"Shipped shape ({', '.join(SHIPPED_MODELS)}) or a config.json path; default: the configured model."),
    batch_size: int = typer.Option(1, min=1, max=4096, help="Micro-batch (pairs for reference/train, prompts for evaluate)."),
    seq_len: int = typer.Option(512, min=8, max=131072, help="Tokens per sequence (train/reference) or prompt tokens (evaluate)."),
    max_new_tokens: int = typer.Option(64, min=1, max=32768, help="New tokens per prompt (evaluate)."),
    steps: int = typer.Option(2, min=1, max=10_000, help="Real steps to run."),
    config: Optional[Path] = typer.Option(None, "--config", help="Pipeline YAML file."),
) -> None:
    """Run a stage for real on this CUDA GPU, measure torch.cuda.max_memory_reserved(), store the correction."""
    try:
        if stage not in ("reference", "train", "evaluate"):
            raise UserError(f"--stage must be reference, train or evaluate (generate runs in Ollama), got {stage!r}")
        require_cuda()
        cfg = _load(config)
        source = model or cfg.gpu.sizing_model or cfg.model.path
        if not source:
            raise UserError("calibrate needs a real model shape: pass --model (e.g. qwen2.5-7b) or set model.path")
        raw = load_model_config(Path(__file__).parents[2] / "gpu" / "model_configs" / f"{source}.json"
                                if source in SHIPPED_MODELS else source)
        shape = load_model_shape(source)
        quant = "bf16" if cfg.train.quantization == "none" else "nf4"
        if stage == "train":
            estimate = estimate_train(shape, micro_batch=batch_size, seq_len=seq_len, quantization=quant,
                                      lora_r=cfg.train.lora_r)
        elif stage == "reference":
            estimate = estimate_reference(shape, batch_size=batch_size, seq_len=seq_len, quantization=quant)
        else:
            estimate = estimate_hf_generate(shape, batch_size=batch_size, prompt_tokens=seq_len,
                                            max_new_tokens=max_new_tokens, quantization=quant)
        measured_run = measure_stage(raw, stage, precision=quant, seq_len=seq_len, batch_size=batch_size,
                                     steps=steps, lora_r=cfg.train.lora_r, max_new_tokens=max_new_tokens)
        measured = int(measured_run["peak_reserved_bytes"])
        real = probe_nvml()
        import torch

        gpu_name = real.devices[0].name if real.devices else torch.cuda.get_device_name(0)
        factor = correction_factor(estimate, measured)
        path = calibration_path(cfg)
        save_corrections(path, load_corrections(path).with_factor(gpu_name, shape.name, stage, factor))
    except USER_ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{stage} {shape.name} on {gpu_name}: predicted {format_gib(estimate.total_bytes)}, measured "
               f"{format_gib(measured + estimate.terms['cuda_context_bytes'])} (reserved + CUDA context); "
               f"correction ×{factor:.3f} saved to {path}")
