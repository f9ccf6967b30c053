"""Stages: DPO on cached reference log-probs, and the LoRA SFT control trained with the same budget."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from faithforge.stages.reuse import Claim, claim_output, save_and_record
from faithforge.stages.context import StageContext, content_key, reads
from faithforge.stages.outputs import AdapterOutput, ControlOutput, ModelOutput, PairsOutput, ReferenceOutput
from faithforge.stages.pairs import load_pairs
from faithforge.core.workspace import atomic_write_json, sha256_tree
from faithforge.gpu.planner import Plan

log = logging.getLogger(__name__)


def starting_plan(plan: Plan, effective: int) -> Plan:
    """The plan a training stage starts with: the gate's micro-batch (at most the effective batch) × its
    accumulation."""
    micro = max(1, min(plan.batch_size, effective))
    return plan.with_micro_batch(micro, plan.grad_accum or max(1, effective // micro))


def process_layout(plan: Plan) -> list[dict]:
    """What of the plan's process layout joins a training stage's key: the number of processes when there are
    several (each process's share of a batch is another micro-batch, so the weights differ by up to ~3% of the
    largest LoRA weight on the tiny model; a 1-process rerun reused a 2-process adapter as its own, an attack,
    2026-12-07). Nothing for one process, so the keys of one-process runs stay what they were."""
    return [{"processes": plan.num_processes}] if plan.num_processes > 1 else []


@reads("train", "reference", "distributed", "seed")
def train_dpo(ctx: StageContext, model: ModelOutput, pairs: PairsOutput, reference: ReferenceOutput,
              plan: Plan) -> AdapterOutput:
    cfg = ctx.config.train
    # Where the curves are reported does not change the adapter: report_to is not part of the key.
    key = content_key("dpo", reference.key, cfg.model_dump(exclude={"report_to"}), ctx.config.seed,
                      *process_layout(plan))
    out = ctx.workspace.dir("adapters") / f"dpo-{key}"
    with claim_output("train", out, progress=ctx.progress) as claim:
        if claim.reused is not None:
            return AdapterOutput.model_validate(claim.reused)
        return _train_dpo(ctx, claim, key, out, model, pairs, reference, plan)


def _train_dpo(ctx: StageContext, claim: Claim, key: str, out: Path, model: ModelOutput, pairs: PairsOutput,
               reference: ReferenceOutput, plan: Plan) -> AdapterOutput:
    """setup (policy, tokenizer, cached reference) → train (with OOM back-off) → save → lineage."""
    from faithforge.training.modeling import measured_peak

    if plan.num_processes > 1:
        return _train_dpo_group(ctx, claim, key, out, model, pairs, reference, plan)
    policy, tokenizer, reference_logps, on_gpu = _setup_dpo(ctx, model, reference, plan)
    started = time.perf_counter()
    tracker = open_tracker(ctx, f"dpo-{key}")
    try:
        result, backoffs = _run_dpo_with_backoff(ctx, key, policy, tokenizer, load_pairs(pairs.train), reference_logps,
                                                 starting_plan(plan, ctx.config.train.batch_size), on_gpu,
                                                 tracker.trainer_callbacks() if tracker else [])
    finally:
        if tracker:
            tracker.close()
    info = {**_run_info(out, result, backoffs, started), **measured_peak()}
    saved = _save_adapter(ctx, claim, out, model, reference, result["trainer"].model, result["history"], info)
    return saved.model_copy(update={"plot": str(out / "training.png")})


def _run_info(out: Path, result: dict, backoffs: list[dict], started: float, **extra) -> dict:
    """What the adapter's record says of its training run (one process or a group): steps, batch, losses, back-offs,
    seconds since `started` (`time.perf_counter()`)."""
    history = result["history"]
    return {"path": str(out), "steps": result["steps"], "micro_batch": result["micro_batch"],
            "grad_accum": result["grad_accum"], **extra,
            "first_loss": history[0]["loss"] if history else None, "final_loss": history[-1]["loss"] if history else None,
            "final_margin": history[-1]["margin"] if history else None, "stuck_at_ln2": result["stuck_at_ln2"],
            "resumed_from": result["resumed_from"], "oom_backoffs": backoffs,
            "train_seconds": round(time.perf_counter() - started, 2)}


def _with_oom_backoff(ctx: StageContext, start: Plan, train_with, say: str, *, peak_here: bool = True,
                      **recorded) -> tuple[dict, list[dict]]:
    """`train_with(plan)` from `start`; after a CUDA OOM again with half the micro-batch and twice the accumulation
    (the work resumes from its newest complete checkpoint). Each back-off is logged (`say`, formatted with the
    error, the micro-batch and the accumulation) and told to the run store; `recorded` joins its record, and so
    does this process's measured CUDA peak unless the work runs in other processes (`peak_here=False`)."""
    from faithforge.gpu import oom_backoff

    backoffs: list[dict] = []
    for attempt in oom_backoff(start, **({} if peak_here else {"measure_peak": lambda: None})):
        with attempt:
            result = train_with(attempt.plan)
        event = attempt.backoff
        if event:
            backoffs.append({"attempt": event.attempt, "error": event.error, "micro_batch": event.next_plan.batch_size,
                             "grad_accum": event.next_plan.grad_accum, **recorded,
                             **({"measured_peak_bytes": event.measured_peak_bytes} if peak_here else {})})
            log.warning(say, event.error, event.next_plan.batch_size, event.next_plan.grad_accum)
            if ctx.run_id:
                ctx.store.record_stage(ctx.run_id, "train:oom-backoff", status="backoff", plan=backoffs[-1],
                                       message=event.error)
    return result, backoffs


def _train_dpo_group(ctx: StageContext, claim: Claim, key: str, out: Path, model: ModelOutput, pairs: PairsOutput,
                     reference: ReferenceOutput, plan: Plan) -> AdapterOutput:
    """The plan's `num_processes` ranks under torchrun (DDP, or FSDP on GPUs), each running `run_dpo` on its share of
    every global batch; progress and log lines stream into this stage; an OOM on any rank relaunches every rank with
    half the micro-batch (twice the accumulation) from the last complete checkpoint; the adapter rank 0 saved is
    stored exactly as one process stores its own."""
    import torch

    from faithforge.training.distributed import is_log_line, run_group
    from faithforge.training.modeling import check_same_precision, device_for

    check_same_precision(plan, reference.precision, reference.quantization)
    cfg = ctx.config.train
    n = plan.num_processes
    on_gpu = device_for(plan.placement) == "cuda" and torch.cuda.is_available()
    start = starting_plan(plan, cfg.batch_size // n)
    args = _dpo_arguments(ctx, key, on_gpu, start)
    work = ctx.workspace.output_dir("tmp", f"group-dpo-{key}")
    work.mkdir(parents=True, exist_ok=True)
    from faithforge.core.workspace import atomic_write_json

    atomic_write_json(work / "pairs.json", load_pairs(pairs.train))
    started = time.perf_counter()

    def on_event(event: dict) -> None:
        step, total = event.get("step", 0), event.get("total", cfg.steps)
        if event.get("kind") == "progress" and (step % 8 == 0 or step == total):
            ctx.progress("train", step, total, f"loss {event['loss']:.3f} ({n} processes)")

    def train_with(current: Plan) -> dict:
        spec = group_spec(ctx, "dpo", model, reference, plan, work / "pairs.json", args={
            **args.with_micro_batch(current.batch_size, current.grad_accum).__dict__,
            "ddp_backend": None if on_gpu else "gloo", "fsdp": plan.strategy == "fsdp"})
        run = run_group(spec, work, n, on_event=on_event,
                        on_line=lambda line: ctx.log(line) if is_log_line(line) else None,
                        gpu_uuids=plan.gpu_uuids)
        return {**run.result, "micro_batch": current.batch_size, "grad_accum": current.grad_accum,
                "group_seconds": round(run.wall_seconds, 2)}

    result, backoffs = _with_oom_backoff(
        ctx, start, train_with, f"CUDA out of memory on a rank (%s); relaunching all {n} ranks with micro-batch %d × "
        "accumulation %d from the last checkpoint", peak_here=False, processes=n)
    info = _run_info(out, result, backoffs, started, processes=n, strategy=plan.strategy,
                     global_batch=result["micro_batch"] * result["grad_accum"] * n)
    saved = _save_adapter(ctx, claim, out, model, reference, _SavedAdapter(work / "adapter"), result["history"], info)
    return saved.model_copy(update={"plot": str(out / "training.png")})


@reads("train", "reference", "distributed", "seed")
def group_spec(ctx: StageContext, kind: str, model: ModelOutput, reference: ReferenceOutput, plan: Plan,
               pairs_path: Path, **extra) -> dict:
    """What every rank of a torchrun group is told (`faithforge.training.distributed`): JSON only."""
    cfg = ctx.config
    return {"kind": kind, "model_path": model.path, "plan": plan.to_dict(), "seed": cfg.seed,
            "pairs_path": str(pairs_path),
            "lora": {"r": cfg.train.lora_r, "alpha": cfg.train.lora_alpha, "dropout": cfg.train.lora_dropout},
            "reference": {"path": reference.path, "key": reference.key, "components": _components(reference.path),
                          "shard_size": cfg.reference.shard_size, "max_length": cfg.reference.max_length},
            "callbacks": list(cfg.distributed.rank_callbacks), **extra}


class _SavedAdapter:
    """An adapter folder rank 0 wrote, saved like a model's `save_pretrained` (its files, unchanged)."""

    def __init__(self, path: Path):
        self.path = path

    def save_pretrained(self, target) -> None:
        import shutil

        for item in self.path.iterdir():
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, Path(target) / item.name)


def _setup_dpo(ctx: StageContext, model: ModelOutput, reference: ReferenceOutput, plan: Plan):
    """(LoRA policy on the base loaded as `plan` says, its tokenizer, the verified reference cache, on a GPU?)."""
    import torch

    from faithforge.training.modeling import (attach_lora, check_same_precision, load_for_plan, load_tokenizer,
                                              plan_precision, start_peak_measurement)
    from faithforge.training.reference_cache import ReferenceCache

    cfg = ctx.config.train
    cache = ReferenceCache(reference.path, reference.key, _components(reference.path), ctx.config.reference.shard_size)
    reference_logps = cache.load()
    check_same_precision(plan, reference.precision, reference.quantization)
    torch.manual_seed(ctx.config.seed)
    tokenizer = load_tokenizer(model.path)
    start_peak_measurement()
    base, device = load_for_plan(model.path, plan)  # exactly the precision the train plan names
    on_gpu = device == "cuda"
    policy = attach_lora(base, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                         quantized=plan_precision(plan) == "nf4", gradient_checkpointing=on_gpu)
    return policy, tokenizer, reference_logps, on_gpu


def _dpo_arguments(ctx: StageContext, key: str, on_gpu: bool, start: Plan):
    from faithforge.training.dpo import DpoArguments

    cfg = ctx.config.train
    return DpoArguments(
        output_dir=str(ctx.workspace.output_dir("checkpoints", f"dpo-{key}")), steps=cfg.steps,
        micro_batch=start.batch_size, grad_accum=start.grad_accum, learning_rate=cfg.learning_rate, beta=cfg.beta,
        max_length=ctx.config.reference.max_length, seed=ctx.config.seed, checkpoint_every=cfg.checkpoint_every,
        gradient_checkpointing=on_gpu, optimizer="paged_adamw_8bit" if on_gpu else "adamw_torch", bf16=on_gpu,
        sft_weight=cfg.sft_weight, on_cpu=not on_gpu)


def _run_dpo_with_backoff(ctx: StageContext, key: str, policy, tokenizer, train_pairs: list[dict], reference_logps,
                          start: Plan, on_gpu: bool, report_callbacks: list | None = None) -> tuple[dict, list[dict]]:
    """`run_dpo` from `start`'s micro-batch; after a CUDA OOM again with half of it (the run store hears of each)."""
    from faithforge.training.dpo import run_dpo

    args = _dpo_arguments(ctx, key, on_gpu, start)

    def train_with(current: Plan) -> dict:
        # Called again after a CUDA OOM with half the micro-batch and twice the accumulation; run_dpo resumes
        # from the newest complete checkpoint, so a back-off loses at most `checkpoint_every` steps.
        out = run_dpo(policy, tokenizer, train_pairs, reference_logps,
                      args.with_micro_batch(current.batch_size, current.grad_accum),
                      guard_tolerance=None,  # None: scaled to the dtype and tokens
                      extra_callbacks=[_progress_callback(ctx, "train", args.steps), *(report_callbacks or [])])
        return {**out, "micro_batch": current.batch_size, "grad_accum": current.grad_accum}

    return _with_oom_backoff(ctx, start, train_with, "CUDA out of memory (%s); retrying with micro-batch %d × "
                             "accumulation %d from the last checkpoint")


def _save_adapter(ctx: StageContext, claim: Claim, out: Path, model: ModelOutput, reference: ReferenceOutput,
                  trained, history: list[dict], info: dict) -> AdapterOutput:
    """The adapter, its history and curves (and the merged model) written atomically; lineage: reference → adapter."""
    from faithforge.training.plot import plot_training

    def write(tmp: Path) -> None:
        trained.save_pretrained(tmp)
        atomic_write_json(tmp / "history.json", history)
        plot_training(history, tmp / "training.png")
        if ctx.config.train.save_merged:  # inside the atomic folder: an adapter is complete only with its merged model
            from faithforge.training.modeling import merge_adapter

            merge_adapter(model.path, tmp, tmp / "merged")
            info["merged_path"] = str(out / "merged")

    return save_and_record(ctx, claim, out, AdapterOutput, write=write, kind="adapter", fingerprint=sha256_tree,
                           info=info, meta=info, parents=[reference.artifact_id])


@reads("train", "reference", "seed")
def train_sft_control(ctx: StageContext, model: ModelOutput, pairs: PairsOutput, plan: Plan) -> ControlOutput:
    """LoRA SFT on the chosen summaries, same steps, batch, rank and learning rate as DPO."""
    cfg = ctx.config.train
    # Inside the workspace by their relative paths: a copied or moved workspace keeps its key (issue 25, item 4);
    # those folders are named by their content. A model outside it (the user's model.path with the warm start
    # off) by its content: the same path holding other weights or another template is another model.
    # The pairs' max length (reference.max_length, as DPO's) is part of what the control trains on.
    from faithforge.core.workspace import inside
    from faithforge.training.reference_cache import model_folder_fingerprint

    model_id = (ctx.workspace.relative(model.path) if inside(model.path, ctx.workspace.root)
                else model_folder_fingerprint(model.path))
    key = content_key("sft-control", model_id, ctx.workspace.relative(pairs.path),
                      cfg.model_dump(exclude={"report_to"}), ctx.config.seed, ctx.config.reference.max_length,
                      *process_layout(plan))
    out = ctx.workspace.dir("adapters") / f"sft-control-{key}"
    with claim_output("control", out, progress=ctx.progress) as claim:
        if claim.reused is not None:
            return ControlOutput.model_validate(claim.reused)
        return _train_sft_control(ctx, claim, out, model, pairs, plan)


def _train_sft_control(ctx: StageContext, claim: Claim, out: Path, model: ModelOutput, pairs: PairsOutput,
                       plan: Plan) -> ControlOutput:
    import torch

    from faithforge.training.modeling import (attach_lora, load_for_plan, load_tokenizer, measured_peak, plan_precision,
                                     start_peak_measurement, use_chunked_head_loss)
    from faithforge.training.sft import SftExample, train_sft
    from faithforge.gpu import oom_backoff
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    cfg = ctx.config.train
    checkpoints = ctx.workspace.output_dir("checkpoints", out.name)
    resumed: list[int] = []
    torch.manual_seed(ctx.config.seed)
    tokenizer = load_tokenizer(model.path)
    start_peak_measurement()
    base, device = load_for_plan(model.path, plan)  # the control runs under the train plan, in its precision
    policy = attach_lora(base, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                         quantized=plan_precision(plan) == "nf4", gradient_checkpointing=device == "cuda")
    use_chunked_head_loss(policy)  # no full logits: the control stays within the DPO plan it runs under
    examples = [SftExample(p["prompt"], p["chosen"][0]["content"]) for p in load_pairs(pairs.train)]
    started = time.perf_counter()
    initial = {k: v.detach().clone() for k, v in get_peft_model_state_dict(policy).items()}
    attempts: list[int] = []

    def control_with(current: Plan) -> list[float]:
        # The train plan's micro-batch, the same effective batch; after a CUDA OOM again with half the micro-batch,
        # from the initial adapter (train_sft resumes from its own checkpoint when there is one).
        if attempts:
            policy.zero_grad(set_to_none=True)
            set_peft_model_state_dict(policy, initial)
        attempts.append(current.batch_size)
        return train_sft(
            policy, tokenizer, examples, steps=cfg.steps, batch_size=cfg.batch_size, micro_batch=current.batch_size,
            learning_rate=cfg.learning_rate, seed=ctx.config.seed, max_length=ctx.config.reference.max_length,
            on_step=lambda s, loss: ctx.progress("control", s, cfg.steps, f"loss {loss:.3f}")
            if s % 16 == 0 or s == cfg.steps else None,
            checkpoint_dir=checkpoints, checkpoint_every=cfg.checkpoint_every, on_resume=resumed.append)

    tracker = open_tracker(ctx, out.name)
    try:
        for attempt in oom_backoff(starting_plan(plan, cfg.batch_size)):
            with attempt:
                losses = control_with(attempt.plan)
        if tracker:
            for step, loss in enumerate(losses, start=1):
                tracker.log_metrics({"control/loss": loss}, step=step)
    finally:
        if tracker:
            tracker.close()
    info = {"path": str(out), "steps": cfg.steps, "first_loss": losses[0], "final_loss": losses[-1],
            "micro_batch": attempts[-1],
            "resumed_from_step": resumed[0] if resumed else None,
            "train_seconds": round(time.perf_counter() - started, 2), **measured_peak()}
    return save_and_record(ctx, claim, out, ControlOutput, write=policy.save_pretrained, kind="adapter",
                           fingerprint=sha256_tree, info=info, meta={"control": "sft-on-chosen", **info},
                           parents=[pairs.artifact_id], checkpoints=checkpoints)


@reads("train")
def open_tracker(ctx: StageContext, fallback_name: str):
    """The run's trackers (`train.report_to`), tagged with the Prefect flow run that started the run; None when
    none is configured. Named after the FaithForge run (or `fallback_name` for a stage run on its own)."""
    if not ctx.config.train.report_to:
        return None
    from faithforge.training.tracking import Tracker

    run = ctx.store.get_run(ctx.run_id) if ctx.run_id else None
    return Tracker(ctx.config.train.report_to, ctx.workspace.root, ctx.run_id or fallback_name,
                   tags={"prefect.flow_run_id": getattr(run, "prefect_flow_run_id", None)})


def _components(path: str) -> dict:
    """The reference cache's key components, from its manifest."""
    return json.loads((Path(path) / "manifest.json").read_text())["components"]


def _progress_callback(ctx: StageContext, stage: str, total: int):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ARG002
            if logs and "loss" in logs and (state.global_step % 8 == 0 or state.global_step == total):
                ctx.progress(stage, state.global_step, total, f"loss {logs['loss']:.3f}")

    return Progress()

