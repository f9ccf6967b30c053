"""The steps around every GPU stage, written once: (on the offload pool) receive → gate → offload, or run here in the
`gpu` slot → (on the pool) send. Shared by the reference, train and evaluate flows, and by the pipeline's gated
steps (the warm start, on-policy pairs).

A flow reads top to bottom and never hands this module a callback:

    stage = enter_gated_stage("train", config, run_id, offloaded=..., inputs=..., input_types=...,
                              output_type=TrainOutputs)
    if stage.done is not None:          # it ran on the offload pool: its outputs are back
        return stage.done
    with stage.slot():                  # the `gpu` concurrency slot, held while the work runs here
        out = TrainOutputs(dpo=dpo_task(stage.config, stage.run_id, ..., stage.plan), ...)
    return stage.finish(out)            # sent back when this run is itself the offloaded one

`gate_task` records the gate's plan and shows it (and where the stage runs) as an artifact.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from faithforge.core.config import PipelineConfig
from faithforge.core.errors import UserError
from faithforge.offload.dispatch import runs_here
from faithforge.stages.context import StageContext
from faithforge.stages.gate import GateRecord, gate
from faithforge.stages.ui_report import plan_markdown, runs_on
from faithforge.tasks.offload import gpu_slot, offload_task, receive_task, send_task
from faithforge.tasks.supervision import begin_flow_run, started_by_worker, watch_worker


def _cuda_available() -> bool:
    import torch  # the stage behind this gate imports it anyway

    return torch.cuda.is_available()


@task(name="gpu-gate", cache_policy=NO_CACHE)
def gate_task(config: PipelineConfig, run_id: str | None, stage: str) -> GateRecord:
    # runs_here (no Prefect, below the stages) works on the record's JSON: a stage that cannot be offloaded
    # runs on this machine's CPU, and its record says so.
    plan = GateRecord.model_validate(runs_here(gate(StageContext.open(config, run_id), stage).to_dict()))
    get_run_logger().info("gate %s: %s", stage, plan.reason)
    where = runs_on(plan.to_dict(), _cuda_available())
    create_markdown_artifact(key=f"gpu-plan-{stage}".replace("_", "-"), markdown=plan_markdown(plan.to_dict(), where),
                             description=f"GPU gate decision for {stage}: runs on {where}")
    return plan


@dataclass
class GatedStage:
    """A GPU stage after its gate: where it runs, with what, and — when it ran on the offload pool — its output."""

    stage: str
    config: PipelineConfig
    """The run's configuration (on the pool: the one the pipeline sent)."""
    run_id: str | None
    inputs: dict[str, Any]
    """The stage flow's typed inputs by name (on the pool: validated back from the JSON that was sent)."""
    plan: GateRecord
    offloaded: bool
    """This flow run is itself the offloaded one (on the pool): `finish` sends the outputs back."""
    done: Any = None
    """The stage's output when the plan sent it to the offload pool (nothing is left to run here)."""

    @contextmanager
    def slot(self) -> Iterator[None]:
        """The `gpu` concurrency slot for the work that runs here (waited for out loud)."""
        with gpu_slot(self.config, self.plan, self.run_id):
            yield

    def finish(self, out: BaseModel) -> Any:
        """The stage's output: as is, or — on the pool — published to storage and returned as that JSON."""
        return send_task(self.config, self.run_id, self.stage, out)["outputs"] if self.offloaded else out


def enter_gated_stage(stage: str, config: PipelineConfig, run_id: str | None, *, offloaded: bool,
                      inputs: dict[str, BaseModel | None], input_types: dict[str, type[BaseModel]],
                      output_type: type[BaseModel]) -> GatedStage:
    """Receive the inputs (on the pool), supervise the flow run, gate the stage, and offload it when its plan says
    so (then `done` holds its output, validated into `output_type`)."""
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
    stage_ = GatedStage(stage=stage, config=config, run_id=run_id, inputs=inputs, plan=plan, offloaded=offloaded)
    if plan.placement == "offload":
        stage_.done = output_type.model_validate(offload_task(config, run_id, stage, plan, inputs))
    return stage_
