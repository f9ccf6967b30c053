"""Issue 29 as an operator meets it: one real Prefect server, a real process worker (planning for an RTX 5070, so
the tiny model's stages take the `gpu` slot), deployments registered the documented way, runs created through the
API, real SIGKILLs. One server for the module; the scenarios share one workspace, so after the first run every
stage up to DPO is reused and each later run reaches training in seconds.

- SIGKILL of the worker alone during DPO: the flow process notices, reports Crashed, frees the slot and exits.
- A second run waiting for the `gpu` slot says so in its Prefect log, naming the holder's flow run.
- SIGKILL of the worker and its flow process during DPO: the next run's start reconciles (Crashed, slot freed)
  and that run takes the slot without waiting on the dead one.
- Cancel during DPO: Cancelled in Prefect, `cancelled` in `faithforge runs`.
- A deployed run with `judge: nli` and no checkpoint fails with one line before any task runs (no model loads);
  `workspace: ""` is refused by the API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faithforge.core.liveness import process_alive
from tests.fixtures.small_config import SMALL_PIPELINE
from tests.fixtures.prefect_server import prefect_client, prefect_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 60  # the issue's: within 60 s Prefect shows the death, the process is gone, the slot is free
GUARD_S = 300  # a wait that never ends is a failure, not a slow pass

#: Long DPO (we stop it) with frequent checkpoints, everything before it as small as the suite's other end-to-end runs.
CONFIG = {**SMALL_PIPELINE, "generate": {"train_sources": 60, "val_sources": 10, "test_sources": 20},
          "train": {"steps": 5000, "batch_size": 4, "checkpoint_every": 20}, "control": {"sft_on_chosen": False}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with prefect_server(tmp_path_factory.mktemp("supervision-it"), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1") as server:
        stack_workers: list[subprocess.Popen] = []
        try:
            deployed = subprocess.run([sys.executable, "-m", "faithforge.deployments.deploy", "--project-dir",
                                       str(REPO), "--pause-nightly"], env=server["env"], cwd=REPO,
                                      capture_output=True, text=True, timeout=300)
            assert deployed.returncode == 0, deployed.stdout + deployed.stderr
            yield {**server, "workers": stack_workers}
        finally:
            for worker in stack_workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait(30)


def _worker(stack) -> subprocess.Popen:
    """A (new) local process worker, as the README starts it, planning for an RTX 5070 12 GB."""
    number = len(stack["workers"]) + 1
    cwd = stack["root"] / "cwd"
    cwd.mkdir(exist_ok=True)
    env = {**stack["env"], "FAITHFORGE_GPU_PROFILE": "rtx5070-12gb"}
    # not in its own session: a SIGKILL to it alone leaves its flow processes as they would be on a real machine
    log = open(stack["root"] / "logs" / f"worker-{number}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "local", "--name",
                             f"w{number}"], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    stack["workers"].append(proc)
    return proc


def _config(stack, **changes) -> dict:
    from faithforge.core.config import PipelineConfig

    data = json.loads(json.dumps(CONFIG))
    data["workspace"] = str(stack["root"] / "ws")
    for key, value in changes.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return PipelineConfig.model_validate(data).model_dump(mode="json")


def _start(client, parameters: dict):
    deployment = client.read_deployment_by_name("faithforge-pipeline/local")
    return client.create_flow_run_from_deployment(deployment.id, parameters={"config": parameters})


def _store(stack):
    from faithforge.core.store import Store

    return Store(f"sqlite:///{stack['root'] / 'ws' / 'faithforge.db'}")


def _holder_of(stack, stage: str, flow_run_id) -> dict | None:
    if not (stack["root"] / "ws" / "faithforge.db").is_file():  # the first run has not opened its workspace yet
        return None
    store = _store(stack)
    try:
        return next((h for h in store.held_slots("gpu") if h["stage"] == stage
                     and h["flow_run_id"] == str(flow_run_id) and h["alive"]), None)
    finally:
        store.engine.dispose()


def _until(what: str, check, stack, guard_s: float = GUARD_S):
    deadline = time.monotonic() + guard_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"never: {what}\n" + "".join(
            stack["procs"].tail(f"worker-{n}", 3000) for n in range(1, len(stack["workers"]) + 1))
        time.sleep(0.3)


def _training(stack, client, run) -> dict:
    """Wait until `run` holds the gpu slot for DPO and has written a checkpoint of its own (so it is inside the
    training loop, not loading); returns the hold."""

    def check():
        hold = _holder_of(stack, "train", run.id)
        return hold if hold and any(path.stat().st_mtime > hold["since"].timestamp() for path in (
            stack["root"] / "ws" / "checkpoints").glob("dpo-*/checkpoint-*")) else None

    return _until(f"{run.name} trains", check, stack)


def _flow_pid(stack, flow_run_id) -> int:
    from sqlalchemy import select

    from faithforge.core.store import Run

    store = _store(stack)
    try:
        with store.session() as s:
            return s.scalars(select(Run.pid).where(Run.prefect_flow_run_id == str(flow_run_id))).one()
    finally:
        store.engine.dispose()


def _messages(client, flow_run_id) -> list[tuple[float, str]]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return [(entry.timestamp.timestamp(), entry.message) for entry in logs]


def _reapers_of(pid: int) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if len(cmd) >= 2 and cmd[-2] == str(pid) and any(part.endswith("orphans.py") for part in cmd):
            found.append(proc.info["pid"])
    return found


def _dead_within(stack, client, run, pid: int, killed_at: float, says: str = "FaithForge: process") -> dict:
    """The issue's checks after a death, each with its measured seconds since the kill."""
    figures = {}
    state = _until(f"{run.name} is Crashed", lambda: (lambda r: r.state if r.state.is_crashed() else None)(
        client.read_flow_run(run.id)), stack, guard_s=DEADLINE_S + 30)
    figures["crashed_s"] = time.monotonic() - killed_at
    _until(f"flow process {pid} is gone", lambda: not process_alive(pid) and not _reapers_of(pid), stack,
           guard_s=DEADLINE_S + 30)
    figures["process_gone_s"] = time.monotonic() - killed_at
    _until("the gpu slot is free", lambda: client.read_global_concurrency_limit_by_name("gpu").active_slots == 0,
           stack, guard_s=DEADLINE_S + 30)
    figures["slot_free_s"] = time.monotonic() - killed_at
    assert "\n" not in (state.message or "") and says in (state.message or ""), state.message
    for name, seconds in figures.items():
        assert seconds <= DEADLINE_S, (name, figures)
    return figures


@pytest.fixture(scope="module")
def deaths(stack) -> dict:
    """The kill, wait and cancel scenario, once per module, with its checks and measured figures (the test below);
    the browser test reads the artifacts its runs made. Whatever happens, its workers are SIGKILLed at the end:
    their flow processes then end too (what the scenario tests), and no run keeps the `gpu` slot."""
    try:
        return _deaths_scenario(stack)
    finally:
        for worker in stack["workers"]:
            if worker.poll() is None:
                worker.kill()
                worker.wait(30)


def test_deaths_are_crashed_within_60_s_waits_are_named_and_a_cancel_is_cancelled(deaths):
    print("issue 29 figures:", json.dumps(deaths, default=lambda x: round(x, 1)))


def _deaths_scenario(stack) -> dict:
    from prefect.states import Cancelling

    figures: dict[str, object] = {}
    with prefect_client(stack["api"]) as client:
        # --- run A trains; run D waits for the gpu slot and says for whom ----------------------------------
        worker = _worker(stack)
        run_a = _start(client, _config(stack))
        _training(stack, client, run_a)
        run_d = _start(client, _config(stack))
        waits = _until("D says it waits for the gpu slot", lambda: [
            m for _, m in _messages(client, run_d.id) if "waiting" in m and "'gpu' concurrency limit" in m], stack)
        assert f"held by flow run {run_a.name!r} (train, for" in waits[0], waits
        waited = int(waits[0].split("waiting ", 1)[1].split(" s", 1)[0])
        assert waited <= 10, waits[0]
        figures["slot_wait_named_after_s"] = waited
        pid_a = _flow_pid(stack, run_a.id)

        # --- SIGKILL of the worker alone: its flow processes report and end --------------------------------
        os.kill(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.wait()
        figures["worker_only"] = _dead_within(stack, client, run_a, pid_a, killed,
                                              says=f"(its Prefect worker, process {worker.pid}, died); last stage: ")
        _until("D is Crashed too", lambda: client.read_flow_run(run_d.id).state.is_crashed(), stack, DEADLINE_S)
        a_subflows = [r for r in client.read_flow_runs() if r.parent_task_run_id is not None
                      and str(client.read_task_run(r.parent_task_run_id).flow_run_id) == str(run_a.id)]
        assert a_subflows and all(r.state.is_final() for r in a_subflows), [(r.name, r.state_name) for r in a_subflows]

        # --- SIGKILL of the worker and its flow process: the next start reconciles -----------------------
        worker = _worker(stack)
        run_b = _start(client, _config(stack))
        _training(stack, client, run_b)
        pid_b = _flow_pid(stack, run_b.id)
        os.kill(pid_b, signal.SIGKILL)
        os.kill(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.wait()
        worker = _worker(stack)  # the operator restarts the worker and reruns
        run_c = _start(client, _config(stack))
        figures["worker_and_flow"] = _dead_within(stack, client, run_b, pid_b, killed)
        held = _until("C holds the warm start's slot", lambda: [
            m for _, m in _messages(client, run_c.id) if "holding a slot of the 'gpu' concurrency limit for warm_start"
            in m], stack)
        assert "after waiting" not in held[0], [  # it did not wait on the dead run
            m for _, m in _messages(client, run_c.id) if "'gpu' concurrency limit" in m or "reconcil" in m]

        # --- cancel during DPO: Cancelled in Prefect, `cancelled` in `faithforge runs` -----------------------
        _training(stack, client, run_c)
        pid_c = _flow_pid(stack, run_c.id)
        client.set_flow_run_state(run_c.id, Cancelling(message="cancelled by the test, as `prefect flow-run cancel`"))
        asked = time.monotonic()
        _until("C's process ends", lambda: not process_alive(pid_c), stack, guard_s=120)
        figures["cancel_process_gone_s"] = time.monotonic() - asked
        _until("C is Cancelled", lambda: client.read_flow_run(run_c.id).state.is_cancelled(), stack, guard_s=120)
        figures["cancelled_s"] = time.monotonic() - asked
        # the worker's SIGTERM (Prefect sends it on cancel) stops the flow process within 10 s (the deadline)
        assert figures["cancel_process_gone_s"] <= 10, figures

        # --- SIGTERM to a worker whose flow is training: both stop within 10 s, and Prefect hears of it ----------
        run_e = _start(client, _config(stack))
        _training(stack, client, run_e)
        pid_e = _flow_pid(stack, run_e.id)
        worker.send_signal(signal.SIGTERM)
        asked = time.monotonic()
        worker.wait(GUARD_S)
        figures["busy_worker_sigterm_s"] = time.monotonic() - asked
        # Prefect's worker kills its flow processes outright on shutdown: the flow's reaper reports the death
        figures["sigterm"] = _dead_within(stack, client, run_e, pid_e, asked)
        assert figures["busy_worker_sigterm_s"] <= 10 and figures["sigterm"]["process_gone_s"] <= 10, figures
    listed = subprocess.run([sys.executable, "-m", "faithforge.app.cli", "runs", "-w", str(stack["root"] / "ws")],
                            env=stack["env"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    store = _store(stack)
    try:
        statuses = {r.prefect_flow_run_id: r.status for r in (store.get_run(row["id"]) for row in store.list_runs())}
    finally:
        store.engine.dispose()
    assert statuses[str(run_c.id)] == "cancelled", (statuses, listed.stdout)
    assert statuses[str(run_a.id)] == statuses[str(run_b.id)] == statuses[str(run_e.id)] == "crashed", statuses
    assert sum(" cancelled " in line for line in listed.stdout.splitlines()) == 1, listed.stdout
    return figures


def test_a_deployed_run_with_bad_input_fails_before_any_task_with_one_line(stack):
    with prefect_client(stack["api"]) as client:
        worker = _worker(stack)
        try:
            _bad_input(stack, client)
        finally:
            worker.kill()  # (a flow of it would end with it)
            worker.wait(30)


def _bad_input(stack, client) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.exceptions import PrefectHTTPStatusError

    from faithforge.deployments.deploy import ZOMBIE_AUTOMATION

    bad = _config(stack, workspace=str(stack["root"] / "ws-bad"), evaluate={"judge": "nli"})
    created = time.monotonic()
    run = _start(client, bad)
    final = _until("the bad run ends", lambda: (lambda r: r if r.state.is_final() else None)(
        client.read_flow_run(run.id)), stack, guard_s=180)
    from_creation = time.monotonic() - created  # what the operator waits: the worker's pickup and process start too
    assert final.state.is_failed(), final.state
    message = final.state.message or ""
    assert "\n" not in message and "nli" in message and "checkpoint" in message, message
    seconds = (final.end_time - final.start_time).total_seconds()
    # No bound on the seconds themselves (no timing thresholds in tests): from creation they are mostly the new
    # worker's and the flow process's Python start (0.5 s from the flow's start to Failed, 20 s from creation, on
    # CI's slower machine of 2026-12-06), which the machine sets. What FaithForge decides is tested: nothing ran.
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert not tasks, [t.name for t in tasks]  # no task ran: no stage, no model load
    logs = _settled_messages(client, run.id, stack)
    assert any("nli" in m and "checkpoint" in m for m in logs), logs
    assert not [m for m in logs if "Traceback" in m or "Engine execution exited" in m], logs
    print(f"bad input: Failed {from_creation:.1f} s after the run was created, {seconds:.1f} s after it started")
    _bad_nightly_input(stack, client)
    (zombies,) = client.read_automations_by_name(ZOMBIE_AUTOMATION)  # registered by deploy.py, enabled
    assert zombies.enabled and zombies.trigger.within.total_seconds() == 90
    # an empty workspace is refused by the API itself (the schema), before a run exists
    with pytest.raises(PrefectHTTPStatusError):
        _start(client, {**_config(stack), "workspace": ""})


def _settled_messages(client, flow_run_id, stack, quiet_s: float = 5.0) -> list[str]:
    """The run's log once it has stopped growing: the flow process logs its engine's closing lines after the final
    state (Prefect's `FailedRun` traceback came last, after a check that read the log at the final state had
    passed: an attack, 2026-12-07)."""
    seen: list[str] = []
    still_since = time.monotonic()

    def settled():
        nonlocal seen, still_since
        now = [m for _, m in _messages(client, flow_run_id)]
        if len(now) != len(seen):
            seen, still_since = now, time.monotonic()
        return seen if any("Finished in state" in m for m in seen) and time.monotonic() - still_since >= quiet_s \
            else None

    return _until("the run's log settles", settled, stack, guard_s=120)


def _bad_nightly_input(stack, client) -> None:
    """The nightly generation deployment with a spec that does not exist: one line before any task (it ran the
    planning task and failed there with a traceback: an attack, 2026-12-07)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deployment = client.read_deployment_by_name("faithforge-generate/nightly-generation")
    params = {**deployment.parameters["params"], "spec": str(stack["root"] / "no-such-spec.yaml"),
              "workspace": str(stack["root"] / "ws-nightly")}
    run = client.create_flow_run_from_deployment(deployment.id, parameters={"params": params})
    final = _until("the bad nightly run ends", lambda: (lambda r: r if r.state.is_final() else None)(
        client.read_flow_run(run.id)), stack, guard_s=180)
    assert final.state.is_failed() and "no-such-spec.yaml" in (final.state.message or ""), final.state
    assert "\n" not in final.state.message
    assert not client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    logs = _settled_messages(client, run.id, stack)
    assert not [m for m in logs if "Traceback" in m or "Engine execution exited" in m], logs


def test_the_artifacts_page_lists_faithforges_artifacts(stack, deaths, tmp_path):
    """Issue 29, item 5: the UI's /artifacts page said "17 Artifacts" over an empty grid. Headless Chromium (over
    the DevTools protocol) against this server's UI, after the scenario's runs made their gate and progress
    artifacts: the page lists them by key. The screenshot is the evidence (its path is printed)."""
    from tests.fixtures.cdp_browser import Browser, find_chromium

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium)")
    with prefect_client(stack["api"]) as client:  # the scenario's runs made them
        keys = sorted({a.key for a in client.read_artifacts() if a.key})
    assert "gpu-plan-warm-start" in keys, keys
    shots = tmp_path / "screenshots"
    with Browser(chromium, tmp_path / "chromium-profile") as browser:
        browser.goto(f"{stack['ui']}/artifacts")
        browser.wait_for("!!document.body && document.body.innerText.includes('gpu-plan-warm-start')", 120,
                         "the artifacts grid")
        text = browser.evaluate("document.body.innerText")
        shot = browser.screenshot(shots / "artifacts-page.png", full_page=True)
    listed = [key for key in keys if key in text]
    assert "gpu-plan-warm-start" in listed and len(listed) >= min(len(keys), 5), (listed, keys, text[:1500])
    assert shot.stat().st_size > 10_000 and shot.read_bytes().startswith(b"\x89PNG")
    print(f"artifacts page screenshot: {shot} ({len(listed)} of {len(keys)} keys listed)")
