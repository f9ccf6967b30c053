"""Benchmark: PrefixCachedEngine vs model.generate re-encoding the prefix, and vs generate + deep-copied cache.

CPU (default; a few minutes on 2 cores):
    python bench/prefix_cache.py
    -> random-init Llama, hidden 512, 8 layers, vocab 8192, fp32; a 2,000-token prefix; 10 requests of
       20 new tokens + 32 generated (greedy, no EOS so every request makes exactly 32 tokens).
GPU variant (the seed-002 scenario: 6,287-token system prompt, real-shape model, bf16):
    python bench/prefix_cache.py --preset gpu-3b
    = --device cuda --prefix-tokens 6287 --hidden 2048 --layers 36 --heads 16 --kv-heads 2 --intermediate 11008
      --vocab 151936 --dtype bfloat16 --sampling-requests 64 --turns 10 (Qwen2.5-3B shape, random init built on
      the GPU);
    on a bare lent GPU: bench/gpu_prefix.sh (installs the few wheels the image lacks, then this; no Prefect).
    On a machine without CUDA it says so and exits with status 2.
    `--dry-run`: the same code on a tiny shape on the CPU in seconds (what the test suite runs).

Reports, in one run and side by side:
  1. wall time of the 10 requests (variants interleaved request by request, after one warm-up each):
     (a) generate() re-encoding prefix + request every time,
     (b) generate() with a copy.deepcopy of a prefilled prefix cache, (c) the engine one by one,
     (d) the engine batched; ratios a/c and b/c; whether all variants produced the same tokens;
  2. restoring the prefix: crop (the engine's way) vs copy.deepcopy, ms per restore;
  3. sampling as the on-policy pairs stage does it (`--sampling-requests` > 0): the engine's `generate_batch`
     at temperature 1, seeded, `--sampling-batch` rows per forward, in generated tokens per second;
  4. memory: cache bytes and process RSS after each independent request (flat), then a 20-turn
     conversation: cache bytes per turn (prefix + the conversation's own tokens only) and RSS, with the
     KV bytes and time a re-encoding turn needs at turns 1, 10 and 20 (CUDA: peak allocated per turn).
tracemalloc is not used: torch tensors are allocated outside Python's allocator and it would not see them.
JSON results go to bench/out/prefix_cache.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faithforge.engine import PrefixCachedEngine, SamplingConfig  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefix-tokens", type=int, default=2000, help="prefix length in tokens")
    p.add_argument("--requests", type=int, default=10, help="independent requests")
    p.add_argument("--new-tokens", type=int, default=20, help="request tokens after the prefix")
    p.add_argument("--gen-tokens", type=int, default=32, help="tokens generated per request / turn")
    p.add_argument("--turns", type=int, default=20, help="turns of the multi-turn memory run")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=None, help="attention heads (default hidden / 64)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default = heads)")
    p.add_argument("--intermediate", type=int, default=None, help="MLP width (default 8/3 x hidden, rounded)")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch CPU threads")
    p.add_argument("--sampling-requests", type=int, default=0, help="requests of the sampling-rate run (0: skip)")
    p.add_argument("--sampling-batch", type=int, default=32, help="rows per forward in the sampling-rate run")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a named set of the options above")
    p.add_argument("--dry-run", action="store_true", help="the same code on a tiny shape on the CPU (seconds)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "prefix_cache.json")
    args = p.parse_args(argv)
    chosen = dict(PRESETS["dry-run"] if args.dry_run else PRESETS.get(args.preset, {}))
    for key, value in chosen.items():  # a preset sets what the command line left at its default
        if getattr(args, key) == p.get_default(key):
            setattr(args, key, value)
    return args


PRESETS = {
    # The seed field note's case: a 6,287-token system prompt on a Qwen2.5-3B-shaped model in bf16 on the GPU.
    "gpu-3b": dict(device="cuda", prefix_tokens=6287, hidden=2048, layers=36, heads=16, kv_heads=2,
                   intermediate=11008, vocab=151936, dtype="bfloat16", sampling_requests=64, turns=10),
    # The same code paths in seconds on the CPU.
    "dry-run": dict(device="cpu", prefix_tokens=64, requests=2, new_tokens=8, gen_tokens=4, turns=3, hidden=64,
                    layers=2, vocab=512, sampling_requests=4, sampling_batch=2),
}


def build(args):
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    heads = args.heads or max(1, args.hidden // 64)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=heads, num_key_value_heads=args.kv_heads or heads,
                         intermediate_size=args.intermediate or 64 * round(args.hidden * 8 / 3 / 64),
                         max_position_embeddings=max(4096, 2 * args.prefix_tokens), eos_token_id=None,
                         bos_token_id=None, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, args.dtype))
    try:
        with torch.device(args.device):  # built where it runs: a 3B random init on the CPU would take minutes
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config.eos_token_id = None  # every request generates exactly --gen-tokens tokens
    vocab = {f"w{i}": i for i in range(args.vocab)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="w1")),
                                        pad_token="w0")
    return model, tokenizer


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def rss_mb() -> float:
    """Resident set size from /proc (no psutil: a bare GPU image may lack it)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hf_generate(model, ids: list[int], n: int, device: str, cache=None) -> list[int]:
    x = torch.tensor([ids], device=device)
    out = model.generate(x, attention_mask=torch.ones_like(x), past_key_values=cache, do_sample=False,
                         max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    return out[0, len(ids):].tolist()


def bench_requests(args, model, tokenizer, prefix, requests) -> dict:
    """Variants run interleaved per request (engine, deep copy, re-encode), so load from other processes
    on a shared machine hits all of them alike; one warm-up request each is not timed."""
    from transformers.cache_utils import DynamicCache

    n = args.gen_tokens
    greedy = SamplingConfig(max_new_tokens=n)
    engine, t_prefill = timed(lambda: PrefixCachedEngine(model, tokenizer, prefix), args.device)
    with torch.inference_mode():
        exported = engine.export_prefix_cache()  # the same prefilled states, as a plain DynamicCache below
        base = DynamicCache(config=model.config)
        for i, (k, v) in enumerate(exported.layers):
            base.update(k.to(args.device), v.to(args.device), i)
    del exported

    variants = {
        "engine": lambda r: engine.generate(r, greedy).token_ids,
        "deepcopy": lambda r: hf_generate(model, prefix + r, n, args.device, copy.deepcopy(base)),
        "reencode": lambda r: hf_generate(model, prefix + r, n, args.device),
    }
    with torch.inference_mode():  # warm-up
        for fn in variants.values():
            fn(requests[0][:4])
        engine.generate_batch([r[:4] for r in requests[:2]], SamplingConfig(max_new_tokens=2))
    seconds = dict.fromkeys(variants, 0.0)
    tokens = {name: [] for name in variants}
    for r in requests:
        for name, fn in variants.items():
            with torch.inference_mode():
                out, t = timed(lambda: fn(r), args.device)
            seconds[name] += t
            tokens[name].append(out)
    with torch.inference_mode():
        batched, t_batch = timed(lambda: engine.generate_batch(requests, greedy, batch_size=len(requests)), args.device)
    del base
    return {
        "engine": engine, "prefill_s": t_prefill, "engine_s": seconds["engine"], "engine_batched_s": t_batch,
        "generate_deepcopy_s": seconds["deepcopy"], "generate_reencode_s": seconds["reencode"],
        "speedup_vs_reencode": seconds["reencode"] / seconds["engine"],
        "speedup_vs_deepcopy": seconds["deepcopy"] / seconds["engine"],
        "speedup_batched_vs_reencode": seconds["reencode"] / t_batch,
        "same_tokens": tokens["engine"] == tokens["deepcopy"] == tokens["reencode"],
        "same_tokens_batched": [r.token_ids for r in batched] == tokens["engine"],
    }


def bench_restore(engine, device: str, repeats: int = 20) -> dict:
    """ms per restore of the prefix: crop a request's extra tokens vs deep-copy the prefix cache."""
    wc = engine._wc
    prefix_len = len(engine.prefix_ids)
    crop_s = copy_s = 0.0
    extra = torch.zeros_like(wc.cache.layers[0].keys[..., :52, :])
    with torch.inference_mode():
        for _ in range(repeats):
            for i in range(len(wc.cache.layers)):
                wc.cache.update(extra, extra, i)  # as if a request had added 52 tokens
            _, t = timed(lambda: wc.cache.crop(-52), device)
            crop_s += t
            _, t = timed(lambda: copy.deepcopy(wc.cache), device)
            copy_s += t
    assert wc.cache.get_seq_length() == prefix_len
    return {"crop_ms": 1e3 * crop_s / repeats, "deepcopy_ms": 1e3 * copy_s / repeats,
            "prefix_cache_mb": engine.cache_nbytes / 2**20}


def bench_sampling(args, engine, vocab: int) -> dict:
    """Generated tokens/s of `generate_batch` at temperature 1 (seeded), as the on-policy pairs stage samples."""
    generator = torch.Generator().manual_seed(2)
    prompts = [torch.randint(2, vocab, (args.new_tokens,), generator=generator).tolist()
               for _ in range(args.sampling_requests)]
    sampling = SamplingConfig(temperature=1.0, seed=0, max_new_tokens=args.gen_tokens)
    with torch.inference_mode():
        engine.generate_batch(prompts[:2], SamplingConfig(temperature=1.0, seed=0, max_new_tokens=2))  # warm-up
        results, t = timed(lambda: engine.generate_batch(prompts, sampling, batch_size=args.sampling_batch),
                           args.device)
    tokens = sum(len(r.token_ids) for r in results)
    return {"requests": len(prompts), "batch": args.sampling_batch, "tokens": tokens, "seconds": t,
            "tokens_per_second": tokens / t}


def bench_memory(args, model, engine, requests) -> dict:
    greedy = SamplingConfig(max_new_tokens=args.gen_tokens)
    cuda = args.device.startswith("cuda")
    per_request = []
    for r in requests:
        engine.generate(r, greedy)
        per_request.append({"cache_mb": engine.cache_nbytes / 2**20, "held_mb": engine.cache_storage_nbytes / 2**20,
                            "rss_mb": rss_mb()})
    chat = engine.conversation()
    per_turn = []
    generator = torch.Generator().manual_seed(1)
    for turn in range(1, args.turns + 1):
        user = torch.randint(2, args.vocab, (args.new_tokens,), generator=generator).tolist()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        result, t = timed(lambda: chat.send(user, greedy), args.device)
        row = {"turn": turn, "seconds": t, "cache_mb": engine.cache_nbytes / 2**20, "rss_mb": rss_mb(),
               "context_tokens": result.prompt_tokens, "computed_tokens": result.computed_prompt_tokens}
        if cuda:
            row["peak_alloc_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if turn in (1, args.turns // 2, args.turns):
            transcript = list(engine._wc.ids[: result.prompt_tokens])  # prefix + history + this user turn
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            _, t_re = timed(lambda: hf_generate(model, transcript, args.gen_tokens, args.device), args.device)
            row["reencode_seconds"] = t_re
            row["reencode_cache_mb"] = (len(transcript) + args.gen_tokens) * engine.cache_nbytes / max(
                1, len(engine._wc.ids)) / 2**20
            if cuda:
                row["reencode_peak_alloc_mb"] = torch.cuda.max_memory_allocated() / 2**20
        per_turn.append(row)
    return {"per_request": per_request, "per_turn": per_turn}


def report(args, req: dict, restore: dict, mem: dict, sampling: dict | None) -> None:
    print(f"\n== {args.requests} requests: {args.prefix_tokens}-token prefix + {args.new_tokens} new tokens, "
          f"{args.gen_tokens} generated ==")
    print(f"  engine prefill (once)            {req['prefill_s']:7.2f} s")
    print(f"  (a) generate, re-encoding prefix {req['generate_reencode_s']:7.2f} s")
    print(f"  (b) generate + deepcopied cache  {req['generate_deepcopy_s']:7.2f} s")
    print(f"  (c) engine, one by one           {req['engine_s']:7.2f} s   a/c = {req['speedup_vs_reencode']:.2f}x   "
          f"b/c = {req['speedup_vs_deepcopy']:.2f}x")
    print(f"  (d) engine, batched              {req['engine_batched_s']:7.2f} s   a/d = {req['speedup_batched_vs_reencode']:.2f}x")
    print(f"  same greedy tokens a=b=c: {req['same_tokens']}   d=c: {req['same_tokens_batched']}")
    if sampling:
        print(f"\n== sampling as the pairs stage does (temperature 1, batch {sampling['batch']}) ==")
        print(f"  {sampling['requests']} requests, {sampling['tokens']} tokens in {sampling['seconds']:.2f} s: "
              f"{sampling['tokens_per_second']:.1f} generated tokens/s")
    print(f"\n== restoring the prefix ({restore['prefix_cache_mb']:.1f} MB of KV) ==")
    print(f"  crop {restore['crop_ms']:.3f} ms   deepcopy {restore['deepcopy_ms']:.2f} ms")
    print("\n== memory after each independent request (prefix cache MB / storage held MB / RSS MB) ==")
    print("  " + "  ".join(f"{r['cache_mb']:.1f}/{r['held_mb']:.1f}/{r['rss_mb']:.0f}" for r in mem["per_request"]))
    print(f"\n== {args.turns}-turn conversation ==")
    print("  turn  context  computed  cache MB  RSS MB  s/turn  | re-encode: s/turn  KV MB built"
          + ("  peak MB / re-encode peak MB" if args.device.startswith("cuda") else ""))
    for r in mem["per_turn"]:
        line = (f"  {r['turn']:4d}  {r['context_tokens']:7d}  {r['computed_tokens']:8d}  {r['cache_mb']:8.1f}  "
                f"{r['rss_mb']:6.0f}  {r['seconds']:6.2f}")
        if "reencode_seconds" in r:
            line += f"  |            {r['reencode_seconds']:6.2f}  {r['reencode_cache_mb']:11.1f}"
        if "peak_alloc_mb" in r:
            line += f"  {r['peak_alloc_mb']:.0f}" + (f" / {r['reencode_peak_alloc_mb']:.0f}" if "reencode_peak_alloc_mb" in r else "")
        print(line)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available on this machine: the GPU variant (--device cuda) needs an NVIDIA GPU. "
              "Run it on the GPU box, or drop --device cuda for the CPU benchmark.", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    model, tokenizer = build(args)
    generator = torch.Generator().manual_seed(0)
    prefix = torch.randint(2, args.vocab, (args.prefix_tokens,), generator=generator).tolist()
    requests = [torch.randint(2, args.vocab, (args.new_tokens,), generator=generator).tolist()
                for _ in range(args.requests)]
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.1f}M parameters, hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
          f"{args.dtype} on {args.device}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    req = bench_requests(args, model, tokenizer, prefix, requests)
    engine = req.pop("engine")
    sampling = bench_sampling(args, engine, args.vocab) if args.sampling_requests > 0 else None
    restore = bench_restore(engine, args.device)
    mem = bench_memory(args, model, engine, requests)
    report(args, req, restore, mem, sampling)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "params": params,
                                    "device": device_name, "load_1m": os.getloadavg()[0],
                                    "seconds": time.perf_counter() - started,
                                    "imported_prefect": any(m.split(".")[0] == "prefect" for m in sys.modules),
                                    "requests": req, "sampling": sampling, "restore": restore, "memory": mem},
                                   indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
