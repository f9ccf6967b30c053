"""Loading the model a stage works on, the way its GPU plan says (4-bit NF4 on CUDA, full precision on CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faithforge.errors import UserError


def quantization_settings(mode: str, device: str) -> dict[str, Any] | None:
    """The quantization a stage uses, as plain data (it is part of the reference cache key).

    `auto` means NF4 with double quantization and bf16 compute on CUDA (QLoRA), and none on CPU, where
    bitsandbytes' 4-bit path is a slow fallback.
    """
    if mode == "none" or (mode == "auto" and device != "cuda"):
        return None
    return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": "bfloat16"}


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise UserError(f"the tokenizer in {path} has no chat template; FaithForge renders every prompt through one")
    return tokenizer


def load_causal_lm(path: str | Path, *, quantization: dict[str, Any] | None, device: str):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{path} is not a model folder (no config.json); set model.path to a folder saved with "
                        "save_pretrained, or leave it empty to use the tiny offline model")
    kwargs: dict[str, Any] = {}
    if quantization:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quantization["bnb_4bit_quant_type"],
            bnb_4bit_use_double_quant=quantization["bnb_4bit_use_double_quant"],
            bnb_4bit_compute_dtype=getattr(torch, quantization["bnb_4bit_compute_dtype"]),
        )
        kwargs["device_map"] = {"": 0}
        kwargs["dtype"] = torch.bfloat16
    else:
        kwargs["dtype"] = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if not quantization:
        model.to(device)
    model.eval()
    return model


def attach_lora(model, *, r: int, alpha: int, dropout: float, quantized: bool, gradient_checkpointing: bool):
    """LoRA on every linear layer (peft `all-linear`), prepared for k-bit training when quantized.

    We do not call peft's `prepare_model_for_kbit_training`: it casts every non-quantized weight to fp32,
    embeddings and lm_head included — about 2.2 GB more for Qwen2.5-7B (152k × 3584 × 2 matrices × 2 extra
    bytes), which is what decides whether a 7B QLoRA run fits a 12 GB card. The base stays frozen in bf16; the
    gradient flows to the LoRA weights through checkpointed layers via `enable_input_require_grads`.
    """
    from peft import LoraConfig, get_peft_model

    if quantized:
        for param in model.parameters():
            param.requires_grad_(False)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def device_for(placement: str) -> str:
    """`local` plans run on CUDA, `cpu` plans on the CPU (`offload` never reaches a local loader).

    A `local` plan made from a simulated profile (`FAITHFORGE_GPU_PROFILE`) on a machine without CUDA runs on
    the CPU: the profile changes what is planned, not what hardware exists.
    """
    import torch

    return "cuda" if placement == "local" and torch.cuda.is_available() else "cpu"


def merge_adapter(base_path: str | Path, adapter_path: str | Path, out_path: str | Path) -> Path:
    """Fold a LoRA adapter into its base model's weights and save a standalone model (plus tokenizer).

    The base is loaded unquantized (fp32 on CPU, bf16 on CUDA): merging into 4-bit weights would round the
    update away, so a QLoRA adapter is merged into the 16-bit base it was trained on top of.
    """
    import torch
    from peft import PeftModel

    from faithforge.workspace import atomic_directory

    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = load_causal_lm(base_path, quantization=None, device=device)
    merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    tokenizer = load_tokenizer(base_path)
    with atomic_directory(out_path) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_path)
