"""The skeleton every GPU stage flow shares: receive (on the offload pool) → gate → offload, or run here in the
`gpu` slot → send (on the pool). The reference, train and evaluate flows differ only in their inputs, their output
type and the task that does the work; this is the one place the steps around it are written."""

from __future__ import annotations

from typing import Any, Callable, Optional

from pydantic import BaseModel

from faithforge.core.config import PipelineConfig
from faithforge.core.errors import UserError
from gpu.planner import Plan
from tasks.gate import gate_task
from tasks.offload import gpu_slot, offload_task, receive_task, send_task
from tasks.supervision import begin_flow_run, started_by_worker, watch_worker

#: The task that does a stage's work here: (config, run id, typed inputs by name, plan) → the stage's output.
StageWork = Callable[[PipelineConfig, Optional[str], dict[str, Any], Plan], BaseModel]


def gated_stage(stage: str, config: PipelineConfig, run_id: str | None, *, offloaded: bool,
                inputs: dict[str, BaseModel | None], input_types: dict[str, type[BaseModel]],
                output_type: type[BaseModel], work: StageWork) -> Any:
    """Run `stage` where its gate plan says and return its output.

    `inputs` are the stage flow's inputs by name and `input_types` their types (received JSON is validated back
    into them on the pool). Offloaded here: the pool's JSON, validated into `output_type`. Run on the pool
    (`offloaded`): the published outputs' JSON, which the caller on the other machine validates."""
    if offloaded:
        received = receive_task(config, stage, inputs)
        config, run_id = PipelineConfig.model_validate(received["config"]), received["run_id"]
        inputs = {name: None if value is None else input_types[name].model_validate(value)
                  for name, value in received["inputs"].items()}
    if started_by_worker():  # this stage's flow run is its own process (a deployment): it dies with its worker
        from prefect.runtime import flow_run

        if offloaded or flow_run.parent_flow_run_id:
            watch_worker(config)
        elif (problem := begin_flow_run(config)) is not None:  # run by hand from the UI: the CLI's checks first
            raise UserError(problem)
    plan = gate_task(config, run_id, stage)
    if plan.placement == "offload":
        return output_type.model_validate(offload_task(config, run_id, stage, plan, inputs))
    with gpu_slot(config, plan, run_id):
        out = work(config, run_id, inputs, plan)
    return send_task(config, run_id, stage, out)["outputs"] if offloaded else out
