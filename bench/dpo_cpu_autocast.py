"""Real TRL DPO on a run's own pairs, float32 against bfloat16 autocast on the CPU, each with its reference
computed in the same dtype, side by side in one process (issue 28, item 2: training without waste).

    python bench/dpo_cpu_autocast.py --workspace WS [--steps 32]

WS is a finished `faithforge demo --real` workspace: its imported model (`models/*`), its train pairs
(`pairs/*/train.jsonl`) and its float32 reference cache (`refcache/*`). The bfloat16 variant computes its own
reference under the same autocast (`compute_reference_cache(..., autocast_bf16=True)`) into a temporary folder,
then both variants train a fresh LoRA policy (r 16 / alpha 32, the demo's seed and DPO settings: 8 pairs a step,
prompt + answer ≤ 256 tokens, lr 1e-4, β 0.1, sft weight 0.5) for `--steps` steps.

Why the reference must share the dtype: DPO reads only policy − reference log-ratios. The earlier profile
(`bench/dpo_profile.py`) compared a bf16 policy with a fixed reference and saw the loss move by up to 0.11; a
bf16 policy against an fp32 reference adds bf16's per-token rounding (~0.01–0.02 nats a token, summed over the
answer) to every ratio, while the same rounding on both sides cancels where the weights are still close.

The rule, written before the first run of this file: bfloat16 autocast is taken for CPU training (where the CPU
multiplies bfloat16 natively) only if, over the demo's full 32 steps on its real pairs,
  1. the step-0 guard passes (loss and rewards at ln 2 / 0 within `step0_tolerance`),
  2. every logged step's loss is within 0.05 of float32's, and the last step's reward margin within 10% of it,
  3. the median step is ≥ 1.3× faster,
and then `demo --real` on a test seed gives rates inside the float32 run's intervals. Otherwise it stays off.

Reported: reference pass seconds both ways and the largest |Δ| of the reference sums, median step time (first step
left out), the losses, margins and reward accuracies step by step and their largest differences, and the relative
difference of the trained LoRA weights (‖ΔW_bf16 − ΔW_fp32‖ / ‖ΔW_fp32‖ over the adapter's B·A products).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dpo_shared_prompt import demo_workspace, train_demo_dpo, workspace_parser  # noqa: E402 - shared


def parse_args():
    return workspace_parser(__doc__, "dpo_cpu_autocast", 32, "DPO steps per variant (the demo's 32)").parse_args()


def main() -> int:
    import shutil
    import tempfile
    import time
    import warnings

    args = parse_args()
    warnings.filterwarnings("ignore")
    import torch
    from transformers import AutoModelForCausalLM

    from faithforge.training.reference_cache import ReferenceCache, compute_reference_cache

    model_dir, manifest, fp32_ref, pairs, tokenizer = demo_workspace(args.workspace, args.model)
    threads = torch.get_num_threads()
    print(f"{len(pairs)} pairs, {args.steps} steps, {threads} threads, load {os.getloadavg()[0]:.2f}", flush=True)

    # The bfloat16 reference, and the float32 one recomputed for a timing side by side.
    timings, refs = {}, {"fp32": fp32_ref}
    scratch = Path(tempfile.mkdtemp(prefix="refcache-"))
    for name, autocast in (("fp32", False), ("bf16", True)):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        components = {**manifest["components"], "compute_dtype": "bfloat16" if autocast else "float32"}
        cache = ReferenceCache(scratch / name, f"bench-{name}", components, manifest["shard_size"])
        started = time.perf_counter()
        compute_reference_cache(model, tokenizer, pairs, cache, batch_size=8, max_length=256,
                                autocast_bf16=autocast)
        timings[name] = time.perf_counter() - started
        if name == "bf16":
            refs[name] = cache.load()
        else:
            recomputed = cache.load()
            drift = max(abs(recomputed[k].chosen_logps - fp32_ref[k].chosen_logps) for k in fp32_ref)
            print(f"  fp32 reference recomputed: largest |Δ| from the workspace's cache {drift:.2e} nats", flush=True)
        del model
    ref_diff = max(max(abs(refs["bf16"][k].chosen_logps - fp32_ref[k].chosen_logps),
                       abs(refs["bf16"][k].rejected_logps - fp32_ref[k].rejected_logps)) for k in fp32_ref)
    print(f"  reference pass: fp32 {timings['fp32']:.1f} s, bf16 {timings['bf16']:.1f} s "
          f"({timings['fp32'] / timings['bf16']:.2f}×); largest |Δ sum log-prob| {ref_diff:.3f} nats", flush=True)

    runs, adapters = {}, {}
    for name in ("fp32", "bf16"):
        result, model, seconds = train_demo_dpo(model_dir, tokenizer, pairs, refs[name], args.steps,
                                                bf16=name == "bf16")
        adapters[name] = _lora_deltas(model)
        history = result["history"]
        runs[name] = {"seconds": seconds, "loss": [h["loss"] for h in history],
                      "margin": [h["margin"] for h in history],
                      "accuracy": [h["accuracy"] for h in history]}
        print(f"  {name}: median step {statistics.median(seconds[1:]):.2f} s, losses "
              f"{[round(x, 3) for x in runs[name]['loss']]}, load {os.getloadavg()[0]:.2f}", flush=True)
        del model
    shutil.rmtree(scratch, ignore_errors=True)

    median = {k: statistics.median(v["seconds"][1:]) for k, v in runs.items()}
    loss_diff = max(abs(a - b) for a, b in zip(runs["fp32"]["loss"], runs["bf16"]["loss"]))
    last_fp32, last_bf16 = runs["fp32"]["margin"][-1], runs["bf16"]["margin"][-1]
    margin_rel = abs(last_bf16 - last_fp32) / max(abs(last_fp32), 1e-9)
    num = sum(float((adapters["bf16"][k] - adapters["fp32"][k]).pow(2).sum()) for k in adapters["fp32"]) ** 0.5
    den = sum(float(v.pow(2).sum()) for v in adapters["fp32"].values()) ** 0.5
    speedup = median["fp32"] / median["bf16"]
    verdict = {"loss within 0.05": loss_diff <= 0.05, "last margin within 10%": margin_rel <= 0.10,
               "step ≥ 1.3× faster": speedup >= 1.3}
    report = {"pairs": len(pairs), "steps": args.steps, "threads": threads,
              "reference_seconds": {k: round(v, 2) for k, v in timings.items()},
              "reference_abs_diff_max_nats": ref_diff,
              "median_step_seconds": {k: round(v, 3) for k, v in median.items()}, "speedup": round(speedup, 2),
              "loss_abs_diff_max": loss_diff, "last_margin": {"fp32": last_fp32, "bf16": last_bf16},
              "last_margin_rel_diff": margin_rel, "lora_delta_rel_diff": num / den, "rule": verdict,
              "runs": runs, "load_1m_end": os.getloadavg()[0]}
    print(f"median step: fp32 {median['fp32']:.2f} s, bf16 {median['bf16']:.2f} s → {speedup:.2f}×; largest "
          f"|Δloss| {loss_diff:.3f}; last margin {last_fp32:.3f} vs {last_bf16:.3f} ({margin_rel:.1%}); LoRA ΔW "
          f"relative difference {num / den:.3f}")
    print("rule: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in verdict.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


def _lora_deltas(model) -> dict:
    """Each LoRA layer's weight update B·A (scaling left out: the same in both variants), float32 on the CPU."""
    deltas = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            a = module.lora_A["default"].weight.detach().float()
            b = module.lora_B["default"].weight.detach().float()
            deltas[name] = b @ a
    return deltas


if __name__ == "__main__":
    raise SystemExit(main())
