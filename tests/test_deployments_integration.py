"""A real Prefect server on loopback, both work pools with real workers, the pipeline started as the UI does.

The local worker plans for an RTX 5070 (12 GB) and sizes the stages for qwen2.5-7b at 1,024 tokens, so the
gate keeps reference and evaluation local and offloads DPO training to the `a100` pool; the tiny model is what
actually trains, on the CPU, in the a100 worker's own workspace. First the a100 worker is down: the offloaded
stage must fail after the configured wait with a message naming the pool and how to start a worker. Then the
worker starts, the failed run is retried (as the UI's Retry button does), and the pipeline completes with the
earlier stages reused and the adapter brought back through the storage directory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 420  # a wait that never ends is a failure, not a slow pass
OFFLOAD_WAIT_S = 20

SMALL = {
    "generate": {"train_sources": 120, "val_sources": 20, "test_sources": 30},
    "warm_start": {"steps": 30, "batch_size": 16},
    "reference": {"shard_size": 64, "max_length": 1024},
    "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2},
    "evaluate": {"bootstrap_samples": 200},
    "gpu": {"sizing_model": "qwen2.5-7b", "policy": "keep-model", "offload_pool": "a100",
            "offload_profile": "a100-80gb"},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Every process this test starts, each in its own session so its children (flow runs) stop with it."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.running[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.running.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        else:
            try:  # the leader exited; its flow-run children may not have
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop_all(self) -> None:
        for name in list(self.running)[::-1]:
            self.stop(name)

    def tail(self, name: str, chars: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy-it")
    (root / "logs").mkdir()
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_LOGGING_LEVEL": "INFO",
           # recently changed deployments are scheduled within 5 s; the full scheduler pass every 10 s
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "10",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in [k for k in env if k.startswith("FAITHFORGE_")]:
        env.pop(name)  # the machines below are configured explicitly
    procs = Processes(root / "logs")
    try:
        procs.start("server", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env, root)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert procs.running["server"].poll() is None, procs.tail("server")
            assert time.monotonic() < deadline, "server did not become healthy:\n" + procs.tail("server")
            time.sleep(0.5)
        yield {"root": root, "api": api, "env": env, "procs": procs, "storage": root / "storage",
               "workspace": root / "ws", "worker_workspace": root / "a100-ws"}
    finally:
        procs.stop_all()


def _client(api: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class _Ctx:
        def __enter__(self):
            self._settings = temporary_settings(updates={PREFECT_API_URL: api})
            self._settings.__enter__()
            self._client = get_client(sync_client=True)
            return self._client.__enter__()

        def __exit__(self, *exc):
            self._client.__exit__(*exc)
            self._settings.__exit__(*exc)

    return _Ctx()


def _wait_final(client, flow_run_id, procs: Processes):
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        run = client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            return run
        assert time.monotonic() < deadline, (f"flow run {flow_run_id} still {run.state.name} after {HANG_GUARD_S} s\n"
                                             + procs.tail("worker-local") + procs.tail("worker-a100"))
        time.sleep(2)


def _root_flow_run(client, flow_run) -> str:
    """Follow parent task runs up to the top-level flow run (how the UI nests subflows)."""
    while flow_run.parent_task_run_id is not None:
        task_run = client.read_task_run(flow_run.parent_task_run_id)
        flow_run = client.read_flow_run(task_run.flow_run_id)
    return str(flow_run.id)


def _pipeline_config(stack) -> dict:
    from faithforge.config import PipelineConfig

    data = json.loads(json.dumps(SMALL))
    data.update(workspace=str(stack["workspace"]), storage_url=str(stack["storage"]))
    data["gpu"]["offload_timeout_s"] = OFFLOAD_WAIT_S
    return PipelineConfig.model_validate(data).model_dump(mode="json")


def _start_worker(stack, pool: str, profile: str, extra: dict[str, str]) -> None:
    env = {**stack["env"], "FAITHFORGE_GPU_PROFILE": profile, **extra}
    args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--name", f"it-{pool}"]
    if pool == "a100":
        args += ["--limit", "1"]
    cwd = stack["root"] / f"cwd-{pool}"  # not the repository: entrypoints are module paths
    cwd.mkdir(exist_ok=True)
    stack["procs"].start(f"worker-{pool}", args, env, cwd)


def test_ui_run_offloads_training_fails_without_worker_and_completes_on_retry(stack):
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterKey, FlowRunFilter,
                                                FlowRunFilterParentFlowRunId, LogFilter, LogFilterFlowRunId)
    from prefect.states import AwaitingRetry
    from sqlalchemy import select

    from faithforge.store import Run, Store

    api, procs = stack["api"], stack["procs"]
    deployed = subprocess.run(
        [sys.executable, "-m", "deployments.deploy", "--project-dir", str(REPO), "--timezone", "Europe/Berlin",
         "--storage-url", str(stack["storage"]), "--pause-nightly"],
        env=stack["env"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "created global concurrency limit gpu" in deployed.stdout

    _start_worker(stack, "local", "rtx5070-12gb", {})
    with _client(api) as client:
        assert {p.name: p.type for p in client.read_work_pools()} == {"local": "process", "a100": "process"}
        assert client.read_global_concurrency_limit_by_name("gpu").limit == 1

        # --- the server holds the nightly schedule and typed parameter forms ---------------------------
        nightly = client.read_deployment_by_name("faithforge-generate/nightly-generation")
        schedule = nightly.schedules[0].schedule
        assert (schedule.cron, schedule.timezone) == ("0 2 * * *", "Europe/Berlin")
        assert nightly.work_pool_name == "local"
        gen_schema = nightly.parameter_openapi_schema["definitions"]["GenerateParameters"]["properties"]
        assert gen_schema["target"]["description"] and gen_schema["target"]["anyOf"][0]["maximum"] == 10_000_000
        assert gen_schema["backend"]["enum"] == ["ollama", "openai", "local", "template"]
        for name in ("faithforge-pipeline/local", "faithforge-reference/a100", "faithforge-train/a100",
                     "faithforge-evaluate/a100", "faithforge-train/local"):
            deployment = client.read_deployment_by_name(name)
            schema = deployment.parameter_openapi_schema
            assert "config" in schema["properties"], name
            steps = schema["definitions"]["TrainConfig"]["properties"]["steps"]
            assert steps["description"] == "Optimizer steps." and (steps["minimum"], steps["maximum"]) == (1, 1_000_000)
            policy = schema["definitions"]["GpuConfig"]["properties"]["policy"]
            assert policy["enum"] == ["stay-local", "keep-model"] and policy["description"]
            assert deployment.work_pool_name == name.split("/")[1]

        # --- run 1: the a100 worker is down; the offloaded stage gives up after the configured wait -----
        pipeline_dep = client.read_deployment_by_name("faithforge-pipeline/local")
        run = client.create_flow_run_from_deployment(pipeline_dep.id, parameters={"config": _pipeline_config(stack)})
        failed = _wait_final(client, run.id, procs)
        assert failed.state.is_failed(), (failed.state, procs.tail("worker-local"))
        message = failed.state.message or ""
        assert f"no worker of the work pool 'a100' started the offloaded run within {OFFLOAD_WAIT_S} s" in message
        assert "prefect worker start --pool a100" in message
        abandoned = [r for r in client.read_flow_runs() if r.work_pool_name == "a100"]
        assert len(abandoned) == 1 and abandoned[0].state.is_cancelled()  # it will not start later by surprise
        assert _root_flow_run(client, abandoned[0]) == str(run.id)

        # --- the worker starts; Retry (as in the UI) completes without recomputing finished stages -------
        _start_worker(stack, "a100", "a100-80gb", {"FAITHFORGE_WORKSPACE": str(stack["worker_workspace"]),
                                                   "FAITHFORGE_STORAGE_URL": str(stack["storage"])})
        client.set_flow_run_state(run.id, AwaitingRetry(message="Retry from the test, as the UI does"), force=True)
        done = _wait_final(client, run.id, procs)
        assert done.state.is_completed(), (done.state, procs.tail("worker-local"), procs.tail("worker-a100"))
        assert done.run_count == 2 and done.work_pool_name == "local"

        # the training ran as a flow run of faithforge-train/a100, nested under this pipeline run
        a100_runs = [r for r in client.read_flow_runs() if r.work_pool_name == "a100" and r.state.is_completed()]
        assert len(a100_runs) == 1
        child = a100_runs[0]
        assert client.read_deployment(child.deployment_id).name == "a100"
        assert client.read_flow(child.flow_id).name == "faithforge-train"
        assert child.parameters["offloaded"] is True
        assert child.parameters["model"]["path"].startswith("@storage/workspace/models/")
        assert _root_flow_run(client, child) == str(run.id)

        # artifacts of the run (and of the offloaded child) are visible through the API
        reports = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["hallucination-report"])))
        assert reports and any(_root_flow_run(client, client.read_flow_run(a.flow_run_id)) == str(run.id)
                               for a in reports)
        plans = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gpu-plan-train"])))
        by_placement = {("| offload |" in a.data): a for a in plans}
        assert True in by_placement and False in by_placement  # offload here, local on the A100
        assert str(by_placement[False].flow_run_id) == str(child.id)

        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(operator="or_", any_=[run.id])))
        tree_ids = [run.id, child.id] + [r.id for r in subflows]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=tree_ids)))
        messages = [entry.message for entry in logs]
        assert any("holding a slot of the 'gpu' concurrency limit for reference" in m for m in messages)

    # --- what the pipeline produced: FaithForge's own store on this machine ---------------------------
    store = Store(f"sqlite:///{stack['workspace'] / 'faithforge.db'}")
    with store.session() as session:
        runs = session.scalars(select(Run).where(Run.prefect_flow_run_id == str(run.id))
                               .order_by(Run.created_at)).all()
    assert [r.status for r in runs] == ["failed", "completed"]
    stages = runs[-1].summary["stages"]
    for reused in ("generate", "warm_start", "pairs", "reference"):
        assert stages[reused]["reused"] is True, reused  # not recomputed by the retry
    train = stages["train"]
    adapter = Path(train["path"])
    assert train["reused"] is False and train["steps"] == SMALL["train"]["steps"]
    assert adapter.is_relative_to(stack["workspace"]) and (adapter / "adapter_model.safetensors").is_file()
    # the reference cache travelled intact: at the first step the policy equals the reference (margin 0)
    history = json.loads((adapter / "history.json").read_text())
    assert history[0]["step"] == 1 and history[0]["margin"] == pytest.approx(0.0, abs=1e-3)
    # it came through the storage directory, byte for byte, from the a100 worker's workspace
    key = "workspace/" + str(adapter.relative_to(stack["workspace"]))
    from faithforge.storage import INDEX
    from faithforge.workspace import sha256_file

    index = json.loads((stack["storage"] / key / INDEX).read_text())
    published = {f["path"]: f["sha256"] for f in index["files"]}
    assert published["adapter_model.safetensors"] == sha256_file(adapter / "adapter_model.safetensors")
    assert (stack["worker_workspace"] / adapter.relative_to(stack["workspace"])).is_dir()
    assert json.loads((adapter / "faithforge.json").read_text())["path"] == str(adapter)  # relocated marker
    # ... and was evaluated here, with the fetched adapter as the evaluation's parent
    evaluation = stages["evaluate"]
    assert Path(evaluation["path"]).is_relative_to(stack["workspace"]) and evaluation["items"] == 30
    parents = store.parents(evaluation["artifact_id"])
    fetched = [p for p in parents if p.uri == str(adapter)]
    assert fetched and fetched[0].kind == "adapter" and fetched[0].meta["offloaded"] is True
    result = json.loads((stack["storage"] / "results" / f"{child.id}.json").read_text())
    assert result["outputs"]["dpo"]["path"] == "@storage/" + key

    # --- the stage events are on the server, the offloaded one says where it ran ----------------------
    deadline = time.monotonic() + 60
    while True:
        response = httpx.post(f"{api}/events/filter", json={"filter": {"event": {"name": ["faithforge.stage.completed"]}},
                                                           "limit": 50}, timeout=10)
        assert response.status_code == 200, response.text
        events = response.json()["events"]
        offloaded = [e for e in events if e["payload"].get("offloaded_to") == "a100"]
        stages = {e["payload"]["stage"] for e in events}
        # events arrive asynchronously: wait for all of them, not just the first one looked for
        if (offloaded and stages >= {"generate", "reference", "train", "evaluate"}) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert offloaded and offloaded[0]["payload"]["stage"] == "train"
    assert stages >= {"generate", "reference", "train", "evaluate"}, stages


def test_a_schedule_set_to_a_near_time_produces_a_completed_run(stack):
    """The nightly generation deployment, given a schedule a few seconds ahead, is run by the scheduler and the
    local worker to completion — what happens at 02:00, without waiting for 02:00."""
    import datetime as dt

    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import IntervalSchedule

    api, procs = stack["api"], stack["procs"]
    if "worker-local" not in procs.running:
        _start_worker(stack, "local", "rtx5070-12gb", {})
    with _client(api) as client:
        try:
            nightly = client.read_deployment_by_name("faithforge-generate/nightly-generation")
        except Exception:  # the first test did not get as far as deploying
            subprocess.run([sys.executable, "-m", "deployments.deploy", "--project-dir", str(REPO),
                            "--storage-url", str(stack["storage"]), "--pause-nightly"],
                           env=stack["env"], cwd=REPO, check=True, capture_output=True, timeout=300)
            nightly = client.read_deployment_by_name("faithforge-generate/nightly-generation")
        # Offline for the test: the template teacher instead of an Ollama server, a small target.
        params = {**nightly.parameters["params"], "backend": "template", "model": "template-teacher", "target": 12,
                  "workspace": str(stack["root"] / "nightly-ws"), "database_url": None}
        client.update_deployment(nightly.id, DeploymentUpdate(parameters={"params": params}))
        anchor = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=8)
        client.create_deployment_schedules(
            nightly.id, [(IntervalSchedule(interval=dt.timedelta(hours=1), anchor_date=anchor, timezone="UTC"), True)])
        client.resume_deployment(nightly.id)

        deadline = time.monotonic() + 240
        while True:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id])))
            scheduled = [r for r in runs if r.auto_scheduled]
            done = [r for r in scheduled if r.state is not None and r.state.is_final()]
            if done:
                break
            assert time.monotonic() < deadline, ("no scheduled nightly run finished in 240 s: "
                                                 f"{[(r.name, r.state_name) for r in runs]}\n"
                                                 + procs.tail("worker-local") + procs.tail("server"))
            time.sleep(2)
        client.pause_deployment(nightly.id)
    run = done[0]
    assert run.state.is_completed(), (run.state, procs.tail("worker-local"))
    assert run.expected_start_time >= anchor - dt.timedelta(seconds=1)
    examples = list((stack["root"] / "nightly-ws" / "datasets").rglob("*.json"))
    assert len([p for p in examples if "_quarantine" not in p.parts]) >= 12


def test_prefect_yaml_registers_the_same_deployments(stack):
    """`prefect deploy --all --prefect-file deployments/prefect.yaml` registers what deploy.py does: the same
    deployments on the same pools, the nightly cron, and typed parameter forms."""
    import yaml

    api = stack["api"]
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    expected = {f"{d['entrypoint'].rsplit('.', 1)[-1]}:{d['name']}" for d in spec["deployments"]}
    with _client(api) as client:
        for pool in ("local", "a100"):  # the first test created them; alone, this test creates them here
            try:
                client.read_work_pool(pool)
            except Exception:
                subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process"],
                               env=stack["env"], cwd=REPO, check=True, capture_output=True, timeout=120)
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file",
                           "deployments/prefect.yaml"], env=stack["env"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with _client(api) as client:
        registered = {}
        for deployment in client.read_deployments():
            flow = client.read_flow(deployment.flow_id)
            registered[f"{flow.name}/{deployment.name}"] = deployment
        nightly = registered["faithforge-generate/nightly-generation"]
        assert nightly.schedules[0].schedule.cron == "0 2 * * *" and nightly.work_pool_name == "local"
        train = registered["faithforge-train/a100"]
        assert train.work_pool_name == "a100"
        steps = train.parameter_openapi_schema["definitions"]["TrainConfig"]["properties"]["steps"]
        assert steps["minimum"] == 1 and "Optimizer steps" in steps["description"]
    assert len(expected) == len(spec["deployments"]) and len(registered) >= len(spec["deployments"])
