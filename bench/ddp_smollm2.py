"""DPO on the real SmolLM2-135M-Instruct in one process and as 2 gloo DDP processes (torchrun), same global batch:
losses, adapter and evaluation rates compared, wall times reported; the reference cache by 1 and 2 ranks compared
byte for byte; judging through a real Dask LocalCluster (2 workers) compared with the serial judge.

    python bench/ddp_smollm2.py [--steps 32] [--out bench/results/ddp_smollm2.json]

Settings are `demo --real`'s training settings (32 steps × 8 pairs, lr 1e-4, β 0.1, NLL weight 0.5, LoRA r 16),
on synthetic grounded-qa pairs (template-written answers, so no sampling stage) and 20 test questions. One process
trains with micro-batch 4 × accumulation 2; the two ranks each with micro-batch 4 × accumulation 1: the same 8 pairs
per step split the same way (TRL's NLL term is a token mean per micro-batch, so the split must match). The train
pairs are cut to a multiple of 8: at an epoch's ragged end accelerate pads every rank's micro-batch with the epoch's
first pairs (even_batches) where one process takes a smaller batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--test-sources", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the one-process run (each of the 2 ranks gets 1 per core / 2)")
    parser.add_argument("--work", default="/tmp/faithforge-ddp-bench")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "ddp_smollm2.json"))
    parser.add_argument("--order", default="1,2", help="process counts in the order they run (timing: try 2,1 too)")
    parser.add_argument("--shard-size", type=int, default=8, help="pairs per reference shard (the ranks split the shards)")
    parser.add_argument("--timing-only", action="store_true", help="train and compare only; no evaluation")
    opts = parser.parse_args()

    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    from faithforge.app.real_demo import REAL_SETTINGS
    from faithforge.core.config import deep_merge, load_config
    from faithforge.core.workspace import atomic_write_jsonl
    from faithforge.stages.context import StageContext
    from faithforge.stages.evaluate import evaluate_models
    from faithforge.stages.gate import plan_pipeline
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.model import base_model
    from faithforge.stages.pairs import build_pairs, load_pairs
    from faithforge.stages.reference import reference_logps
    from faithforge.stages.train import train_dpo
    from faithforge.training.model_import import RECORD_NAME, import_model, smollm2_gguf
    from faithforge.gpu.snapshot import GpuSnapshot

    work = Path(opts.work)
    model_dir = work / "smollm2"
    if not (model_dir / RECORD_NAME).is_file():
        import_model(smollm2_gguf(), model_dir)
    base = deep_merge(REAL_SETTINGS, {
        "generate": {"train_sources": 80, "val_sources": 10, "test_sources": opts.test_sources},
        "pairs": {"builder": "synthetic", "val_fraction": 0.1}, "reference": {"shard_size": opts.shard_size},
        "train": {"steps": opts.steps, "checkpoint_every": max(1, opts.steps // 2)},
        "control": {"sft_on_chosen": False}, "warm_start": {"enabled": False},
        "evaluate": {"judge": "grounded-qa", "bootstrap_samples": 200}})
    figures: dict = {"steps": opts.steps, "one_process_torch_threads": opts.threads,
                     "rank_torch_threads": max(1, (os.cpu_count() or 2) // 2), "cores": os.cpu_count()}
    outs = {}
    order = [int(n) for n in opts.order.split(",")]
    figures["order"] = order
    tag = "" if order == [1, 2] else "-" + "".join(map(str, order))
    for processes in order:
        load_before = os.getloadavg()
        cfg = load_config(None, base=base, environ={}, overrides={
            "workspace": str(work / f"ws{processes}{tag}"), "model": {"path": str(model_dir)},
            "distributed": {"cpu_processes": processes}})
        ctx = StageContext.open(cfg)
        ctx.run_id = ctx.store.start_run("bench", {})
        plans = plan_pipeline(cfg, GpuSnapshot(source="none"))
        model = base_model(ctx)
        pairs = build_pairs(ctx, generate_examples(ctx))
        train = load_pairs(pairs.train)
        keep = len(train) - len(train) % cfg.train.batch_size
        trimmed = work / f"ws{processes}{tag}" / "train-trimmed.jsonl"
        atomic_write_jsonl(trimmed, train[:keep])
        pairs = pairs.model_copy(update={"train": str(trimmed)})
        started = time.perf_counter()
        reference = reference_logps(ctx, model, pairs, plans["reference"])
        ref_s = time.perf_counter() - started
        plan = plans["train"]
        if processes == 1:  # the ranks' split: micro-batch 4 × accumulation 2 in one process
            plan = plan.with_micro_batch(cfg.train.batch_size // 2, 2)
        torch.set_num_threads(opts.threads if processes == 1 else 1)
        started = time.perf_counter()
        adapter = train_dpo(ctx, model, pairs, reference, plan)
        torch.set_num_threads(1)
        train_s = time.perf_counter() - started
        outs[processes] = {"ctx": ctx, "model": model, "pairs": pairs, "reference": reference, "adapter": adapter,
                           "dataset": None}
        figures[f"p{processes}"] = {
            "train_pairs": keep, "reference_seconds": round(ref_s, 1), "train_seconds": round(train_s, 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "micro_batch": adapter.micro_batch, "grad_accum": adapter.grad_accum, "processes": adapter.processes,
            "losses": json.loads((Path(adapter.path) / "history.json").read_text())}
        print(processes, "process(es): reference", round(ref_s, 1), "s, train", round(train_s, 1), "s",
              "(reused)" if adapter.reused else "", flush=True)
        figures[f"p{processes}"]["reused"] = bool(adapter.reused)

    one, two = outs[1], outs[2]
    l1 = [h["loss"] for h in figures["p1"]["losses"]]
    l2 = [h["loss"] for h in figures["p2"]["losses"]]
    figures["max_abs_loss_difference"] = max(abs(a - b) for a, b in zip(l1, l2))
    a = load_file(str(Path(one["adapter"].path) / "adapter_model.safetensors"))
    b = load_file(str(Path(two["adapter"].path) / "adapter_model.safetensors"))
    figures["max_abs_adapter_difference"] = max(float((a[k] - b[k]).abs().max()) for k in a)
    figures["reference_cache_byte_identical"] = (_files(Path(one["reference"].path))
                                                 == _files(Path(two["reference"].path)))

    if opts.timing_only:
        Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.out).write_text(json.dumps(figures, indent=1, default=str))
        print(json.dumps({k: v for k, v in figures.items() if k not in ("p1", "p2")}, indent=1, default=str))
        return
    # Evaluation: before / after for each adapter, judged serially; and the 2-process adapter judged on Dask.
    from faithforge.app.prefect_settings import without_heartbeats
    from faithforge.tasks.judging import judging_mapper

    rates = {}
    for processes, out in outs.items():
        ctx = out["ctx"]
        dataset = generate_examples(ctx)
        plan = plan_pipeline(ctx.config, GpuSnapshot(source="none"))["evaluate"]
        started = time.perf_counter()
        result = evaluate_models(ctx, out["model"], dataset, out["pairs"], out["adapter"], None, plan)
        models = {k: (v.model_dump() if hasattr(v, "model_dump") else dict(v)) for k, v in result.models.items()}
        rates[f"p{processes}"] = {"models": models, "seconds": round(time.perf_counter() - started, 1)}
    figures["evaluation"] = rates
    figures["evaluation_rates_equal"] = all(
        rates["p1"]["models"][m]["rate"] == rates["p2"]["models"][m]["rate"] for m in ("before", "after"))

    from faithforge.evaluation import EvalItem
    from faithforge.evaluation.compare import evaluate_single
    from faithforge.evaluation.fanout import judge_all
    from faithforge.evaluation.labeling import OUTPUTS_FILE

    # The 2-process run's answers (every model), judged through a Dask LocalCluster and serially.
    report_dir = next(outs[2]["ctx"].workspace.dir("reports").glob("eval-*"))
    rows = [json.loads(line) for line in (report_dir / OUTPUTS_FILE).read_text().splitlines() if line.strip()]
    items = [EvalItem(id=r["id"], source=r["source"], key_facts=[], category="all") for r in rows]
    summaries = [r["summary"] for r in rows]
    cfg2 = load_config(None, base=base, environ={}, overrides={
        "distributed": {"judge_runner": "dask", "judge_workers": 2, "judge_chunk": 8}})
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=240), without_heartbeats():
        started = time.perf_counter()
        results = judge_all({"name": "grounded-qa", "options": {}}, items, summaries, None, size=8,
                            mapper=judging_mapper(cfg2))
        dask_s = time.perf_counter() - started
    serial = evaluate_single(items, summaries, "grounded-qa", label="x")
    fanned = evaluate_single(items, summaries, "grounded-qa", label="x", results=results)
    figures["dask_judging"] = {"items": len(items), "seconds": round(dask_s, 1), "rate": fanned.rate,
                               "serial_rate": serial.rate, "identical_report": fanned.model_dump() == serial.model_dump()}
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(figures, indent=1, default=str))
    print(json.dumps({k: v for k, v in figures.items() if k not in ("p1", "p2")}, indent=1, default=str))


if __name__ == "__main__":
    main()
