"""Shared fixtures. One Prefect test server for the whole session (starting one takes ~10 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.fixtures.llama_server import llama_server  # noqa: F401 - session fixture: a real llama.cpp server (tests/fixtures/llama_server.py)

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The suite is oversubscribed by design (three xdist workers and their servers and subprocesses on 2 cores), the
# case OpenMP's sleeping wait policy is for (`app.prefect_settings.omp_environment`). Left to choose, a CLI
# subprocess that started in a quiet moment chose ACTIVE (what the code chose until 2026-12-07), and its idle OpenMP threads then spun on a core for the
# rest of its life, against the other workers: the whole suite took 23 min 33 s (40.1 CPU-min user) on an AMD EPYC
# 2-core machine, and 15 min 12 s (24.1 CPU-min) with this line, same seed, 2026-12-06. Set before torch is imported
# in this process; every process a test starts inherits it (a test of the choice sets its own).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("FAITHFORGE_GPU_PROFILE", None)  # tests choose profiles explicitly


def _interruptible_children() -> None:
    """Run every process the tests start with Ctrl-C and SIGQUIT at their defaults.

    A suite started as a background job of a non-interactive shell (`nohup python -m pytest … &`, a script's
    `cmd &`) inherits SIGINT and SIGQUIT ignored. Every process the tests start then inherits that too, and Python
    installs no KeyboardInterrupt handler in a process that starts with SIGINT ignored. The Ctrl-C tests (a training
    group's launcher, Prefect workers and their flow runs) then hung or tested nothing: two failures of a full run
    started that way, 2026-12-06, that pass in a terminal and in CI. A terminal's defaults are what they test."""
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "SIGQUIT") and signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


_interruptible_children()  # at import: in the main pytest process and in every xdist worker

#: Test files that share one expensive session resource run in one xdist worker (pyproject's `--dist loadgroup`);
#: every other file is its own group, so a file's module fixtures are built once.
SHARED_RESOURCE_GROUPS = {"test_model_import.py": "smollm2-import", "test_real_pipeline.py": "smollm2-import",
                          "test_model_export.py": "smollm2-import",
                          "test_eval_llm.py": "llama-server", "test_generation_real_server.py": "llama-server"}


#: The files (or shared groups' files) that take longest, longest first: measured with `--durations` on 2 cores
#: (2026-12-06; each 1.5-7 min with its servers). xdist hands a worker the next group in collection order, so one of
#: these drawn last by the shuffle ran alone after the others had finished: 16 min 39 s on seed 26 against
#: 12 min 52 s on seed 25. They go first (longest processing time first); every other file, and the order inside
#: each, stays as pytest-randomly shuffled it.
LONGEST_FIRST = ("test_deployments_integration.py", "test_model_export.py", "test_real_pipeline.py",
                 "test_model_import.py", "test_signals.py", "test_served_sampler.py",
                 "test_supervision_integration.py", "test_kill_resume.py", "test_label_ui.py", "test_eval_llm.py",
                 "test_generation_real_server.py", "test_gpu_check_dry_run.py", "test_distributed_train.py",
                 "test_distributed_stages.py")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the mark into the item's scheduling group
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(SHARED_RESOURCE_GROUPS.get(item.path.name, item.path.name)))
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the shuffle stays within ranks


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server (SQLite) with flow heartbeats off; request it in tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    from faithforge.app.prefect_settings import without_heartbeats
    from tests.fixtures.prefect_db import harness_on_a_migrated_database

    with harness_on_a_migrated_database(), prefect_test_harness(server_startup_timeout=240):
        with without_heartbeats():
            yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny tokenizer + random-init Llama built once per session, loaded with `from_pretrained(path)`."""
    from faithforge.training.tiny_model import build_tiny_model

    path = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(path, seed=0)
    return path
