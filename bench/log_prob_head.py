"""The LM head on the CPU: TRL's chunked kernel against the whole logits (`faithforge.training.log_prob_head`),
side by side in one process (issue 28, item 2: training without waste).

    python bench/log_prob_head.py --workspace WS [--steps 8] [--rounds 2] [--out FILE.json]

WS is a finished `faithforge demo --real` workspace (its model, train pairs and reference cache, as
bench/dpo_shared_prompt.py reads them). Two parts, the variants interleaved:

1. The head alone at a real DPO step's shape: the completion tokens of the first 8 train pairs (chosen and
   rejected) × SmolLM2's 49,152 words, hidden states of the real model, forward + backward with the outputs the
   DPO trainer asks for (log-probs, entropy, mean logit, top-1); median seconds, and the largest difference of
   each output and of the hidden-state gradient.
2. Real TRL DPO steps with the demo's settings (bench/dpo_shared_prompt.py's `train_demo_dpo`): `trl` (the limit
   set to 0, so every call goes to TRL's kernel) against `whole` (the default); median step time without each
   run's first step, losses step by step and their largest difference, and the trained LoRA weights' largest
   difference.
3. The SFT control's steps (`faithforge.training.sft.train_sft` on the chosen answers, the demo's settings:
   8 a step, LoRA r 16, lr 1e-4, max length 256) both ways: median step time, losses and their largest difference.

`--parts` picks parts (default all three).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from dpo_shared_prompt import _save, demo_workspace, train_demo_dpo, workspace_parser  # noqa: E402

DPO_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


def head_alone(model_dir: Path, tokenizer, pairs, rounds: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    from faithforge.training.log_prob_head import completion_log_probs
    from faithforge.training.reference_cache import tokenize_pair

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows, targets = [], []
    for pair in pairs[:8]:
        t = tokenize_pair(tokenizer, pair)
        for answer in (t["chosen_ids"], t["rejected_ids"]):
            ids = torch.tensor([t["prompt_ids"] + answer])
            with torch.no_grad():
                hidden = model.get_decoder()(input_ids=ids).last_hidden_state[0, :-1]
            start = len(t["prompt_ids"]) - 1
            rows.append(hidden[start:])
            targets.append(ids[0, start + 1:])
    hidden, target = torch.cat(rows), torch.cat(targets)
    weight = model.get_output_embeddings().weight.detach()
    ways = {"trl": ChunkedLogProbFunction.apply, "whole": completion_log_probs}

    def run(way):
        h = hidden.clone().requires_grad_(True)
        started = time.perf_counter()
        out = ways[way](h, weight, None, target, 1.0, 32768, None, 1.0, DPO_OUTPUTS)
        (out[0].sum() + 0.1 * out[1].sum()).backward()
        return time.perf_counter() - started, out, h.grad

    seconds: dict[str, list[float]] = {way: [] for way in ways}
    results = {}
    for round_ in range(rounds + 1):  # round 0 warms up
        for way in (("trl", "whole") if round_ % 2 == 0 else ("whole", "trl")):
            took, out, grad = run(way)
            if round_:
                seconds[way].append(took)
            results[way] = (out, grad)
    (trl_out, trl_grad), (whole_out, whole_grad) = results["trl"], results["whole"]
    diff = {name: float((a.float() - b.float()).abs().max()) for name, a, b in
            zip(("log_probs", "entropy", "mean_logits"), trl_out[:2] + trl_out[3:4], whole_out[:2] + whole_out[3:4])}
    diff["is_top1_equal"] = bool(torch.equal(trl_out[4], whole_out[4]))
    diff["hidden_grad"] = float((trl_grad - whole_grad).abs().max())
    median = {way: statistics.median(s) for way, s in seconds.items()}
    return {"tokens": int(hidden.shape[0]), "vocab": int(weight.shape[0]), "median_seconds": median,
            "speedup": median["trl"] / median["whole"], "max_abs_diff": diff}


def control_steps(model_dir: Path, tokenizer, pairs, steps: int, **settings) -> tuple[list[float], list[float]]:
    """(each step's seconds, each step's loss) of the SFT control trained `steps` steps from a fresh adapter
    (`settings`: more `train_sft` keywords)."""
    import torch
    from transformers import AutoModelForCausalLM

    from faithforge.training.modeling import attach_lora, use_chunked_head_loss
    from faithforge.training.sft import SftExample, train_sft

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    policy = attach_lora(model, r=16, alpha=32, dropout=0.0, quantized=False, gradient_checkpointing=False)
    use_chunked_head_loss(policy)
    examples = [SftExample(p["prompt"], p["chosen"][0]["content"]) for p in pairs]
    marks = [time.perf_counter()]
    losses = train_sft(policy, tokenizer, examples, steps=steps, batch_size=8, learning_rate=1e-4, seed=0,
                       max_length=256, on_step=lambda s, loss: marks.append(time.perf_counter()), **settings)
    return [b - a for a, b in zip(marks, marks[1:])], losses


def main() -> int:
    import warnings

    p = workspace_parser(__doc__, "log_prob_head", 8, "DPO steps per run (the first is left out as warm-up)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 3 or 1,2")
    args = p.parse_args()
    parts = {int(x) for x in args.parts.split(",")}
    warnings.filterwarnings("ignore")
    import torch

    from faithforge.training import log_prob_head

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model_dir, _, reference, pairs, tokenizer = demo_workspace(args.workspace, args.model)
    report: dict = {"dpo_steps": args.steps}
    limit = log_prob_head.MATERIALIZE_LIMIT_BYTES
    if 3 in parts:
        control: dict[str, list] = {"trl": [], "whole": []}
        for round_ in range(args.rounds):
            for way in (("trl", "whole") if round_ % 2 == 0 else ("whole", "trl")):
                log_prob_head.MATERIALIZE_LIMIT_BYTES = 0 if way == "trl" else limit
                try:
                    control[way].append(control_steps(model_dir, tokenizer, pairs, args.steps))
                finally:
                    log_prob_head.MATERIALIZE_LIMIT_BYTES = limit
                print(f"  control round {round_ + 1} {way:<5} steps "
                      f"{[round(x, 2) for x in control[way][-1][0]]} s", flush=True)
        median = {way: statistics.median(x for seconds, _ in runs for x in seconds[1:]) for way, runs in control.items()}
        loss_diff = max(abs(a - b) for (_, t), (_, w) in zip(control["trl"], control["whole"]) for a, b in zip(t, w))
        report["control"] = {"median_step_seconds": median, "step_speedup": median["trl"] / median["whole"],
                             "loss_abs_diff_max": loss_diff}
        print(f"control step median: TRL's kernel {median['trl']:.2f} s, whole logits {median['whole']:.2f} s "
              f"({median['trl'] / median['whole']:.2f}×); largest |Δloss| {loss_diff:.2e}", flush=True)
    if 1 in parts:
        report["head_alone"] = alone = head_alone(model_dir, tokenizer, pairs, max(3, args.rounds))
        print(f"head alone, {alone['tokens']} tokens × {alone['vocab']} words, forward + backward: TRL's kernel "
          f"{alone['median_seconds']['trl']:.3f} s, whole logits {alone['median_seconds']['whole']:.3f} s "
          f"({alone['speedup']:.2f}×); largest differences {alone['max_abs_diff']}", flush=True)
    if 2 not in parts:
        return _save({**report, "load_1m_end": os.getloadavg()[0]}, args.out)
    runs: dict[str, list[dict]] = {"trl": [], "whole": []}
    lora: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for way in (("trl", "whole") if round_ % 2 == 0 else ("whole", "trl")):
            log_prob_head.MATERIALIZE_LIMIT_BYTES = 0 if way == "trl" else limit
            try:
                result, model, seconds = train_demo_dpo(model_dir, tokenizer, pairs, reference, args.steps)
            finally:
                log_prob_head.MATERIALIZE_LIMIT_BYTES = limit
            runs[way].append({"seconds": seconds, "losses": [h["loss"] for h in result["history"]]})
            lora[way] = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}
            print(f"  round {round_ + 1} {way:<5} steps {[round(s, 2) for s in seconds]} s, load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
    median = {way: statistics.median(s for run in rs for s in run["seconds"][1:]) for way, rs in runs.items()}
    loss_diff = max(abs(a - b) for t, w in zip(runs["trl"], runs["whole"]) for a, b in zip(t["losses"], w["losses"]))
    lora_diff = max(float((lora["trl"][k] - lora["whole"][k]).abs().max()) for k in lora["trl"])
    report.update({"median_step_seconds": median,
              "step_speedup": median["trl"] / median["whole"], "loss_abs_diff_max": loss_diff,
              "lora_abs_diff_max": lora_diff, "losses": {k: [r["losses"] for r in v] for k, v in runs.items()},
              "load_1m_end": os.getloadavg()[0]})
    print(f"DPO step median: TRL's kernel {median['trl']:.2f} s, whole logits {median['whole']:.2f} s "
          f"({report['step_speedup']:.2f}×); largest |Δloss| {loss_diff:.2e}, largest |ΔLoRA| {lora_diff:.2e}")
    return _save(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
