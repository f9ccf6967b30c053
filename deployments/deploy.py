"""Register FaithForge with a self-hosted Prefect server: work pools, the `gpu` limit, and the deployments.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.deploy \
        --timezone Europe/Berlin --storage-url s3://bucket/faithforge [--docker]

The Python twin of `deployments/prefect.yaml` (same names, pools, entrypoints and schedule). It creates:

- work pools `local` (process: this machine) and `a100` (process: a rented GPU VM running
  `prefect worker start --pool a100 --limit 1`, see the Dockerfile); with `--docker` also `a100-docker`
  (docker: a docker worker on the GPU VM starts each run in the image with the GPU requested);
- global concurrency limits `gpu` (this machine's GPU) — every GPU stage takes one slot with `strict=True`;
- deployments `faithforge-pipeline/local`, `faithforge-generate/nightly-generation` (cron 02:00 in
  `--timezone`), and `faithforge-{reference,train,evaluate}/local` and `/a100` (and `/a100-docker`): a stage's
  deployment is named after its pool, which is how the pipeline finds the one to offload to (gpu.offload_pool).

Entrypoints are module paths (`flows.train.train_flow`): the code is the installed package on every machine,
so no pull step is needed. Flows on the `local` pool run in `--project-dir` (relative workspaces and spec paths
resolve there). Running it again updates everything in place.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any

LOCAL_POOL = "local"
A100_POOL = "a100"
A100_DOCKER_POOL = "a100-docker"
GPU_LIMIT = "gpu"
DEFAULT_IMAGE = "faithforge-a100:latest"
DEFAULT_SPEC = "configs/specs/grounded-summaries.yaml"
#: the stage flows that can run on a GPU pool, by stage name
STAGE_ENTRYPOINTS = {
    "reference": "flows.reference.reference_flow",
    "train": "flows.train.train_flow",
    "evaluate": "flows.evaluate.evaluate_flow",
}
PIPELINE_ENTRYPOINT = "flows.pipeline.pipeline"
GENERATION_ENTRYPOINT = "flows.generate.generate_flow"
#: a GPU for the docker variant: what `docker run --gpus all` sends (docker-py DeviceRequest fields)
GPU_DEVICE_REQUESTS = [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
WORKER_WORKSPACE_VOLUME = "faithforge-worker:/root/.faithforge-worker"


def docker_job_variables(image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """Job variables of the `a100-docker` deployments: the image, the GPU request, a cache volume."""
    return {"image": image, "image_pull_policy": "IfNotPresent",
            "container_create_kwargs": {"device_requests": copy.deepcopy(GPU_DEVICE_REQUESTS), "shm_size": "16g"},
            "volumes": [WORKER_WORKSPACE_VOLUME]}


def docker_base_job_template(template: dict[str, Any]) -> dict[str, Any]:
    """The docker pool's template with `container_create_kwargs` exposed (older bundled templates lack it)."""
    out = copy.deepcopy(template)
    props = out.setdefault("variables", {}).setdefault("properties", {})
    props.setdefault("container_create_kwargs", {
        "title": "Container Configuration", "type": "object",
        "description": "Extra docker-py `containers.create` arguments, e.g. device_requests for GPUs."})
    out.setdefault("job_configuration", {}).setdefault("container_create_kwargs", "{{ container_create_kwargs }}")
    return out


def ensure_pools(docker: bool = False) -> list[str]:
    """Create the work pools that do not exist yet; returns the names created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    wanted = [(LOCAL_POOL, "process", "This machine: the pipeline, generation and stages that fit here."),
              (A100_POOL, "process", "A rented A100 VM: `prefect worker start --pool a100 --limit 1` there.")]
    if docker:
        wanted.append((A100_DOCKER_POOL, "docker", "A GPU VM with Docker: each run in the faithforge-a100 image."))
    created = []
    with get_client(sync_client=True) as client:
        for name, kind, description in wanted:
            try:
                client.read_work_pool(name)
                continue
            except ObjectNotFound:
                pass
            template = _run(get_default_base_job_template_for_infrastructure_type(kind))
            if template is None:
                raise SystemExit(f"the Prefect server knows no base job template for {kind!r} work pools")
            if kind == "docker":
                template = docker_base_job_template(template)
            client.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=template,
                                                   description=description))
            created.append(name)
    return created


def ensure_limits(slots: int = 1) -> list[str]:
    """Create the `gpu` global concurrency limit when missing (one GPU job at a time by default)."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
            return []
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots))
            return [GPU_LIMIT]


def _run(value):
    import asyncio
    import inspect

    return asyncio.run(value) if inspect.isawaitable(value) else value


def build_deployments(project_dir: str | os.PathLike[str] = ".", *, timezone: str = "UTC",
                      config_file: str | None = None, storage_url: str | None = None, offload_pool: str = A100_POOL,
                      docker: bool = False, image: str = DEFAULT_IMAGE, generation_backend: str = "ollama",
                      generation_model: str = "qwen3:8b", generation_paused: bool = False) -> list:
    """Every deployment as a `RunnerDeployment` (register with `.apply()`, or serve them)."""
    from prefect.deployments.runner import EntrypointType

    from deployments.generation import generation_deployment_kwargs
    from faithforge.config import load_config
    from faithforge.generation.parameters import GenerateParameters
    from flows.evaluate import evaluate_flow
    from flows.generate import generate_flow
    from flows.pipeline import pipeline
    from flows.reference import reference_flow
    from flows.train import train_flow

    project = Path(project_dir).resolve()
    local_vars = {"working_dir": str(project)}
    overrides: dict[str, Any] = {"gpu": {"offload_pool": offload_pool}}
    if storage_url:
        overrides["storage_url"] = storage_url
    config = load_config(config_file, overrides=overrides)
    if not Path(config.workspace).is_absolute():
        config = config.model_copy(update={"workspace": str(project / config.workspace)})
    module = EntrypointType.MODULE_PATH
    out = [pipeline.to_deployment(
        name=LOCAL_POOL, work_pool_name=LOCAL_POOL, job_variables=local_vars, entrypoint_type=module,
        parameters={"config": config.model_dump(mode="json")}, tags=["faithforge", "pipeline"],
        description="The whole pipeline: generate → pairs → reference → DPO → evaluate; GPU stages that do not fit "
                    "here are offloaded to gpu.offload_pool.")]
    params = GenerateParameters(spec=str(project / DEFAULT_SPEC), backend=generation_backend, model=generation_model,
                                workspace=config.workspace)
    out.append(generate_flow.to_deployment(
        **generation_deployment_kwargs(params, timezone=timezone, work_pool_name=LOCAL_POOL, paused=generation_paused),
        job_variables=local_vars, entrypoint_type=module))
    stage_flows = {"reference": reference_flow, "train": train_flow, "evaluate": evaluate_flow}
    pools = [(LOCAL_POOL, local_vars), (A100_POOL, {})] + ([(A100_DOCKER_POOL, docker_job_variables(image))]
                                                            if docker else [])
    for stage, flow_obj in stage_flows.items():
        for pool, job_variables in pools:
            parameters = {} if pool != LOCAL_POOL else {"config": config.model_dump(mode="json")}
            out.append(flow_obj.to_deployment(
                name=pool, work_pool_name=pool, job_variables=job_variables, entrypoint_type=module,
                parameters=parameters, tags=["faithforge", stage, pool],
                description=f"The {stage} stage on the {pool!r} pool (the pipeline offloads here when "
                            f"gpu.offload_pool={pool!r})."))
    return out


def deploy(project_dir: str | os.PathLike[str] = ".", *, gpu_slots: int = 1, docker: bool = False,
           **options: Any) -> dict[str, list[str]]:
    """Pools, limits and deployments on the server at PREFECT_API_URL; returns what was created/applied."""
    pools = ensure_pools(docker=docker)
    limits = ensure_limits(gpu_slots)
    applied = []
    for deployment in build_deployments(project_dir, docker=docker, **options):
        deployment.apply()
        applied.append(f"{deployment.flow_name}/{deployment.name}")
    return {"pools_created": pools, "limits_created": limits, "deployments": applied}


def main(argv: list[str] | None = None) -> int:
    from prefect.settings import PREFECT_API_URL

    parser = argparse.ArgumentParser(prog="python -m deployments.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project-dir", default=".", help="Repository root: flows on the local pool run here.")
    parser.add_argument("--timezone", default="UTC", help="IANA timezone of the nightly 02:00 generation run.")
    parser.add_argument("--config", default=None, help="Pipeline YAML baked into the deployments' defaults.")
    parser.add_argument("--storage-url", default=None, help="Shared storage for offloaded stages (fsspec URL).")
    parser.add_argument("--offload-pool", default=A100_POOL, help="gpu.offload_pool in the default parameters.")
    parser.add_argument("--gpu-slots", type=int, default=1, help="Slots of the `gpu` limit (GPU jobs at once).")
    parser.add_argument("--docker", action="store_true", help="Also create the a100-docker pool and deployments.")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="Image of the a100-docker deployments.")
    parser.add_argument("--generation-backend", default="ollama", help="Backend of the nightly generation.")
    parser.add_argument("--generation-model", default="qwen3:8b", help="Model of the nightly generation.")
    parser.add_argument("--pause-nightly", action="store_true", help="Register the nightly schedule paused.")
    args = parser.parse_args(argv)
    if not PREFECT_API_URL.value():
        print("PREFECT_API_URL is not set: start `prefect server start` and export "
              "PREFECT_API_URL=http://127.0.0.1:4200/api (deployments need a running server)", file=sys.stderr)
        return 2
    result = deploy(args.project_dir, gpu_slots=args.gpu_slots, docker=args.docker, timezone=args.timezone,
                    config_file=args.config, storage_url=args.storage_url, offload_pool=args.offload_pool,
                    image=args.image, generation_backend=args.generation_backend,
                    generation_model=args.generation_model, generation_paused=args.pause_nightly)
    for name in result["pools_created"]:
        print(f"created work pool {name}")
    for name in result["limits_created"]:
        print(f"created global concurrency limit {name}")
    for name in result["deployments"]:
        print(f"deployment {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
