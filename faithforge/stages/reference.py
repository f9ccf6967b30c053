"""Stage: the reference log-prob pass, run once per (model, tokenizer, template, length, quantization, pairs)."""

from __future__ import annotations

from faithforge.stages.context import StageContext
from faithforge.stages.pairs import load_pairs


def reference_logps(ctx: StageContext, model: dict, pairs: dict, plan: dict) -> dict:
    from faithforge.modeling import device_for, load_causal_lm, load_tokenizer, quantization_settings
    from faithforge.reference import ReferenceCache, cache_key, compute_reference_cache, weights_fingerprint

    cfg = ctx.config.reference
    device = device_for(plan["placement"])
    quantization = quantization_settings(ctx.config.train.quantization, device)
    train_pairs = load_pairs(pairs["train"])
    tokenizer = load_tokenizer(model["path"])
    key, components = cache_key(weights=weights_fingerprint(model["path"]), tokenizer=tokenizer,
                                max_length=cfg.max_length, truncation_mode="keep_start",
                                quantization=quantization, pairs=train_pairs)
    cache = ReferenceCache(ctx.workspace.dir("refcache") / key[:16], key, components, cfg.shard_size)
    info = {"path": str(cache.directory), "key": key, "pairs": len(train_pairs), "device": device,
            "quantization": quantization}
    if cache.is_complete():
        return {**info, "reused": True, "artifact_id": _record(ctx, cache, pairs)}
    loaded = load_causal_lm(model["path"], quantization=quantization, device=device)
    summary = compute_reference_cache(
        loaded, tokenizer, train_pairs, cache, batch_size=plan.get("batch_size") or cfg.batch_size,
        max_length=cfg.max_length,
        on_shard=lambda done, total: ctx.progress("reference", done, total, f"shard {done}/{total}"))
    del loaded
    return {**info, **summary, "reused": False, "artifact_id": _record(ctx, cache, pairs)}


def _record(ctx: StageContext, cache, pairs: dict) -> str:
    return ctx.store.add_artifact("reference_cache", str(cache.directory), cache.key, run_id=ctx.run_id,
                                  meta={"components": cache.components},
                                  parents=[pairs["artifact_id"]] if pairs.get("artifact_id") else [])
