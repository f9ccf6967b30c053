"""Issue 29, the plain-Python half: children die with their parent (real processes, real SIGKILL), what Prefect is
told about a dead run, what a waiting run says, the run store's slot holds, and a lock wait said again while
waiting. The Prefect half (a real server and process workers) is tests/tasks/test_supervision_integration.py."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from faithforge.core.liveness import process_alive
from faithforge.core.reconcile import decide, death_message, slot_wait_message

REPO = Path(__file__).resolve().parents[2]
GUARD_S = 60  # a death that is never noticed is a failure, not a slow pass


def _python(code: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


@pytest.fixture(scope="module")
def slot_server(tmp_path_factory):
    """One real Prefect server for this file's slot tests (each uses its own limits): a start is ~8 CPU-s."""
    from tests.fixtures.prefect_server import prefect_server

    with prefect_server(tmp_path_factory.mktemp("slot-server")) as server:
        yield server


def _wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + GUARD_S
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not process_alive(pid)


def test_a_process_watching_its_parent_ends_when_the_parent_is_sigkilled(tmp_path):
    """What a flow process does when its worker dies: `watch_parent` calls back with the dead parent's pid."""
    marker = tmp_path / "noticed"
    parent = _python(f"""
        import subprocess, sys, textwrap
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent('''
            import os, time
            from faithforge.core.orphans import watch_parent
            def died(parent):
                open({str(marker)!r}, "w").write(str(parent))
                os._exit(3)
            watch_parent(died, poll_s=0.1)
            print(os.getpid(), flush=True)
            time.sleep(600)
        ''')], stdout=sys.stdout)
        child.wait()
    """)
    child_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert _wait_gone(child_pid)
    assert marker.read_text() == str(parent.pid)


def test_the_reaper_stops_the_children_of_a_sigkilled_process():
    """What `faithforge demo` does for Prefect's embedded server: the reaper outlives its SIGKILLed parent and
    stops the children that parent started (here a sleeping grandchild too)."""
    main = _python("""
        import os, subprocess, sys, time
        from faithforge.core.orphans import start_reaper
        start_reaper()
        child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                                  "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                                  "print(g.pid, flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
        grandchild = child.stdout.readline().strip()
        print(child.pid, grandchild, flush=True)
        time.sleep(600)
    """)
    child, grandchild = (int(p) for p in main.stdout.readline().split())
    time.sleep(1.5)  # the reaper's first look at the process tree (it looks every 0.5 s)
    os.kill(main.pid, signal.SIGKILL)
    main.wait()
    assert _wait_gone(child) and _wait_gone(grandchild)


def test_the_reaper_runs_its_after_death_command_only_after_an_unclean_death(tmp_path):
    """How a SIGKILLed flow process still gets its death reported: its reaper runs a command (in the flow, the
    reconciliation) once it is gone — unless it exited normally and said so."""
    for kill in (True, False):
        said = tmp_path / f"reported-{kill}"
        main = _python(f"""
            import sys, time
            from faithforge.core.orphans import exited_cleanly, start_reaper
            start_reaper(after_death=[sys.executable, "-c", "open({str(said)!r}, 'w')"])
            print("ready", flush=True)
            if {not kill}:
                exited_cleanly()
                sys.exit(0)
            time.sleep(600)
        """)
        assert main.stdout.readline().strip() == "ready"
        if kill:
            os.kill(main.pid, signal.SIGKILL)
        main.wait()
        if kill:
            deadline = time.monotonic() + GUARD_S
            while not said.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert said.exists(), "the reaper did not run its command after the SIGKILL"
        else:
            time.sleep(2.0)  # the reaper's look (every 0.5 s) and its command's start: nothing may come
            assert not said.exists(), "the reaper ran its command after a clean exit"


@pytest.mark.slow
def test_sigkill_of_the_demo_leaves_no_embedded_prefect_server(tmp_path):
    """Issue 25's leftover: SIGKILL of `faithforge demo`'s main process left Prefect's embedded server (a
    `uvicorn ... prefect.server` child) running."""
    import psutil

    from tests.fixtures.prefect_db import migrated_database

    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "TQDM_DISABLE": "1"}
    env.pop("PREFECT_API_URL", None)
    migrated_database(tmp_path / "prefect-home" / "prefect.db")
    demo = subprocess.Popen([sys.executable, "-m", "faithforge.app.cli", "demo", "-w", str(tmp_path / "ws")],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    server = None
    deadline = time.monotonic() + 180
    while server is None and time.monotonic() < deadline and demo.poll() is None:
        for proc in psutil.Process(demo.pid).children(recursive=True):
            try:
                if "prefect.server" in " ".join(proc.cmdline()):
                    server = proc
            except psutil.Error:
                continue
        time.sleep(0.2)
    assert server is not None, "the demo never started Prefect's embedded server"
    time.sleep(1.0)  # the reaper's next look at the process tree
    demo.kill()
    demo.wait()
    assert _wait_gone(server.pid), f"Prefect's embedded server {server.pid} outlived the demo"


def test_what_prefect_is_told_about_a_run_whose_process_is_gone():
    assert decide("RUNNING") == ("CRASHED", "crashed")
    assert decide("PENDING") == ("CRASHED", "crashed")
    assert decide("CANCELLING") == ("CANCELLED", "cancelled")  # the stuck cancel of issue 29
    assert decide("CANCELLED") == (None, "cancelled")
    for final in ("COMPLETED", "FAILED", "CRASHED"):
        assert decide(final) == (None, "crashed")
    line = death_message(123, "vm", "train (planned)", "killed or crashed")
    assert "\n" not in line and "process 123 on vm" in line and "last stage: train (planned)" in line


def test_a_slot_wait_names_the_holders_flow_run_stage_and_how_long():
    now = dt.datetime(2026, 12, 4, 12, 0, 0, tzinfo=dt.timezone.utc)
    holders = [{"flow_run_name": "calm-fox", "stage": "train", "since": now - dt.timedelta(seconds=135),
                "alive": True}]
    line = slot_wait_message("gpu", "warm_start", holders, 6.4, now)
    assert line == ("warm_start: waiting 6 s for a slot of the 'gpu' concurrency limit, held by flow run "
                    "'calm-fox' (train, for 2 min 15 s)")
    dead = [{**holders[0], "alive": False}]
    assert "its process is gone" in slot_wait_message("gpu", "train", dead, 3, now)
    assert "prefect gcl inspect gpu" in slot_wait_message("gpu", "train", [], 3, now)
    busy = "503 Service Unavailable"
    assert slot_wait_message("gpu", "train", holders, 3, now, busy=busy).endswith(
        "(train, for 2 min 15 s); the Prefect server did not answer the last request (503 Service Unavailable); "
        "asking again")
    assert slot_wait_message("gpu", "train", [], 3, now, busy=busy) == (
        "train: waiting 3 s for a slot of the 'gpu' concurrency limit: the Prefect server did not answer the last "
        "request (503 Service Unavailable); asking again")


def test_slot_holds_are_recorded_released_and_a_dead_holder_is_seen(tmp_path):
    from faithforge.core.store import SlotHold, Store

    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    run = store.start_run("pipeline", {}, prefect_flow_run_id="f-1")
    hold = store.hold_slot(run, "gpu", "lease-1", "train", flow_run_id="f-1", flow_run_name="calm-fox")
    (held,) = store.held_slots("gpu")
    assert (held["limit_name"], held["lease_id"], held["flow_run_name"], held["alive"]) == (
        "gpu", "lease-1", "calm-fox", True)
    assert store.held_slots("other") == []
    with store.session() as s:  # the holder's process is gone: a pid no process has
        s.get(SlotHold, hold).pid = 2 ** 22 + 17
    assert store.held_slots()[0]["alive"] is False
    store.release_slot(hold)
    assert store.held_slots() == []


def test_runs_to_reconcile_are_the_dead_ones_not_yet_told_to_prefect(tmp_path):
    from faithforge.core.store import Run, Store

    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    alive = store.start_run("pipeline", {}, prefect_flow_run_id="f-alive")
    dead = store.start_run("pipeline", {}, prefect_flow_run_id="f-dead")
    store.start_run("pipeline", {})  # no flow run: nothing to tell Prefect
    with store.session() as s:
        s.get(Run, dead).pid = 2 ** 22 + 17
    store.mark_crashed_runs()
    assert [r["id"] for r in store.runs_to_reconcile()] == [dead]
    store.reconciled(dead, "cancelled", "CANCELLED")
    assert store.runs_to_reconcile() == [] and store.get_run(dead).status == "cancelled"
    assert store.get_run(alive).status == "running"
    assert store.crash_runs_of_this_process("its Prefect worker, process 1, died")
    assert store.get_run(alive).summary["crashed"]["message"] == "its Prefect worker, process 1, died"


def test_a_lock_wait_is_said_again_while_waiting(tmp_path):
    """Issue 29: the wait line came once, in the worker's stdout. It is now repeated (with how long) while the
    other run holds the lock, so a progress artifact shows a live wait."""
    from faithforge.core.locks import output_lock

    target = tmp_path / "out"
    said: list[str] = []
    released = threading.Event()

    def holder():
        with output_lock(target, "train"):
            released.wait(GUARD_S)

    thread = threading.Thread(target=holder)
    thread.start()
    time.sleep(0.3)

    def on_wait(line: str) -> None:
        said.append(line)
        if len(said) == 3:
            released.set()

    with output_lock(target, "train", on_wait=on_wait, report_s=0.05):
        pass
    thread.join()
    assert len(said) >= 3 and "waiting for process" in said[0] and "(waited" in said[2], said


def test_a_dying_process_releases_a_slot_it_was_granted_before_the_store_recorded_it(slot_server, monkeypatch):
    """The race the supervision integration test hit (the slot freed only when its lease ran out, 61 s): a run
    waiting for the `gpu` slot is granted it while its worker's death is being reported. The grant is registered
    the moment the server makes it, so the dying process releases it; and once dying, it asks for no slot.
    A real Prefect server and its real global concurrency limit."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    import faithforge.tasks.supervision as supervision
    from tests.fixtures.prefect_server import prefect_client

    monkeypatch.setattr(supervision, "_dying", threading.Event())  # this test's process is not really dying
    monkeypatch.setattr(supervision, "_leases", set())
    with prefect_client(slot_server["api"]) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu", limit=1))
        active = lambda: client.read_global_concurrency_limit_by_name("gpu").active_slots  # noqa: E731
        lease = supervision._try_slot(client, "gpu", None)  # granted; the run store has not recorded it
        assert lease is not None and active() == 1
        assert supervision._try_slot(client, "gpu", None) is None  # full: nothing granted, nothing registered
        assert supervision.stop_taking_slots(client) == [lease]
        assert active() == 0  # released at once, not when the 60 s lease runs out

        # A request still out when dying began (stop_taking_slots waits 10 s at most) releases its own grant.
        supervision._dying.clear()
        increment = client.increment_concurrency_slots_with_lease

        def answered_after_dying_began(*args, **kwargs):
            response = increment(*args, **kwargs)
            supervision._dying.set()
            return response

        monkeypatch.setattr(client, "increment_concurrency_slots_with_lease", answered_after_dying_began)
        assert supervision._try_slot(client, "gpu", None) is None and active() == 0 and not supervision._leases
        monkeypatch.setattr(client, "increment_concurrency_slots_with_lease", increment)

        # One release that fails (Prefect unreachable for it) does not keep the others.
        supervision._dying.clear()
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="pool", limit=2))
        pool = lambda: client.read_global_concurrency_limit_by_name("pool").active_slots  # noqa: E731
        leases = [supervision._try_slot(client, "pool", None) for _ in range(2)]
        assert None not in leases and pool() == 2
        release = client.release_concurrency_slots_with_lease

        def unreachable_for_the_first(lease_id):
            if str(lease_id) == min(leases):
                raise ConnectionError("connection refused")
            return release(lease_id)

        monkeypatch.setattr(client, "release_concurrency_slots_with_lease", unreachable_for_the_first)
        assert supervision.stop_taking_slots(client) == [max(leases)]
        assert pool() == 1 and supervision._leases == {min(leases)}  # kept, so a later try can still release it
        monkeypatch.setattr(client, "release_concurrency_slots_with_lease", release)
        assert supervision.stop_taking_slots(client) == [min(leases)] and pool() == 0
        asked = []
        monkeypatch.setattr(client, "increment_concurrency_slots_with_lease", lambda *a, **k: asked.append(a))
        assert supervision._try_slot(client, "gpu", None) is None and asked == []  # dying: no request at all


def test_a_slot_wait_is_said_at_once_while_the_prefect_servers_database_is_locked(slot_server, tmp_path,
                                                                                   monkeypatch):
    """CI's failure (stop 46): the Prefect server's SQLite database was locked, the server answered 503, Prefect's
    client backed off 2, 4, 8, 16 and 32 s on its own, and the waiting run's first wait line came after 65 s. Now
    each request is sent once and the wait loop asks again every 2 s: quietly while no holder is known (a short
    busy spell is no wait for another run), saying at once who holds the slot when one is; when the database is
    free again and the holder lets go, the slot is taken. A real Prefect server whose real
    database this test locks (`BEGIN EXCLUSIVE`), and a real run store naming the holder."""
    import sqlite3

    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import faithforge.tasks.supervision as supervision
    from faithforge.core.store import Store
    from tests.fixtures.prefect_server import prefect_client

    monkeypatch.setattr(supervision, "_dying", threading.Event())
    monkeypatch.setattr(supervision, "_leases", set())
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = Store(url)
    server = slot_server
    with prefect_client(server["api"]) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu-busy", limit=1))
        said: list[tuple[float, str]] = []
        outcome: list[object] = []

        def waiting_run() -> None:
            try:
                with temporary_settings(updates={PREFECT_API_URL: server["api"]}), \
                        supervision.held_slot("gpu-busy", "warm_start", url, None, say=lambda line: said.append(
                            (time.monotonic(), line))):
                    outcome.append("held")
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                outcome.append(exc)

        def lock() -> sqlite3.Connection:
            locked = sqlite3.connect(server["root"] / "prefect-home" / "prefect.db", isolation_level=None,
                                     check_same_thread=False)
            locked.execute("BEGIN EXCLUSIVE")  # every write the server tries now fails: it answers 503
            return locked

        busy_answers: list[str] = []
        ask = supervision._try_slot

        def counted(*args):
            try:
                return ask(*args)
            except supervision.ServerBusy as exc:
                busy_answers.append(str(exc))
                raise

        monkeypatch.setattr(supervision, "_try_slot", counted)
        # A short busy spell with no holder known: asked again quietly, then granted, no wait said.
        locked = lock()
        thread = threading.Thread(target=waiting_run, daemon=True)
        thread.start()
        time.sleep(3)
        locked.execute("COMMIT")
        locked.close()
        thread.join(60)
        assert busy_answers and set(busy_answers) == {"503 Service Unavailable"}, busy_answers
        assert outcome == ["held"] and [line for _, line in said] == [
            "holding a slot of the 'gpu-busy' concurrency limit for warm_start"], (outcome, said)
        said.clear()
        outcome.clear()

        # Busy while another run holds the slot: the wait and its holder are said at once.
        other = ask(client, "gpu-busy", None)
        hold = store.hold_slot(store.start_run("pipeline", {}), "gpu-busy", other, "train", flow_run_name="calm-fox")
        locked = lock()
        entered = time.monotonic()
        thread = threading.Thread(target=waiting_run, daemon=True)
        thread.start()
        deadline = entered + 30
        while not said and time.monotonic() < deadline:
            time.sleep(0.1)
        first_after_s = said[0][0] - entered if said else None
        time.sleep(max(0.0, entered + 6 - time.monotonic()))  # a few more busy answers: none may fail the wait
        locked.execute("COMMIT")
        locked.close()
        assert first_after_s is not None and first_after_s <= 5, (first_after_s, said)
        line = said[0][1]
        assert line.startswith("warm_start: waiting ") and "held by flow run 'calm-fox' (train, for" in line, line
        assert "the Prefect server did not answer the last request (503 Service Unavailable)" in line, line
        assert thread.is_alive() and not outcome, outcome  # still waiting: the slot is held
        supervision.release_lease(client, other)
        store.release_slot(hold)
        thread.join(60)
        assert outcome == ["held"], (outcome, said)
        assert said[-1][1].startswith("holding a slot of the 'gpu-busy' concurrency limit for warm_start (after waiting")
        assert client.read_global_concurrency_limit_by_name("gpu-busy").active_slots == 0  # released on the way out
    store.engine.dispose()


def test_a_slot_wait_on_a_prefect_server_that_never_answers_ends_with_one_line(tmp_path, monkeypatch):
    """Nothing listens where PREFECT_API_URL points: after `BUSY_QUIET_S` the wait says so while it asks again, and
    after `NO_ANSWER_MAX_S` (both shortened here) fails with one line that says what to check."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import faithforge.tasks.supervision as supervision
    from faithforge.core.errors import UserError
    from tests.fixtures.processes import free_port

    monkeypatch.setattr(supervision, "_dying", threading.Event())
    monkeypatch.setattr(supervision, "BUSY_QUIET_S", 0.5)
    monkeypatch.setattr(supervision, "NO_ANSWER_MAX_S", 3.0)
    monkeypatch.setattr(supervision, "SLOT_POLL_S", 0.2)
    said: list[str] = []
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}), \
            pytest.raises(UserError) as failed:
        with supervision.held_slot("gpu", "train", f"sqlite:///{tmp_path / 'runs.db'}", None, say=said.append):
            pass
    message = str(failed.value)
    assert "\n" not in message and "has not answered a request for a slot of the 'gpu' concurrency limit for 3 s" \
        in message and "prefect server start" in message, message
    assert said and said[0].startswith("train: waiting ") and said[0].split(" s for", 1)[1].startswith(
        " a slot of the 'gpu' concurrency limit: the Prefect server did not answer the last request (no connection"), \
        said


def test_a_run_a_worker_started_holds_the_workspace_so_fresh_refuses_until_it_ends(tmp_path):
    """A flow run a worker starts is its own process: `begin_flow_run` holds the workspace's run lock (shared) till
    it exits, so a `--fresh` elsewhere refuses between its stages too (it used to see only output locks, held
    while a stage computes)."""
    from faithforge.core.errors import UserError
    from faithforge.core.locks import sole_user
    from faithforge.core.workspace import DERIVED_DIRS, Workspace

    root = Workspace.open(tmp_path / "W").root
    run = _python(f"""
        import os, time
        os.environ["PREFECT__FLOW_RUN_ID"] = "00000000-0000-0000-0000-000000000001"  # as a worker sets it
        from faithforge.core.config import PipelineConfig
        from faithforge.tasks.supervision import begin_flow_run
        assert begin_flow_run(PipelineConfig(workspace={str(root)!r})) is None
        print("running", flush=True)
        time.sleep(120)
        """)
    try:
        assert run.stdout.readline().strip() == "running"
        with pytest.raises(UserError, match="another FaithForge run is using"):
            with sole_user(root, DERIVED_DIRS):
                pass
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the run and its reaper
        run.wait()
    with sole_user(root, DERIVED_DIRS):  # its process gone, the kernel dropped the lock
        pass


def test_the_engines_closing_traceback_is_left_out_only_for_a_failure_already_said_in_one_line(monkeypatch):
    """Prefect's engine logs "Engine execution exited with unexpected exception" with a traceback after any
    Failed flow run: `FailedRun` for a state without data, the state's own exception otherwise (a generation run
    that stored nothing). Once FaithForge has said the failure in one line (`reported_failure`), that record is
    dropped; any other failure keeps its traceback (an attack and a review, 2026-12-07)."""
    import logging
    import sys

    from prefect.exceptions import FailedRun

    from faithforge.tasks import supervision

    monkeypatch.setattr(supervision, "_reported", [])
    logger = logging.getLogger("prefect.flow_runs")
    monkeypatch.setattr(logger, "filters", [])

    def record(error: BaseException) -> logging.LogRecord:
        try:
            raise error
        except BaseException:
            return logger.makeRecord(logger.name, logging.ERROR, __file__, 1,
                                     "Engine execution exited with unexpected exception", (), sys.exc_info())

    class GenerationFailed(Exception):
        pass

    state = supervision.reported_failure("nothing stored: 4 answers had no JSON", data=GenerationFailed(
        "nothing stored: 4 answers had no JSON"))
    assert state.is_failed() and state.message == "nothing stored: 4 answers had no JSON"
    assert not logger.filter(record(GenerationFailed("nothing stored: 4 answers had no JSON")))
    assert not logger.filter(record(FailedRun("Run failed")))
    assert logger.filter(record(RuntimeError("a bug: keep its traceback")))
