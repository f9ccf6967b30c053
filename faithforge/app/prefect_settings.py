"""Prefect settings FaithForge runs under (the one place this package touches Prefect's settings).

Flow heartbeats cost ~1 s per flow run when the heartbeat thread shuts down (measured: a 3-task flow
took 1.06 s with them, 0.09 s without). `temporary_settings(updates={"flows.heartbeat_frequency": None})`
does not turn them off in Prefect 3.8; entering a `SettingsContext` with a copied settings object does.
"""

from __future__ import annotations

import os


def offline_environment() -> None:
    """Defaults for a machine without internet: no telemetry (it also races on a fresh SQLite database)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if "OMP_WAIT_POLICY" not in os.environ:  # a user's own choice stands, and costs no reading
        os.environ["OMP_WAIT_POLICY"] = omp_wait_policy()


def quiet_prefect_logs() -> None:
    """Prefect's own log and its embedded server's log stay off the terminal (a command's progress and summary
    speak for the run; `-v` shows them). The embedded server's log (uvicorn, FastAPI, prefect.server) goes to this
    terminal too: two runs sharing Prefect's SQLite database printed its "database is locked" tracebacks, which
    both runs survive, and a Ctrl-C printed the server's shutdown tracebacks."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")


def omp_wait_policy(busy: float | None = None, cpu_count: int | None = None) -> str:
    """OpenMP's wait policy for this process, chosen before torch is imported (OpenMP reads it once).

    On an oversubscribed machine spinning threads wait for descheduled partners: the demo's warm start ran
    ~10x slower than with PASSIVE at load 12-19 on 2 cores. On an idle 2-core machine PASSIVE costs instead:
    the whole demo took 138 s with it vs 108 s with ACTIVE (BENCHMARKS.md, bench/cpu_wait_policy.py), and a real
    DPO step 1.2× longer (issue 28). So sleep only when other processes' runnable threads (`busy`; default
    `core.cpu_load.busy_elsewhere`, what runs now) already reach the core count. Not the 1-minute load average:
    it still counts a command that ended seconds ago, so `demo --real` started right after another run slept on
    an idle machine."""
    from faithforge.core.cpu_load import oversubscribed

    return "PASSIVE" if oversubscribed(cpu_count or os.cpu_count() or 1, busy) else "ACTIVE"


def without_heartbeats():
    """A settings context with flow heartbeats off; use as `with without_heartbeats(): flow(...)`."""
    from prefect.context import SettingsContext
    from prefect.settings import get_current_settings

    current = get_current_settings()
    flows = current.flows.model_copy(update={"heartbeat_frequency": None})
    context = SettingsContext.get()
    return SettingsContext(profile=context.profile, settings=current.model_copy(update={"flows": flows}))
