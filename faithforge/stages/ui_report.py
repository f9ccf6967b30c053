"""What the Prefect UI shows: the report, charts and gate decisions as markdown, plain Python (no Prefect).

Charts travel *inside* the markdown as `data:image/png;base64,…` URIs. The UI that ships in Prefect 3.8's wheel
renders markdown artifacts with `<img>` and loads data URIs offline (tests/deployments/test_deployments_integration.py checks
it in headless Chromium: the image's naturalWidth is > 0); a file path would point at a disk the browser cannot
read, and for an offloaded stage at another machine's disk.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from faithforge.evaluation.wording import SUMMARIES
from faithforge.gpu.units import format_gib

#: Largest PNG embedded in an artifact, bytes. The charts FaithForge draws are 20-80 KB; a file far larger than
#: that is not one of them, and base64 would make each artifact version in the server's database 4/3 of it.
MAX_EMBEDDED_PNG_BYTES = 2_000_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_data_uri(path: str | Path | None) -> str | None:
    """`data:image/png;base64,…` for a PNG file; None when it is missing, not a PNG, or too large to embed."""
    if not path:
        return None
    file = Path(path)
    if not file.is_file() or file.stat().st_size > MAX_EMBEDDED_PNG_BYTES:
        return None
    data = file.read_bytes()
    if not data.startswith(PNG_MAGIC):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_markdown(alt: str, path: str | Path | None) -> str:
    """An inline image, or one line saying why there is none (never a path the browser cannot open)."""
    uri = png_data_uri(path)
    if uri is not None:
        return f"![{alt}]({uri})"
    return f"*{alt}: no chart (the file {Path(path).name if path else '—'} is missing or over " \
           f"{MAX_EMBEDDED_PNG_BYTES // 1_000_000} MB).*"


def runs_on(record: dict, cuda_available: bool) -> str:
    """Where a stage with this gate record actually executes, in words."""
    placement = record.get("placement")
    if placement == "offload":
        return f"the `{record.get('offload_target')}` work pool (a flow run of its deployment there)"
    if placement == "cpu":
        return "this machine's CPU"
    profile = (record.get("snapshot") or {}).get("profile")
    if cuda_available:
        return "this machine's GPU" + (f" (planned for the simulated profile `{profile}`)" if profile else "")
    return (f"this machine's CPU: the plan is for the simulated GPU `{profile}`, and there is no CUDA device here"
            if profile else "this machine's CPU (no CUDA device here)")


def plan_markdown(record: dict, where: str) -> str:
    """The gate's artifact: what was planned and where the stage runs."""
    stage = record.get("stage", "stage")
    lines = [f"### GPU plan for `{stage}`", "",
             f"**Runs on:** {where}", "",
             "| placement | model | micro-batch × accumulation | estimated peak | usable |",
             "|---|---|---|---|---|",
             f"| {record.get('placement')} | {record.get('model')} | {record.get('batch_size')} × "
             f"{record.get('grad_accum')} | {format_gib(record.get('estimated_peak_bytes'))} | "
             f"{format_gib(record.get('usable_bytes'))} |", "", str(record.get("reason", ""))]
    return "\n".join(lines) + "\n"


def _rate(model: dict | None) -> str:
    if not model:
        return "—"
    ci = model.get("rate_ci")
    interval = f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else ""
    recall = model.get("recall")
    return f"{model['rate']:.1%}{interval}" + (f", recall {recall:.1%}" if recall is not None else "")


def where_each_stage_ran(stages: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per pipeline stage: where it ran, whether it was reused, seconds."""
    rows = []
    for name, out in stages.items():
        if not isinstance(out, dict):
            continue
        pool = out.get("offloaded_to")
        rows.append({"stage": name,
                     "ran on": f"pool {pool} (flow run {out.get('offload_flow_run', '?')})" if pool else "this machine",
                     "reused": bool(out.get("reused")), "seconds": out.get("wall_seconds")})
    return rows


def pipeline_report_markdown(run_id: str | None, stages: dict[str, Any]) -> str:
    """The pipeline run's report: headline rates, the before/after chart, the evaluation report, the training
    curves, and where every stage ran."""
    evaluation = stages.get("evaluate") or {}
    models = evaluation.get("models") or {}
    parts = [f"# FaithForge run {run_id or ''}".rstrip(), ""]
    if models:
        # in the task's words, as the terminal and report.md say them (an older output has none: summaries)
        recall_name = evaluation.get("recall_name") or SUMMARIES.recall
        parts += [f"| model | hallucination rate [CI], {recall_name} |", "|---|---|"]
        parts += [f"| {label} | {_rate(model)} |" for label, model in models.items()]
        parts.append("")
    parts += ["## Hallucination rate before and after DPO", "",
              image_markdown("Hallucination rate before and after DPO", evaluation.get("chart")), ""]
    report = Path(evaluation["markdown_path"]) if evaluation.get("markdown_path") else None
    if report is not None and report.is_file():
        parts += [report.read_text(encoding="utf-8").strip(), ""]
    train = stages.get("train") or {}
    parts += ["## DPO training curves", "",
              image_markdown("DPO loss, reward margin and accuracy per step",
                             Path(train["path"]) / "training.png" if train.get("path") else None), ""]
    tracking = evaluation.get("tracking") or {}
    if tracking:  # train.report_to: where the same run's curves and results are in the user's tracker
        parts += ["Also in your tracker: " + "; ".join(f"**{name}**: `{where}`" for name, where in tracking.items()),
                  ""]
    rows = where_each_stage_ran(stages)
    if rows:
        parts += ["## Where each stage ran", "", "| stage | ran on | reused | seconds |", "|---|---|---|---|"]
        parts += [f"| {r['stage']} | {r['ran on']} | {'yes' if r['reused'] else 'no'} | {r['seconds'] or '—'} |"
                  for r in rows]
    return "\n".join(parts).rstrip() + "\n"
