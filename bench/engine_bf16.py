"""Benchmark: the prefix-cached engine with SmolLM2-135M in bfloat16 against float32 on the CPU, side by side.

    faithforge model import --smollm2 /tmp/smollm2     # once
    python bench/engine_bf16.py --model /tmp/smollm2 [--questions 64] [--rounds 3] [--sources 60 --k 4]

The question (issue 28, "sampling and evaluation on the fastest engine present"): the evaluate stage writes 3 × 200
greedy answers and the pairs stage 640 samples through this engine or llama.cpp, and a CPU with native bfloat16
(AVX512-BF16 or AMX) multiplies bfloat16 about twice as fast as float32. What would bfloat16 weights give, and how
far do its answers move? On the real demo's task, the *validation* split (nothing on the test split is touched):

1. Speed: `--questions` greedy answers (≤ 40 tokens), batch 64 as the evaluate stage runs, the two dtypes
   interleaved in alternating order for `--rounds` rounds; the median tokens/s and the ratio.
2. Greedy agreement (`sampler_engines.greedy_agreement`, the float32 engine's answers at batch 16, which equal
   batch 64's): each bfloat16 answer token for token; at every first divergence the float32 model's logit gap
   between its own token and bfloat16's (a small gap is a near-tie that rounding flips).
3. Sampling at temperature 1 (`--sources` × `--k`, as the pairs stage draws): the pairs' judge (`grounding`) on
   every sample of each dtype, the flagged rate with its Wilson 95% interval, and whether each rate lies inside
   the other's interval (equal in distribution, the issue's test for sampled outputs).

The stages sample this way only when asked (`pairs.sampler` / `evaluate.sampler: engine-bf16`); this measures the
lever, and BENCHMARKS.md says what it saves on `demo --real`. The 1-minute load average is printed beside the figures: on a shared machine only the ratios mean anything.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from faithforge.engine import PrefixCachedEngine, SamplingConfig  # noqa: E402
from sampler_engines import greedy_agreement, write_results  # noqa: E402

MAX_NEW_TOKENS = 40  # the real demo's evaluate.max_new_tokens (pairs sample with the same budget)
BATCH = 64  # the real demo's evaluate batch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="folder written by `faithforge model import --smollm2`")
    counts = {"questions": (64, "greedy questions timed"), "rounds": (3, "interleaved timing rounds"),
              "sources": (60, "sources sampled at temperature 1"), "k": (4, "samples per source"),
              "threads": (len(os.sched_getaffinity(0)), "torch threads"),
              "seed": (0, "the data seed (grounded-qa validation questions) and the sampling seed")}
    for name, (default, what) in counts.items():
        p.add_argument(f"--{name}", type=int, default=default, help=f"{what} (default {default})")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "engine_bf16.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from transformers import AutoModelForCausalLM

    from faithforge.data.grounded_qa import SYSTEM_PROMPT, generate_questions
    from faithforge.evaluation import get_judge
    from faithforge.evaluation.metrics import wilson_interval
    from faithforge.training.modeling import load_tokenizer
    from faithforge.training.onpolicy_pairs import score_summary

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    models = {name: AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
              for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
    engines = {name: PrefixCachedEngine(m, tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
               for name, m in models.items()}
    examples = list(generate_questions("val", max(args.questions, args.sources), args.seed))
    questions = [e.source for e in examples[:args.questions]]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)
    print(f"SmolLM2-135M, {args.threads} threads, torch {torch.__version__}, native bfloat16 "
          f"{torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)

    # 1. speed, interleaved
    with torch.inference_mode():
        for engine in engines.values():  # warm-up, untimed
            engine.generate_batch(questions[:2], greedy, batch_size=BATCH)
        rates: dict[str, list[float]] = {n: [] for n in engines}
        answers: dict[str, list] = {}
        for r in range(args.rounds):
            for name in (list(engines) if r % 2 == 0 else list(engines)[::-1]):
                started = time.perf_counter()
                answers[name] = engines[name].generate_batch(questions, greedy, batch_size=BATCH)
                rates[name].append(sum(len(a.token_ids) for a in answers[name]) / (time.perf_counter() - started))
    speed = {n: round(statistics.median(v), 1) for n, v in rates.items()}
    report: dict = {"speed_tokens_per_s": speed, "ratio": round(speed["bfloat16"] / speed["float32"], 2),
                    "load_after_speed": round(os.getloadavg()[0], 2)}
    print(f"\n== greedy, {len(questions)} questions, batch {BATCH}, median of {args.rounds} rounds ==")
    print(f"  float32  {speed['float32']:7.1f} tokens/s\n  bfloat16 {speed['bfloat16']:7.1f} tokens/s  "
          f"({report['ratio']:.2f}×)")

    # 2. greedy agreement, measured as bench/sampler_engines.py measures llama.cpp against the float32 engine
    class AsSampler:  # the bfloat16 engine behind the sampler interface, at the evaluate stage's batch
        @staticmethod
        def generate_batch(prompts, sampling, batch_size=BATCH):
            del batch_size  # always the evaluate stage's batch (sampler_engines asks llama.cpp for one at a time)
            with torch.inference_mode():
                return engines["bfloat16"].generate_batch(prompts, sampling, batch_size=BATCH)

    report["greedy"] = greedy_agreement(models["float32"], engines["float32"], tokenizer, {"bfloat16": AsSampler},
                                        questions)["bfloat16"]
    row = report["greedy"]
    print(f"\n== greedy agreement: {row['identical']}/{row['answers']} answers token-identical; first divergences "
          f"at {row['first_divergence_positions']}; float32 logit gap there: median "
          f"{row['fp32_logit_gap_at_divergence']['median']}, max {row['fp32_logit_gap_at_divergence']['max']}")

    # 3. sampling at temperature 1, judged as the pairs stage judges
    judge = get_judge("grounding")
    sources = examples[:args.sources]
    prompts = [e.source for e in sources for _ in range(args.k)]
    sampling = SamplingConfig(temperature=1.0, seed=args.seed, max_new_tokens=MAX_NEW_TOKENS)
    report["sampled"] = {}
    for name, engine in engines.items():
        started = time.perf_counter()
        with torch.inference_mode():
            results = engine.generate_batch(prompts, sampling, batch_size=BATCH)
        seconds = time.perf_counter() - started
        flagged = sum(bool(score_summary(judge, sources[i // args.k].source, r.text.strip(),
                                         list(sources[i // args.k].key_facts), 1.0)["hallucinated"])
                      for i, r in enumerate(results))
        lo, hi = wilson_interval(flagged, len(results), 0.95)
        report["sampled"][name] = {"samples": len(results), "flagged": flagged,
                                   "rate": round(flagged / len(results), 3), "ci95": [round(lo, 3), round(hi, 3)],
                                   "seconds": round(seconds, 1)}
    a, b = report["sampled"]["float32"], report["sampled"]["bfloat16"]
    report["sampled"]["each_rate_inside_the_others_interval"] = (
        b["ci95"][0] <= a["rate"] <= b["ci95"][1] and a["ci95"][0] <= b["rate"] <= a["ci95"][1])
    print(f"\n== sampling at temperature 1: {args.sources} sources × {args.k}, judged by grounding ==")
    for name in engines:
        row = report["sampled"][name]
        print(f"  {name:<9} flagged {row['flagged']}/{row['samples']} = {row['rate']:.3f} [{row['ci95'][0]:.3f}, "
              f"{row['ci95'][1]:.3f}]  ({row['seconds']} s)")
    print(f"  each rate inside the other's 95% interval: "
          f"{report['sampled']['each_rate_inside_the_others_interval']}")
    report["load_end"] = round(os.getloadavg()[0], 2)
    write_results(args, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
