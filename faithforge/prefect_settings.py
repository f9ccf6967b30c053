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
    # Before torch is imported (OpenMP reads it once): waiting threads sleep instead of spinning. On a loaded
    # 2-core machine spinning made the warm start ~10x slower (bench/cpu_wait_policy.py, BENCHMARKS.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def without_heartbeats():
    """A settings context with flow heartbeats off; use as `with without_heartbeats(): flow(...)`."""
    from prefect.context import SettingsContext
    from prefect.settings import get_current_settings

    current = get_current_settings()
    flows = current.flows.model_copy(update={"heartbeat_frequency": None})
    context = SettingsContext.get()
    return SettingsContext(profile=context.profile, settings=current.model_copy(update={"flows": flows}))
