"""Task: the pipeline run's own report — headline rates, the before/after chart, the evaluation report, the
training curves, where each stage ran, and the rates table — so the top-level run's Artifacts tab shows them
(the evaluate subflow's artifacts sit one or two levels down, on the worker's run when it was offloaded)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from faithforge.stages.ui_report import pipeline_report_markdown

REPORT_KEY = "faithforge-report"
TABLE_KEY = "faithforge-rates"


@task(name="pipeline-report", cache_policy=NO_CACHE, persist_result=False)
def report_task(run_id: str | None, stages: dict) -> dict:
    markdown = pipeline_report_markdown(run_id, stages)
    report_id = create_markdown_artifact(key=REPORT_KEY, markdown=markdown,
                                         description="Hallucination rate before and after DPO, charts, and where "
                                                     "each stage ran")
    table = (stages.get("evaluate") or {}).get("table")
    table_id = None
    if table:
        table_id = create_table_artifact(key=TABLE_KEY, table=table,
                                         description="Rates, confidence intervals and recall per model")
    return {"report_artifact_id": str(report_id), "table_artifact_id": str(table_id) if table_id else None}
