"""The layers' MLPs on the batch's real tokens only (`faithforge.training.real_tokens`) against every padded
position, side by side in one process (issue 28, item 2: training without waste).

    python bench/mlp_real_tokens.py --workspace WS [--steps 8] [--rounds 2] [--out FILE.json]

WS is a finished `faithforge demo --real` workspace (its model, train pairs and reference cache, as
bench/dpo_shared_prompt.py reads them). The variants alternate `--rounds` times so load drifts fall on both:

1. Real TRL DPO steps with the demo's settings (`train_demo_dpo`: 8 pairs a step, LoRA r 16, β 0.1, sft weight
   0.5, the shared prompt on), `DpoArguments.mlp_real_tokens` on and off: median step time without each run's
   first step, losses step by step, the trained LoRA weights' largest difference.
2. The SFT control's steps (`train_sft` on the chosen answers, the demo's settings) on and off: the same figures.
3. Positions per step the MLPs compute both ways, counted on the pairs with the steps' own batch draws: what the
   ratio can be at most, if the MLP were all of a step.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from dpo_shared_prompt import _save, demo_workspace, train_demo_dpo, workspace_parser  # noqa: E402
from log_prob_head import control_steps  # noqa: E402

WAYS = ("padded", "real")


def positions(tokenizer, pairs, draws: int = 200, seed: int = 0) -> dict:
    """Mean positions per step the MLPs compute, padded and real, on random batches of 8 pairs: DPO (the shared
    prefix once per pair, then both answers' rest) and the control (prompt + chosen answer)."""
    import random

    from faithforge.training.reference_cache import tokenize_pair

    rows = [tokenize_pair(tokenizer, p) for p in pairs]
    rng = random.Random(seed)
    dpo_padded = dpo_real = control_padded = control_real = 0
    for _ in range(draws):
        batch = rng.sample(rows, min(8, len(rows)))
        shared = min(len(r["prompt_ids"]) for r in batch)
        rest = [len(r["prompt_ids"]) - shared + len(r[k]) for k in ("chosen_ids", "rejected_ids") for r in batch]
        dpo_padded += len(batch) * shared + len(rest) * max(rest)
        dpo_real += len(batch) * shared + sum(rest)
        whole = [len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in batch]
        control_padded += len(whole) * max(whole)
        control_real += sum(whole)
    return {"dpo": {"padded": dpo_padded / draws, "real": dpo_real / draws},
            "control": {"padded": control_padded / draws, "real": control_real / draws}}


def _compare(runs: dict[str, list[dict]]) -> dict:
    median = {way: statistics.median(s for run in rs for s in run["seconds"][1:]) for way, rs in runs.items()}
    loss_diff = max(abs(a - b) for p, r in zip(runs["padded"], runs["real"]) for a, b in zip(p["losses"], r["losses"]))
    return {"median_step_seconds": median, "step_speedup": median["padded"] / median["real"],
            "loss_abs_diff_max": loss_diff, "losses": {k: [r["losses"] for r in v] for k, v in runs.items()}}


def _summary(name: str, part: dict) -> str:
    seconds = part["median_step_seconds"]
    return (f"{name} step median: padded {seconds['padded']:.2f} s, real tokens {seconds['real']:.2f} s "
            f"({part['step_speedup']:.2f}×); largest |Δloss| {part['loss_abs_diff_max']:.2e}")


def main() -> int:
    import warnings

    p = workspace_parser(__doc__, "mlp_real_tokens", 8, "steps per run (the first is left out as warm-up)")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model_dir, _, reference, pairs, tokenizer = demo_workspace(args.workspace, args.model)
    counted = positions(tokenizer, pairs)
    print(f"{len(pairs)} pairs; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; positions a step, padded → "
          f"real: DPO {counted['dpo']['padded']:.0f} → {counted['dpo']['real']:.0f}, control "
          f"{counted['control']['padded']:.0f} → {counted['control']['real']:.0f}", flush=True)
    dpo: dict[str, list[dict]] = {way: [] for way in WAYS}
    control: dict[str, list[dict]] = {way: [] for way in WAYS}
    lora: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for way in (WAYS if round_ % 2 == 0 else WAYS[::-1]):
            result, model, seconds = train_demo_dpo(model_dir, tokenizer, pairs, reference, args.steps,
                                                    mlp_real_tokens=way == "real")
            dpo[way].append({"seconds": seconds, "losses": [h["loss"] for h in result["history"]]})
            lora[way] = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}
            seconds_c, losses_c = control_steps(model_dir, tokenizer, pairs, args.steps, mlp_real_tokens=way == "real")
            control[way].append({"seconds": seconds_c, "losses": losses_c})
            print(f"  round {round_ + 1} {way:<6} DPO steps {[round(s, 2) for s in seconds]} s, control steps "
                  f"{[round(s, 2) for s in seconds_c]} s, load {os.getloadavg()[0]:.2f}", flush=True)
    report = {"pairs": len(pairs), "steps": args.steps, "positions_per_step": counted, "dpo": _compare(dpo),
              "control": _compare(control), "load_1m_end": os.getloadavg()[0]}
    report["dpo"]["lora_abs_diff_max"] = max(float((lora["padded"][k] - lora["real"][k]).abs().max())
                                             for k in lora["padded"])
    print("\n".join(_summary(name, report[name]) for name in ("dpo", "control")))
    print(f"DPO's trained LoRA weights: largest difference {report['dpo']['lora_abs_diff_max']:.2e}")
    return _save(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
