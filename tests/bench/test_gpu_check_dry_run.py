"""bench/gpu_check.py's CPU dry run: the exact code the lent GPU runs (random-init folder, NF4 load through
`load_for_plan`, the real `run_dpo`, TRL's live reference, the prefix-cache bench) on tiny shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_measures_every_case_and_the_capped_run(tmp_path):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "dry-run", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [(c["seq_len"], c["micro_batch"]) for c in report["cases"]] == [(32, 1), (64, 1), (64, 2), (128, 1)]
    for case in report["cases"]:
        assert case["steps"] == 1 and not case["oom"]
        assert case["predicted_reserved_bytes"] > 0 and case["peak_rss_bytes"] > 0
        assert abs(case["first_loss"] - 0.6931) < 1e-3  # cached reference = policy at step 0
    assert report["capped"]["fits"] and report["capped"]["steps"] == 4
    assert report["speed"]["cached_steps_per_second"] > 0 and report["speed"]["live_steps_per_second"] > 0
    assert report["prefix_cache"]["exit"] == 0, report["prefix_cache"]["stderr"]


def test_gpu_check_refuses_to_pretend_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "nothing measured" in done.stdout
    assert not (tmp_path / "gpu_check.json").exists()
