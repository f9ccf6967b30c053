"""Merge a LoRA adapter trained on an NF4 7B-shape Llama into its bf16 base on the GPU: peak memory and time.

Standalone (torch, transformers, peft, bitsandbytes; no Prefect, nothing from FaithForge), for a lent GPU:

    python bench/gpu_merge_7b.py --out $OUT/merge_7b.json          # CUDA: Llama-2-7B shape, random init
    python bench/gpu_merge_7b.py --dry-run --out /tmp/merge.json   # CPU: a tiny shape, the same code path

Steps: a random-init bf16 model of the shape is built directly on the device (no CPU init) and saved once →
loaded back as NF4 through `BitsAndBytesConfig` (what QLoRA training loads) → LoRA r=16 on q, k, v, o, gate, up,
down → 2 AdamW steps on random tokens → the adapter is saved → the NF4 model is freed → the bf16 base is loaded on
the GPU, the adapter attached and `merge_and_unload()`ed, timed, with `torch.cuda.max_memory_allocated` reset
before the load. The merged model's logits are compared with base + adapter (unmerged) on the same tokens.
Random-init weights are enough: the merge's memory and time depend on the shapes, not on the values.
Prints one JSON object (and writes it to --out).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

SHAPE_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
SHAPE_TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=256, max_position_embeddings=256)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _peak(device: str) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if device == "cuda" else None


def _reset(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def build_base(work: Path, shape: dict, device: str, seed: int) -> dict:
    """A random-init bf16 Llama built on `device` and saved as the base both phases load."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    started = time.perf_counter()
    config = LlamaConfig(**shape, torch_dtype="bfloat16", tie_word_embeddings=False)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16 directly (no 27 GB fp32 copy first)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    params = sum(p.numel() for p in model.parameters())
    _sync(device)
    built = time.perf_counter() - started
    model.save_pretrained(work / "base")
    saved = time.perf_counter() - started - built
    del model
    _reset(device)
    return {"parameters": params, "build_seconds": round(built, 1), "save_seconds": round(saved, 1)}


def train_adapter(work: Path, device: str, steps: int, rank: int, seq: int, seed: int) -> dict:
    """NF4 base (BitsAndBytesConfig) + LoRA on every projection, `steps` AdamW steps on random tokens, saved."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    _reset(device)
    started = time.perf_counter()
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(work / "base", quantization_config=quant, dtype=torch.bfloat16,
                                                 device_map={"": 0 if device == "cuda" else "cpu"})
    _sync(device)
    load_seconds = time.perf_counter() - started
    for p in model.parameters():
        p.requires_grad_(False)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        ids = torch.randint(0, vocab, (1, seq), generator=generator).to(model.device)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss), 4))
    _sync(device)
    step_seconds = time.perf_counter() - t0
    model.save_pretrained(work / "adapter")
    result = {"nf4_load_seconds": round(load_seconds, 1), "train_steps": steps, "train_seconds": round(step_seconds, 2),
              "losses": losses, "trainable_parameters": trainable, "train_peak_allocated_bytes": _peak(device)}
    del model, optimizer
    _reset(device)
    return result


def merge(work: Path, device: str, seq: int, seed: int) -> dict:
    """bf16 base on the device + the adapter → merge_and_unload, timed; peak memory from the load on."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _reset(device)
    started = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(work / "base", dtype=torch.bfloat16,
                                                device_map={"": 0 if device == "cuda" else "cpu"})
    _sync(device)
    load_seconds = time.perf_counter() - started
    with_adapter = PeftModel.from_pretrained(base, work / "adapter").eval()
    ids = torch.randint(0, base.config.vocab_size, (1, min(seq, 64)),
                        generator=torch.Generator().manual_seed(seed + 1)).to(base.device)
    with torch.no_grad():
        unmerged = with_adapter(input_ids=ids).logits.float()
    _sync(device)
    t0 = time.perf_counter()
    merged = with_adapter.merge_and_unload()
    _sync(device)
    merge_seconds = time.perf_counter() - t0
    with torch.no_grad():
        after = merged(input_ids=ids).logits.float()
    return {"bf16_load_seconds": round(load_seconds, 1), "merge_seconds": round(merge_seconds, 3),
            "merge_total_seconds": round(time.perf_counter() - started, 1),
            "merge_peak_allocated_bytes": _peak(device),
            "merged_vs_unmerged_max_abs_logit_diff": float((after - unmerged).abs().max()),
            "merged_vs_unmerged_max_abs_logit": float(unmerged.abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shape (tests the code path anywhere)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--work", type=Path, help="scratch folder for the base and adapter (default: a temp dir)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    if args.dry_run:
        device, shape = "cpu", SHAPE_TINY
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run on a CPU")
        device, shape = "cuda", SHAPE_7B
    work = args.work or Path(tempfile.mkdtemp(prefix="merge7b-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "dry_run": args.dry_run,
                    "shape": shape, "lora_rank": args.rank, "lora_targets": TARGETS,
                    "torch": torch.__version__}
    try:
        import bitsandbytes
        import peft
        import transformers

        result.update({"transformers": transformers.__version__, "peft": peft.__version__,
                       "bitsandbytes": bitsandbytes.__version__})
        result["build"] = build_base(work, shape, device, args.seed)
        result["train"] = train_adapter(work, device, args.steps, args.rank, args.seq, args.seed)
        result["merge"] = merge(work, device, args.seq, args.seed)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
