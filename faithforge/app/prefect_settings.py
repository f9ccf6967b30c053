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
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # `train.report_to: [mlflow]` sends nothing away
    if not OPENMP_WAIT_SETTINGS & set(os.environ):  # a user's own choice stands, and costs no reading
        os.environ.update(omp_environment())


#: Libraries whose warnings are not the user's news (deprecations, optional kernels FaithForge does not use).
NOISY_LIBRARIES = ("transformers", "datasets", "bitsandbytes", "accelerate", "peft", "kernels")


def quiet_library_logs() -> None:
    """Only the errors of `NOISY_LIBRARIES`: bitsandbytes, imported by every model load, warned on a CPU with
    AVX512-BF16 that it "Failed to load CPU gemm_4bit_forward from kernels-community" (a hub kernel FaithForge
    never asks for) in the middle of `model export`'s lines (an attack, 2026-12-07)."""
    import logging

    for noisy in NOISY_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.ERROR)


def quiet_prefect_logs() -> None:
    """Prefect's own log and its embedded server's log stay off the terminal (a command's progress and summary
    speak for the run; `-v` shows them). The embedded server's log (uvicorn, FastAPI, prefect.server) goes to this
    terminal too: two runs sharing Prefect's SQLite database printed its "database is locked" tracebacks, which
    both runs survive, and a Ctrl-C printed the server's shutdown tracebacks."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")


#: The variables that set how OpenMP's threads wait (libgomp's; torch and llama.cpp share one libgomp).
OPENMP_WAIT_SETTINGS = {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"}
#: On a machine where nothing else runs: libgomp's own policy (spin, then sleep) with a short spin, 1,000
#: iterations instead of its default 300,000. As fast as spinning for good (ACTIVE) alone, and it does not
#: collapse when another process starts beside it: two `faithforge demo` started at the same moment both read an
#: idle machine, and with ACTIVE each took 650 s instead of 37 s (an attack, 2026-12-07), 626 s with libgomp's
#: default spin; with this, 65 s (BENCHMARKS.md, "OpenMP's wait when two runs start together").
IDLE_OPENMP = {"GOMP_SPINCOUNT": "1000"}
#: On a machine whose cores other work already fills: threads sleep at once (issue 17: the demo's warm start
#: ~10x slower spinning at load 12-19 on 2 cores).
BUSY_OPENMP = {"OMP_WAIT_POLICY": "PASSIVE"}


def omp_environment(busy: float | None = None, cpu_count: int | None = None) -> dict[str, str]:
    """How OpenMP's threads wait in this process, chosen before torch is imported (libgomp reads it once).

    Sleeping at once (`BUSY_OPENMP`) only when other processes' runnable threads (`busy`; default
    `core.cpu_load.busy_elsewhere`, what runs now) already reach the core count. Not the 1-minute load average: it
    still counts a command that ended seconds ago. Otherwise a short spin (`IDLE_OPENMP`), not ACTIVE's endless
    one: what runs now says nothing of what starts a second later. Measured on an idle 2-core machine, the whole
    demo: ACTIVE 35.3 s, short spin 35.8 s, PASSIVE 38.3 s (on an AMD EPYC earlier, PASSIVE 138 s vs ACTIVE 108 s)."""
    from faithforge.core.cpu_load import oversubscribed

    return dict(BUSY_OPENMP if oversubscribed(cpu_count or os.cpu_count() or 1, busy) else IDLE_OPENMP)


def without_heartbeats():
    """A settings context with flow heartbeats off; use as `with without_heartbeats(): flow(...)`."""
    from prefect.context import SettingsContext
    from prefect.settings import get_current_settings

    current = get_current_settings()
    flows = current.flows.model_copy(update={"heartbeat_frequency": None})
    context = SettingsContext.get()
    return SettingsContext(profile=context.profile, settings=current.model_copy(update={"flows": flows}))
