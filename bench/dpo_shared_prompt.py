"""Real TRL DPO steps on a run's own pairs, each pair's prompt encoded once (`DpoArguments.share_prompt`) vs
TRL's single pass over both full rows, side by side in one process.

    python bench/dpo_shared_prompt.py --workspace WS [--steps 4] [--rounds 2]

WS is a finished `faithforge demo --real` workspace: its imported model (`models/*`), its train pairs
(`pairs/*/train.jsonl`) and its reference cache (`refcache/*`). Each variant trains a fresh LoRA policy
(r 16 / alpha 32, the demo's seed) for `--steps` steps with the demo's DPO settings (8 pairs per step, prompt +
answer ≤ 256 tokens, lr 1e-4, β 0.1, sft weight 0.5); variants alternate `--rounds` times so load drifts fall on
both. Reported: median step time (the first step of each run, which warms up, left out), the ratio, the
losses step by step and their largest difference, the tokens the backbone encodes per step both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def workspace_parser(doc: str, name: str, steps: int, steps_help: str) -> argparse.ArgumentParser:
    """The DPO benches' shared options: `--workspace`, `--model`, `--steps` and `--out` (bench/out/NAME.json)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", type=Path, required=True,
                   help="a finished `demo --real` workspace (its model, pairs and reference cache)")
    p.add_argument("--model", type=Path, help="the model the reference cache was computed for (needed when the "
                   "workspace holds several, e.g. the toy demo's warm-started `models/sft-*`)")
    p.add_argument("--steps", type=int, default=steps, help=steps_help)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / f"{name}.json")
    return p


def parse_args():
    p = workspace_parser(__doc__, "dpo_shared_prompt", 4, "DPO steps per run (the first is left out as warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="times each variant runs, alternating")
    return p.parse_args()


def _one(pattern: str, workspace: Path) -> Path:
    found = sorted(workspace.glob(pattern))
    if not found:
        raise SystemExit(f"{workspace} has no {pattern}: pass a finished `demo --real` workspace")
    return found[-1]


def demo_workspace(workspace: Path, model: Path | None = None):
    """A finished `demo --real` workspace's (model folder, reference-cache manifest, reference log-probs, train
    pairs, tokenizer): what the DPO benches train on (this one and `bench/dpo_cpu_autocast.py`)."""
    from faithforge.stages.pairs import load_pairs
    from faithforge.training.modeling import load_tokenizer
    from faithforge.training.reference_cache import ReferenceCache

    models = sorted(workspace.glob("models/*/config.json"))
    if model is None and len(models) != 1:
        raise SystemExit(f"{workspace} holds {len(models)} models: pass --model (the one its reference cache "
                         "was computed for)")
    model_dir = model or models[0].parent
    manifest_path = _one("refcache/*/manifest.json", workspace)
    manifest = json.loads(manifest_path.read_text())
    reference = ReferenceCache(manifest_path.parent, manifest["key"], manifest["components"],
                               manifest["shard_size"]).load()
    pairs = load_pairs(str(_one("pairs/*/train.jsonl", workspace)))
    return model_dir, manifest, reference, pairs, load_tokenizer(model_dir)


def train_demo_dpo(model_dir: Path, tokenizer, pairs, reference, steps: int, **settings):
    """A fresh LoRA policy (r 16 / alpha 32, seed 0) trained `steps` DPO steps with the demo's settings (8 pairs a
    step, prompt + answer ≤ 256 tokens, lr 1e-4, β 0.1, sft weight 0.5; `settings` on top) in a scratch folder.
    Returns (run_dpo's result, the trained model, each step's seconds)."""
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    from faithforge.training.dpo import DpoArguments, run_dpo
    from faithforge.training.modeling import attach_lora

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = attach_lora(model, r=16, alpha=32, dropout=0.0, quantized=False, gradient_checkpointing=False)
    out_dir = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    timer = step_timer()
    try:
        dpo = DpoArguments(output_dir=str(out_dir), steps=steps, micro_batch=8, grad_accum=1, learning_rate=1e-4,
                           beta=0.1, max_length=256, seed=0, checkpoint_every=10_000, sft_weight=0.5, **settings)
        result = run_dpo(model, tokenizer, pairs, reference, dpo, extra_callbacks=[timer])
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return result, model, timer.seconds


def step_timer():
    """A `TrainerCallback` whose `seconds` lists each optimizer step's wall time."""
    import time

    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, *a, **k):  # noqa: ARG002
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):  # noqa: ARG002
            self.seconds.append(time.perf_counter() - self.started)

    return StepTimes()


def main() -> int:
    import warnings

    args = parse_args()
    warnings.filterwarnings("ignore")
    from faithforge.training.reference_cache import tokenize_pair

    model_dir, _, reference, pairs, tokenizer = demo_workspace(args.workspace, args.model)
    tokenized = [tokenize_pair(tokenizer, p) for p in pairs]
    shared = sum(len(t["prompt_ids"]) for t in tokenized)
    every_row = sum(2 * len(t["prompt_ids"]) + len(t["chosen_ids"]) + len(t["rejected_ids"]) for t in tokenized)

    runs: dict[str, list[dict]] = {"plain": [], "shared": []}
    print(f"{len(pairs)} pairs; prompt tokens {shared} of {every_row} in both rows "
          f"({shared / every_row:.1%} encoded twice without sharing); {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    for round_ in range(args.rounds):
        for name in (("plain", "shared") if round_ % 2 == 0 else ("shared", "plain")):
            result, _, seconds = train_demo_dpo(model_dir, tokenizer, pairs, reference, args.steps,
                                                share_prompt=name == "shared")
            runs[name].append({"seconds": seconds, "losses": [h["loss"] for h in result["history"]]})
            print(f"  round {round_ + 1} {name:<6} steps {[round(s, 2) for s in seconds]} s, load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
    median = {name: statistics.median(s for run in rs for s in run["seconds"][1:]) for name, rs in runs.items()}
    loss_diff = max(abs(a - b) for p, s in zip(runs["plain"], runs["shared"])
                    for a, b in zip(p["losses"], s["losses"]))
    report = {"pairs": len(pairs), "prompt_tokens_shared": shared, "tokens_both_rows": every_row,
              "median_step_seconds": {k: round(v, 3) for k, v in median.items()},
              "speedup": round(median["plain"] / median["shared"], 2), "loss_abs_diff_max": loss_diff,
              "losses": {k: [run["losses"] for run in v] for k, v in runs.items()}, "load_1m_end": os.getloadavg()[0]}
    print(f"median step: plain {median['plain']:.2f} s, shared {median['shared']:.2f} s → "
          f"{report['speedup']:.2f}× ; largest |Δloss| over the steps {loss_diff:.2e}")
    return _save(report, args.out)


def _save(report: dict, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
