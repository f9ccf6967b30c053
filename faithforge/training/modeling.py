"""Loading the model a stage works on, the way its GPU plan says (4-bit NF4 on CUDA, full precision on CPU)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faithforge.core.errors import UserError

if TYPE_CHECKING:
    from faithforge.gpu.planner import Plan


def quantization_settings(mode: str, device: str) -> dict[str, Any] | None:
    """The quantization a stage uses, as plain data (it is part of the reference cache key).

    `auto` means NF4 with double quantization and bf16 compute on CUDA (QLoRA), and none on CPU, where
    bitsandbytes' 4-bit path is a slow fallback.
    """
    if mode == "none" or (mode == "auto" and device != "cuda"):
        return None
    return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": "bfloat16"}


PRECISIONS = ("nf4", "bf16", "fp32")
NF4_SETTINGS = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": "bfloat16"}


def plan_precision(plan: "Plan") -> str:
    """The precision a stage's plan names (`nf4`, `bf16` or `fp32`)."""
    precision = plan.precision
    if plan.placement == "cpu" and precision == "bf16":
        # The planner gives CPU plans fp32; a bf16 record placed on the CPU is a GPU plan rewritten to run here
        # (faithforge.offload.dispatch.runs_here: the warm start cannot be offloaded). It runs as a CPU plan does.
        precision = "fp32"
    if precision not in PRECISIONS:
        raise UserError(f"the {plan.stage} plan names precision {precision!r}; a local model loads "
                        f"as one of {', '.join(PRECISIONS)}")
    return precision


def precision_quantization(precision: str) -> dict[str, Any] | None:
    """The bitsandbytes settings for `precision` as plain data (part of the reference cache key), or None."""
    return dict(NF4_SETTINGS) if precision == "nf4" else None


def compute_dtype_name(precision: str, device: str) -> str:
    """The dtype the log-probs are computed in for this precision: bf16 for NF4 (bf16 compute) and bf16 weights,
    fp32 for fp32 weights. Part of the reference cache key: a reference computed in another dtype differs
    from training's numbers by more than the step-0 guard allows."""
    del device  # the same on CPU and CUDA: NF4's compute dtype and the 16-bit weights decide it
    return "float32" if precision == "fp32" else "bfloat16"


def load_for_plan(path: str | Path, plan: "Plan"):
    """Load the model exactly the way `plan` says: its precision on its device (the planned GPU when local and
    CUDA exists, else the CPU: bitsandbytes quantizes NF4 on the CPU too). Returns (model, device)."""
    device = device_for(plan.placement)
    if device == "cuda":
        select_planned_gpu(plan)
    precision = plan_precision(plan)
    quantization = precision_quantization(precision)
    if quantization and getattr(plan, "strategy", "single") == "fsdp":
        # FSDP flattens parameters of one dtype: QLoRA stores the packed 4-bit weights in the compute dtype.
        quantization = {**quantization, "bnb_4bit_quant_storage": "bfloat16"}
    return load_causal_lm(path, quantization=quantization, device=device, precision=precision,
                          sharded=getattr(plan, "strategy", "single") == "fsdp"), device


def select_planned_gpu(plan: "Plan") -> int:
    """Make the plan's GPU the current CUDA device and return its index in this process.

    Before CUDA starts in this process, visibility is restricted to the planned GPU (by UUID, PCI bus order), so
    it becomes `cuda:0` and TRL/accelerate see one device; once CUDA is up, the planned index is made current.
    """
    import torch

    index = plan.gpu_index or 0
    uuid = plan.gpu_uuid
    restrict = visibility_env(uuid, torch.cuda.is_initialized())
    if restrict:
        os.environ.update(restrict)
        index = 0
    if torch.cuda.device_count() > index:
        torch.cuda.set_device(index)
    return index


def visibility_env(uuid: str | None, cuda_initialized: bool) -> dict[str, str]:
    """The environment that restricts CUDA to the planned GPU, or {} when that is impossible or not needed
    (a simulated profile's UUID, no UUID, or CUDA already initialised in this process)."""
    if not uuid or uuid.startswith("GPU-simulated") or cuda_initialized:
        return {}
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": uuid}


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise UserError(f"the tokenizer in {path} has no chat template; FaithForge renders every prompt through one")
    return tokenizer


def load_causal_lm(path: str | Path, *, quantization: dict[str, Any] | None, device: str,
                   precision: str | None = None, sharded: bool = False):
    """Load a causal LM: NF4 when `quantization` is given (on `device`, CPU included), else `precision`'s dtype
    (default: fp32 on CPU, bf16 on CUDA)."""
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
            bnb_4bit_quant_storage=getattr(torch, quantization.get("bnb_4bit_quant_storage", "uint8")),
        )
        if not sharded:  # FSDP places the shards itself (sync_module_states from rank 0's load)
            # The current device (the planned GPU after `select_planned_gpu`), not a hard-coded cuda:0.
            kwargs["device_map"] = {"": torch.cuda.current_device() if device == "cuda" else "cpu"}
        kwargs["dtype"] = torch.bfloat16
    elif precision in ("bf16", "fp32"):
        kwargs["dtype"] = torch.bfloat16 if precision == "bf16" else torch.float32
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
    """`gpu` plans run on CUDA, `cpu` plans on the CPU (`offload` never reaches a local loader).

    A `gpu` plan made from a simulated profile (`FAITHFORGE_GPU_PROFILE`) on a machine without CUDA runs on
    the CPU: the profile changes what is planned, not what hardware exists.
    """
    import torch

    return "cuda" if placement == "gpu" and torch.cuda.is_available() else "cpu"


def merge_adapter(base_path: str | Path, adapter_path: str | Path, out_path: str | Path) -> Path:
    """Fold a LoRA adapter into its base model's weights and save a standalone model (plus tokenizer).

    The base is loaded unquantized: merging into 4-bit weights would round the update away, so a QLoRA adapter
    is merged into the full-precision base it was trained on top of.
    """
    from peft import PeftModel

    from faithforge.core.workspace import atomic_directory

    # On the CPU, in fp32: the GPU may still hold the NF4 policy (a 16-bit 7B copy beside it would not fit the
    # card the gate planned for), and merging needs no GPU. Saved in the base's own dtype by save_pretrained.
    base = load_causal_lm(base_path, quantization=None, device="cpu", precision=_saved_precision(base_path))
    merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    tokenizer = load_tokenizer(base_path)
    with atomic_directory(out_path) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_path)


def _saved_precision(model_dir: str | Path) -> str:
    """`bf16` when the folder's config says its weights were saved in bf16/fp16, else `fp32`."""
    import json

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "fp32"
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return "bf16" if dtype in ("bfloat16", "float16") else "fp32"


def check_same_precision(train_plan: "Plan", reference_precision: str | None,
                         reference_quantization: dict[str, Any] | None) -> None:
    """Training must load the policy in the precision its reference log-probs were computed in (the reference
    stage's `precision`; a cache recorded without it: NF4 when it names a quantization, else fp32)."""
    want = plan_precision(train_plan)
    have = reference_precision or ("nf4" if reference_quantization else "fp32")
    if want != have:
        raise UserError(f"the train plan loads the model in {want} but the reference log-probs were computed in "
                        f"{have}; the step-0 check would fail. Run both stages on the same kind of device (the "
                        "reference stage reruns for the train plan's precision when gpu settings agree)")


def start_peak_measurement() -> None:
    """Reset CUDA's peak counters at the start of a stage (no-op without CUDA; never starts CUDA itself)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def measured_peak() -> dict[str, int]:
    """CUDA peak reserved/allocated bytes since `start_peak_measurement` (or since CUDA started), for a stage's
    output beside the gate's estimate; {} when this process has not used CUDA."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    return {"measured_peak_reserved_bytes": int(torch.cuda.max_memory_reserved()),
            "measured_peak_allocated_bytes": int(torch.cuda.max_memory_allocated())}


@contextlib.contextmanager
def score_completions_only():
    """Let TRL's fused LM head project only the completion positions on every device, as it does on Triton devices,
    through FaithForge's head (`faithforge.training.log_prob_head`).

    TRL's fused head (`trl.trainer.utils.add_fused_lm_head`) scores only the positions whose label is not -100 when
    `_use_triton(device)` is true, and every position (prompt and padding included, masked out afterwards)
    elsewhere — for XLA devices such as Neuron, where a varying count would recompile the tiles each batch. The CPU
    has no such compile, so scoring every position only multiplies the LM head's work (49,152-word vocabulary ×
    ~85 tokens per row instead of the ~30 completion tokens in the real demo). Same kernel, same per-token numbers:
    measured on the real demo's pairs, a DPO step took 12.5 s → 6.7 s on 2 cores with the losses equal to 6 decimals
    (BENCHMARKS.md, issue 28). XLA devices keep TRL's choice. The head function TRL calls
    (`_ChunkedLogProbFunction`) becomes `log_prob_head.CompletionLogProbs`: TRL's kernel on a GPU, the whole logits
    on the CPU when they are small (1.57× faster there, the same numbers to fp32 rounding). Replaced only while a
    loss is computed: the DPO trainer's `compute_loss`, the SFT control's forward (`use_chunked_head_loss`) and the
    reference pass enter it.
    """
    import trl.trainer.utils as trl_utils

    from faithforge.training.log_prob_head import CompletionLogProbs

    saved = getattr(trl_utils, "_use_triton", None)
    saved_head = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if saved is not None:  # a TRL without the switch keeps its own choice
        trl_utils._use_triton = lambda device: device.type in ("cpu", "cuda", "mps") or saved(device)
    if saved_head is not None:
        trl_utils._ChunkedLogProbFunction = CompletionLogProbs
    try:
        yield
    finally:
        if saved is not None:
            trl_utils._use_triton = saved
        if saved_head is not None:
            trl_utils._ChunkedLogProbFunction = saved_head


def use_chunked_head_loss(policy) -> None:
    """Make `policy(**batch).loss` come from TRL's chunked LM head (`add_fused_lm_head`, the kernel the DPO stage
    trains with): the mean NLL of the labelled tokens, as the causal-LM loss, without the micro-batch × seq ×
    vocab logits (2.2 GB in fp32 for one 1,024-token sequence of a 152k vocabulary), so the SFT control fits
    the train plan it runs under. For training only: the patched forward returns no logits."""
    import functools

    from trl.trainer.utils import add_fused_lm_head

    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    add_fused_lm_head(base)
    fused = functools.partial(base.forward, fused_lm_head=True)

    def forward(*args, **kwargs):
        with score_completions_only():  # only the labelled positions meet the head, on the CPU too
            return fused(*args, **kwargs)

    base.forward = forward
