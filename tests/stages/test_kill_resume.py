"""SIGKILL in every stage, rerun, and the workspace ends with what an uninterrupted run makes.

`pipeline_driver.py` runs the pipeline's stage functions in a child process and kills itself (SIGKILL, no
clean-up) at a point inside one stage. The same workspace is run again with the next stage's kill point, and
so on, then once to the end. A second workspace is run once without a kill. Then: the warm start and the SFT
control resumed from their checkpoints (not from step 0), DPO from its checkpoint, and every output — data,
pairs, reference shards, models, adapters, rates — equals the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from faithforge.core.workspace import sha256_file

HERE = Path(__file__).resolve().parent
DRIVER = HERE.parent / "fixtures" / "pipeline_driver.py"

#: One kill point per stage, in pipeline order (see pipeline_driver.SMALL for why each falls after a checkpoint).
KILL_POINTS = [
    "generate:122",    # all 122 examples made, before the files are complete
    "warm_start:20",   # after step 20 of 20, before the model is saved (checkpoint at 15)
    "pairs:write1",    # train.jsonl written into the temporary folder, val.jsonl not yet
    "reference:2",     # 2 of 3 shards written
    "train:8",         # DPO step 8 of 8 logged, before it is saved (checkpoint-6 on disk)
    "control:8",       # SFT control step 8 of 8, before it is saved (checkpoint at 6)
    "evaluate:1",      # the first of three models judged
]


#: What every driver run imports: loaded once by the fork server (tests/fixtures/forked.py) instead of in each of
#: the nine runs (~8 CPU-s apiece on 2 cores).
PRELOAD = ["torch", "transformers", "peft", "trl", "datasets", "faithforge.training.dpo", "faithforge.training.sft",
           "pipeline_driver"]


@pytest.fixture
def driver():
    from tests.fixtures.forked import ForkServer

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(DRIVER.parent), str(HERE.parents[1])]),
           "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    with ForkServer(PRELOAD, env) as server:
        yield server


def _drive(driver, workspace: Path, out: Path, kill_at: str | None = None):
    """One fresh process (forked from `driver`) that runs the stages and SIGKILLs itself at `kill_at`."""
    return driver.run("pipeline_driver:main", [workspace, out, kill_at or ""], timeout=900)


def _tensors(folder: Path, name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / name))


@pytest.mark.slow
@pytest.mark.timeout(2400)  # nine child processes; ~4 min on an idle 2-core machine
def test_sigkill_in_every_stage_then_rerun_equals_an_uninterrupted_run(tmp_path, driver):
    import torch

    straight = _drive(driver, tmp_path / "straight", tmp_path / "straight.json")
    assert straight.returncode == 0, straight.stderr[-3000:]
    for kill_at in KILL_POINTS:
        killed = _drive(driver, tmp_path / "killed", tmp_path / "unused.json", kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.returncode, killed.stderr[-3000:])
    final = _drive(driver, tmp_path / "killed", tmp_path / "final.json")
    assert final.returncode == 0, final.stderr[-3000:]
    a = json.loads((tmp_path / "straight.json").read_text())
    b = json.loads((tmp_path / "final.json").read_text())

    # It resumed where it was killed, not from the start.
    assert b["warm_start"]["resumed_from_step"] == 15
    assert b["control"]["resumed_from_step"] == 6
    assert str(b["train"]["resumed_from"]).endswith("checkpoint-6")

    def same_file(stage: str, name: str) -> None:
        assert sha256_file(Path(a[stage]["path"]) / name) == sha256_file(Path(b[stage]["path"]) / name), (stage, name)

    for split in ("train", "val", "test"):
        same_file("generate", f"{split}.jsonl")
    same_file("pairs", "train.jsonl")
    same_file("pairs", "val.jsonl")
    same_file("base_model", "model.safetensors")
    same_file("warm_start", "model.safetensors")  # the resumed SFT is bit-identical
    same_file("control", "adapter_model.safetensors")
    shards_a = json.loads((Path(a["reference"]["path"]) / "manifest.json").read_text())["shards"]
    shards_b = json.loads((Path(b["reference"]["path"]) / "manifest.json").read_text())["shards"]
    assert [s["sha256"] for s in shards_a] == [s["sha256"] for s in shards_b]
    dpo_a = _tensors(Path(a["train"]["path"]), "adapter_model.safetensors")
    dpo_b = _tensors(Path(b["train"]["path"]), "adapter_model.safetensors")
    assert dpo_a.keys() == dpo_b.keys()
    for name in dpo_a:  # TRL's resume replays the data order; float sums may differ in the last bits
        torch.testing.assert_close(dpo_b[name], dpo_a[name], atol=1e-6, rtol=1e-5, msg=name)
    assert b["evaluate"]["models"] == a["evaluate"]["models"]
