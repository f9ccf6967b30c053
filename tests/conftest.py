"""Shared fixtures. One Prefect test server for the whole session (starting one takes ~10 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.fixtures.llama_server import llama_server  # noqa: F401 - session fixture: a real llama.cpp server (tests/fixtures/llama_server.py)

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("FAITHFORGE_GPU_PROFILE", None)  # tests choose profiles explicitly

#: Test files that share one expensive session resource run in one xdist worker (pyproject's `--dist loadgroup`);
#: every other file is its own group, so a file's module fixtures are built once.
SHARED_RESOURCE_GROUPS = {"test_model_import.py": "smollm2-import", "test_real_pipeline.py": "smollm2-import",
                          "test_model_export.py": "smollm2-import",
                          "test_eval_llm.py": "llama-server", "test_generation_real_server.py": "llama-server"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the mark into the item's scheduling group
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(SHARED_RESOURCE_GROUPS.get(item.path.name, item.path.name)))


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server (SQLite) with flow heartbeats off; request it in tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    from faithforge.app.prefect_settings import without_heartbeats

    with prefect_test_harness(server_startup_timeout=240):
        with without_heartbeats():
            yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny tokenizer + random-init Llama built once per session, loaded with `from_pretrained(path)`."""
    from faithforge.training.tiny_model import build_tiny_model

    path = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(path, seed=0)
    return path
