"""Benchmark: the demo's warm start on the CPU with OpenMP's wait policy ACTIVE (spinning) vs PASSIVE (sleeping),
optionally next to busy processes that stand in for a loaded worker.

    python bench/cpu_wait_policy.py --steps 60 --threads 2 [--load 4]

Each variant runs in its own process (OMP_WAIT_POLICY is read once, when torch loads OpenMP): the demo's tiny
model, batch 32, `--steps` optimizer steps, `--threads` torch threads. `--load K` starts K pure-Python busy loops
for the duration. Prints training seconds per variant and the ratio ACTIVE / PASSIVE (> 1: PASSIVE is faster).
Why it matters: a pipeline run from the Prefect UI on a loaded 2-core worker took over 6 minutes for the warm start
alone; deployed runs now get OMP_WAIT_POLICY=PASSIVE (deployments/deploy.py PROCESS_ENV).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[2]))
from faithforge.core.config import load_config
from faithforge.stages.context import StageContext
from faithforge.stages.generate import generate_examples
from faithforge.stages.model import base_model, warm_start
from faithforge.gpu.planner import Plan
cfg = load_config(None, overrides={"workspace": sys.argv[1], "warm_start": {"steps": int(sys.argv[3]),
                                   "checkpoint_every": 1_000_000}}, environ={})
ctx = StageContext.open(cfg, None)
data, base = generate_examples(ctx), base_model(ctx)
out = warm_start(ctx, base, data, Plan.manual("warm_start", "cpu"))
print(json.dumps({"train_seconds": out.train_seconds, "threads": torch.get_num_threads()}))
"""


def _busy(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def run(policy: str, steps: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ff-wait-") as ws:
        env = {**os.environ, "OMP_WAIT_POLICY": policy, "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run([sys.executable, "-c", CHILD, ws, str(threads), str(steps)], env=env, cwd=REPO,
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--load", type=int, default=0, help="busy processes beside the runs")
    args = parser.parse_args()
    busy = [multiprocessing.Process(target=_busy, args=(time.time() + 3600,), daemon=True) for _ in range(args.load)]
    for proc in busy:
        proc.start()
    try:
        results = {policy: run(policy, args.steps, args.threads) for policy in ("ACTIVE", "PASSIVE")}
    finally:
        for proc in busy:
            proc.terminate()
    load = os.getloadavg()[0]
    print(f"warm start, {args.steps} steps, {args.threads} threads, {args.load} busy processes, "
          f"load average {load:.1f} on {os.cpu_count()} CPUs")
    for policy, result in results.items():
        print(f"  OMP_WAIT_POLICY={policy:<8} {result['train_seconds']:8.1f} s")
    ratio = results["ACTIVE"]["train_seconds"] / results["PASSIVE"]["train_seconds"]
    print(f"  ACTIVE / PASSIVE: {ratio:.2f}x")


if __name__ == "__main__":
    main()
