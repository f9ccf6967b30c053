"""Benchmark: one decode step of the prefix engine after a long system prompt, with each one-row kernel on or off.

    python bench/one_row_steps.py --model /tmp/smollm2            # SmolLM2-135M fp32, the seed's 6,287 tokens

`faithforge.engine.one_row` has two kernels: oneDNN's linear for one float32 row, and the grouped split-K
attention. This times a decode step (one token fed after prefix + the tokens so far, as `generate` does) five
ways, interleaved round by round so the machine's load hits all alike: stock PyTorch, attention only, linears
only, both, and both with the step written out op by op (`faithforge.engine.llama_step`, what `generate` runs
for a Llama model; checked bit-identical to "both" before timing). Prints milliseconds a step (median over
rounds) and each way's ratio to stock. The end-to-end figure (whole requests, against `generate` with a
deep-copied cache) is `bench/prefix_smollm2.py`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from prefix_smollm2 import SEED_LENGTH, system_prompt_ids  # noqa: E402 - bench/prefix_smollm2.py, beside this file

from faithforge.engine import PrefixCachedEngine  # noqa: E402
from faithforge.engine import llama_step  # noqa: E402
from faithforge.engine.forward import forward_token  # noqa: E402
from faithforge.engine.one_row import one_row_linears  # noqa: E402
from faithforge.engine.prefix_attention import engine_attention  # noqa: E402

WAYS = {"stock": (False, False, False), "attention only": (True, False, False), "linears only": (False, True, False),
        "both": (True, True, False), "both, written out": (True, True, True)}


def steps(engine: PrefixCachedEngine, attention: bool, linears: bool, written_out: bool, count: int) -> float:
    """Seconds per decode step over `count` steps appended after the prefix, then cropped back."""
    model, cache = engine.model, engine._wc.cache
    with torch.inference_mode(), contextlib.ExitStack() as kernels:
        if attention:
            kernels.enter_context(engine_attention(model))
        if linears:
            kernels.enter_context(one_row_linears(model))
        start = time.perf_counter()
        for i in range(count):
            past = cache.get_seq_length()
            if written_out:
                llama_step.decode_step(model, cache, 100 + i, past)
                continue
            forward_token(model, cache, 100 + i, past, **({"one_row": True} if attention else {}))
        seconds = (time.perf_counter() - start) / count
    cache.crop(-count)
    return seconds


def check_written_out(engine: PrefixCachedEngine) -> None:
    """The written-out step's logits equal the model's forward's with both kernels, bit for bit."""
    model, cache = engine.model, engine._wc.cache
    with torch.inference_mode(), engine_attention(model), one_row_linears(model):
        past = cache.get_seq_length()
        theirs = forward_token(model, cache, 100, past, one_row=True)
        cache.crop(-1)
        mine = llama_step.decode_step(model, cache, 100, past)
        cache.crop(-1)
    if not torch.equal(mine, theirs):
        diff = float((mine - theirs).abs().max())
        raise SystemExit(f"written-out step differs from the model's forward: max |diff| {diff}")
    print("written-out step: logits bit-identical to the model's forward with both kernels")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="folder written by `faithforge model import --smollm2`")
    p.add_argument("--length", type=int, default=SEED_LENGTH, help="system-prompt tokens")
    p.add_argument("--steps", type=int, default=16, help="decode steps per way and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    engine = PrefixCachedEngine(model, tokenizer, system_prompt_ids(tokenizer, args.length))
    if not llama_step.applies_to(model):
        raise SystemExit(f"{args.model}: not a plain transformers Llama model; the written-out step does not apply")
    check_written_out(engine)
    for way in WAYS.values():  # untimed warm-up
        steps(engine, *way, 2)
    seconds: dict[str, list[float]] = {name: [] for name in WAYS}
    for r in range(args.rounds):
        names = list(WAYS)[r % len(WAYS):] + list(WAYS)[:r % len(WAYS)]
        for name in names:
            seconds[name].append(steps(engine, *WAYS[name], args.steps))
    print(f"{args.length}-token prompt, {args.steps} steps x {args.rounds} rounds, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f}")
    stock = statistics.median(seconds["stock"])
    for name, values in seconds.items():
        ms = statistics.median(values) * 1000
        print(f"  {name:<17} {ms:6.1f} ms a step   stock / this = {stock * 1000 / ms:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
