"""The FaithForge pipeline: generate → pairs → reference log-probs → DPO → evaluate, each GPU stage gated.

The flow reads top to bottom like the diagram in the README; below it are the tasks only this flow runs (the data
stages, the run record, the optional label and export steps, the run's own report). Every task's logic lives in
`faithforge.stages` (plain Python); this file only composes them and imports no torch.

The optional `label` step pauses the run and asks people, through a form in the Prefect UI, whether the source
supports each output; then it saves the labels, re-calibrates the judge and extends the report. The form is a
`RunInput` model built per batch: one choice per output (supported / unsupported / skip) and a note; its
description (markdown above the form) shows each output with its source excerpt and the judge's flagged spans.
`pause_flow_run(wait_for_input=...)` blocks the flow until the form is submitted or `label.timeout_s` passes; a
timeout is not a failure: the paused state is replaced by Running and the report says "unlabeled" (Prefect would
otherwise fail the run: "paused and never resumed"). What the answers change is plain Python in
`faithforge.stages.label`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from faithforge.core.backend_registry import BACKENDS
from faithforge.core.config import PipelineConfig
from faithforge.generation.job import ExportedExamples
from faithforge.stages.context import StageContext
from faithforge.stages.export_stage import export_trained_model
from faithforge.stages.generate import generate_examples, generation_parameters, import_generated
from faithforge.stages.label import LabelOutput, answers_from_form, form_description, form_fields, label_batches
from faithforge.stages.model import base_model, warm_start
from faithforge.stages.outputs import (AdapterOutput, BaseModelOutput, DatasetOutput, EvaluationOutput, ModelOutput,
                                       PairsOutput, StageOutput, WarmStartOutput)
from faithforge.stages.pairs import build_pairs
from faithforge.stages.ui_report import pipeline_report_markdown
from faithforge.flows.evaluate import evaluate_flow
from faithforge.flows.generate import generate_flow
from faithforge.flows.reference import reference_flow
from faithforge.flows.train import train_flow
from faithforge.core.errors import redact_credentials
from faithforge.gpu.planner import Plan
from faithforge.tasks.stage_runner import run_stage
from faithforge.tasks.gated_stage import gate_task
from faithforge.tasks.offload import gpu_slot
from faithforge.tasks.supervision import begin_flow_run, cancel_requested, reported_failure

REPORT_KEY = "faithforge-report"
TABLE_KEY = "faithforge-rates"


# log_prints=False on every FaithForge flow: FaithForge logs through the run logger; captured prints were only
# libraries' console output (dill's bytecode disassembly among it), not what an operator reads.
@flow(name="faithforge-pipeline", log_prints=False)
def pipeline(config: PipelineConfig = PipelineConfig()) -> dict:
    """Run the whole pipeline and return where everything was written and the before/after rates."""
    problem = begin_flow_run(config)  # on a worker: watch it, the CLI's preflight, reconcile the dead
    if problem is not None:  # bad input: one line in the UI, before any work (no traceback: it is not a bug)
        return reported_failure(problem)
    run_id = start_run_task(config, "pipeline")
    stages: dict[str, StageOutput | None] = {}
    try:
        if BACKENDS.get(config.generate.backend).built_in_task:  # written in process, no generation flow
            gate_task(config, run_id, "generate")
            stages["generate"] = dataset = generate_task(config, run_id)
        else:  # an LLM writes the data: the spec-driven generation flow (gated inside) runs as a subflow
            generated = generate_flow(generation_parameters(config))
            stages["generate"] = dataset = import_generated_task(config, run_id, generated.export)
        stages["base_model"] = base = base_model_task(config, run_id)
        # A full fine-tune, planned as one. It cannot be offloaded: when its plan says offload, the gate records
        # (and its artifact shows) that it runs on this machine's CPU. It exists for the tiny model (turn it off
        # for your own).
        warm_plan = gate_task(config, run_id, "warm_start")
        with gpu_slot(config, warm_plan, run_id):
            stages["warm_start"] = model = warm_start_task(config, run_id, base, dataset, warm_plan)
        # On-policy pairs sample from the warm-started model: gated as a generation workload (stages/gate.py).
        pairs_plan = gate_task(config, run_id, "pairs") if config.pairs.builder == "on-policy" else None
        stages["pairs"] = pairs = pairs_task(config, run_id, dataset, model, pairs_plan)
        stages["reference"] = reference = reference_flow(config, model, pairs, run_id=run_id)
        trained = train_flow(config, model, pairs, reference, run_id=run_id)
        stages["train"], stages["control"] = trained.dpo, trained.control
        stages["evaluate"] = evaluation = evaluate_flow(config, model, dataset, pairs, trained.dpo, trained.control,
                                                        run_id=run_id)
        if config.label.enabled:  # pauses the run for people's labels in the UI; times out into "unlabeled"
            stages["label"] = label_step(config, run_id, evaluation, model)
        if config.export.enabled:  # after the evaluation: the model card carries the measured rates
            stages["export"] = export_model_task(config, run_id, trained.dpo)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: Prefect's server may be gone, so no task records it
        cancel_run(config, run_id, _as_json(stages))
        raise
    except BaseException as exc:
        if cancel_requested():  # cancelled in Prefect (the worker's SIGTERM): `cancelled`, not `failed`
            cancel_run(config, run_id, _as_json(stages), "cancelled in Prefect")
            raise
        finish_run_task(config, run_id, "failed", {"error": redact_credentials(str(exc))[:2000],
                                                   "stages": _as_json(stages)})
        raise
    # The summary is JSON (the run store keeps it; the demo and the report read it).
    summary = {"run_id": run_id, "workspace": config.workspace, "stages": _as_json(stages)}
    summary["report"] = report_task(run_id, summary["stages"])  # on this run's Artifacts tab, not only the subflows'
    finish_run_task(config, run_id, "completed", summary)
    return summary


def _as_json(stages: dict[str, StageOutput | None]) -> dict[str, dict | None]:
    return {name: out.model_dump(mode="json") if out is not None else None for name, out in stages.items()}


# The data stages and the starting model.


@task(name="generate-dataset", cache_policy=NO_CACHE, retries=1)
def generate_task(config: PipelineConfig, run_id: str | None) -> DatasetOutput:
    return run_stage("generate", config, run_id, generate_examples)


@task(name="base-model", cache_policy=NO_CACHE)
def base_model_task(config: PipelineConfig, run_id: str | None) -> BaseModelOutput:
    return run_stage("base_model", config, run_id, base_model)


@task(name="warm-start-sft", cache_policy=NO_CACHE)
def warm_start_task(config: PipelineConfig, run_id: str | None, base: ModelOutput, dataset: DatasetOutput,
                    plan: Plan) -> WarmStartOutput:
    return run_stage("warm_start", config, run_id, warm_start, base, dataset, plan)


@task(name="preference-pairs", cache_policy=NO_CACHE)
def pairs_task(config: PipelineConfig, run_id: str | None, dataset: DatasetOutput, model: ModelOutput | None = None,
               plan: Plan | None = None) -> PairsOutput:
    # `model` and `plan` matter for on-policy pairs only (sampled from the warm-started model, gated).
    return run_stage("pairs", config, run_id, build_pairs, dataset, model, plan)


@task(name="import-generated-examples", cache_policy=NO_CACHE)
def import_generated_task(config: PipelineConfig, run_id: str | None, export: ExportedExamples) -> DatasetOutput:
    return run_stage("generate", config, run_id, import_generated, export)


# The run record in FaithForge's store (linked to this flow run).


@task(name="start-run", cache_policy=NO_CACHE)
def start_run_task(config: PipelineConfig, kind: str) -> str:
    ctx = StageContext.open(config)
    return ctx.store.start_run(kind, config.model_dump(mode="json"), prefect_flow_run_id=str(flow_run.id or ""))


@task(name="finish-run", cache_policy=NO_CACHE)
def finish_run_task(config: PipelineConfig, run_id: str, status: str, summary: dict) -> None:
    StageContext.open(config).store.finish_run(run_id, status, summary)


def cancel_run(config: PipelineConfig, run_id: str, stages: dict, why: str = "Ctrl-C or SIGTERM") -> None:
    """Mark the run `cancelled` (stopped on request) straight in the store: not a task, because a Ctrl-C also
    stops Prefect's embedded server, and a task would wait for it."""
    store = StageContext.open(config).store
    run = store.get_run(run_id)
    if run is not None and run.status == "running":
        store.finish_run(run_id, "cancelled", {"stages": stages, "cancelled": why})


# The optional steps after the evaluation, and the run's own report.


def label_form(batch) -> type:
    """The `RunInput` subclass the UI renders for one batch: `output_1`… choices (default skip) and a note."""
    from pydantic import Field, create_model
    from prefect.input import RunInput

    fields = {name: (Literal["supported", "unsupported", "skip"], Field("skip", title=title, description=text))
              for name, (title, text) in form_fields(batch).items()}
    fields["note"] = (str, Field("", title="Note", description="Optional: anything worth keeping about these outputs."))
    return create_model("LabelOutputs", __base__=RunInput, **fields)


def label_step(config: PipelineConfig, run_id: str | None, evaluation: EvaluationOutput,
               model: ModelOutput | None = None) -> LabelOutput:
    """Ask for labels batch by batch (the flow pauses for each), then record them. Called in the flow's body.
    `model`: the run's starting model, which a judge that reads it is re-calibrated with."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    logger = get_run_logger()
    cfg = config.label
    ctx = StageContext.open(config, run_id)
    batches = label_batches(ctx, evaluation)
    answers, timed_out = [], 0
    notes = []
    for number, batch in enumerate(batches, 1):
        form = label_form(batch).with_initial_data(description=form_description(batch, number, len(batches)))
        logger.info("label: waiting up to %d s for the form %d of %d in the Prefect UI (Resume on this run)",
                    cfg.timeout_s, number, len(batches))
        try:
            submitted = pause_flow_run(wait_for_input=form, timeout=cfg.timeout_s, poll_interval=cfg.poll_s,
                                       key=f"label-{number}")
        except FlowPauseTimeout:
            timed_out += 1
            _back_to_running()
            logger.warning("label: nobody answered form %d within %d s; continuing unlabeled", number, cfg.timeout_s)
            break  # nobody is there: do not make the next form wait as long again
        values = submitted.model_dump() if hasattr(submitted, "model_dump") else dict(submitted)
        answers += answers_from_form(batch, values)
        if values.get("note"):
            notes.append(str(values["note"]))
    return record_task(config, run_id, evaluation, answers, sum(len(b) for b in batches), timed_out,
                       " / ".join(notes), model.path if model is not None else None)


@task(name="record-labels", cache_policy=NO_CACHE)
def record_task(config: PipelineConfig, run_id: str | None, evaluation: EvaluationOutput, answers: list,
                asked: int, timed_out: int, note: str, base_model: str | None = None) -> LabelOutput:
    from faithforge.stages.label import record_labels

    return record_labels(StageContext.open(config, run_id), evaluation, answers, asked=asked, timed_out=timed_out,
                         note=note, base_model=base_model)


def _back_to_running() -> None:
    """After a pause timed out: the run's state back to Running (forced: the server would fail an expired pause)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Running
    from prefect.utilities.engine import propose_state_sync

    context = FlowRunContext.get()
    with get_client(sync_client=True) as client:
        propose_state_sync(client, Running(), flow_run_id=context.flow_run.id, force=True)


@task(name="export-model", cache_policy=NO_CACHE, log_prints=False)
def export_model_task(config: PipelineConfig, run_id: str | None, dpo: AdapterOutput) -> StageOutput:
    out = run_stage("export", config, run_id, export_trained_model, dpo)
    card = Path(out.model_card) if getattr(out, "model_card", None) else None
    if card is not None and card.is_file():
        create_markdown_artifact(key="faithforge-export", markdown=card.read_text(encoding="utf-8"),
                                 description=f"The exported model ({out.format}) and its verification")
    return out


# The pipeline run's own report — headline rates, the before/after chart, the evaluation report, the training
# curves, where each stage ran, and the rates table — so the top-level run's Artifacts tab shows them (the evaluate
# subflow's artifacts sit one or two levels down, on the worker's run when it was offloaded).
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
