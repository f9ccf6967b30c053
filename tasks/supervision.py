"""A flow run's processes die with it, and Prefect learns of every death (issue 29). Prefect glue only: the
decisions are `faithforge.core.reconcile` (plain Python), the process watching `faithforge.core.orphans`.

- `begin_flow_run` (first thing in a flow run a worker started): watch the worker, so this process reports
  Crashed, frees its `gpu` slot and exits when the worker dies (instead of training on unsupervised and dying
  later on a BrokenPipeError); run the CLI's preflight, so bad input fails in seconds with one line; reconcile.
- `reconcile`: runs on this host whose process is gone are set Crashed in Prefect (a stuck Cancelling one is
  finished as Cancelled), with where they stopped, and their `gpu` slots are released.
- `gpu_slot`: a slot of the `gpu` global concurrency limit, waited for with a log line (and the progress
  artifact) that names the holder's flow run and for how long, re-said while waiting; held under a short lease.
- `cancel_requested`: whether Prefect is cancelling this flow run (so the run store says `cancelled`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from faithforge.core.config import PipelineConfig
from faithforge.core.errors import USER_ERRORS, UserError
from faithforge.core.reconcile import death_message, decide, slot_wait_message

log = logging.getLogger(__name__)

#: Lease of a `gpu` slot, seconds. Prefect renews it at 3/4 of this while the holder lives; a holder that dies
#: without releasing (SIGKILL, a lost machine) loses the slot when the lease runs out and Prefect's repossessor
#: next runs (every 15 s). Prefect's default is 300 s: the next run then waited minutes in silence (issue 29).
GPU_LEASE_S = 60.0
#: A waiting run asks for the slot again this often, seconds.
SLOT_POLL_S = 2.0
#: The wait line comes at the first refusal, then again this often with how long, seconds.
SLOT_REPORT_S = 30.0
#: A busy answer (503) when the run store knows no holder is asked again quietly this long, seconds: a Prefect
#: server on SQLite under load answers 503 now and then (2 of 8 requests for a slot in one suite run), and a line
#: saying so each time would read as a wait for another run. With a holder known, the wait is said at once.
BUSY_QUIET_S = 10.0
#: A Prefect server that answers no request for a slot this long (503s, refused connections) fails the stage,
#: seconds. Prefect's own client gave up after 6 tries, about 62 s; a busy SQLite server can take longer.
NO_ANSWER_MAX_S = 300.0

_watching = False
#: Leases this process was granted, from the moment the server grants them (before the run store records them):
#: a dying process releases them all. A run waiting for the slot died with its worker holding a slot it was granted
#: while its death was being reported, unrecorded, so nobody released it and the next run waited for the lease
#: to run out (61 s; the supervision integration test).
_leases: set[str] = set()
#: Set when this process is dying: no slot is asked for any more. `_slot_lock` makes ask-and-record one step, so
#: the dying process, once it holds the lock, knows every lease there will ever be.
_dying = threading.Event()
_slot_lock = threading.Lock()


def started_by_worker() -> bool:
    """A flow run a worker (or `serve`) started in its own process: Prefect sets PREFECT__FLOW_RUN_ID for it."""
    return bool(os.environ.get("PREFECT__FLOW_RUN_ID"))


def store_url(config: PipelineConfig) -> str:
    from faithforge.core.workspace import Workspace

    return config.database_url or Workspace(Path(config.workspace).expanduser().resolve()).database_url


def begin_flow_run(config: PipelineConfig) -> Optional[str]:
    """The start of a pipeline (or top-level stage) flow run on a worker: watch the worker, check the inputs, hold
    the workspace's run lock (shared) for the run's life, reconcile the dead. Returns the one-line problem with the
    inputs, or None. In the CLI (`faithforge demo`) it does nothing: the CLI ran the same checks before Prefect
    started, holds the run lock itself and stops its own children."""
    if not started_by_worker():
        return None
    watch_worker(config)
    from faithforge.stages.preflight import check_pipeline_inputs

    try:
        workspace = check_pipeline_inputs(config)
    except USER_ERRORS as exc:
        return str(exc)
    from faithforge.core.locks import hold_workspace

    # This process is this one flow run (a worker or `serve` starts each in its own), so the run lock held till
    # it exits covers the run between stages too: a `--fresh` elsewhere refuses instead of deleting its inputs.
    hold_workspace(workspace.root)
    with contextlib.suppress(Exception):  # reconciling others must never stop this run
        reconcile(store_url(config))
    return None


def begin_generation_run(params: Any) -> Optional[str]:
    """The start of a generation flow run a worker started (the nightly deployment): the CLI's checks of its
    parameters (`job.validate`: the spec, the backend's URL, the workspace), so a missing spec fails in one line
    before a task runs; it ran the planning task and failed there with a traceback (an attack, 2026-12-07).
    Returns the one-line problem, or None. In the CLI, and as the pipeline's subflow, the caller checked already."""
    if not started_by_worker():
        return None
    from prefect.runtime import flow_run

    if flow_run.parent_flow_run_id:  # the pipeline's subflow: the pipeline's own preflight checked its config
        return None
    from faithforge.generation import job

    try:
        job.validate(params)
    except USER_ERRORS as exc:
        return str(exc)
    return None


class _ReportedFailureFilter(logging.Filter):
    """Drops the record Prefect's engine logs after a flow returned a Failed state ("Engine execution exited with
    unexpected exception" with the `FailedRun` traceback), once this process has logged the failure in one line
    itself (`reported_failure`). Bad input is not a bug: its log is the one line, as the CLI's is."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.exceptions import FailedRun

        error = record.exc_info[1] if record.exc_info else None
        # FailedRun for a Failed state without data; the state's own exception (a generation run that stored
        # nothing returns its `GenerationFailed`) when it has one: either way the line it says was logged already
        return not (_reported and (isinstance(error, FailedRun) or str(error) in _reported)
                    and str(record.msg).startswith("Engine execution exited with unexpected exception"))


_reported: list[str] = []


def reported_failure(problem: str, data: Any = None):
    """Log `problem` as the run's one line and return the Failed state the flow ends with (bad input, a run that
    stored nothing). This process is that one flow run, so its engine's closing `FailedRun` traceback is left out
    of the run's log (`_ReportedFailureFilter` on Prefect's flow-run logger)."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError
    from prefect.states import Failed

    try:
        get_run_logger().error(problem)
    except MissingContextError:  # called outside a flow run: this module's log says it
        log.error(problem)

    if not _reported:
        logging.getLogger("prefect.flow_runs").addFilter(_ReportedFailureFilter())
    _reported.append(problem)
    return Failed(message=problem, data=data)


# -- the worker's death -----------------------------------------------------------------------------------

def watch_worker(config: PipelineConfig) -> None:
    """Once per process: end this flow process when its parent (the worker) dies, and stop this process's own
    children if it is itself killed."""
    global _watching
    if _watching:
        return
    _watching = True
    import atexit
    import sys

    from faithforge.core.orphans import exited_cleanly, start_reaper, watch_parent

    # Killed without warning (SIGKILL; a worker's shutdown kills its flow processes outright), this process cannot
    # report its own death: its reaper then runs `python -m faithforge.tasks.supervision DATABASE_URL`, which reconciles it.
    start_reaper(after_death=[sys.executable, "-m", "faithforge.tasks.supervision", store_url(config)])
    atexit.register(exited_cleanly)
    watch_parent(lambda parent: worker_died(config, parent))


def worker_died(config: PipelineConfig, parent: int) -> None:
    """This flow process lost its worker: tell the run store and Prefect, free the slots, stop, exit."""
    import socket

    from faithforge.core.orphans import descendants, terminate

    with contextlib.suppress(OSError):  # the dead worker's pipe: nothing more goes there (no BrokenPipeError)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    _dying.set()  # first: from here on this process asks for no slot
    cause = f"its Prefect worker, process {parent}, died"
    last = None
    # Each step on its own: one that fails (Prefect unreachable, say) must not skip the others. Whatever is left,
    # the next start reconciles.
    with contextlib.suppress(Exception):
        from faithforge.core.store import Store

        store = Store(store_url(config))
        try:
            for hold in store.held_slots():  # the run store's own records first: they need no Prefect
                if hold["pid"] == os.getpid() and hold["alive"]:
                    store.release_slot(hold["id"])
            runs = store.crash_runs_of_this_process(cause)
            last = store.get_run(runs[0]).summary.get("crashed", {}).get("last_stage") if runs else None
        finally:
            store.engine.dispose()
    with contextlib.suppress(Exception), _client() as client:
        stop_taking_slots(client)  # every lease this process was granted, recorded in the run store or not
    with contextlib.suppress(Exception), _client() as client:
        message = death_message(os.getpid(), socket.gethostname(), last, cause)
        end_flow_run_tree(client, os.environ["PREFECT__FLOW_RUN_ID"], message)
    terminate(descendants(os.getpid()), grace_s=2.0)  # its reaper too: this death is reported already
    os._exit(1)


# -- reconciling Prefect with what is alive ---------------------------------------------------------------

@contextlib.contextmanager
def _client() -> Iterator[Any]:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        yield client


def release_lease(client, lease_id: str) -> None:
    from prefect.exceptions import ObjectNotFound

    with contextlib.suppress(ObjectNotFound):
        client.release_concurrency_slots_with_lease(lease_id)
    _leases.discard(lease_id)


def stop_taking_slots(client, wait_s: float = 10.0) -> list[str]:
    """This process is dying: ask for no slot from now on, and release every lease it was granted, recorded in the
    run store or not. Waits up to `wait_s` for a request already in flight to come back (one that comes back later
    releases its own grant: `_try_slot`). Each lease is released on its own, so one failure skips none of the others.
    Returns the leases released."""
    _dying.set()
    locked = _slot_lock.acquire(timeout=wait_s)
    try:
        released = []
        for lease_id in sorted(_leases):
            with contextlib.suppress(Exception):
                release_lease(client, lease_id)
                released.append(lease_id)
        return released
    finally:
        if locked:
            _slot_lock.release()


def end_flow_run_tree(client, flow_run_id: str, message: str) -> list[tuple[str, str]]:
    """Set the flow run and its subflow runs that are still under way Crashed (Cancelled, when the run was being
    cancelled). Returns (flow run name, new state) for each state set."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.states import Cancelled, Crashed

    root = client.read_flow_run(flow_run_id)
    root_new, _ = decide(root.state_type.value if root.state_type else None)
    changed = []
    frontier, seen = [root], set()
    while frontier:
        run = frontier.pop()
        if run.id in seen:
            continue
        seen.add(run.id)
        new, _ = decide(run.state_type.value if run.state_type else None)
        if root_new == "CANCELLED" and new is not None:
            new = "CANCELLED"  # a cancelled run's subflows are cancelled, not crashed
        if new is not None:
            state = Cancelled(message=message) if new == "CANCELLED" else Crashed(message=message)
            client.set_flow_run_state(run.id, state, force=True)
            changed.append((run.name, new))
        frontier += client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(operator="or_", any_=[run.id])))
    return changed


def reconcile(database_url: str, say: Callable[[str], None] | None = None) -> list[str]:
    """Runs of this host's run store whose process is gone: Prefect is told (Crashed, or Cancelled for a stuck
    Cancelling run), the store follows Prefect (`cancelled` / `crashed`), and the `gpu` slots of dead processes
    are released. Returns one line per run reconciled."""
    from prefect.exceptions import ObjectNotFound

    from faithforge.core.store import Store

    say = say or _say
    store = Store(database_url)
    try:
        store.mark_crashed_runs()
        dead_holds = [h for h in store.held_slots() if h["alive"] is False]
        dead_runs = store.runs_to_reconcile()
        if not dead_holds and not dead_runs:
            return []
        lines = []
        with _client() as client:
            for hold in dead_holds:
                release_lease(client, hold["lease_id"])
                store.release_slot(hold["id"])
                lines.append(f"released the {hold['limit_name']!r} slot of flow run {hold['flow_run_name']!r} "
                             f"({hold['stage']}): its process {hold['pid']} is gone")
            for run in dead_runs:
                try:
                    flow_run = client.read_flow_run(run["prefect_flow_run_id"])
                except ObjectNotFound:
                    store.reconciled(run["id"], run["status"], "not on this Prefect server")
                    continue
                state = flow_run.state_type.value if flow_run.state_type else None
                _, status = decide(state)
                message = death_message(run["pid"], run["host"], run["last_stage"], "killed or crashed")
                changed = end_flow_run_tree(client, str(flow_run.id), message)
                store.reconciled(run["id"], status, changed[0][1] if changed else str(state))
                if changed:
                    lines.append(f"flow run {flow_run.name!r} was {state} but its process {run['pid']} is gone: set "
                                 + ", ".join(f"{name} {new}" for name, new in changed))
        for line in lines:
            say(line)
        return lines
    finally:
        store.engine.dispose()


def _say(line: str) -> None:
    try:
        from prefect import get_run_logger

        get_run_logger().warning(line)
    except Exception:  # noqa: BLE001 - outside a run: the module's logger
        log.warning(line)


def cancel_requested() -> bool:
    """Whether Prefect is cancelling (or cancelled) this flow run: a stop then is `cancelled`, not `failed`."""
    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not flow_run_id:
        from prefect.runtime import flow_run

        flow_run_id = flow_run.id
    if not flow_run_id:
        return False
    try:
        with _client() as client:
            state = client.read_flow_run(flow_run_id).state
        return state is not None and (state.is_cancelling() or state.is_cancelled())
    except Exception:  # noqa: BLE001 - no server: not a cancellation we can see
        return False


def _root_flow_run() -> tuple[Optional[str], Optional[str]]:
    """(id, name) of the top flow run of this one (the pipeline run an operator sees in the UI's list)."""
    from prefect.runtime import flow_run

    root = str(flow_run.root_flow_run_id or flow_run.id or "") or None
    if root is None or root == str(flow_run.id):
        return root, flow_run.name
    try:
        with _client() as client:
            return root, client.read_flow_run(root).name
    except Exception:  # noqa: BLE001 - the name is for people; the id is what matters
        return root, None


# -- the gpu slot -----------------------------------------------------------------------------------------

#: Answers that mean "the server is busy, ask again" (Prefect's own client retries these). 503 is what a Prefect
#: server on SQLite answers while its database is locked ("database is locked" is retryable to it).
BUSY_STATUS = {408, 429, 502, 503}


class ServerBusy(Exception):
    """The Prefect server did not answer a request for a slot (503 and the like, or no connection): ask again."""


def _try_slot(client, limit: str, holder) -> Optional[str]:
    """One request for a slot of `limit` under a `GPU_LEASE_S` lease: its lease id, or None while it is full (or
    while this process is dying: then it asks for nothing). Raises `ServerBusy` when the server does not answer.

    The request is sent once: Prefect's client would retry a busy answer itself, backing off 2, 4, 8, 16 and 32 s,
    and then raise. A run waiting for the slot was then silent for 65 s when the server's SQLite database was
    locked (CI, the supervision integration test), and would have failed at the sixth busy answer. The wait loop
    asks again every `SLOT_POLL_S` instead, and says meanwhile that it waits."""
    import httpx
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with _slot_lock:
        if _dying.is_set():
            return None
        try:
            with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
                response = client.increment_concurrency_slots_with_lease([limit], 1, "concurrency", GPU_LEASE_S,
                                                                         holder)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 423:  # locked: every slot is held
                return None
            if exc.response.status_code in BUSY_STATUS:
                raise ServerBusy(f"{exc.response.status_code} {exc.response.reason_phrase}") from None
            raise
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing reached the server: nothing granted
            raise ServerBusy(f"no connection ({type(exc).__name__})") from None
        body = response.json()
        if not body.get("limits"):
            raise UserError(f"the global concurrency limit {limit!r} is missing on the Prefect server; create it "
                            f"with `prefect gcl create {limit} --limit 1` or `python -m faithforge.deployments.deploy`")
        lease_id = str(body["lease_id"])
        _leases.add(lease_id)
        if _dying.is_set():  # the process began dying while this request was out (stop_taking_slots timed out)
            with contextlib.suppress(Exception):
                release_lease(client, lease_id)
            return None
        return lease_id


def _wait_for_slot(client, limit: str, stage: str, holder, database_url: str, opened: list[Any],
                   say: Callable[[str], None], warn: Callable[[str], None],
                   progress: Callable[[str, int, int, str], None] | None):
    """Ask for a slot every `SLOT_POLL_S` until granted: (lease id, seconds waited or None when the first ask was
    granted). The run store is opened (and appended to `opened`, for the caller to close) after the server's first
    answer, so a missing limit fails before it is touched. A busy server with no holder known is asked again
    quietly for `BUSY_QUIET_S`; one that answers nothing for `NO_ANSWER_MAX_S` is an error."""
    from faithforge.core.store import Store

    started = time.monotonic()
    said, unanswered_since = None, None
    while True:
        asked = time.monotonic()
        try:
            lease_id, busy = _try_slot(client, limit, holder), None
            unanswered_since = None
        except ServerBusy as exc:
            lease_id, busy = None, str(exc)
            unanswered_since = unanswered_since if unanswered_since is not None else asked
            if time.monotonic() - unanswered_since > NO_ANSWER_MAX_S:
                raise UserError(f"{stage}: the Prefect server has not answered a request for a slot of the {limit!r} "
                                f"concurrency limit for {NO_ANSWER_MAX_S:.0f} s (last: {busy}); check that it "
                                "runs (`prefect server start`) and rerun: finished stages are reused") from None
        if not opened:
            opened.append(Store(database_url))
        store = opened[0]
        if lease_id is not None:
            return lease_id, (time.monotonic() - started if said is not None else None)
        holders = store.held_slots(limit)
        if any(h["alive"] is False for h in holders):
            reconcile(database_url, say=warn)
            holders = store.held_slots(limit)
        waited = time.monotonic() - started
        quiet = busy is not None and not holders and time.monotonic() - unanswered_since < BUSY_QUIET_S
        if not quiet and (said is None or waited - said >= SLOT_REPORT_S):
            said = waited
            line = slot_wait_message(limit, stage, holders, waited, dt.datetime.now(dt.timezone.utc), busy=busy)
            say(line)
            if progress is not None:  # the artifact puts the stage's name in front itself
                progress(stage, 0, 1, line.removeprefix(f"{stage}: "))
        time.sleep(SLOT_POLL_S)


@contextlib.contextmanager
def held_slot(limit: str, stage: str, database_url: str, run_id: Optional[str],
              progress: Callable[[str, int, int, str], None] | None = None,
              say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold one slot of `limit` (a missing limit is an error) under a `GPU_LEASE_S` lease. While waiting, say at
    once and then every `SLOT_REPORT_S` who holds it (`say`, by default the run's log, and `progress`), and free
    slots whose holder's process is gone. (Prefect's own `concurrency()` waits in silence and logs each timed-out
    try as an error.)"""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency._leases import maintain_concurrency_lease
    from prefect.runtime import flow_run

    warn = say
    if say is None:
        from prefect import get_run_logger

        say, warn = get_run_logger().info, get_run_logger().warning
    holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run.id) if flow_run.id else None
    lease_id, opened, hold = None, [], None
    try:  # from the first request on: whatever was granted is released on the way out, whatever fails in between
        with _client() as client:
            lease_id, waited = _wait_for_slot(client, limit, stage, holder, database_url, opened, say, warn,
                                              progress)
        (store,) = opened
        root_id, root_name = _root_flow_run()
        hold = store.hold_slot(run_id, limit, lease_id, stage, flow_run_id=root_id, flow_run_name=root_name)
        say(f"holding a slot of the {limit!r} concurrency limit for {stage}"
            + (f" (after waiting {waited:.0f} s)" if waited is not None else ""))
        from uuid import UUID

        with maintain_concurrency_lease(UUID(lease_id), GPU_LEASE_S, raise_on_lease_renewal_failure=True):
            yield
    finally:
        if lease_id is not None:
            with contextlib.suppress(Exception), _client() as client:
                release_lease(client, lease_id)
        for store in opened:
            try:
                if hold is not None:
                    store.release_slot(hold)
            finally:
                store.engine.dispose()


if __name__ == "__main__":  # python -m faithforge.tasks.supervision DATABASE_URL: what a dead flow process's reaper runs
    import sys

    reconcile(sys.argv[1], say=lambda line: None)
