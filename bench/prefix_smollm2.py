"""Benchmark: the prefix engine on the real SmolLM2-135M at the seed's system-prompt lengths, side by side with
re-encoding, `generate` with a deep-copied cache, and llama.cpp's own prompt cache on the same GGUF.

    faithforge model import --smollm2 /tmp/smollm2            # once (the fp32 folder the pipeline uses)
    python bench/prefix_smollm2.py --model /tmp/smollm2       # 1,024 / 2,048 / 4,096 / 6,287 tokens

For each system-prompt length L (a real text: this repository's README and BENCHMARKS, in SmolLM2's chat
template, cut to exactly L tokens), `--requests` user questions each get `--gen-tokens` greedy tokens (EOS
ignored in every variant, so each makes exactly that many). Variants, interleaved request by request in a
rotating order (a shared machine's load hits all alike):
  (a) transformers `generate`, re-encoding system prompt + question every time (fp32);
  (b) `generate` with a `copy.deepcopy` of a prefilled system-prompt cache (best stock usage);
  (c) the prefix engine (`PrefixCachedEngine.generate`, fp32, same weights), decoding with its one-row CPU
      kernels (`faithforge.engine.one_row`: oneDNN's linear, grouped split-K attention);
  (c') the same engine with those kernels off (`one_row_kernels=False`): stock PyTorch's linear and SDPA, so
      (c')/(c) is what the kernels buy and (b)/(c') what the cache alone buys;
  (d) llama.cpp (llama-cpp-python, in process) on the GGUF, re-encoding every time (`reset()` first);
  (e) llama.cpp on the GGUF keeping its context between requests: `Llama.generate` reuses the longest common
      prefix of what it holds (its own prompt cache), so only the question and the answer are computed;
  (f) the engine answering all the questions as one batch (`generate_batch`), the system prompt's states read
      once per step for every row (`faithforge.engine.prefix_attention`), against the one-by-one totals of (b)
      and (c): serving the same requests. Stock `generate` has no batched form over a prefilled cache with
      questions of different lengths (it would need padding between prompt and question);
  (g) the same batch with the system prompt copied into every row, as the engine batched before (f) existed.
(d) and (e) run on two separate `Llama` instances so re-encoding never evicts the cached one. The GGUF is the
wheel's Q4_1 (the transformers model is that file dequantized, so both compute with the same weight values) and,
with --f16, also an f16 GGUF written from the same dequantized tensors (`bench/gguf_f16.py`).

Reported per length: the median over requests of each per-request ratio (a/c, b/c, b/c', c'/c, d/e, and c/e:
the engine's time over llama.cpp's cached time, > 1 means llama.cpp is faster), the summed seconds per variant,
the one-off prefill of (c) and (e), and whether (a), (b), (c) and (c') gave the same tokens and how many leading
tokens llama.cpp shares with them. The 1-minute load average is printed beside the figures: on a shared
machine only the ratios mean anything. JSON results go to bench/out/prefix_smollm2.json.
"""

from __future__ import annotations

import argparse
import copy
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
from faithforge.training.reference_cache import common_prefix_length  # noqa: E402 - the one prefix comparison

QUESTIONS = [
    "Which stage takes the longest on CPU?",
    "What does the gate decide before each stage?",
    "How is a hallucination counted?",
    "Where are the preference pairs written?",
    "What does the reference pass compute?",
    "Which judge chose the pairs?",
]
SEED_LENGTH = 6287  # the seed field note's system prompt, in tokens


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="folder written by `faithforge model import --smollm2`")
    p.add_argument("--gguf", type=Path, default=None, help="GGUF for llama.cpp (default: the import's source)")
    p.add_argument("--lengths", default=f"1024,2048,4096,{SEED_LENGTH}", help="system-prompt lengths in tokens")
    p.add_argument("--requests", type=int, default=3, help="questions per length")
    p.add_argument("--gen-tokens", type=int, default=16, help="greedy tokens per question (EOS ignored)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch and llama.cpp threads")
    p.add_argument("--n-ctx", type=int, default=8192, help="llama.cpp context (SmolLM2's is 8,192)")
    p.add_argument("--f16", action="store_true", help="also time llama.cpp on an f16 GGUF of the same weights")
    p.add_argument("--no-llama", action="store_true", help="skip the llama.cpp variants")
    p.add_argument("--no-reencode", action="store_true",
                   help="skip (a), re-encoding (~21 s a request at 6,287 tokens), to repeat the other ratios quickly")
    p.add_argument("--batch-rounds", type=int, default=3, help="rounds of the batched variants (f) and (g)")
    p.add_argument("--document-words", type=int, default=0,
                   help="put a different document of about this many words before each question (0: none), "
                        "to time long per-row prompts, where the batch's prefill dominates")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "prefix_smollm2.json")
    return p.parse_args()


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def system_prompt_ids(tokenizer, length: int) -> list[int]:
    """SmolLM2's chat rendering of one system message, cut so the whole rendering is exactly `length` ids."""
    text = "\n\n".join((ROOT / name).read_text() for name in ("README.md", "BENCHMARKS.md"))
    head = tokenizer.encode("<|im_start|>system\n", add_special_tokens=False)
    tail = tokenizer.encode("<|im_end|>\n", add_special_tokens=False)
    body = tokenizer.encode(text, add_special_tokens=False)
    need = length - len(head) - len(tail)
    if need > len(body):
        raise SystemExit(f"the system-prompt text has {len(body)} tokens, fewer than the {need} asked for")
    return head + body[:need] + tail


def question_ids(tokenizer, question: str, document: str = "") -> list[int]:
    text = f"{document}\n\n{question}" if document else question
    return tokenizer.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n",
                            add_special_tokens=False)


def documents(count: int, words: int) -> list[str]:
    """`count` different passages of `words` words each, from the QAGS articles in bench/data (real news text)."""
    if words <= 0:
        return [""] * count
    rows = [json.loads(line) for line in (ROOT / "bench" / "data" / "qags-human-labels.jsonl").open()]
    return [" ".join(row["source"].split()[:words]) for row in rows[:count]]


def hf_generate(model, ids: list[int], n: int, cache=None) -> list[int]:
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), past_key_values=cache, do_sample=False,
                         max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def llama_tokens(llm, ids: list[int], n: int, *, reset: bool) -> list[int]:
    """n greedy tokens after `ids` (EOS ignored: `Llama.generate` yields until told to stop). Without reset,
    `generate` keeps the longest common prefix of what the context already holds (llama.cpp's prompt cache)."""
    if reset:
        llm.reset()
    out = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if len(out) == n:
            break
    return out


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def open_llamas(gguf: Path, args) -> tuple:
    from llama_cpp import Llama

    kw = dict(n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads, verbose=False,
              logits_all=False)
    return Llama(model_path=str(gguf), **kw), Llama(model_path=str(gguf), **kw)


def bench_length(length: int, args, model, tokenizer, llamas: dict) -> dict:
    from transformers.cache_utils import DynamicCache

    n = args.gen_tokens
    prefix = system_prompt_ids(tokenizer, length)
    asked = (QUESTIONS * 4)[: args.requests + 1]
    questions = [question_ids(tokenizer, q, d) for q, d in zip(asked, documents(len(asked), args.document_words))]
    warm, questions = questions[0], questions[1:]
    greedy = SamplingConfig(max_new_tokens=n)
    with torch.inference_mode():
        engine, t_prefill = timed(lambda: PrefixCachedEngine(model, tokenizer, prefix))
        engine._eos = frozenset()  # EOS ignored here as in every variant: each request makes exactly n tokens
        exported = engine.export_prefix_cache()
        base = DynamicCache(config=model.config)
        for i, (k, v) in enumerate(exported.layers):
            base.update(k, v, i)
    del exported
    variants = {
        "reencode": lambda q: hf_generate(model, prefix + q, n),
        "deepcopy": lambda q: hf_generate(model, prefix + q, n, copy.deepcopy(base)),
        "engine": lambda q: engine.generate(q, greedy).token_ids,
        "engine_stock": lambda q: stock_kernels(engine, q, greedy),
    }
    if args.no_reencode:
        del variants["reencode"]
    prefill_llama = {}
    for kind, (fresh, cached) in llamas.items():
        variants[f"llama_{kind}_reencode"] = lambda q, llm=fresh: llama_tokens(llm, prefix + q, n, reset=True)
        variants[f"llama_{kind}_cached"] = lambda q, llm=cached: llama_tokens(llm, prefix + q, n, reset=False)
        cached.reset()
        _, prefill_llama[kind] = timed(lambda llm=cached: llama_tokens(llm, prefix, 1, reset=True))
    with torch.inference_mode():  # untimed warm-ups: lazy inits and allocators, and llama.cpp's cached context
        for name, fn in variants.items():  # holding prefix + a question, as it does between requests
            if name.endswith("reencode"):  # without the prefix: re-encoding it here would cost a timed request
                (hf_generate(model, warm, 2) if name == "reencode" else llama_tokens(llamas[name.split("_")[1]][0],
                                                                                     warm, 2, reset=True))
            else:
                fn(warm)
    names = list(variants)
    seconds = {name: [] for name in names}
    tokens = {name: [] for name in names}
    for r, q in enumerate(questions):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            with torch.inference_mode():
                out, t = timed(lambda: variants[name](q))
            seconds[name].append(t)
            tokens[name].append(out)
    batch_seconds, batch_tokens = batched_variants(engine, questions, greedy, args.batch_rounds)
    del base, engine

    def median_ratio(a: str, b: str) -> float | None:
        if a not in seconds or b not in seconds:
            return None
        return round(statistics.median(x / y for x, y in zip(seconds[a], seconds[b])), 2)

    ratios = {"reencode/engine": median_ratio("reencode", "engine"),
              "deepcopy/engine": median_ratio("deepcopy", "engine"),
              "deepcopy/engine_stock": median_ratio("deepcopy", "engine_stock"),
              "engine_stock/engine": median_ratio("engine_stock", "engine")}
    one_by_one = {name: sum(seconds[name]) for name in ("deepcopy", "engine")}
    for name, times in batch_seconds.items():
        best = statistics.median(times)
        ratios[f"deepcopy one by one/{name}"] = round(one_by_one["deepcopy"] / best, 2)
        ratios[f"engine one by one/{name}"] = round(one_by_one["engine"] / best, 2)
    if len(batch_seconds) == 2:
        ratios["engine_batch_copied/engine_batch"] = round(statistics.median(batch_seconds["engine_batch_copied"])
                                                           / statistics.median(batch_seconds["engine_batch"]), 2)
    agreement = {}
    for kind in llamas:
        ratios[f"llama_{kind} reencode/cached"] = median_ratio(f"llama_{kind}_reencode", f"llama_{kind}_cached")
        ratios[f"engine/llama_{kind}_cached"] = median_ratio("engine", f"llama_{kind}_cached")
        ratios[f"reencode/llama_{kind}_cached"] = median_ratio("reencode", f"llama_{kind}_cached")
        agreement[kind] = [common_prefix_length(a, b) for a, b in zip(tokens["engine"], tokens[f"llama_{kind}_cached"])]
    return {
        "length": len(prefix), "requests": len(questions), "gen_tokens": n, "load_1m_end": load_avg(),
        "engine_prefill_s": round(t_prefill, 2), "llama_prefill_s": {k: round(v, 2) for k, v in prefill_llama.items()},
        "seconds_total": {k: round(sum(v), 2) for k, v in seconds.items()},
        "seconds_per_request": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
        "median_ratios": ratios,
        "same_tokens_reencode_deepcopy_engine": (tokens.get("reencode", tokens["deepcopy"]) == tokens["deepcopy"]
                                                 == tokens["engine"] == tokens["engine_stock"]),
        "batch_seconds": {k: [round(x, 3) for x in v] for k, v in batch_seconds.items()},
        "batch_tokens_equal_one_by_one": {k: v == tokens["engine"] for k, v in batch_tokens.items()},
        "llama_cached_equals_llama_reencode": {k: tokens[f"llama_{k}_cached"] == tokens[f"llama_{k}_reencode"]
                                               for k in llamas},
        "llama_leading_tokens_shared_with_engine": agreement,
    }


def stock_kernels(engine, question: list[int], greedy) -> list[int]:
    """(c'): the engine's answer with its one-row kernels off (stock PyTorch linear and SDPA)."""
    engine.one_row_kernels = False
    try:
        return engine.generate(question, greedy).token_ids
    finally:
        engine.one_row_kernels = True


def batched_variants(engine, questions: list[list[int]], greedy, rounds: int) -> tuple[dict, dict]:
    """All questions as one batch of the engine, `rounds` times each, alternating: (f) `engine_batch`, the shared
    prefix read once per step (`faithforge.engine.prefix_attention`), and (g) `engine_batch_copied`, the prefix
    copied into every row as before it (forced by raising the batch runner's threshold). Seconds per round and
    the tokens of the last round per variant."""
    from faithforge.engine import batch as batch_module

    threshold = batch_module.MIN_SHARED_TOKENS
    settings = {"engine_batch": threshold, "engine_batch_copied": 10**9}
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    tokens: dict[str, list] = {}
    try:
        for r in range(rounds):
            for name in (list(settings) if r % 2 == 0 else list(settings)[::-1]):
                batch_module.MIN_SHARED_TOKENS = settings[name]
                with torch.inference_mode():
                    out, t = timed(lambda: engine.generate_batch(questions, greedy, batch_size=len(questions)))
                seconds[name].append(t)
                tokens[name] = [res.token_ids for res in out]
    finally:
        batch_module.MIN_SHARED_TOKENS = threshold
    return seconds, tokens


def print_length(row: dict) -> None:
    print(f"\n== system prompt {row['length']} tokens: {row['requests']} questions x {row['gen_tokens']} greedy "
          f"tokens (load {row['load_1m_end']}) ==")
    print(f"  prefill once: engine {row['engine_prefill_s']:.2f} s" + "".join(
        f", llama.cpp {k} {v:.2f} s" for k, v in row["llama_prefill_s"].items()))
    for name, total in row["seconds_total"].items():
        print(f"  {name:<24} {total:8.2f} s")
    print("  median ratios: " + "   ".join(f"{k} = {v:.2f}x" for k, v in row["median_ratios"].items() if v is not None))
    for name, times in row["batch_seconds"].items():
        print(f"  {name:<24} {statistics.median(times):8.2f} s  (all {row['requests']} questions in one batch; "
              f"rounds {times}; tokens = one by one: {row['batch_tokens_equal_one_by_one'][name]})")
    print(f"  same tokens (a)=(b)=(c)=(c'): {row['same_tokens_reencode_deepcopy_engine']}; llama.cpp cached = "
          f"re-encoded: {row['llama_cached_equals_llama_reencode']}; leading tokens llama.cpp shares with the "
          f"engine: {row['llama_leading_tokens_shared_with_engine']} of {row['gen_tokens']}")


def main() -> int:
    args = parse_args()
    warnings.filterwarnings("ignore")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from faithforge.training.model_import import read_import_record

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    llamas: dict = {}
    if not args.no_llama:
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            print("llama_cpp is not importable: the llama.cpp variants are skipped (pip install llama-cpp-python)")
        else:
            record = read_import_record(args.model) or {}
            gguf = args.gguf or Path(record.get("source", ""))
            if not gguf.is_file():
                raise SystemExit(f"no GGUF for llama.cpp: pass --gguf (the import record names {gguf})")
            llamas["gguf"] = open_llamas(gguf, args)
            if args.f16:
                from gguf_f16 import write_f16_gguf  # bench/gguf_f16.py, beside this file

                f16 = args.out.parent / (gguf.stem + ".f16.gguf")
                if not f16.is_file():
                    write_f16_gguf(gguf, f16)
                llamas["f16"] = open_llamas(f16, args)
    print(f"SmolLM2-135M fp32, {torch.get_num_threads()} torch threads; torch {torch.__version__}; "
          f"llama.cpp: {', '.join(llamas) or 'none'}; load at start {load_avg()}")
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        row = bench_length(length, args, model, tokenizer, llamas)
        print_length(row)
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
