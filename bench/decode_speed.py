"""Benchmark: per-token decoding time of PrefixCachedEngine vs model.generate on a real model (SmolLM2-135M).

    faithforge model import --smollm2 /tmp/smollm2      # once
    python bench/decode_speed.py --model /tmp/smollm2

Per-token decode time excludes the prompt: each variant runs the same greedy request with max_new_tokens=1
and with max_new_tokens=N; (t_N - t_1) / (tokens_N - 1) is the time per decoded token. Variants are
interleaved repetition by repetition (the CPU is shared: interleaving spreads other jobs' load over both) and
the median is reported, with the ratio engine / generate (<= 1.0: the engine decodes no slower). Both variants
must produce the same tokens (checked). JSON results go to bench/out/decode_speed.json.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faithforge.engine import PrefixCachedEngine, SamplingConfig  # noqa: E402

SYSTEM = "You are a helpful assistant. Answer in detail."
REQUEST = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (e.g. from `faithforge model import --smollm2`)")
    p.add_argument("--tokens", type=int, default=64, help="tokens decoded per long run")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions per variant")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "decode_speed.json")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from faithforge.training.modeling import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, quantization=None, device="cpu")
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": REQUEST}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    engine = PrefixCachedEngine(model, tokenizer, messages[:1])

    def run_generate(n: int) -> tuple[float, list[int]]:
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=n, do_sample=False)
        return time.perf_counter() - started, out[0, ids["input_ids"].shape[1]:].tolist()

    def run_engine(n: int) -> tuple[float, list[int]]:
        started = time.perf_counter()
        result = engine.generate(REQUEST, SamplingConfig(temperature=0.0, max_new_tokens=n))
        return time.perf_counter() - started, result.token_ids

    variants = {"generate": run_generate, "engine": run_engine}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for run in variants.values():  # warm-up
            run(2)
        per_token: dict[str, list[float]] = {name: [] for name in variants}
        tokens: dict[str, list[int]] = {}
        for rep in range(args.reps):
            for name, run in variants.items():
                short, _ = run(1)
                long, produced = run(args.tokens)
                tokens[name] = produced
                per_token[name].append((long - short) / max(1, len(produced) - 1) * 1000)
            print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{n} {v[-1]:.1f} ms/token" for n, v in per_token.items()),
                  flush=True)
    deprecations = sorted({str(w.message)[:120] for w in caught if "past_key_values" in str(w.message)})
    median = {name: statistics.median(values) for name, values in per_token.items()}
    result = {
        "model": args.model, "threads": args.threads, "tokens": len(tokens["engine"]),
        "same_tokens": tokens["engine"] == tokens["generate"],
        "ms_per_token": {name: round(v, 2) for name, v in median.items()},
        "all_ms_per_token": {name: [round(x, 2) for x in v] for name, v in per_token.items()},
        "engine_over_generate": round(median["engine"] / median["generate"], 3),
        "past_key_values_deprecation_warnings": deprecations,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
