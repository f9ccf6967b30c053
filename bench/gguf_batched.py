"""llama.cpp sampling one sequence at a time against many sequences a step (issue 28, item 1).

    python bench/gguf_batched.py --model DIR [--sources 32] [--k 4] [--rounds 2] [--batches 1,16,64]
                                 [--greedy-questions 64] [--out FILE.json]

The pairs stage's shape on the real demo's task: `--sources` grounded-qa questions of the *validation* split, each
sampled `--k` times at temperature 1 (the k samples of a source together), the demo's system prompt, 64 new tokens
at most, SmolLM2-135M-Instruct's Q4_1 GGUF (the file the pairs stage samples from), 2 threads. Printed side by side
from one process:

1. Speed: each `--batches` size (1 = one sequence at a time, what the stage did before) runs the same prompts with
   the same seed, the sizes interleaved in a rotating order for `--rounds` rounds; tokens/s as the median.
2. The same distribution: every sample of the first round is judged by `grounding` (the judge that chooses the
   demo's pairs); the flagged rate per size with its Wilson 95% interval, and whether each rate lies inside the
   others' interval. The draws differ between sizes (a step's arithmetic depends on the rows in it), the
   distribution must not.
3. Greedy agreement: `--greedy-questions` distinct questions, greedy (40 tokens), among llama.cpp at batch 1,
   llama.cpp at the largest size and the fp32 prefix engine on the imported folder (the same weight values):
   answers token-identical, and at each first divergence the fp32 model's logit gap between the two tokens (a
   small gap is a near-tie that rounding flips). `--greedy-only` runs this part alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_NEW_TOKENS = 64  # the demo's evaluate.max_new_tokens, which caps the pairs stage's samples too


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="SmolLM2 imported with `faithforge model import --smollm2 DIR`")
    p.add_argument("--sources", type=int, default=32)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--greedy-questions", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="the data seed and the sampling seed")
    p.add_argument("--greedy-only", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gguf_batched.json")
    return p.parse_args()


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def flagged_rate(judge, examples, k: int, results) -> dict:
    from faithforge.evaluation.metrics import wilson_interval
    from faithforge.training.onpolicy_pairs import score_summary

    flagged = sum(bool(score_summary(judge, examples[i // k].source, r.text.strip(), list(examples[i // k].key_facts),
                                     1.0)["hallucinated"]) for i, r in enumerate(results))
    lo, hi = wilson_interval(flagged, len(results), 0.95)
    return {"samples": len(results), "flagged": flagged, "rate": round(flagged / len(results), 3),
            "ci95": [round(lo, 3), round(hi, 3)],
            "mean_tokens": round(statistics.mean(len(r.token_ids) for r in results), 1)}


def greedy_agreement(args, sampler, tokenizer, examples, batch: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from faithforge.data.grounded_qa import SYSTEM_PROMPT
    from faithforge.engine import PrefixCachedEngine, SamplingConfig

    questions = [e.source for e in examples[: args.greedy_questions]]
    greedy = SamplingConfig(max_new_tokens=40)
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    engine = PrefixCachedEngine(model, tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
    with torch.inference_mode():
        answers = {"llama.cpp batch 1": sampler.generate_batch(questions, greedy, batch_size=1),
                   f"llama.cpp batch {batch}": sampler.generate_batch(questions, greedy, batch_size=batch),
                   "fp32 engine": engine.generate_batch(questions, greedy, batch_size=16)}
        names, out = list(answers), {}
        print(f"\n== greedy, {len(questions)} distinct questions, <= 40 tokens ==")
        for i, a_name in enumerate(names):
            for b_name in names[i + 1:]:
                identical, gaps = 0, []
                for q, a, b in zip(questions, answers[a_name], answers[b_name]):
                    a, b = a.token_ids, b.token_ids
                    at = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None)
                    identical += a == b
                    if at is not None:
                        prompt = engine.renderer.render(engine.renderer.request_turns(q))
                        logits = model(torch.tensor([prompt + a[:at]])).logits[0, -1]
                        gaps.append(abs(float(logits[a[at]] - logits[b[at]])))
                key = f"{a_name} vs {b_name}"
                out[key] = {"identical": identical, "questions": len(questions),
                            "fp32_gap_median": round(statistics.median(gaps), 3) if gaps else None,
                            "fp32_gap_max": round(max(gaps), 3) if gaps else None}
                print(f"  {key:<42} identical {identical}/{len(questions)}; fp32 logit gap at the first "
                      f"divergence: median {out[key]['fp32_gap_median']}, max {out[key]['fp32_gap_max']}")
    return out


def write(out: Path, report: dict) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def main() -> int:
    args = parse_args()
    from faithforge.data.grounded_qa import SYSTEM_PROMPT, generate_questions
    from faithforge.engine import SamplingConfig
    from faithforge.evaluation import get_judge
    from faithforge.stages.sampler import gguf_of, gguf_sampler
    from faithforge.training.modeling import load_tokenizer

    batches = [int(b) for b in args.batches.split(",")]
    tokenizer = load_tokenizer(args.model)
    gguf = gguf_of(args.model)
    if gguf is None:
        raise SystemExit(f"{args.model} was not imported from a GGUF at float32: import it with --smollm2")
    sampler = gguf_sampler(gguf, args.model, tokenizer, SYSTEM_PROMPT, n_ctx=0, threads=args.threads)
    examples = list(generate_questions("val", max(args.sources, args.greedy_questions), args.seed))
    prompts = [e.source for e in examples[: args.sources] for _ in range(args.k)]
    sampling = SamplingConfig(temperature=1.0, seed=args.seed, max_new_tokens=MAX_NEW_TOKENS)
    print(f"SmolLM2-135M {gguf.name}, {sampler.threads} threads; {args.sources} sources x {args.k} samples; "
          f"load at start {load_avg()}", flush=True)
    sampler.generate_batch(prompts[:4], sampling, batch_size=4)  # warm-up, untimed
    if args.greedy_only:
        report = {"greedy": greedy_agreement(args, sampler, tokenizer, examples, batches[-1])}
        return write(args.out, report)

    speeds: dict[int, list[float]] = {b: [] for b in batches}
    first: dict[int, list] = {}
    for r in range(args.rounds):
        for b in batches[r % len(batches):] + batches[: r % len(batches)]:
            started = time.perf_counter()
            results = sampler.generate_batch(prompts, sampling, batch_size=b)
            seconds = time.perf_counter() - started
            speeds[b].append(sum(len(x.token_ids) for x in results) / seconds)
            first.setdefault(b, results)
            print(f"  round {r + 1} batch {b}: {seconds:.1f} s, {speeds[b][-1]:.1f} tokens/s", flush=True)
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "load_1m_after_speed": load_avg(),
                    "speed": {}, "sampled": {}, "greedy": {}}
    base = statistics.median(speeds[batches[0]])
    print(f"\n== speed, median of {args.rounds} interleaved rounds (load {report['load_1m_after_speed']}) ==")
    for b in batches:
        tps = statistics.median(speeds[b])
        report["speed"][b] = {"tokens_per_s": round(tps, 1), f"x_batch_{batches[0]}": round(tps / base, 2)}
        print(f"  batch {b:>3}: {tps:7.1f} tokens/s  {tps / base:5.2f}x")

    judge = get_judge("grounding")
    print("\n== sampled at temperature 1, judged by grounding (first round) ==")
    for b in batches:
        row = report["sampled"][b] = flagged_rate(judge, examples, args.k, first[b])
        print(f"  batch {b:>3}: flagged {row['flagged']}/{row['samples']} = {row['rate']:.3f} "
              f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]  mean tokens {row['mean_tokens']}")
    rows = list(report["sampled"].values())
    inside = all(o["ci95"][0] <= r["rate"] <= o["ci95"][1] for r in rows for o in rows)
    report["sampled_each_rate_inside_every_interval"] = inside
    print(f"  each rate inside every other's 95% interval: {inside}")

    report["greedy"] = greedy_agreement(args, sampler, tokenizer, examples, batches[-1])
    return write(args.out, report)


if __name__ == "__main__":
    raise SystemExit(main())
