"""Stages: the starting model (the tiny offline model or the user's own) and the warm-start SFT."""

from __future__ import annotations

import json
import time
from pathlib import Path

from faithforge.errors import UserError
from faithforge.stages.context import StageContext, content_key
from faithforge.stages.generate import load_split
from faithforge.teacher import prompt_messages
from faithforge.workspace import atomic_directory, atomic_write_json


def base_model(ctx: StageContext) -> dict:
    """The folder of the model everything starts from; builds the tiny model when `model.path` is empty."""
    cfg = ctx.config.model
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(f"model.path {path} has no config.json; point it at a folder saved with save_pretrained")
        return {"path": str(path), "built": False, "reused": True}
    from faithforge.tiny_model import build_tiny_model

    key = content_key("tiny", cfg.tiny.model_dump(), ctx.config.seed)
    path = ctx.workspace.dir("models") / f"tiny-{key}"
    if (path / "config.json").is_file():
        return {"path": str(path), "built": False, "reused": True}
    build_tiny_model(path, seed=ctx.config.seed, spec=cfg.tiny)
    return {"path": str(path), "built": True, "reused": False}


def warm_start(ctx: StageContext, base: dict, dataset: dict, plan: dict) -> dict:
    """SFT on the (noisy) reference summaries so the tiny model can summarize; skipped when disabled."""
    cfg = ctx.config.warm_start
    if not cfg.enabled:
        return {"path": base["path"], "skipped": True, "reused": True}
    import torch

    from faithforge.modeling import device_for, load_causal_lm, load_tokenizer
    from faithforge.reference import weights_fingerprint
    from faithforge.sft import SftExample, train_sft

    key = content_key("warm", weights_fingerprint(base["path"]), dataset["key"], cfg.model_dump(), ctx.config.seed)
    out = ctx.workspace.dir("models") / f"sft-{key}"
    if (out / "faithforge.json").is_file():
        return {**json.loads((out / "faithforge.json").read_text()), "reused": True}
    device = device_for(plan["placement"])
    torch.manual_seed(ctx.config.seed)
    tokenizer = load_tokenizer(base["path"])
    model = load_causal_lm(base["path"], quantization=None, device=device)
    examples = [SftExample(prompt_messages(e.source), e.warm_start_reference) for e in load_split(dataset, "train")]
    started = time.perf_counter()
    losses = train_sft(model, tokenizer, examples, steps=cfg.steps, batch_size=cfg.batch_size,
                       learning_rate=cfg.learning_rate, seed=ctx.config.seed,
                       on_step=lambda s, loss: ctx.progress("warm_start", s, cfg.steps, f"loss {loss:.3f}")
                       if s % 25 == 0 or s == cfg.steps else None)
    info = {"path": str(out), "first_loss": losses[0], "final_loss": losses[-1], "steps": cfg.steps,
            "train_seconds": round(time.perf_counter() - started, 2)}
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "faithforge.json", info)
    info["artifact_id"] = ctx.store.add_artifact("model", str(out), weights_fingerprint(out), run_id=ctx.run_id,
                                                 meta={"stage": "warm_start", **info},
                                                 parents=[dataset["artifact_id"]] if dataset.get("artifact_id") else [])
    atomic_write_json(out / "faithforge.json", info)
    del model
    return {**info, "reused": False}
