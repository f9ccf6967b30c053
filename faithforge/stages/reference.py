"""Stage: the reference log-prob pass, run once per (model, tokenizer, template, length, quantization, pairs)."""

from __future__ import annotations

import logging

from faithforge.core.locks import output_lock
from faithforge.stages.context import StageContext, reads
from faithforge.stages.outputs import ModelOutput, PairsOutput, ReferenceOutput
from faithforge.stages.pairs import load_pairs
from faithforge.gpu.planner import Plan

log = logging.getLogger(__name__)


@reads("reference", "seed")
def reference_logps(ctx: StageContext, model: ModelOutput, pairs: PairsOutput, plan: Plan) -> ReferenceOutput:
    from faithforge.training.modeling import (compute_dtype_name, device_for, load_tokenizer, plan_precision,
                                     precision_quantization)
    from faithforge.training.reference_cache import ReferenceCache, cache_key, weights_fingerprint

    cfg = ctx.config.reference
    device = device_for(plan.placement)
    precision = plan_precision(plan)  # the stage loads exactly what its plan names
    quantization = precision_quantization(precision)
    train_pairs = load_pairs(pairs.train)
    tokenizer = load_tokenizer(model.path)
    key, components = cache_key(weights=weights_fingerprint(model.path), tokenizer=tokenizer,
                                max_length=cfg.max_length, truncation_mode="keep_start",
                                quantization=quantization, pairs=train_pairs,
                                compute_dtype=compute_dtype_name(precision, device))
    cache = ReferenceCache(ctx.workspace.dir("refcache") / key[:16], key, components, cfg.shard_size)
    info = {"path": str(cache.directory), "key": key, "pairs": len(train_pairs), "device": device,
            "quantization": quantization, "precision": precision}
    # The cache checks its own shards against their SHA-256 (and resumes after the last good one); the lock
    # makes a second run wait for the first one's cache instead of computing it too.
    with output_lock(cache.directory, "reference",
                     on_wait=lambda message: ctx.progress("reference", 0, 1, message)):
        if cache.is_complete():
            return ReferenceOutput(**info, reused=True, artifact_id=_record(ctx, cache, pairs))
        why = "; ".join(cache.problems) or None  # a corrupt shard is named in the summary, not only in a log
        return _compute(ctx, cache, {**info, "recomputed_because": why}, model, pairs, plan, train_pairs, tokenizer)


def _compute(ctx: StageContext, cache, info: dict, model: ModelOutput, pairs: PairsOutput, plan: Plan,
             train_pairs: list, tokenizer) -> ReferenceOutput:
    from faithforge.training.modeling import load_for_plan, measured_peak, start_peak_measurement
    from faithforge.training.reference_cache import compute_reference_cache
    from faithforge.gpu import oom_backoff

    cfg = ctx.config.reference
    if plan.num_processes > 1:
        return _compute_group(ctx, cache, info, model, pairs, plan, train_pairs)
    start_peak_measurement()
    loaded, _ = load_for_plan(model.path, plan)

    def compute(current: Plan) -> dict:
        # After a CUDA OOM this runs again with half the batch and resumes after the last complete shard.
        return compute_reference_cache(
            loaded, tokenizer, train_pairs, cache, batch_size=current.batch_size, max_length=cfg.max_length,
            on_shard=lambda done, total: ctx.progress("reference", done, total, f"shard {done}/{total}"))

    def log_backoff(event) -> None:
        log.warning("CUDA out of memory in the reference pass (%s); retrying with batch %d from the last shard",
                    event.error, event.next_plan.batch_size)
        if ctx.run_id:
            ctx.store.record_stage(ctx.run_id, "reference:oom-backoff", status="backoff", message=event.error,
                                   plan={"attempt": event.attempt, "batch_size": event.next_plan.batch_size})

    for attempt in oom_backoff(plan.with_micro_batch(plan.batch_size, 1)):
        with attempt:
            summary = compute(attempt.plan)
        if attempt.backoff:
            log_backoff(attempt.backoff)
    return ReferenceOutput(**{**info, **summary, **measured_peak(), "reused": False,
                              "artifact_id": _record(ctx, cache, pairs)})


def _compute_group(ctx: StageContext, cache, info: dict, model: ModelOutput, pairs: PairsOutput, plan: Plan,
                   train_pairs: list) -> ReferenceOutput:
    """The plan's `num_processes` ranks under torchrun, rank r scoring shards r, r + N, …, each shard written
    atomically by the rank that computed it; rank 0 checks every shard's checksum and writes the manifest. The cache
    is byte-identical to the one-process cache (same shards, same batches, same manifest)."""
    from faithforge.core.workspace import atomic_write_json
    from faithforge.training.distributed import is_log_line, run_group

    cfg = ctx.config.reference
    work = ctx.workspace.output_dir("tmp", f"group-reference-{cache.key[:16]}")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "pairs.json", train_pairs)
    spec = {"kind": "reference", "model_path": model.path, "plan": plan.to_dict(), "seed": ctx.config.seed,
            "pairs_path": str(work / "pairs.json"), "batch_size": plan.batch_size,
            "reference": {"path": str(cache.directory), "key": cache.key, "components": cache.components,
                          "shard_size": cfg.shard_size, "max_length": cfg.max_length}}
    done: set[int] = set()

    def on_event(event: dict) -> None:
        done.add(event["step"])
        ctx.progress("reference", len(done), event["total"], f"shard {event['step']} (rank {event['rank']})")

    run = run_group(spec, work, plan.num_processes, on_event=on_event,
                    on_line=lambda line: ctx.log(line) if is_log_line(line) else None,
                    gpu_uuids=plan.gpu_uuids)
    return ReferenceOutput(**{**info, **{k: v for k, v in run.result.items() if k in ("computed_pairs", "shards")},
                              "reused": False, "processes": plan.num_processes,
                              "artifact_id": _record(ctx, cache, pairs)})


def _record(ctx: StageContext, cache, pairs: PairsOutput) -> str:
    return ctx.store.add_artifact("reference_cache", str(cache.directory), cache.key, run_id=ctx.run_id,
                                  meta={"components": cache.components},
                                  parents=[pairs.artifact_id] if pairs.artifact_id else [])

