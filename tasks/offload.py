"""Prefect glue for offloading and the GPU concurrency guard (the logic lives in `faithforge.offload.dispatch`).

- `offload_task` (parent side): publish inputs to storage, run the stage's deployment on the offload pool as a
  linked subflow, wait for a worker (at most `gpu.offload_timeout_s`), then until the run is final, and fetch
  what it produced into the local workspace.
- `receive_task` / `send_task` (child side, in the stage flow run on the offload pool): inputs from storage
  into the worker's workspace; outputs back to storage plus a `results/<flow-run-id>.json`.
- `gpu_slot`: one GPU job at a time through the global concurrency limit `gpu` (strict in deployed runs).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Iterator

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from pydantic import BaseModel

from faithforge.offload import dispatch as offload
from faithforge.core.config import PipelineConfig
from faithforge.stages.context import StageContext
from faithforge.core.workspace import sha256_file, sha256_tree
from faithforge.gpu.planner import Plan

DEFAULT_GPU_LIMIT = "gpu"
POLL_S = 2.0
#: How often a wait is said again in the run's log, seconds.
WAIT_REPORT_S = 30.0


# -- the GPU guard --------------------------------------------------------------------------------------

def gpu_limit_name(config: PipelineConfig) -> str:
    return config.gpu.concurrency_limit or DEFAULT_GPU_LIMIT


def enforce_gpu_limit(config: PipelineConfig) -> bool:
    """Strict in runs started by a worker (a deployment) or when gpu.require_concurrency_limit says so.

    The local demo on Prefect's ephemeral server has no limits and runs one stage at a time, so it does
    not take a slot there; a deployed run on a server without the `gpu` limit fails instead of silently
    running two GPU jobs at once.
    """
    if config.gpu.require_concurrency_limit:
        return True
    if os.environ.get("PREFECT__FLOW_RUN_ID"):
        return True
    from prefect.runtime import deployment

    return deployment.id is not None


@contextlib.contextmanager
def gpu_slot(config: PipelineConfig, plan: Plan, run_id: str | None = None) -> Iterator[None]:
    """Hold one slot of the `gpu` limit while a stage uses the local GPU (CPU and offload plans take none).

    While it waits, the run's log and the stage's progress artifact say who holds the slot and for how long;
    the slot is held under a short lease and recorded in the run store, so a holder that dies frees it
    (tasks/supervision.py)."""
    if plan.placement != "gpu" or not enforce_gpu_limit(config):
        yield
        return
    from faithforge.core.progress import fan_out
    from faithforge.tasks.progress_artifact import stage_progress_artifact
    from faithforge.tasks.supervision import held_slot, store_url

    artifact = stage_progress_artifact(plan.stage)
    with held_slot(gpu_limit_name(config), plan.stage, store_url(config), run_id, progress=fan_out(artifact)):
        # The stage's own artifact has the same key: the last wait line reaches the server before it is created.
        artifact.close()
        yield


# -- parent side ----------------------------------------------------------------------------------------

def _wait_for_child(client, flow_run_id, stage: str, pool: str, pickup_timeout_s: float) -> Any:
    """Poll the child run: it must leave SCHEDULED within the timeout, leave PENDING (taken by a worker, its flow
    not started yet) within the timeout too, then reach a final state. A worker that dies between taking the run
    and starting its flow leaves it Pending for ever, with no heartbeat for the crash automation to miss: that
    waited with no end (an attack, 2026-12-07)."""
    from prefect.states import Cancelled, Cancelling

    logger = get_run_logger()
    started = time.monotonic()
    announced = False
    said = -1.0
    pending_since: float | None = None
    while True:
        run = client.read_flow_run(flow_run_id)
        state = run.state
        if state is not None and state.is_final():
            return run
        pending_since = (pending_since or time.monotonic()) if state is not None and state.is_pending() else None
        if pending_since is not None and time.monotonic() - pending_since >= pickup_timeout_s:
            # Cancelling, not Cancelled: a worker that is alive after all (still pulling an image) stops the run it
            # was starting instead of running it unwatched
            client.set_flow_run_state(flow_run_id, Cancelling(message="taken by a worker that did not start it in "
                                                                      "time"), force=True)
            raise offload.OffloadError(offload.stuck_pending_message(stage, pool, pickup_timeout_s))
        if state is None or state.is_scheduled():
            waited = time.monotonic() - started
            if waited >= said + WAIT_REPORT_S or said < 0:  # said at once, then every WAIT_REPORT_S (issue 29)
                said = waited
                logger.info("%s: waiting %.0f s for a worker of the work pool %r to start the offloaded run "
                            "(gives up after %.0f s; `prefect worker start --pool %s` starts one)", stage, waited,
                            pool, pickup_timeout_s, pool)
            if waited >= pickup_timeout_s:
                client.set_flow_run_state(flow_run_id, Cancelled(message="no worker picked it up in time"),
                                          force=True)
                raise offload.OffloadError(offload.no_worker_message(stage, pool, pickup_timeout_s, waited))
        elif not announced:
            logger.info("%s: a worker of pool %r started the run (%s)", stage, pool, state.name)
            announced = True
        time.sleep(POLL_S)


def _record_outputs(ctx: StageContext, stage: str, outputs: Any, parents: list[str]) -> Any:
    kind = offload.STAGE_ARTIFACT_KIND[stage]

    def register(entry: dict) -> str | None:
        path = entry.get("path")
        if not path or not Path(path).exists():
            return None
        digest = sha256_tree(path) if Path(path).is_dir() else sha256_file(path)
        meta = {k: v for k, v in entry.items() if k not in ("markdown", "table", "history")}
        return ctx.store.add_artifact(kind, str(path), digest, run_id=ctx.run_id, meta={"offloaded": True, **meta},
                                      parents=parents)

    return offload.replace_artifact_ids(outputs, register)


@task(name="offload-stage", cache_policy=NO_CACHE, persist_result=False)
def offload_task(config: PipelineConfig, run_id: str | None, stage: str, plan: Plan, inputs: dict) -> Any:
    """Run `stage` as a flow run of its deployment on the offload pool and bring its outputs here.

    `inputs`: the stage flow's inputs (stage outputs). Returns the stage's outputs as JSON, with local paths; the
    flow validates them back into its output type."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    logger = get_run_logger()
    inputs = as_json(inputs)
    pool = plan.offload_target or config.gpu.offload_pool
    if not pool:
        raise offload.OffloadError(f"{stage}: the plan says offload but no gpu.offload_pool is configured")
    name = offload.deployment_name(stage, pool)
    storage = offload.storage_root(config)
    ctx = StageContext.open(config, run_id)
    root = ctx.workspace.root
    started = time.perf_counter()
    parents = offload.artifact_ids(inputs)
    portable = offload.to_portable(inputs, root, storage)
    model_ref = offload.to_portable(config.model.path, root, storage) if config.model.path else None
    parameters = {"config": offload.child_config(config, model_ref), **portable, "run_id": None, "offloaded": True}
    timeout_s = offload.offload_timeout_s(config)
    logger.info("%s: offloading to deployment %s on pool %r (inputs in %s)", stage, name, pool, storage)
    try:
        child = run_deployment(name, parameters=parameters, timeout=0, as_subflow=True,
                               tags=["faithforge", "offload", stage])
    except ObjectNotFound:
        raise offload.OffloadError(f"{stage}: the deployment {name!r} does not exist on the Prefect server; register "
                                   f"it with `python -m faithforge.deployments.deploy` or `prefect deploy --all`") from None
    with get_client(sync_client=True) as client:
        run = _wait_for_child(client, child.id, stage, pool, timeout_s)
    if not run.state.is_completed():
        raise offload.OffloadError(f"{stage}: the offloaded flow run {run.name} ({run.id}) on pool {pool!r} ended "
                                   f"{run.state.name}: {run.state.message or 'see its logs in the Prefect UI'}")
    result = offload.read_result(storage, str(run.id))
    local = offload.from_portable(result["outputs"], root, storage)
    for key in {s for s in offload._strings(result["outputs"]) if offload.is_ref(s)}:
        folder = offload.local_path_for(key[len(offload.REF_PREFIX):], root)
        offload.relocate_markers(folder, result.get("workspace", ""), str(root))
    local = _record_outputs(ctx, stage, local, parents)
    for entry in _stage_dicts(local):  # what actually ran where: the pipeline's report shows it
        entry.update(offloaded_to=pool, offload_flow_run=run.name, offload_flow_run_id=str(run.id))
    wall = round(time.perf_counter() - started, 2)
    reused = bool(result.get("reused"))
    if run_id:
        ctx.store.record_stage(run_id, stage, status="completed", reused=reused, wall_seconds=wall,
                               outputs={"offloaded_to": pool, "flow_run_id": str(run.id), "outputs": local},
                               message=f"offloaded to pool {pool} as flow run {run.name}")
    emit_event(event="faithforge.stage.completed", resource={"prefect.resource.id": f"faithforge.stage.{stage}"},
               payload={"stage": stage, "run_id": run_id, "reused": reused, "wall_seconds": wall,
                        "offloaded_to": pool, "flow_run_id": str(run.id)})
    logger.info("%s: offloaded run %s completed; outputs fetched into %s in %.1f s", stage, run.name, root, wall)
    return local


# -- child side -----------------------------------------------------------------------------------------

@task(name="receive-offloaded-inputs", cache_policy=NO_CACHE, persist_result=False)
def receive_task(config: PipelineConfig, stage: str, inputs: dict) -> dict:
    """On the offload worker: this machine's config, a run in its own store, inputs fetched from storage (as JSON:
    the flow validates them into its input types)."""
    from faithforge.stages.context import StageContext

    inputs = as_json(inputs)
    cfg = offload.worker_config(config)
    storage = offload.storage_root(cfg)
    ctx = StageContext.open(cfg)
    root = ctx.workspace.root
    if cfg.model.path and offload.is_ref(cfg.model.path):
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(
            update={"path": offload.from_portable(cfg.model.path, root, storage)})})
    local = offload.from_portable(inputs, root, storage)

    def imported(entry: dict) -> str | None:
        path = entry.get("path")
        if not path or not Path(path).exists():
            return None
        digest = sha256_tree(path) if Path(path).is_dir() else sha256_file(path)
        return ctx.store.add_artifact("offload_input", str(path), digest, meta={"origin_artifact_id":
                                                                                  entry.get("artifact_id")})

    local = offload.replace_artifact_ids(local, imported)
    run_id = ctx.store.start_run(f"offload-{stage}", cfg.model_dump(mode="json"),
                                 prefect_flow_run_id=os.environ.get("PREFECT__FLOW_RUN_ID", ""))
    get_run_logger().info("%s: inputs fetched from %s into %s", stage, storage, root)
    return {"config": cfg.model_dump(mode="json"), "run_id": run_id, "inputs": local}


@task(name="send-offloaded-outputs", cache_policy=NO_CACHE, persist_result=False)
def send_task(config: PipelineConfig, run_id: str, stage: str, outputs: Any) -> dict:
    """On the offload worker: publish the outputs under the workspace and write the result JSON to storage."""
    from prefect.runtime import flow_run

    outputs = as_json(outputs)
    ctx = StageContext.open(config)
    root = ctx.workspace.root
    storage = offload.storage_root(config)
    portable = offload.to_portable(outputs, root, storage, include=lambda p: _inside(p, root))
    reused = all(entry.get("reused", False) for entry in _stage_dicts(outputs)) if _stage_dicts(outputs) else False
    result = {"stage": stage, "outputs": portable, "workspace": str(root), "reused": reused}
    url = offload.write_result(storage, str(flow_run.id), result)
    ctx.store.finish_run(run_id, "completed", {"result": url})
    get_run_logger().info("%s: outputs published; result at %s", stage, url)
    return result


def as_json(value: Any) -> Any:
    """Stage outputs (pydantic models, also inside dicts and lists) as the JSON the offload path moves."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return value


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _stage_dicts(outputs: Any) -> list[dict]:
    if isinstance(outputs, dict) and "path" in outputs:
        return [outputs]
    if isinstance(outputs, dict):
        return [v for v in outputs.values() if isinstance(v, dict) and "path" in v]
    return []
