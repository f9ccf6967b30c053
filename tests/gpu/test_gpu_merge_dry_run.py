"""bench/gpu_merge_7b.py --dry-run: the GPU merge benchmark's whole code path (NF4 load, LoRA steps, save, bf16
reload, merge) on a tiny shape on the CPU, so the script the lead runs on a lent GPU is known to work."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_dry_run_trains_saves_and_merges(tmp_path):
    out = tmp_path / "merge.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_merge_7b.py"), "--dry-run", "--out", str(out)],
                            capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["dry_run"] and record["train"]["train_steps"] == 2 and len(record["train"]["losses"]) == 2
    assert record["train"]["trainable_parameters"] > 0 and record["merge"]["merge_seconds"] >= 0
    # bf16 merged weights vs bf16 base + adapter: equal up to bf16 rounding of the logits.
    assert record["merge"]["merged_vs_unmerged_max_abs_logit_diff"] <= 0.05 * max(
        1.0, record["merge"]["merged_vs_unmerged_max_abs_logit"])
    assert "import prefect" not in (ROOT / "bench" / "gpu_merge_7b.py").read_text()
