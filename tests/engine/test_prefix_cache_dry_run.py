"""bench/prefix_cache.py's CPU dry run: the exact code the GPU command (`bench/gpu_prefix.sh run`, the 6,287-token
prefix on a 3B shape) runs, on a tiny shape, without Prefect."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_command_runs_on_a_tiny_shape_without_prefect(tmp_path):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_prefix.sh"), "dry-run", str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "prefix_cache_dry.json").read_text())
    assert not report["imported_prefect"]
    assert report["args"]["device"] == "cpu" and report["args"]["prefix_tokens"] == "64"
    req = report["requests"]
    assert req["same_tokens"] and req["same_tokens_batched"]  # the engine's tokens are the re-encoding's
    assert req["speedup_vs_reencode"] > 0 and req["speedup_vs_deepcopy"] > 0
    sampling = report["sampling"]
    assert sampling["requests"] == 4 and sampling["tokens"] == 4 * 4 and sampling["tokens_per_second"] > 0
    assert len(report["memory"]["per_turn"]) == 3


def test_the_gpu_preset_without_cuda_says_so():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the preset runs for real (bench/gpu_prefix.sh run)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(["python3", str(REPO / "bench" / "prefix_cache.py"), "--preset", "gpu-3b"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "CUDA is not available" in done.stderr
