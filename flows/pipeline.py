"""The FaithForge pipeline: generate → pairs → reference log-probs → DPO → evaluate, each GPU stage gated.

Reads top to bottom like the diagram in the README. Every step is a task or a subflow whose logic lives in
`faithforge.stages` (plain Python); this file only composes them and imports no torch.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import Failed

from faithforge.core.backend_registry import BACKENDS
from faithforge.core.config import PipelineConfig
from faithforge.stages.generate import generation_parameters
from faithforge.stages.outputs import StageOutput
from flows.evaluate import evaluate_flow
from flows.generate import generate_flow
from flows.reference import reference_flow
from flows.train import train_flow
from tasks.export_model import export_model_task
from tasks.data import base_model_task, generate_task, import_generated_task, pairs_task, warm_start_task
from tasks.gate import gate_task
from tasks.label import label_step
from tasks.offload import gpu_slot
from tasks.report import report_task
from tasks.runs import cancel_run, finish_run_task, start_run_task
from tasks.supervision import begin_flow_run, cancel_requested
from gpu.errors import redact_credentials


# log_prints=False on every FaithForge flow: FaithForge logs through the run logger; captured prints were only
# libraries' console output (dill's bytecode disassembly among it), not what an operator reads.
@flow(name="faithforge-pipeline", log_prints=False)
def pipeline(config: PipelineConfig = PipelineConfig()) -> dict:
    """Run the whole pipeline and return where everything was written and the before/after rates."""
    problem = begin_flow_run(config)  # on a worker: watch it, the CLI's preflight, reconcile the dead
    if problem is not None:  # bad input: one line in the UI, before any work (no traceback: it is not a bug)
        get_run_logger().error(problem)
        return Failed(message=problem)
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
        # On-policy pairs sample from the warm-started model: a generation workload, gated like one.
        pairs_plan = gate_task(config, run_id, "evaluate") if config.pairs.builder == "on-policy" else None
        stages["pairs"] = pairs = pairs_task(config, run_id, dataset, model, pairs_plan)
        stages["reference"] = reference = reference_flow(config, model, pairs, run_id=run_id)
        trained = train_flow(config, model, pairs, reference, run_id=run_id)
        stages["train"], stages["control"] = trained.dpo, trained.control
        stages["evaluate"] = evaluation = evaluate_flow(config, model, dataset, pairs, trained.dpo, trained.control,
                                                        run_id=run_id)
        if config.label.enabled:  # pauses the run for people's labels in the UI; times out into "unlabeled"
            stages["label"] = label_step(config, run_id, evaluation)
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
