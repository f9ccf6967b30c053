"""Profile of one DPO step of the real demo on the CPU: where the time goes, and what bf16 autocast would change.

    faithforge model import --smollm2 /tmp/smollm2
    python bench/dpo_profile.py --model /tmp/smollm2

The step `run_dpo` takes in the real demo (SmolLM2-135M fp32, LoRA r 16 / alpha 32 on all linear layers as
`attach_lora` builds it, 8 pairs per step, prompt + answer at most 256 tokens, the cached reference), written
out by hand so each part can be timed: the policy forward on chosen + rejected (one padded batch of 16 rows),
the per-token log-probs of the answers, the DPO loss against fixed reference numbers, backward, AdamW step.
Pairs are the grounded-qa task's own (chosen = the faithful answer, rejected = the invented or the refusing
one) on the validation split. Reported, as medians over `--steps` steps after one warm-up, with variants
interleaved step by step:
  - forward / log-prob / backward / optimizer split (fp32, the demo's setting);
  - padding: share of pad tokens in the batch as the demo draws it (random order) vs length-bucketed batches;
  - bf16 autocast on the CPU: step time ratio, and the loss and gradient-norm difference from fp32 on the
    same batch and weights (a change is only worth taking if the loss stays equal within tolerance);
  - threads: 1 vs all cores.
The 1-minute load average is printed beside the figures: on a shared machine only the ratios mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--pairs", type=int, default=8, help="pairs per step (the demo's train.batch_size)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "dpo_profile.json")
    return p.parse_args()


def rows(tokenizer, examples, max_length):
    from faithforge.data.grounded_qa import prompt_messages

    out = []
    for e in examples:
        rejected = e.hallucinated or e.omission
        prompt = tokenizer.apply_chat_template(prompt_messages(e.source), tokenize=False, add_generation_prompt=True)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for answer in (e.faithful, rejected):
            a_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
            ids = (p_ids + a_ids)[:max_length]
            out.append((ids, len(p_ids)))
    return out  # chosen, rejected, chosen, rejected, ...


def batch(pairs_rows, pad_id):
    width = max(len(ids) for ids, _ in pairs_rows)
    input_ids = torch.full((len(pairs_rows), width), pad_id)
    mask = torch.zeros_like(input_ids)
    labels = torch.zeros_like(input_ids, dtype=torch.bool)
    for i, (ids, start) in enumerate(pairs_rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        labels[i, start: len(ids)] = True
    return input_ids, mask, labels


def step(model, opt, input_ids, mask, labels, ref, autocast: bool, beta=0.1) -> dict:
    t = {}
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=input_ids, attention_mask=mask).logits
    t["forward"] = time.perf_counter() - start
    start = time.perf_counter()
    logps = torch.gather(F.log_softmax(logits[:, :-1].float(), -1), 2, input_ids[:, 1:, None])[..., 0]
    seq = (logps * labels[:, 1:]).sum(-1)
    chosen, rejected = seq[0::2], seq[1::2]
    loss = -F.logsigmoid(beta * ((chosen - ref[0]) - (rejected - ref[1]))).mean()
    t["logprobs_loss"] = time.perf_counter() - start
    start = time.perf_counter()
    loss.backward()
    t["backward"] = time.perf_counter() - start
    grad_norm = float(torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1e9))
    start = time.perf_counter()
    if opt is not None:
        opt.step()
    model.zero_grad(set_to_none=True)
    t["optimizer"] = time.perf_counter() - start
    t["total"] = sum(t.values())
    return {"times": t, "loss": float(loss), "grad_norm": grad_norm}


def main() -> int:
    args = parse_args()
    warnings.filterwarnings("ignore")
    from transformers import AutoModelForCausalLM

    from faithforge.data.grounded_qa import generate_questions
    from faithforge.training.modeling import attach_lora, load_tokenizer

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    tokenizer = load_tokenizer(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = attach_lora(model, r=16, alpha=32, dropout=0.0, quantized=False, gradient_checkpointing=False)
    model.train()
    examples = list(generate_questions("val", args.pairs * (args.steps + 1) * 4, 0))
    all_rows = rows(tokenizer, examples, args.max_length)
    pairs = [all_rows[i: i + 2] for i in range(0, len(all_rows), 2)]
    rng = random.Random(0)
    rng.shuffle(pairs)

    def pad_share(groups):
        pads = total = 0
        for g in groups:
            flat = [r for pair in g for r in pair]
            width = max(len(ids) for ids, _ in flat)
            total += width * len(flat)
            pads += sum(width - len(ids) for ids, _ in flat)
        return pads / total

    random_batches = [pairs[i: i + args.pairs] for i in range(0, len(pairs) - args.pairs + 1, args.pairs)]
    by_length = sorted(pairs, key=lambda p: max(len(r[0]) for r in p))
    bucketed = [by_length[i: i + args.pairs] for i in range(0, len(by_length) - args.pairs + 1, args.pairs)]
    padding = {"random_order": round(pad_share(random_batches), 3), "length_bucketed": round(pad_share(bucketed), 3),
               "mean_tokens_per_row": round(statistics.mean(len(r[0]) for p in pairs for r in p), 1)}

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pad_id = tokenizer.pad_token_id
    variants = {"fp32": (False, cores), "bf16 autocast": (True, cores), "fp32 1 thread": (False, 1)}
    results = {name: [] for name in variants}
    diffs = []
    print(f"SmolLM2-135M + LoRA r16, {args.pairs} pairs/step, {cores} cores; load {os.getloadavg()[0]:.2f}")
    for s in range(args.steps + 1):
        input_ids, mask, labels = batch([r for pair in random_batches[s % len(random_batches)] for r in pair], pad_id)
        ref = (torch.full((args.pairs,), -20.0), torch.full((args.pairs,), -20.0))
        names = list(variants)
        order = names[s % len(names):] + names[: s % len(names)]
        same_batch = {}
        for name in order:
            autocast, threads = variants[name]
            torch.set_num_threads(threads)
            # no optimizer step inside the comparison: every variant sees the same weights and batch
            out = step(model, None, input_ids, mask, labels, ref, autocast)
            if s > 0:
                results[name].append(out)
            same_batch[name] = out
        torch.set_num_threads(cores)
        diffs.append({"loss_abs_diff": abs(same_batch["bf16 autocast"]["loss"] - same_batch["fp32"]["loss"]),
                      "grad_norm_rel_diff": abs(same_batch["bf16 autocast"]["grad_norm"] - same_batch["fp32"]["grad_norm"])
                      / max(same_batch["fp32"]["grad_norm"], 1e-12)})
        opt_out = step(model, opt, input_ids, mask, labels, ref, False)  # then one real step, so weights move
        if s > 0:
            results.setdefault("optimizer step (fp32)", []).append(opt_out)
    summary = {}
    for name, outs in results.items():
        summary[name] = {k: round(statistics.median(o["times"][k] for o in outs), 3) for k in outs[0]["times"]}
    base = summary["fp32"]["total"]
    report = {"load_1m": os.getloadavg()[0], "padding": padding, "median_seconds": summary,
              "ratio_vs_fp32": {n: round(v["total"] / base, 2) for n, v in summary.items()},
              "bf16_vs_fp32": {"loss_abs_diff_max": max(d["loss_abs_diff"] for d in diffs),
                               "grad_norm_rel_diff_max": max(d["grad_norm_rel_diff"] for d in diffs)}}
    for name, row in summary.items():
        print(f"  {name:<22} " + "  ".join(f"{k} {v:.2f} s" for k, v in row.items()))
    print(f"  step time / fp32: {report['ratio_vs_fp32']}")
    print(f"  padding share: random order {padding['random_order']:.1%}, length-bucketed {padding['length_bucketed']:.1%}"
          f" (mean {padding['mean_tokens_per_row']} tokens per row)")
    print(f"  bf16 autocast vs fp32 on the same batch: |Δloss| max {report['bf16_vs_fp32']['loss_abs_diff_max']:.2e}, "
          f"grad-norm relative difference max {report['bf16_vs_fp32']['grad_norm_rel_diff_max']:.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}; load at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
