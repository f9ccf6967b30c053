"""Run the pipeline's stages in the flow's order as plain Python, and SIGKILL this process at a chosen point.

Used by tests/test_kill_resume.py: `python tests/pipeline_driver.py WORKSPACE OUT.json [STAGE:EVENT]`.
The kill point is a stage's own progress report (`warm_start:25` = when the warm start reports step 25), or
`pairs:write2` (the second file the pairs stage writes). The stages are `faithforge.stages` — the same functions
the Prefect tasks call — so a kill here is a kill in the middle of that stage's real work. Nothing here changes
what a stage does; only the moment this process dies.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

#: Small sizes (seconds per stage on 2 CPU cores), with checkpoints close enough that every kill point falls
#: after one: the warm start saves every 5 of 20 steps, DPO and the control every 2 of 8.
SMALL = {
    "generate": {"train_sources": 100, "val_sources": 10, "test_sources": 12},
    "warm_start": {"steps": 20, "batch_size": 16, "checkpoint_every": 5},
    "reference": {"shard_size": 48},
    "train": {"steps": 8, "batch_size": 8, "checkpoint_every": 2},
    "evaluate": {"bootstrap_samples": 100, "max_new_tokens": 16},
}


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main(workspace: str, out: str, kill_at: str | None) -> None:
    from faithforge.core.config import load_config
    from faithforge.stages import pairs as pairs_stage
    from faithforge.stages.context import StageContext
    from faithforge.stages.evaluate import evaluate_models
    from faithforge.stages.gate import gate
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.model import base_model, warm_start
    from faithforge.stages.pairs import build_pairs
    from faithforge.stages.reference import reference_logps
    from faithforge.stages.train import train_dpo, train_sft_control

    stage_kill, _, event = (kill_at or "::").partition(":")

    def progress(stage: str, done: int, total: int, message: str) -> None:  # noqa: ARG001
        if stage == stage_kill and event == str(done):
            _die()

    if stage_kill == "pairs":  # synthetic pairs report no progress: die after the stage's first file
        writes = {"n": 0}
        real_write = pairs_stage.atomic_write_jsonl

        def write_then_die(path, rows):
            result = real_write(path, rows)
            writes["n"] += 1
            if event == f"write{writes['n']}":
                _die()
            return result

        pairs_stage.atomic_write_jsonl = write_then_die

    cfg = load_config(None, overrides={**SMALL, "workspace": workspace}, environ={})
    ctx = StageContext.open(cfg, run_id=None, progress=progress)
    results: dict = {}
    started = time.perf_counter()

    def lap(name: str) -> None:
        print(f"driver: {name} done at {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

    results["generate"] = dataset = generate_examples(ctx)
    lap("generate")
    results["base_model"] = base = base_model(ctx)
    lap("base_model")
    results["warm_start"] = model = warm_start(ctx, base, dataset, gate(ctx, "train"))
    lap("warm_start")
    results["pairs"] = pairs = build_pairs(ctx, dataset, model, None)
    lap("pairs")
    results["reference"] = reference = reference_logps(ctx, model, pairs, gate(ctx, "reference"))
    lap("reference")
    train_plan = gate(ctx, "train")
    results["train"] = dpo = train_dpo(ctx, model, pairs, reference, train_plan)
    lap("train")
    results["control"] = control = train_sft_control(ctx, model, pairs, train_plan)
    lap("control")
    results["evaluate"] = evaluate_models(ctx, model, dataset, pairs, dpo, control, gate(ctx, "evaluate"))
    lap("evaluate")
    keep = ("reused", "recomputed_because", "resumed_from_step", "resumed_from", "path", "models", "steps",
            "final_loss", "counts")
    fields = {k: v.model_dump(mode="json", exclude_unset=True) for k, v in results.items()}  # the keys each stage set
    Path(out).write_text(json.dumps({k: {f: v.get(f) for f in keep if f in v} for k, v in fields.items()},
                                    default=str))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
