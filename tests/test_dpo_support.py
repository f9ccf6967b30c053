"""Helpers shared by the reference-cache, DPO and pairs tests (this module holds no tests itself)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from faithforge.data.pairs import build_synthetic_pairs
from faithforge.data.teacher import generate_split

REPO = Path(__file__).resolve().parents[1]
TRAIN = dict(micro_batch=2, grad_accum=1, learning_rate=5e-3, beta=0.1, seed=7)


def dpo_args(output_dir: str | Path, **settings):
    """The DPO arguments these tests train with (`TRAIN`), with `settings` on top."""
    from faithforge.training.dpo import DpoArguments

    return DpoArguments(output_dir=str(output_dir), **{**TRAIN, **settings})


def make_pairs(count: int, seed: int = 0) -> list[dict]:
    """Synthetic pairs from `count` teacher examples (every example gives a hallucination pair, some an omission)."""
    pairs, _ = build_synthetic_pairs(generate_split("train", count, seed, 0.5), omission_share=1.0, seed=seed)
    return pairs


def load(model_dir: str | Path):
    from faithforge.training.modeling import load_causal_lm, load_tokenizer

    return load_causal_lm(model_dir, quantization=None, device="cpu"), load_tokenizer(model_dir)


def lora_policy(model_dir: str | Path, seed: int = 0):
    """The tiny model with fresh LoRA adapters, initialized identically for a given seed, dropout off."""
    import torch

    from faithforge.training.modeling import attach_lora

    model, tokenizer = load(model_dir)
    torch.manual_seed(seed)
    return attach_lora(model, r=4, alpha=8, dropout=0.0, quantized=False, gradient_checkpointing=False), tokenizer


def build_cache(model_dir: str | Path, pairs: list[dict], directory: str | Path, *, shard_size: int = 4,
                max_length: int | None = None, batch_size: int = 3, on_shard=None):
    """Compute (or resume) the reference cache of the model at `model_dir`; returns (cache, summary)."""
    from faithforge.training.reference_cache import ReferenceCache, cache_key, compute_reference_cache, weights_fingerprint

    model, tokenizer = load(model_dir)
    key, components = cache_key(weights=weights_fingerprint(model_dir), tokenizer=tokenizer, max_length=max_length,
                                truncation_mode="keep_start", quantization=None, pairs=pairs)
    cache = ReferenceCache(directory, key, components, shard_size)
    summary = compute_reference_cache(model, tokenizer, pairs, cache, batch_size=batch_size, max_length=max_length,
                                      vocab_chunk=37, on_shard=on_shard)
    return cache, summary


def start_script(code: str, marker: Path) -> subprocess.Popen:
    """Run `code` in a fresh Python (one torch thread) with the repo and tests importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    prelude = "import torch; torch.set_num_threads(1)\n"
    return subprocess.Popen([sys.executable, "-c", prelude + code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def kill_when(process: subprocess.Popen, marker: Path, timeout: float = 180.0) -> None:
    """SIGKILL `process` as soon as `marker` exists (fail if it exits or the marker never shows)."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"the child exited ({process.returncode}) before the kill point:\n"
                                 f"{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the child never reached the kill point")
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def lora_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}
