"""Calibrate the GPU gate: run a stage for real on CUDA, measure its peak, store a correction factor.

The file is JSON: `{"version": 1, "factors": {"<gpu name>|<model>|<stage>": measured ÷ predicted}}`; the
planner multiplies its estimate by the factor for the GPU, model and stage at hand. Models are random-init
copies of the real shape (memory does not depend on the weights' values), NF4 via bitsandbytes when asked.
`bench/gpu_estimate.py` uses the same step functions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from faithforge.errors import UserError
from gpu.corrections import Corrections
from gpu.estimate import CUDA_CONTEXT_BYTES, Estimate
from gpu.model_shape import LORA_TARGETS_ALL_LINEAR

NO_CUDA_MESSAGE = ("calibration needs a CUDA GPU (torch.cuda.is_available() is False here); run "
                   "`faithforge gpu calibrate` on the machine whose GPU you want to calibrate")


def load_corrections(path: str | os.PathLike[str] | None) -> Corrections:
    """Read the calibration file; a missing file (or None) means no corrections yet."""
    if path is None or not Path(path).is_file():
        return Corrections()
    try:
        return Corrections.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        raise UserError(f"calibration file {path} is unusable ({exc}); fix it or delete it and re-run "
                        f"`faithforge gpu calibrate`".replace("\n", " ")) from None


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


def _replace_linears_nf4(module: Any, compute_dtype: Any) -> None:
    """Swap every decoder nn.Linear (not lm_head) for a bitsandbytes NF4 Linear4bit with double quant."""
    import bitsandbytes as bnb
    import torch

    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear) and name != "lm_head":
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(child.weight.data.to(torch.bfloat16), requires_grad=False,
                                         compress_statistics=True, quant_type="nf4")
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data.to(compute_dtype), requires_grad=False)
            setattr(module, name, q)
        else:
            _replace_linears_nf4(child, compute_dtype)


def build_model(config: Mapping[str, Any], quantization: str, device: str) -> Any:
    """A random-init causal LM of the config's shape on `device`; NF4 linears when `quantization='nf4'`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    hf_config = AutoConfig.for_model(cfg.pop("model_type"), **{k: v for k, v in cfg.items() if k != "architectures"})
    dtype = torch.float32 if quantization == "fp32" else torch.bfloat16
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    model = model.to_empty(device="cpu")
    with torch.no_grad():  # values do not change memory; rotary buffers stay uninitialised on purpose
        for param in model.parameters():
            param.normal_(0.0, 0.02)
    if quantization == "nf4":
        _replace_linears_nf4(model, torch.bfloat16)
    model.config.use_cache = False
    return model.to(device)


@dataclass(frozen=True)
class StageSettings:
    """What one measured run does; fields mirror the estimator's arguments."""

    stage: str
    batch_size: int
    seq_len: int = 512
    prompt_tokens: int = 256
    max_new_tokens: int = 64
    quantization: str = "nf4"
    lora_r: int = 16
    optimizer: str = "adamw-fp32"
    gradient_checkpointing: bool = True
    ref_strategy: str = "cached"
    reference_model: str = "adapters-disabled"
    logits_chunk_tokens: int | None = None


def _sequence_logps(model: Any, ids: Any, chunk_tokens: int | None) -> Any:
    """Sum of token log-probs per sequence; the lm_head + log-softmax run in chunks when asked."""
    import torch

    hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
    labels = ids[:, 1:]
    flat_h, flat_y = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    step = chunk_tokens or flat_h.shape[0]
    parts = []
    for start in range(0, flat_h.shape[0], step):
        logits = model.lm_head(flat_h[start:start + step]).float()
        parts.append(torch.log_softmax(logits, -1).gather(-1, flat_y[start:start + step, None]).squeeze(-1))
    return torch.cat(parts).view(labels.shape).sum(-1)


def run_stage_steps(config: Mapping[str, Any], settings: StageSettings, *, steps: int = 2,
                    device: str = "cuda", seed: int = 0) -> None:
    """Run `steps` real steps of a stage on a random-init model (any device; measure on CUDA)."""
    import torch

    torch.manual_seed(seed)
    vocab = int(config["vocab_size"])
    model = build_model(config, settings.quantization if device == "cuda" else "fp32", device)
    pairs = 2 * settings.batch_size
    if settings.stage == "reference":
        model.eval()
        with torch.no_grad():
            for _ in range(steps):
                ids = torch.randint(0, vocab, (pairs, settings.seq_len), device=device)
                _sequence_logps(model, ids, settings.logits_chunk_tokens)
        return
    if settings.stage in ("evaluate", "generate"):
        model.eval()
        model.config.use_cache = True
        for _ in range(steps):
            ids = torch.randint(0, vocab, (settings.batch_size, settings.prompt_tokens), device=device)
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=settings.max_new_tokens,
                           min_new_tokens=settings.max_new_tokens, do_sample=False)
        return
    from peft import LoraConfig, get_peft_model

    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=settings.lora_r, lora_alpha=2 * settings.lora_r,
                                             target_modules=list(LORA_TARGETS_ALL_LINEAR), task_type="CAUSAL_LM"))
    reference = None
    if settings.ref_strategy == "live" and settings.reference_model == "separate-copy":
        reference = build_model(config, settings.quantization if device == "cuda" else "fp32", device).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "paged-adamw-8bit" and device == "cuda":
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(params, lr=1e-4)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    base = model.get_base_model()
    for _ in range(steps):
        ids = torch.randint(0, vocab, (pairs, settings.seq_len), device=device)
        if settings.ref_strategy == "live":
            with torch.no_grad():
                if reference is not None:
                    ref = _sequence_logps(reference, ids, settings.logits_chunk_tokens)
                else:
                    with model.disable_adapter():
                        ref = _sequence_logps(base, ids, settings.logits_chunk_tokens)
        else:
            ref = torch.zeros(pairs, device=device)  # cached log-probs: read from disk in the pipeline
        policy = _sequence_logps(base, ids, settings.logits_chunk_tokens)
        margin = (policy[0::2] - ref[0::2]) - (policy[1::2] - ref[1::2])
        loss = -torch.nn.functional.logsigmoid(0.1 * margin).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def measure_peak_reserved_bytes(config: Mapping[str, Any], settings: StageSettings, *, steps: int = 2) -> int:
    """`torch.cuda.max_memory_reserved()` over `steps` steps of the stage (fresh peak counter, cache emptied)."""
    torch = require_cuda()
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    run_stage_steps(config, settings, steps=steps, device="cuda")
    torch.cuda.synchronize()
    peak = int(torch.cuda.max_memory_reserved())
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def correction_factor(estimate: Estimate, measured_reserved_bytes: int) -> float:
    """measured ÷ predicted, both including the CUDA context (which torch's reserved bytes leave out)."""
    return (measured_reserved_bytes + CUDA_CONTEXT_BYTES) / estimate.total_bytes
