"""Stages: the starting model (the tiny offline model or the user's own) and the warm-start SFT."""

from __future__ import annotations

import time
from pathlib import Path

from faithforge.core.errors import UserError
from faithforge.stages.reuse import claim_output, save_and_record
from faithforge.stages.context import StageContext, content_key, reads
from faithforge.stages.generate import load_split
from faithforge.stages.outputs import BaseModelOutput, DatasetOutput, ModelOutput, WarmStartOutput
from faithforge.gpu.planner import Plan
from faithforge.data.teacher import prompt_messages


@reads("model", "seed")
def base_model(ctx: StageContext) -> BaseModelOutput:
    """The folder of the model everything starts from; builds the tiny model when `model.path` is empty."""
    cfg = ctx.config.model
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(f"model.path {path} has no config.json; point it at a folder saved with save_pretrained")
        return BaseModelOutput(path=str(path), built=False, reused=True)
    from faithforge.training.tiny_model import build_tiny_model

    key = content_key("tiny", cfg.tiny.model_dump(), ctx.config.seed)
    path = ctx.workspace.dir("models") / f"tiny-{key}"
    with claim_output("base_model", path, progress=ctx.progress) as claim:
        if claim.reused is not None:
            return BaseModelOutput.model_validate({**claim.reused, "built": False})
        build_tiny_model(path, seed=ctx.config.seed, spec=cfg.tiny)  # an atomic directory
        # the manifest last, beside it
        return BaseModelOutput.model_validate(claim.finish(path, {"path": str(path), "built": True}))


@reads("warm_start", "train", "seed")
def warm_start(ctx: StageContext, base: ModelOutput, dataset: DatasetOutput, plan: Plan) -> WarmStartOutput:
    """SFT on the (noisy) reference summaries so the tiny model can summarize; skipped when disabled."""
    cfg = ctx.config.warm_start
    if not cfg.enabled:
        return WarmStartOutput(path=base.path, skipped=True, reused=True)
    from faithforge.training.modeling import plan_precision
    from faithforge.training.reference_cache import model_folder_fingerprint

    # How often it checkpoints does not change the result, so it is not part of the key. The precision it trains
    # and saves in (bf16 on a GPU, fp32 on the CPU) and the base's tokenizer and template do.
    key = content_key("warm", model_folder_fingerprint(base.path), dataset.key,
                      cfg.model_dump(exclude={"checkpoint_every"}), ctx.config.seed, plan_precision(plan))
    out = ctx.workspace.dir("models") / f"sft-{key}"
    with claim_output("warm_start", out, progress=ctx.progress) as claim:
        if claim.reused is not None:
            return WarmStartOutput.model_validate(claim.reused)
        return _train_warm_start(ctx, claim, base, dataset, plan, out)


def _train_warm_start(ctx: StageContext, claim, base: ModelOutput, dataset: DatasetOutput, plan: Plan,
                      out: Path) -> WarmStartOutput:
    import torch

    from faithforge.training.modeling import load_for_plan, load_tokenizer, measured_peak, plan_precision, start_peak_measurement
    from faithforge.training.reference_cache import weights_fingerprint
    from faithforge.training.sft import SftExample, train_sft

    cfg = ctx.config.warm_start
    checkpoints = ctx.workspace.output_dir("checkpoints", out.name)
    resumed: list[int] = []
    if plan_precision(plan) == "nf4":  # a full fine-tune trains every weight: 4-bit weights cannot be trained
        raise UserError("the warm start is a full fine-tune and needs a 16-bit or fp32 plan, but its plan says nf4; "
                        "gate it as the warm_start stage (faithforge gpu shows that plan)")
    torch.manual_seed(ctx.config.seed)
    tokenizer = load_tokenizer(base.path)
    start_peak_measurement()
    model, _ = load_for_plan(base.path, plan)  # the warm_start plan: bf16 on a GPU, fp32 on the CPU
    examples = [SftExample(prompt_messages(e.source), e.warm_start_reference) for e in load_split(dataset, "train")]
    started = time.perf_counter()
    losses = train_sft(model, tokenizer, examples, steps=cfg.steps, batch_size=cfg.batch_size,
                       learning_rate=cfg.learning_rate, seed=ctx.config.seed,
                       on_step=lambda s, loss: ctx.progress("warm_start", s, cfg.steps, f"loss {loss:.3f}")
                       if s % 25 == 0 or s == cfg.steps else None,
                       checkpoint_dir=checkpoints, checkpoint_every=cfg.checkpoint_every,
                       on_resume=lambda step: (resumed.append(step),
                                               ctx.progress("warm_start", step, cfg.steps, f"resumed at step {step}")))
    _report_losses(ctx, out.name, losses)
    info = {"path": str(out), "first_loss": losses[0], "final_loss": losses[-1], "steps": cfg.steps,
            "resumed_from_step": resumed[0] if resumed else None,
            "train_seconds": round(time.perf_counter() - started, 2), **measured_peak()}
    return save_and_record(ctx, claim, out, WarmStartOutput,
                           write=lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)),
                           kind="model", fingerprint=weights_fingerprint, info=info,
                           meta={"stage": "warm_start", **info}, parents=[dataset.artifact_id], checkpoints=checkpoints)


def _report_losses(ctx: StageContext, name: str, losses: list[float]) -> None:
    """The warm start's loss per step to the run's trackers (`train.report_to`), when any."""
    from faithforge.stages.train import open_tracker

    tracker = open_tracker(ctx, name)
    if tracker is None:
        return
    with tracker:
        for step, loss in enumerate(losses, start=1):
            tracker.log_metrics({"warm_start/loss": loss}, step=step)
