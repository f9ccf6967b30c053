"""Shared fixtures. One Prefect test server for the whole session (starting one takes ~10 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from llama_server import llama_server  # noqa: F401 - session fixture: a real llama.cpp server (tests/llama_server.py)

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("FAITHFORGE_GPU_PROFILE", None)  # tests choose profiles explicitly


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
