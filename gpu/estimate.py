"""Peak GPU memory per stage, as pure byte arithmetic. Every term is reported separately, in bytes.

Each term models the code FaithForge runs (TRL 1.16, peft 0.21, bitsandbytes 0.50, transformers 5.x); the
comment at each constant names its source. `bench/gpu_check.py` measures them on a GPU with the real
`run_dpo`; `faithforge gpu calibrate` stores measured ÷ predicted corrections.

- Weights: NF4 with double quantization 0.516 B/param for the decoder linears (4-bit codes + 8-bit block
  constants); bitsandbytes keeps embeddings, lm_head, norms and biases in the 16-bit load dtype.
- Dequantization: a 4-bit matmul dequantizes one weight to bf16 at a time (bitsandbytes `MatMul4Bit`).
- KV cache per token = 2 × layers × kv_heads × head_dim × bytes (Llama-3-8B bf16: 128 KiB).
- Attention runs in SDPA's flash/memory-efficient kernels: no seq × seq score matrix is kept.
- Training activations saved per token and layer (bf16): 5·hidden + 2·q_out + 2·kv_out + 4·intermediate
  values (norm inputs/outputs, q/k/v, attention output, o_proj input, SwiGLU gate/up/act/product). With
  gradient checkpointing (non-reentrant) only each layer's input is kept, plus one layer during recompute.
- Log-probs never materialise batch × seq × vocab logits. Training: TRL's fused LM head
  (`trl/trainer/utils.py` `add_fused_lm_head`, `trl/kernels/chunked_logprob.py` `ChunkedLogProbFunction`)
  projects the scored positions through the head in [4,096 tokens × 32,768 vocab] tiles in the compute dtype
  (bf16 under the Trainer's autocast), folding each tile into fp32 running statistics; its backward recomputes
  the tiles and accumulates the hidden-state gradient in fp32. The reference pass (`faithforge.training.reference_cache.
  completion_logps`) runs the same kernel forward-only, so reference and policy agree to the bit at step 0.
  All positions are charged: the estimator cannot know the prompt share, and off-Triton devices score every
  position anyway.
- LoRA: TRL casts trainable LoRA weights to bf16 on 4-bit models (`dpo_trainer.py` ~726-730, QLoRA paper §3);
  peft keeps them fp32 on unquantized models (`autocast_adapter_dtype=True`). Gradients share the dtype.
- Optimizer: the GPU train stage uses bitsandbytes `paged_adamw_8bit` (two uint8 states per parameter plus one
  fp32 absmax per 256-value block; paged, so the driver may evict it to host memory under pressure, but it is
  charged in full). CPU plans use torch AdamW (two fp32 states).
- TRL's frozen `ref` adapter (added when a PeftModel is passed without a peft_config) is deleted by
  `faithforge.training.dpo` before training, so it costs nothing here.
- CUDA context ~0.5 GiB (not in torch's reserved bytes); the caching allocator's fragmentation is taken as
  a fraction of everything else (reserved/allocated ≈ 1.25 was seen while loading two 4-bit 7B models;
  steady-state training is lower).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from faithforge.gpu.model_shape import LORA_TARGETS_ALL_LINEAR, ModelShape
from faithforge.gpu.ollama_sizes import OllamaModel
from faithforge.gpu.units import MiB_bytes

Quantization = Literal["fp32", "bf16", "fp16", "int8", "nf4"]
Optimizer = Literal["adamw-fp32", "paged-adamw-8bit"]
RefStrategy = Literal["cached", "live"]
ReferenceModel = Literal["adapters-disabled", "separate-copy"]
Device = Literal["cuda", "cpu"]

#: The estimates' revision: raise it when a term below changes. Correction factors are measured ÷ predicted, so a
#: factor stored against another revision would multiply an estimate it was not measured against: such factors are
#: set aside until `faithforge gpu calibrate` measures again (`faithforge.gpu_calibration.calibrate`).
ESTIMATE_REVISION = 1

CUDA_CONTEXT_BYTES = 512 * MiB_bytes
ALLOCATOR_OVERHEAD_FRACTION = 0.10
LINEAR_BYTES_PER_PARAM: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "nf4": 0.516}
OTHER_BYTES_PER_PARAM: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 2.0, "nf4": 2.0}
# TRL 1.16 `trl/kernels/chunked_logprob.py`: TOKEN_CHUNK_SIZE rows × `_CHUNKED_LOGPROB_CHUNK_SIZE`
# (`trl/trainer/utils.py`) vocabulary columns per projection tile.
LOGPROB_TILE_TOKENS = 4096
LOGPROB_TILE_VOCAB = 32768
# fp32 per-token running statistics of the kernel (max, sum-exp, entropy/extra sums, target logit, log-z, ...).
LOGPROB_STATS_BYTES_PER_TOKEN = 10 * 4
# paged_adamw_8bit: exp_avg + exp_avg_sq as uint8 (2 B) + one fp32 absmax per 256-value block for each (8/256 B).
OPTIMIZER_BYTES_PER_PARAM: dict[str, float] = {"adamw-fp32": 8.0, "paged-adamw-8bit": 2.0 + 8.0 / 256}
# generate(): logits for the last position only (`logits_to_keep=1`), in the model dtype (2) + fp32 scores (4).
LOGIT_BYTES_FORWARD = 6
# A full fine-tune's loss (transformers `ForCausalLMLoss`): logits in the model dtype, their fp32 upcast, the fp32
# log-softmax inside cross_entropy and the fp32 gradient: 4 + 4 + 4 bytes besides the model-dtype logits.
FULL_LOGIT_FP32_BYTES = 12
OLLAMA_NUM_BATCH = 512  # Ollama's default prompt batch, which sizes its compute graph
OLLAMA_MIN_GRAPH_BYTES = 256 * MiB_bytes


@dataclass(frozen=True)
class Estimate:
    """A stage's predicted peak; `terms` maps a *_bytes name to its size, `total_bytes` is their sum."""

    stage: str
    model: str
    terms: dict[str, int]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.terms.values())

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "model": self.model, "total_bytes": self.total_bytes,
                "terms": dict(self.terms), "settings": dict(self.settings)}


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_choice(name: str, value: str, choices: Any) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def weights_bytes(shape: ModelShape, quantization: Quantization) -> int:
    """Resident weights: quantizable decoder linears at the chosen width, everything else 16-bit or fp32."""
    _check_choice("quantization", quantization, LINEAR_BYTES_PER_PARAM)
    other = shape.embedding_params + shape.lm_head_params + shape.small_params
    return int(shape.linear_params * LINEAR_BYTES_PER_PARAM[quantization] + other * OTHER_BYTES_PER_PARAM[quantization])


def dequant_buffer_bytes(shape: ModelShape, quantization: Quantization) -> int:
    """A quantized matmul dequantizes one weight to bf16 at a time: the largest linear's 16-bit copy."""
    if quantization not in ("nf4", "int8"):
        return 0
    return 2 * max(a * b for a, b in shape.linear_shapes().values())


def _act_bytes(device: Device) -> int:
    return 2 if device == "cuda" else 4  # bf16 on GPU, fp32 on CPU


def forward_activation_bytes(shape: ModelShape, tokens: int, device: Device = "cuda") -> int:
    """No-grad forward: one layer's transient tensors plus the residual stream."""
    return tokens * (2 * shape.hidden_size + 3 * shape.intermediate_size) * _act_bytes(device)


def train_activation_bytes(shape: ModelShape, tokens: int, gradient_checkpointing: bool, lora_r: int,
                           n_lora_targets: int, device: Device = "cuda") -> int:
    """Tensors saved for backward across the decoder (+ LoRA A outputs and the final norm's input)."""
    per_layer = (5 * shape.hidden_size + 2 * shape.q_out + 2 * shape.kv_out + 4 * shape.intermediate_size
                 + lora_r * n_lora_targets)
    if gradient_checkpointing:
        values = shape.num_layers * shape.hidden_size + per_layer  # layer inputs + one layer recomputed
    else:
        values = shape.num_layers * per_layer
    return tokens * (values + shape.hidden_size) * _act_bytes(device)


def logprob_tile_bytes(shape: ModelShape, tokens: int, compute_bytes: int) -> int:
    """One projection tile of TRL's chunked log-prob kernel: min(tokens, 4096) × min(vocab, 32768) values."""
    return min(tokens, LOGPROB_TILE_TOKENS) * min(shape.vocab_size, LOGPROB_TILE_VOCAB) * compute_bytes


def logprob_forward_bytes(shape: ModelShape, tokens: int, device: Device = "cuda") -> int:
    """Forward-only chunked log-probs: the gathered hidden states of the scored positions, one tile, stats."""
    act = _act_bytes(device)
    return logprob_tile_bytes(shape, tokens, act) + tokens * (shape.hidden_size * act + LOGPROB_STATS_BYTES_PER_TOKEN)


def logprob_train_bytes(shape: ModelShape, tokens: int, device: Device = "cuda") -> int:
    """Chunked log-probs with backward: the saved hidden states (compute dtype) and their fp32 gradient
    accumulator (`grad_hidden`), one tile, the per-token stats, and the gradient cast back to the compute dtype."""
    act = _act_bytes(device)
    per_token = shape.hidden_size * (act + 4 + act) + LOGPROB_STATS_BYTES_PER_TOKEN
    return logprob_tile_bytes(shape, tokens, act) + tokens * per_token


def lora_bytes_per_param(quantization: Quantization) -> int:
    """TRL casts LoRA weights to bf16 on 4-bit models (dpo_trainer.py ~726-730); peft keeps fp32 otherwise."""
    return 2 if quantization == "nf4" else 4


def _finish(stage: str, model: str, terms: dict[str, int], device: Device, settings: dict[str, Any],
            overhead_fraction: float = ALLOCATOR_OVERHEAD_FRACTION) -> Estimate:
    body = {k: int(v) for k, v in terms.items()}
    context = CUDA_CONTEXT_BYTES if device == "cuda" else 0
    overhead = int(overhead_fraction * sum(body.values())) if device == "cuda" else 0
    ordered = {"cuda_context_bytes": context, **body, "allocator_overhead_bytes": overhead}
    return Estimate(stage, model, ordered, {"device": device, **settings})


def estimate_reference(shape: ModelShape, *, batch_size: int, seq_len: int, quantization: Quantization = "nf4",
                       device: Device = "cuda") -> Estimate:
    """The reference log-prob pass: forward only over chosen + rejected (2 × batch_size sequences), log-probs
    through TRL's chunked kernel (`faithforge.training.reference_cache.completion_logps`)."""
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    tokens = 2 * batch_size * seq_len
    terms = {
        "weights_bytes": weights_bytes(shape, quantization),
        "dequant_buffer_bytes": dequant_buffer_bytes(shape, quantization),
        "activations_bytes": forward_activation_bytes(shape, tokens, device),
        "logits_bytes": logprob_forward_bytes(shape, tokens, device),
    }
    return _finish("reference", shape.name, terms, device,
                   {"batch_size": batch_size, "seq_len": seq_len, "quantization": quantization})


def estimate_train(shape: ModelShape, *, micro_batch: int, seq_len: int, quantization: Quantization = "nf4",
                   lora_r: int = 16, lora_targets: tuple[str, ...] = LORA_TARGETS_ALL_LINEAR,
                   optimizer: Optimizer = "paged-adamw-8bit", gradient_checkpointing: bool = True,
                   ref_strategy: RefStrategy = "cached", reference_model: ReferenceModel = "adapters-disabled",
                   device: Device = "cuda") -> Estimate:
    """QLoRA DPO: one micro-batch of `micro_batch` pairs (2 × micro_batch sequences of `seq_len` tokens).

    `ref_strategy="live"` adds the reference model: with `adapters-disabled` (TRL + PEFT) it shares the
    policy's weights and only its forward pass can raise the peak (it runs before the policy's forward, so
    it adds max(0, its transient − the training transient)); `separate-copy` also keeps a second copy of
    the weights resident, as in the seed note's two-model run.
    """
    _check_positive(micro_batch=micro_batch, seq_len=seq_len, lora_r=lora_r)
    _check_choice("optimizer", optimizer, OPTIMIZER_BYTES_PER_PARAM)
    _check_choice("ref_strategy", ref_strategy, ("cached", "live"))
    _check_choice("reference_model", reference_model, ("adapters-disabled", "separate-copy"))
    tokens = 2 * micro_batch * seq_len
    lora = shape.lora_params(lora_r, lora_targets)
    weights = weights_bytes(shape, quantization)
    activations = train_activation_bytes(shape, tokens, gradient_checkpointing, lora_r, len(lora_targets), device)
    logits = logprob_train_bytes(shape, tokens, device)
    lora_width = lora_bytes_per_param(quantization)
    terms = {
        "weights_bytes": weights,
        "dequant_buffer_bytes": dequant_buffer_bytes(shape, quantization),
        "lora_params_bytes": lora * lora_width,
        "lora_grads_bytes": lora * lora_width,
        "optimizer_state_bytes": int(lora * OPTIMIZER_BYTES_PER_PARAM[optimizer]),
        "activations_bytes": activations,
        "logits_bytes": logits,
        "reference_weights_bytes": 0,
        "reference_pass_bytes": 0,
    }
    if ref_strategy == "live":
        if reference_model == "separate-copy":
            terms["reference_weights_bytes"] = weights
        ref_transient = forward_activation_bytes(shape, tokens, device) + logprob_forward_bytes(shape, tokens, device)
        terms["reference_pass_bytes"] = max(0, ref_transient - activations - logits)
    return _finish("train", shape.name, terms, device, {
        "micro_batch": micro_batch, "seq_len": seq_len, "quantization": quantization, "lora_r": lora_r,
        "lora_params": lora, "optimizer": optimizer, "gradient_checkpointing": gradient_checkpointing,
        "ref_strategy": ref_strategy, "reference_model": reference_model})


def data_parallel_bytes(estimate: Estimate) -> int:
    """What DDP adds on each GPU beside the one-GPU plan: its gradient buckets, a flat copy of the trainable
    gradients (torch `DistributedDataParallel`, `bucket_cap_mb` buckets over `requires_grad` parameters only — the
    LoRA weights; the frozen 4-bit base is replicated, not communicated)."""
    return int(estimate.terms.get("lora_grads_bytes", 0))


def estimate_train_fsdp(shape: ModelShape, *, processes: int, micro_batch: int, seq_len: int,
                        quantization: Quantization = "nf4", lora_r: int = 16,
                        lora_targets: tuple[str, ...] = LORA_TARGETS_ALL_LINEAR,
                        optimizer: Optimizer = "paged-adamw-8bit", gradient_checkpointing: bool = True,
                        device: Device = "cuda") -> Estimate:
    """QLoRA DPO under FSDP over `processes` GPUs: one GPU's share of one micro-batch.

    FSDP flattens parameters of one dtype; QLoRA makes that possible by storing the packed 4-bit weights in the
    compute dtype (`bnb_4bit_quant_storage=bfloat16`: the same bytes per parameter, viewed as bf16), so the
    quantized base is sharded like any weight. Per GPU: 1/N of the weights and of the LoRA weights, gradients and
    optimizer state; the unit being computed all-gathered in full, plus the next one prefetched (FSDP's default
    backward prefetch), the largest unit being a decoder layer or the 16-bit embedding / LM head; the activations
    and log-prob buffers of its own micro-batch as on one GPU (each rank trains on its own micro-batch).
    """
    _check_positive(processes=processes, micro_batch=micro_batch, seq_len=seq_len, lora_r=lora_r)
    one = estimate_train(shape, micro_batch=micro_batch, seq_len=seq_len, quantization=quantization, lora_r=lora_r,
                         lora_targets=lora_targets, optimizer=optimizer, gradient_checkpointing=gradient_checkpointing,
                         ref_strategy="cached", device=device)
    terms = {k: v for k, v in one.terms.items() if k not in ("cuda_context_bytes", "allocator_overhead_bytes")}
    per_layer_linear = sum(a * b for a, b in shape.linear_shapes().values())
    layer = int(per_layer_linear * LINEAR_BYTES_PER_PARAM[quantization])
    largest_16bit = shape.embedding_params * OTHER_BYTES_PER_PARAM[quantization]
    shards = {name: -(-terms[name] // processes) for name in
              ("weights_bytes", "lora_params_bytes", "lora_grads_bytes", "optimizer_state_bytes")}
    terms.update(shards)
    terms["fsdp_gathered_units_bytes"] = int(2 * max(layer, largest_16bit))
    settings = {**one.settings, "processes": processes, "strategy": "fsdp",
                "bnb_4bit_quant_storage": "bfloat16" if quantization == "nf4" else None}
    return _finish("train", shape.name, terms, device, {k: v for k, v in settings.items() if k != "device"})


def estimate_full_finetune(shape: ModelShape, *, batch_size: int, seq_len: int, quantization: Quantization = "bf16",
                           stage: str = "warm_start", device: Device = "cuda") -> Estimate:
    """Every parameter trained with torch AdamW (`faithforge.training.sft.train_sft`, the warm start): weights, their
    gradients and two AdamW states all in the load dtype, activations without checkpointing, and the full
    batch × seq × vocab logits of the causal-LM loss. 4-bit weights cannot be fully fine-tuned."""
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    if quantization in ("nf4", "int8"):
        raise ValueError("a full fine-tune trains every weight; it cannot run on quantized weights (use bf16/fp32)")
    width = int(LINEAR_BYTES_PER_PARAM[quantization])
    tokens = batch_size * seq_len
    params = shape.total_params
    terms = {
        "weights_bytes": params * width,
        "grads_bytes": params * width,
        "optimizer_state_bytes": 2 * params * width,  # torch AdamW: exp_avg, exp_avg_sq like the parameter
        "activations_bytes": train_activation_bytes(shape, tokens, False, 0, 0, device),
        "logits_bytes": tokens * shape.vocab_size * (width + FULL_LOGIT_FP32_BYTES),
    }
    return _finish(stage, shape.name, terms, device, {"batch_size": batch_size, "seq_len": seq_len,
                                                        "quantization": quantization, "optimizer": "adamw-torch"})


def estimate_hf_generate(shape: ModelShape, *, batch_size: int, prompt_tokens: int, max_new_tokens: int,
                         quantization: Quantization = "nf4", kv_bytes_per_value: float = 2.0,
                         stage: str = "evaluate", device: Device = "cuda", adapter_lora_r: int | None = None
                         ) -> Estimate:
    """`model.generate()` with transformers: weights + KV cache for prompt + new tokens + the prefill's
    transient activations; logits are kept for the last position only (`logits_to_keep=1`).

    `adapter_lora_r`: a LoRA adapter kept unmerged beside 4-bit weights (faithforge/stages/evaluate.py does not
    merge into NF4, which would re-quantize the update), loaded by peft in fp32 (`autocast_adapter_dtype`)."""
    _check_positive(batch_size=batch_size, prompt_tokens=prompt_tokens, max_new_tokens=max_new_tokens)
    context = prompt_tokens + max_new_tokens
    terms = {
        "weights_bytes": weights_bytes(shape, quantization),
        "dequant_buffer_bytes": dequant_buffer_bytes(shape, quantization),
        "kv_cache_bytes": batch_size * context * shape.kv_bytes_per_token(kv_bytes_per_value),
        "activations_bytes": forward_activation_bytes(shape, batch_size * prompt_tokens, device),
        "logits_bytes": batch_size * shape.vocab_size * LOGIT_BYTES_FORWARD,
        "adapter_bytes": 4 * shape.lora_params(adapter_lora_r) if adapter_lora_r and quantization == "nf4" else 0,
    }
    return _finish(stage, shape.name, terms, device, {
        "batch_size": batch_size, "prompt_tokens": prompt_tokens, "max_new_tokens": max_new_tokens,
        "quantization": quantization})


def estimate_ollama(model: OllamaModel, *, parallel: int, context_tokens: int, kv_bytes_per_value: float = 2.0,
                    stage: str = "generate") -> Estimate:
    """An Ollama server holding `model` with `parallel` slots of `context_tokens` each (num_ctx).

    Ollama (llama.cpp) allocates the KV cache for num_ctx × parallel at load time, and a compute graph of
    about 4 B × num_batch × total context × (1 + heads) without flash attention (Ollama's GraphSize).
    It does not use PyTorch's caching allocator, so no allocator overhead is added.
    """
    _check_positive(parallel=parallel, context_tokens=context_tokens)
    total_context = parallel * context_tokens
    graph = max(4 * OLLAMA_NUM_BATCH * total_context * (1 + model.num_heads), OLLAMA_MIN_GRAPH_BYTES)
    terms = {
        "weights_bytes": model.weights_bytes,
        "kv_cache_bytes": total_context * model.kv_bytes_per_token(kv_bytes_per_value),
        "compute_graph_bytes": graph,
    }
    return _finish(stage, model.name, terms, "cuda", {"parallel": parallel, "context_tokens": context_tokens},
                   overhead_fraction=0.0)
