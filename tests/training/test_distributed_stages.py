"""The reference and train stages on a 2-process CPU plan (`distributed.cpu_processes: 2`), end to end through the
real stage code and torchrun: the reference cache two ranks wrote is byte-identical to one process's, and a CUDA
OOM on one rank relaunches both ranks with half the micro-batch, resuming from the last checkpoint, to the same
adapter as one process trains."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.fixtures.dpo_support import REPO

from faithforge.core.config import load_config
from faithforge.stages.context import StageContext


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_two_rank_stages_match_one_process_and_back_off_together(tmp_path, monkeypatch, request):
    from safetensors.torch import load_file

    from faithforge.stages.gate import plan_pipeline
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.model import base_model
    from faithforge.stages.pairs import build_pairs
    from faithforge.stages.reference import reference_logps
    from faithforge.stages.train import train_dpo
    from faithforge.gpu.snapshot import GpuSnapshot

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "tests")]))
    settings = {"generate": {"train_sources": 12, "val_sources": 10, "test_sources": 10},
                "warm_start": {"enabled": False}, "reference": {"shard_size": 5, "batch_size": 4},
                "train": {"steps": 3, "batch_size": 4, "checkpoint_every": 2, "lora_r": 4, "lora_alpha": 8,
                          # Pure DPO: its loss is a mean over pairs, so any split of the global batch gives the same
                          # step (TRL's NLL term is a token mean per micro-batch: that one depends on the split).
                          "sft_weight": 0.0}}
    # 15 training pairs: 3 steps × 4 stay inside the first epoch. At an epoch's ragged end accelerate gives every rank
    # a full micro-batch by repeating the epoch's first pairs (even_batches), where one process trains on fewer.
    # Like with like: each rank computes on one thread (OMP_NUM_THREADS=1), so the one process does too. On some CPUs
    # float32 reductions depend on the thread count (seen on an AMD EPYC machine, 2026-12-06: with two threads here
    # one reference shard differed in its last bits), which would make this compare threads, not processes.
    import torch

    request.addfinalizer(lambda threads=torch.get_num_threads(): torch.set_num_threads(threads))
    torch.set_num_threads(1)
    runs = {}
    for processes in (1, 2):
        cfg = load_config(None, environ={}, overrides={
            **settings, "workspace": str(tmp_path / f"ws{processes}"),
            "distributed": {"cpu_processes": processes, "rank_callbacks": ["tests.fixtures.rank_faults:oom_on_rank1_once"]}})
        seen: dict[str, list] = {"progress": [], "log": []}
        ctx = StageContext.open(cfg, progress=lambda *event: seen["progress"].append(event))
        ctx.log = seen["log"].append
        ctx.run_id = ctx.store.start_run("test", {})
        plans = plan_pipeline(cfg, GpuSnapshot(source="none"))
        assert (plans["train"].num_processes, plans["reference"].num_processes) == (processes, processes)
        assert plans["train"].global_batch == 4
        model = base_model(ctx)
        pairs = build_pairs(ctx, generate_examples(ctx))
        reference = reference_logps(ctx, model, pairs, plans["reference"])
        runs[processes] = (ctx, reference, train_dpo(ctx, model, pairs, reference, plans["train"]))
    # The ranks' progress and their log lines streamed into the stage (the Prefect task's progress artifact and log).
    assert ("train", 3, 3, f"loss {runs[2][2].final_loss:.3f} (2 processes)") in seen["progress"]
    assert any(stage == "reference" and "rank 1" in message for stage, _, _, message in seen["progress"])
    assert any("Traceback" in line for line in seen["log"])  # rank 1's OOM, as it printed it

    (_, ref1, one), (ctx2, ref2, two) = runs[1], runs[2]
    assert ref2.processes == 2 and ref2.shards >= 3 and ref1.key == ref2.key
    assert _files(Path(ref2.path)) == _files(Path(ref1.path)), "the 2-rank cache differs from the 1-process cache"
    # The reference is the same bytes either way and shares its key; the adapters are not (another micro-batch per
    # process), so a 1-process run must not take a 2-process adapter for its own (an attack, 2026-12-07).
    assert Path(two.path).name != Path(one.path).name

    # Rank 1 ran out of memory at step 3 with micro-batch 2: both ranks were relaunched with 1 × accumulation 2.
    assert [(b["micro_batch"], b["grad_accum"]) for b in two.oom_backoffs] == [(1, 2)]
    assert two.oom_backoffs[0]["error"].startswith("rank 1: CUDA out of memory")
    assert any(s.stage == "train:oom-backoff" for s in ctx2.store.stages(ctx2.run_id))
    assert (two.processes, two.micro_batch * two.grad_accum * two.processes) == (2, 4)
    assert two.resumed_from.endswith("checkpoint-2") and two.steps == one.steps == 3
    assert two.first_loss == pytest.approx(one.first_loss, abs=1e-6)
    assert two.final_loss == pytest.approx(one.final_loss, abs=1e-5)
    a, b = (load_file(str(Path(o.path) / "adapter_model.safetensors")) for o in (one, two))
    assert set(a) == set(b)
    import torch

    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=name)
    assert sorted(p.name for p in Path(two.path).iterdir()) == sorted(p.name for p in Path(one.path).iterdir())
