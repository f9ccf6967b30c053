"""Register FaithForge with a self-hosted Prefect server: work pools, the `gpu` limit, and the deployments.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m faithforge.deployments.deploy \
        --timezone Europe/Berlin --storage-url s3://bucket/faithforge [--docker]

The Python twin of `deployments/prefect.yaml` (same names, pools, entrypoints and schedule). It creates:

- work pools `local` (process: this machine) and `a100` (process: a rented GPU VM running
  `prefect worker start --pool a100 --limit 1`, see the Dockerfile); with `--docker` also `a100-docker`
  (docker: a docker worker on the GPU VM starts each run in the image with the GPU requested);
- global concurrency limits `gpu` (this machine's GPU) — every GPU stage takes one slot, under a 60 s lease;
- the automation that sets a flow run Crashed when its heartbeats (every 30 s, `PROCESS_ENV`) stop for 90 s;
- deployments `faithforge-pipeline/local`, `faithforge-generate/nightly-generation` (`--cron`, by default
  `generation.NIGHTLY_CRON`: 02:00, in `--timezone`), and `faithforge-{reference,train,evaluate}/local` and `/a100` (and `/a100-docker`): a stage's
  deployment is named after its pool, which is how the pipeline finds the one to offload to (gpu.offload_pool).

Entrypoints are module paths (`faithforge.flows.train.train_flow`): the code is the installed package on every machine,
so no pull step is needed. Flows on the `local` pool run in `--project-dir` (relative workspaces and spec paths
resolve there). Running it again updates everything in place.
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faithforge.core.errors import USER_ERRORS

LOCAL_POOL = "local"
A100_POOL = "a100"
A100_DOCKER_POOL = "a100-docker"
GPU_LIMIT = "gpu"
DEFAULT_IMAGE = "faithforge-a100:latest"
DEFAULT_SPEC = "configs/specs/grounded-summaries.yaml"
PREFECT_VERSION = "3.8.8"
#: Environment of every flow run a process worker starts. OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads sleep
#: instead of spinning while they wait. On a loaded 2-core worker, spinning threads took the warm start from
#: 34 s to 250 s for 60 steps; PASSIVE ran them in 23 s with 2 threads (bench/cpu_wait_policy.py, BENCHMARKS.md).
#: PREFECT_FLOWS_HEARTBEAT_FREQUENCY: a flow run emits a heartbeat event every 30 s (Prefect's minimum; its default
#: is 180 s), so the zombie automation below can mark a run Crashed about 90 s after its machine or process vanished
#: without anyone left to say so (issue 29; FaithForge itself reports the deaths it can see: tasks/supervision.py).
PROCESS_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
#: The automation that crashes flow runs whose heartbeats stopped (Prefect's "detect zombie flows" recipe).
ZOMBIE_AUTOMATION = "faithforge: crash flow runs whose heartbeats stopped"
ZOMBIE_AFTER_S = 90
#: The nightly generation's model tiers, largest first. The GPU gate takes the largest that fits this machine's
#: GPU; qwen3:0.6b (750M parameters, under gpu.cpu_max_params) runs on the CPU when no tier fits a GPU, so a
#: nightly run never tries a model that does not fit (README: "Nightly generation").
NIGHTLY_MODEL = "qwen3:8b"
NIGHTLY_FALLBACK_MODELS = ["qwen3:4b", "qwen3:1.7b", "qwen3:0.6b"]
#: the stage flows that can run on a GPU pool, by stage name
STAGE_ENTRYPOINTS = {
    "reference": "faithforge.flows.reference.reference_flow",
    "train": "faithforge.flows.train.train_flow",
    "evaluate": "faithforge.flows.evaluate.evaluate_flow",
}
PIPELINE_ENTRYPOINT = "faithforge.flows.pipeline.pipeline"
GENERATION_ENTRYPOINT = "faithforge.flows.generate.generate_flow"
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


def ensure_automations() -> list[str]:
    """Create the zombie automation when missing: a flow run that sent a heartbeat and then, for
    `ZOMBIE_AFTER_S`, neither another heartbeat nor a final state is set Crashed (self-hosted servers have no
    managed one)."""
    from datetime import timedelta

    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    with get_client(sync_client=True) as client:
        if client.read_automations_by_name(ZOMBIE_AUTOMATION):
            return []
        client.create_automation(AutomationCore(
            name=ZOMBIE_AUTOMATION,
            description="FaithForge (deployments/deploy.py): a flow run whose heartbeats stopped is Crashed.",
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                        "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
                match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                within=timedelta(seconds=ZOMBIE_AFTER_S)),
            actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                        message=f"No heartbeat for {ZOMBIE_AFTER_S} s: its process or machine is "
                                                "gone (FaithForge's zombie automation)")]))
        return [ZOMBIE_AUTOMATION]


def _run(value):
    import asyncio
    import inspect

    return asyncio.run(value) if inspect.isawaitable(value) else value


@dataclass
class Declaration:
    """One deployment, declared once: `build_deployments` registers it from Python, `prefect_yaml` writes it
    for `prefect deploy`; tests/deployments/test_deployments_integration.py registers both and compares them field by field."""

    entrypoint: str
    name: str
    work_pool: str
    job_variables: dict[str, Any]
    parameters: dict[str, Any]
    tags: list[str]
    description: str
    schedules: list[dict[str, Any]] = field(default_factory=list)
    """`{"cron", "timezone", "active"}` each."""
    paused: bool = False


def _flows() -> dict[str, Any]:
    from faithforge.flows.evaluate import evaluate_flow
    from faithforge.flows.generate import generate_flow
    from faithforge.flows.pipeline import pipeline
    from faithforge.flows.reference import reference_flow
    from faithforge.flows.train import train_flow

    return {PIPELINE_ENTRYPOINT: pipeline, GENERATION_ENTRYPOINT: generate_flow,
            STAGE_ENTRYPOINTS["reference"]: reference_flow, STAGE_ENTRYPOINTS["train"]: train_flow,
            STAGE_ENTRYPOINTS["evaluate"]: evaluate_flow}


def pipeline_parameters(config) -> dict[str, Any]:
    """The pipeline deployment's defaults: only what differs from `PipelineConfig`'s own defaults (the workspace,
    the storage URL, the offload pool, ...). The form shows every other field with its schema default, and a
    config field added later needs no change here or in prefect.yaml."""
    return {"config": config.model_dump(mode="json", exclude_defaults=True)}


def declarations(project_dir: str | os.PathLike[str] = ".", *, timezone: str = "UTC", cron: str | None = None,
                 config_file: str | None = None,
                 storage_url: str | None = None, offload_pool: str = A100_POOL, docker: bool = False,
                 image: str = DEFAULT_IMAGE, generation_backend: str = "ollama",
                 generation_model: str = NIGHTLY_MODEL, generation_fallback_models: list[str] | None = None,
                 generation_paused: bool = False) -> list[Declaration]:
    """Every FaithForge deployment for these options (the one declaration both registrations come from)."""
    from faithforge.deployments.generation import generation_deployment_kwargs
    from faithforge.core.backend_registry import BACKENDS
    from faithforge.core.config import load_config
    from faithforge.generation.parameters import GenerateParameters

    project = Path(project_dir).resolve()
    local_vars = {"working_dir": str(project), "env": dict(PROCESS_ENV)}
    overrides: dict[str, Any] = {"gpu": {"offload_pool": offload_pool}}
    if storage_url:
        overrides["storage_url"] = storage_url
    config = load_config(config_file, overrides=overrides, environ={})
    if not Path(config.workspace).is_absolute():
        config = config.model_copy(update={"workspace": str(project / config.workspace)})
    out = [Declaration(
        entrypoint=PIPELINE_ENTRYPOINT, name=LOCAL_POOL, work_pool=LOCAL_POOL, job_variables=dict(local_vars),
        parameters=pipeline_parameters(config), tags=["faithforge", "pipeline"],
        description="The whole pipeline: generate → pairs → reference → DPO → evaluate; GPU stages that do not fit "
                    "here (or that gpu.offload_stages names) run on gpu.offload_pool.")]
    fallbacks = NIGHTLY_FALLBACK_MODELS if generation_fallback_models is None else generation_fallback_models
    params = GenerateParameters(spec=str(project / DEFAULT_SPEC), backend=generation_backend, model=generation_model,
                                fallback_models=[m for m in fallbacks if m != generation_model],
                                workspace=config.workspace, database_url=config.database_url,
                                unload_after=BACKENDS.get(generation_backend).releases_gpu)
    nightly = generation_deployment_kwargs(params, timezone=timezone, work_pool_name=LOCAL_POOL,
                                           paused=generation_paused, **({"cron": cron} if cron else {}))
    out.append(Declaration(
        entrypoint=GENERATION_ENTRYPOINT, name=nightly["name"], work_pool=LOCAL_POOL, job_variables=dict(local_vars),
        parameters={"params": {"spec": params.spec, "backend": params.backend, "model": params.model,
                               **params.model_dump(mode="json", exclude_defaults=True)}},
        tags=list(nightly["tags"]),
        description=nightly["description"], paused=bool(nightly.get("paused")),
        schedules=[{"cron": c.cron, "timezone": c.timezone, "active": bool(c.active)} for c in nightly["schedules"]]))
    pools = [(LOCAL_POOL, local_vars), (A100_POOL, {"env": dict(PROCESS_ENV)})] + ([(A100_DOCKER_POOL, docker_job_variables(image))]
                                                            if docker else [])
    for stage, entrypoint in STAGE_ENTRYPOINTS.items():
        for pool, job_variables in pools:
            out.append(Declaration(
                entrypoint=entrypoint, name=pool, work_pool=pool, job_variables=copy.deepcopy(job_variables),
                parameters=pipeline_parameters(config) if pool == LOCAL_POOL else {},
                tags=["faithforge", stage, pool],
                description=f"The {stage} stage on the {pool!r} pool (the pipeline offloads here when "
                            f"gpu.offload_pool={pool!r})."))
    return out


def build_deployments(project_dir: str | os.PathLike[str] = ".", **options: Any) -> list:
    """Every deployment as a `RunnerDeployment` (register with `.apply()`, or serve them)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    flows = _flows()
    return [flows[d.entrypoint].to_deployment(
        name=d.name, work_pool_name=d.work_pool, job_variables=d.job_variables,
        entrypoint_type=EntrypointType.MODULE_PATH, parameters=d.parameters, tags=d.tags, description=d.description,
        schedules=[Cron(s["cron"], timezone=s["timezone"], active=s["active"]) for s in d.schedules] or None,
        paused=d.paused)
        for d in declarations(project_dir, **options)]


PWD = "{{ $PWD }}"
"""`prefect deploy` replaces this with the directory it runs in (its environment's PWD)."""


def prefect_yaml(decls: list[Declaration], project_dir: str | os.PathLike[str], *, portable: bool = True,
                 name: str = "faithforge", command: str = "python -m faithforge.deployments.deploy --write-prefect-yaml PATH") -> str:
    """The same deployments as a prefect.yaml. `portable`: the project root becomes `{{ $PWD }}`, so the file is
    the same on every machine and resolves to the directory `prefect deploy` runs in (the repository root)."""
    import yaml

    root = str(Path(project_dir).resolve())

    def place(value: Any) -> Any:
        if isinstance(value, str) and portable:
            return value.replace(root + os.sep, PWD + "/") if value != root else PWD
        if isinstance(value, dict):
            return {k: place(v) for k, v in value.items()}
        if isinstance(value, list):
            return [place(v) for v in value]
        return value

    deployments = []
    for d in decls:
        entry: dict[str, Any] = {"name": d.name, "entrypoint": d.entrypoint, "description": place(d.description),
                                 "tags": d.tags, "parameters": place(d.parameters)}
        if d.schedules:
            entry["schedules"] = d.schedules
        entry["paused"] = d.paused
        entry["work_pool"] = {"name": d.work_pool, "job_variables": place(d.job_variables)}
        deployments.append(entry)
    body = {"name": name, "prefect-version": PREFECT_VERSION, "build": None, "push": None, "pull": [],
            "deployments": deployments}
    header = (f"# GENERATED by\n#   {command}\n# from deployments/deploy.py, the one declaration of FaithForge's "
              "deployments. Do not edit:\n# change deploy.py or its options and generate it again.\n"
              "# tests/deployments/test_deployments_declarations.py fails when this file and deploy.py disagree.\n#\n"
              "# Before `prefect --no-prompt deploy --all --prefect-file <this file>` (from the repository root):\n"
              "#   prefect work-pool create local --type process; prefect work-pool create a100 --type process\n"
              "#   prefect gcl create gpu --limit 1\n"
              "# (`python -m faithforge.deployments.deploy` does all of it in one step.) {{ $PWD }} is the directory you run\n"
              "# `prefect deploy` in: flows on the `local` pool run there.\n")
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=110)


def deploy(project_dir: str | os.PathLike[str] = ".", *, gpu_slots: int = 1, docker: bool = False,
           **options: Any) -> dict[str, list[str]]:
    """Pools, limits and deployments on the server at PREFECT_API_URL; returns what was created/applied. The
    deployments are built (and their options checked) before anything is created on the server."""
    deployments = build_deployments(project_dir, docker=docker, **options)
    pools = ensure_pools(docker=docker)
    limits = ensure_limits(gpu_slots)
    automations = ensure_automations()
    applied = []
    for deployment in deployments:
        deployment.apply()
        applied.append(f"{deployment.flow_name}/{deployment.name}")
    return {"pools_created": pools, "limits_created": limits, "automations_created": automations,
            "deployments": applied}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faithforge.deployments.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project-dir", default=".", help="Repository root: flows on the local pool run here.")
    parser.add_argument("--timezone", default="UTC", help="IANA timezone of the nightly generation run.")
    parser.add_argument("--cron", default=None,
                        help="When the nightly generation runs, a cron expression (default: 02:00 every day).")
    parser.add_argument("--config", default=None, help="Pipeline YAML baked into the deployments' defaults.")
    parser.add_argument("--storage-url", default=None, help="Shared storage for offloaded stages (fsspec URL).")
    parser.add_argument("--offload-pool", default=A100_POOL, help="gpu.offload_pool in the default parameters.")
    parser.add_argument("--gpu-slots", type=int, default=1, help="Slots of the `gpu` limit (GPU jobs at once).")
    parser.add_argument("--docker", action="store_true", help="Also create the a100-docker pool and deployments.")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="Image of the a100-docker deployments.")
    parser.add_argument("--generation-backend", default="ollama", help="Backend of the nightly generation.")
    parser.add_argument("--generation-model", default=NIGHTLY_MODEL, help="Model of the nightly generation.")
    parser.add_argument("--generation-fallback-models", default=",".join(NIGHTLY_FALLBACK_MODELS),
                        help="Smaller tiers for the nightly generation, comma-separated, largest first.")
    parser.add_argument("--pause-nightly", action="store_true", help="Register the nightly schedule paused.")
    parser.add_argument("--write-prefect-yaml", metavar="PATH", default=None,
                        help="Write these deployments as a prefect.yaml for `prefect deploy` instead of registering "
                             "them (no server needed).")
    args = parser.parse_args(argv)
    try:
        return _main(args, argv)
    except USER_ERRORS as error:  # bad input: one line that says what to fix, before anything is registered
        print(f"error: {error}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace, argv: list[str] | None) -> int:
    from prefect.settings import PREFECT_API_URL

    options = dict(timezone=args.timezone, cron=args.cron, config_file=args.config, storage_url=args.storage_url,
                   offload_pool=args.offload_pool, image=args.image, generation_backend=args.generation_backend,
                   generation_model=args.generation_model,
                   generation_fallback_models=[m.strip() for m in args.generation_fallback_models.split(",")
                                               if m.strip()],
                   generation_paused=args.pause_nightly)
    if args.write_prefect_yaml:
        command = "python -m faithforge.deployments.deploy " + shlex.join(argv if argv is not None else sys.argv[1:])
        text = prefect_yaml(declarations(args.project_dir, docker=args.docker, **options), args.project_dir,
                            portable=args.project_dir == ".", name="faithforge-docker" if args.docker else "faithforge",
                            command=command)
        Path(args.write_prefect_yaml).write_text(text, encoding="utf-8")
        print(f"wrote {args.write_prefect_yaml}")
        return 0
    if not PREFECT_API_URL.value():
        print("PREFECT_API_URL is not set: start `prefect server start` and export "
              "PREFECT_API_URL=http://127.0.0.1:4200/api (deployments need a running server)", file=sys.stderr)
        return 2
    result = deploy(args.project_dir, gpu_slots=args.gpu_slots, docker=args.docker, **options)
    for name in result["pools_created"]:
        print(f"created work pool {name}")
    for name in result["limits_created"]:
        print(f"created global concurrency limit {name}")
    for name in result["automations_created"]:
        print(f"created automation {name!r}")
    for name in result["deployments"]:
        print(f"deployment {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
