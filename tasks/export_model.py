"""Task: the trained model exported and verified (`export.enabled`; faithforge/stages/export_stage.py)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from faithforge.core.config import PipelineConfig
from faithforge.stages.export_stage import export_trained_model
from faithforge.stages.outputs import AdapterOutput, StageOutput
from tasks.common import run_stage


@task(name="export-model", cache_policy=NO_CACHE, log_prints=False)
def export_model_task(config: PipelineConfig, run_id: str | None, dpo: AdapterOutput) -> StageOutput:
    out = run_stage("export", config, run_id, export_trained_model, dpo)
    from pathlib import Path

    card = Path(out.model_card) if getattr(out, "model_card", None) else None
    if card is not None and card.is_file():
        create_markdown_artifact(key="faithforge-export", markdown=card.read_text(encoding="utf-8"),
                                 description=f"The exported model ({out.format}) and its verification")
    return out
