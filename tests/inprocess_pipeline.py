"""The pipeline flow's stages in the flow's order as plain Python, without Prefect (not a test module).

`flows/pipeline.py` composes exactly these `faithforge.stages` functions through Prefect tasks; the logic behind
every task is plain Python, so a test that checks what the stages do with a configuration (which cells of the
documents matrix run, which are refused) calls them here in one process and shares one workspace between runs
(stage outputs are keyed by content, so what two runs share is computed once). Prefect's own part, the flow and
its tasks around these calls, is covered by tests/test_pipeline_flow.py and tests/test_deployments_integration.py.
"""

from __future__ import annotations

from faithforge.core.config import PipelineConfig


def run_stages(cfg: PipelineConfig) -> dict:
    """Run generate → base model → warm start → pairs → reference → DPO (+ control) → evaluate; the outputs by
    stage name, as `faithforge.flows.pipeline.pipeline` returns them."""
    from faithforge.stages.preflight import check_pipeline_inputs
    from faithforge.stages.context import StageContext
    from faithforge.stages.evaluate import evaluate_models
    from faithforge.stages.gate import gate
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.model import base_model, warm_start
    from faithforge.stages.pairs import build_pairs
    from faithforge.stages.reference import reference_logps
    from faithforge.stages.train import train_dpo, train_sft_control

    check_pipeline_inputs(cfg)  # what `faithforge demo`/`run` check before Prefect starts
    ctx = StageContext.open(cfg)
    out: dict = {}
    out["generate"] = dataset = generate_examples(ctx)
    out["base_model"] = base = base_model(ctx)
    out["warm_start"] = model = warm_start(ctx, base, dataset, gate(ctx, "warm_start"))
    pairs_plan = gate(ctx, "evaluate") if cfg.pairs.builder == "on-policy" else None
    out["pairs"] = pairs = build_pairs(ctx, dataset, model, pairs_plan)
    out["reference"] = reference = reference_logps(ctx, model, pairs, gate(ctx, "reference"))
    train_plan = gate(ctx, "train")
    out["train"] = dpo = train_dpo(ctx, model, pairs, reference, train_plan)
    out["control"] = control = train_sft_control(ctx, model, pairs, train_plan) if cfg.control.sft_on_chosen else None
    out["evaluate"] = evaluate_models(ctx, model, dataset, pairs, dpo, control, gate(ctx, "evaluate"))
    return out
