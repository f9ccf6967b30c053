"""Calibrate the GPU gate: run the real stage code on CUDA, measure its peak, store a correction factor.

The file is JSON: `{"version": 1, "estimate_revision": n, "factors": {"<gpu name>|<model>|<stage>": measured ÷
predicted}}` (`estimate_revision`: `faithforge.gpu.estimate.ESTIMATE_REVISION` when measured); the planner
multiplies its estimate by the factor for the GPU, model and stage at hand. The model is a random-init
folder of the real shape (memory does not depend on the weights' values) loaded by the stages' own loader
(`faithforge.training.modeling.load_for_plan`: NF4 via bitsandbytes, `is_loaded_in_4bit` set, so peft and TRL take their
4-bit paths), and the measured code is the stages' own: `compute_reference_cache`, `run_dpo`, the engine.
`bench/gpu_estimate.py` and `bench/gpu_check.py` use the same functions.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from faithforge.core.errors import UserError
from faithforge.gpu.corrections import Corrections
from faithforge.gpu import estimate as gpu_estimate
from faithforge.gpu.estimate import CUDA_CONTEXT_BYTES, Estimate

NO_CUDA_MESSAGE = ("calibration needs a CUDA GPU (torch.cuda.is_available() is False here); run "
                   "`faithforge gpu calibrate` on the machine whose GPU you want to calibrate")


#: Calibration files whose stale factors this process has said it sets aside (said once per file, not per stage).
_SAID_STALE: set[str] = set()


def load_corrections(path: str | os.PathLike[str] | None) -> Corrections:
    """Read the calibration file; a missing file (or None) means no corrections yet. Factors measured against
    another revision of the estimates are set aside (said once in the log): the estimates run uncorrected until
    `faithforge gpu calibrate` measures again."""
    if path is None or not Path(path).is_file():
        return Corrections()
    try:
        stored = Corrections.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        raise UserError(f"calibration file {path} is unusable ({exc}); fix it or delete it and re-run "
                        f"`faithforge gpu calibrate`".replace("\n", " ")) from None
    if stored.current:
        return stored
    if str(path) not in _SAID_STALE:
        _SAID_STALE.add(str(path))
        logging.getLogger(__name__).warning(
            "calibration file %s was measured against estimate revision %d, and these estimates are revision %d: "
            "its %d factor(s) are not applied; re-run `faithforge gpu calibrate`", path, stored.estimate_revision,
            gpu_estimate.ESTIMATE_REVISION, len(stored.factors))
    return Corrections()


def save_corrections(path: str | os.PathLike[str], corrections: Corrections) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(corrections.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(target)


def require_cuda() -> Any:
    """Import torch and check CUDA; `UserError` with `NO_CUDA_MESSAGE` when there is none."""
    import torch

    if not torch.cuda.is_available():
        raise UserError(NO_CUDA_MESSAGE)
    return torch


@dataclass
class Measurement:
    """Peak memory over a block: CUDA peak reserved/allocated (torch's counters, reset on entry), or the
    process's peak RSS on the CPU (which cannot be reset: it is the lifetime peak)."""

    device: str
    peak_reserved_bytes: int | None = None
    peak_allocated_bytes: int | None = None
    peak_rss_bytes: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@contextmanager
def measure_peak(device: str) -> Iterator[Measurement]:
    """Reset the peak counters, run the block, read them (also when the block raises, e.g. on OOM)."""
    import gc
    import resource
    import time

    import torch

    result = Measurement(device=device)
    on_cuda = device == "cuda" and torch.cuda.is_available()
    if on_cuda:
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        yield result
    finally:
        if on_cuda:
            torch.cuda.synchronize()
            result.peak_reserved_bytes = int(torch.cuda.max_memory_reserved())
            result.peak_allocated_bytes = int(torch.cuda.max_memory_allocated())
        else:
            result.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        result.seconds = round(time.perf_counter() - started, 3)


def stage_peak(device: str) -> Callable[[], dict[str, Any]]:
    """For a stage's output: a function returning the CUDA peaks since now ({} off CUDA). Every GPU stage
    records what it really used beside what the gate planned."""
    import torch

    if device != "cuda" or not torch.cuda.is_available():
        return lambda: {}
    torch.cuda.reset_peak_memory_stats()
    return lambda: {"measured_peak_reserved_bytes": int(torch.cuda.max_memory_reserved()),
                    "measured_peak_allocated_bytes": int(torch.cuda.max_memory_allocated())}


def build_random_model_dir(config: Mapping[str, Any], out: str | os.PathLike[str], *, seed: int = 0,
                           init_device: str = "cpu") -> Path:
    """A random-init model folder of `config`'s shape (bf16 safetensors) with the tiny offline tokenizer and chat
    template, so every stage loads it through its own loader (`load_for_plan`), exactly as a user's model.
    Weight values do not change memory; rotary buffers are computed by the model's own constructor."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from faithforge.data.teacher import VOCABULARY_TEXTS
    from faithforge.training.tiny_model import build_tokenizer

    target = Path(out)
    if (target / "config.json").is_file():
        return target
    cfg = {k: v for k, v in dict(config).items() if k not in ("architectures", "torch_dtype", "dtype")}
    hf_config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    hf_config.use_cache = False
    torch.manual_seed(seed)
    with torch.device(init_device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    tokenizer = build_tokenizer(list(VOCABULARY_TEXTS))
    if len(tokenizer) > hf_config.vocab_size:
        raise UserError(f"the offline tokenizer has {len(tokenizer)} tokens, more than the shape's vocabulary")
    model.config.pad_token_id = tokenizer.pad_token_id
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del model
    return target


def pairs_of_length(tokenizer, count: int, seq_len: int) -> list[dict]:
    """Synthetic pairs whose prompt is padded with teacher sources until prompt + completion ≈ `seq_len` tokens."""
    from faithforge.data.pairs import build_synthetic_pairs
    from faithforge.training.reference_cache import tokenize_pair
    from faithforge.data.teacher import generate_split

    examples = list(generate_split("bench", count + 64, 0, 0.5))
    pairs, _ = build_synthetic_pairs(examples[:count], omission_share=0.0, seed=0)
    filler = [e.source.split() for e in examples]
    out = []
    for i, pair in enumerate(pairs[:count]):
        words: list[str] = []
        j = i
        while True:
            candidate = words + filler[j % len(filler)]
            trial = {**pair, "prompt": [pair["prompt"][0], {"role": "user", "content": " ".join(candidate)}]}
            t = tokenize_pair(tokenizer, trial)
            if len(t["prompt_ids"]) + max(len(t["chosen_ids"]), len(t["rejected_ids"])) > seq_len:
                if not words:  # one source is already longer: cut its words
                    words = candidate[: max(1, seq_len // 4)]
                break
            words, j = candidate, j + 1
        out.append({**pair, "prompt": [pair["prompt"][0], {"role": "user", "content": " ".join(words)}]})
    return out


def run_real_stage(stage: str, policy: Any, tokenizer: Any, *, seq_len: int, batch_size: int, steps: int,
                   workdir: str | os.PathLike[str], device: str, precision: str, pairs: int | None = None,
                   max_new_tokens: int = 16) -> dict[str, Any]:
    """Run the real stage code on a loaded model under `measure_peak`: `reference` = compute_reference_cache,
    `train` = reference cache then `run_dpo` (LoRA already attached to `policy`), `evaluate` = the prefix-cached
    engine's greedy summaries. Returns the measurement and what ran."""
    from faithforge.training.modeling import compute_dtype_name
    from faithforge.training.reference_cache import ReferenceCache, cache_key, compute_reference_cache

    work = Path(workdir)
    count = pairs or max(2 * batch_size, batch_size * steps)
    data = pairs_of_length(tokenizer, count, seq_len)
    key, components = cache_key(weights=f"random-{work.name}", tokenizer=tokenizer, max_length=seq_len,
                                truncation_mode="keep_start", quantization={"precision": precision}, pairs=data,
                                compute_dtype=compute_dtype_name(precision, device))
    cache = ReferenceCache(work / "refcache", key, components, shard_size=max(1, count))
    if stage == "evaluate":
        from faithforge.engine import PrefixCachedEngine, SamplingConfig
        from faithforge.data.teacher import SYSTEM_PROMPT

        engine = PrefixCachedEngine(policy, tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
        with measure_peak(device) as measured:
            engine.generate_batch([p["prompt"][1:] for p in data[:batch_size]],
                                  SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens), batch_size=batch_size)
        return {"stage": stage, **measured.to_dict()}
    if stage == "reference":
        with measure_peak(device) as measured:
            compute_reference_cache(policy, tokenizer, data, cache, batch_size=batch_size, max_length=seq_len)
        return {"stage": stage, **measured.to_dict()}
    from faithforge.training.dpo import DpoArguments, run_dpo

    with policy.disable_adapter():  # the reference is the base: adapters off (LoRA B = 0 gives the same numbers)
        compute_reference_cache(policy, tokenizer, data, cache, batch_size=batch_size, max_length=seq_len)
    on_gpu = device == "cuda"
    with measure_peak(device) as measured:
        result = run_dpo(policy, tokenizer, data, cache.load(), DpoArguments(
            output_dir=str(work / "run"), steps=steps, micro_batch=batch_size, grad_accum=1, learning_rate=1e-4,
            beta=0.1, max_length=seq_len, seed=0, checkpoint_every=steps + 1, gradient_checkpointing=on_gpu,
            optimizer="paged_adamw_8bit" if on_gpu else "adamw_torch", bf16=on_gpu))
    return {"stage": stage, "steps": result["steps"], **measured.to_dict()}


def measure_stage(config: Mapping[str, Any], stage: str, *, precision: str, seq_len: int, batch_size: int,
                  steps: int, lora_r: int = 16, max_new_tokens: int = 64, device: str = "cuda",
                  workdir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Build a random-init folder of `config`'s shape, load it as the stage's plan would, run the real stage.

    `device="cpu"` with a tiny config is the dry run the tests use; calibration itself runs on CUDA."""
    import tempfile

    from faithforge.training.modeling import attach_lora, load_for_plan, load_tokenizer
    from faithforge.gpu.planner import Plan

    with tempfile.TemporaryDirectory(prefix="ff-calibrate-", dir=workdir) as tmp:
        folder = build_random_model_dir(config, Path(tmp) / "model", init_device=device)
        plan = Plan.manual(stage, "gpu" if device == "cuda" else "cpu", precision=precision)
        model, loaded_on = load_for_plan(folder, plan)
        tokenizer = load_tokenizer(folder)
        if stage == "train":
            model = attach_lora(model, r=lora_r, alpha=2 * lora_r, dropout=0.0, quantized=precision == "nf4",
                                gradient_checkpointing=loaded_on == "cuda")
        return run_real_stage(stage, model, tokenizer, seq_len=seq_len, batch_size=batch_size, steps=steps,
                              workdir=Path(tmp) / "work", device=loaded_on, precision=precision,
                              max_new_tokens=max_new_tokens)


def correction_factor(estimate: Estimate, measured_reserved_bytes: int) -> float:
    """measured ÷ predicted, both including the CUDA context (which torch's reserved bytes leave out)."""
    return (measured_reserved_bytes + CUDA_CONTEXT_BYTES) / estimate.total_bytes
