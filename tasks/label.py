"""The pipeline's optional `label` step: pause the run and ask people, through a form in the Prefect UI, whether the
source supports each output; then save the labels, re-calibrate the judge and extend the report.

The form is a `RunInput` model built per batch: one choice per output (supported / unsupported / skip) and a note;
its description (markdown above the form) shows each output with its source excerpt and the judge's flagged spans.
`pause_flow_run(wait_for_input=...)` blocks the flow until the form is submitted or `label.timeout_s` passes; a
timeout is not a failure: the paused state is replaced by Running and the report says "unlabeled" (Prefect would
otherwise fail the run: "paused and never resumed"). What the answers change is plain Python in
`faithforge.stages.label`.
"""

from __future__ import annotations

from typing import Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from faithforge.core.config import PipelineConfig
from faithforge.stages.context import StageContext
from faithforge.stages.label import LabelOutput, answers_from_form, form_description, form_fields, label_batches
from faithforge.stages.outputs import EvaluationOutput


def label_form(batch) -> type:
    """The `RunInput` subclass the UI renders for one batch: `output_1`… choices (default skip) and a note."""
    from pydantic import Field, create_model
    from prefect.input import RunInput

    fields = {name: (Literal["supported", "unsupported", "skip"], Field("skip", title=title, description=text))
              for name, (title, text) in form_fields(batch).items()}
    fields["note"] = (str, Field("", title="Note", description="Optional: anything worth keeping about these outputs."))
    return create_model("LabelOutputs", __base__=RunInput, **fields)


def label_step(config: PipelineConfig, run_id: str | None, evaluation: EvaluationOutput) -> LabelOutput:
    """Ask for labels batch by batch (the flow pauses for each), then record them. Called in the flow's body."""
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
                       " / ".join(notes))


@task(name="record-labels", cache_policy=NO_CACHE)
def record_task(config: PipelineConfig, run_id: str | None, evaluation: EvaluationOutput, answers: list,
                asked: int, timed_out: int, note: str) -> LabelOutput:
    from faithforge.stages.label import record_labels

    return record_labels(StageContext.open(config, run_id), evaluation, answers, asked=asked, timed_out=timed_out,
                         note=note)


def _back_to_running() -> None:
    """After a pause timed out: the run's state back to Running (forced: the server would fail an expired pause)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Running
    from prefect.utilities.engine import propose_state_sync

    context = FlowRunContext.get()
    with get_client(sync_client=True) as client:
        propose_state_sync(client, Running(), flow_run_id=context.flow_run.id, force=True)
