"""Stage: the run's DPO adapter exported as a model a server runs (`export.enabled`, off by default).

The same `faithforge.training.model_export.export_model` as `faithforge model export RUN_ID`, run after the
evaluation so the model card carries the measured rates; written to `<workspace>/exports/<run id>` and verified
(merged logits, the GGUF served by llama.cpp vs transformers) before the stage completes.
"""

from __future__ import annotations

from pathlib import Path

from faithforge.stages.context import StageContext, reads
from faithforge.stages.outputs import AdapterOutput, StageOutput


@reads("export")
def export_trained_model(ctx: StageContext, dpo: AdapterOutput) -> StageOutput:
    from faithforge.training.model_export import ExportOptions, export_model

    cfg = ctx.config.export
    out = ctx.workspace.root / "exports" / (ctx.run_id or f"adapter-{Path(dpo.path).name}")
    opts = ExportOptions(fmt=cfg.format, quants=tuple(cfg.quant) if cfg.format != "hf" else ("f16",),
                         workspace=str(ctx.workspace.root))
    source = ctx.run_id or dpo.path
    record = export_model(source, out, opts, on_step=lambda message: ctx.progress("export", 0, 1, message))
    files = {q: {"file": str(out / info["file"]), "bytes": info["bytes"], "same_greedy": info["agreement"]["same_greedy"],
                 "prompts": info["agreement"]["prompts"]} for q, info in (record.get("files") or {}).items()}
    return StageOutput(path=str(out), format=cfg.format, merge_max_abs_logit_diff=record["merge_max_abs_logit_diff"],
                       files=files, ollama_create=(record.get("ollama") or {}).get("create"),
                       model_card=str(out / "README.md"))
