"""One decode step of a transformers Llama model, written out operation by operation: what
`PrefixCachedEngine.generate` runs for each token it feeds back, where the one-row kernels (`one_row.py`) apply.

Why: with the one-row kernels, a step of SmolLM2-135M after the seed field note's 6,287-token system prompt
spends ~34 ms in the linears (540 MB of weights) and ~20 ms in attention (290 MB of keys and values) on 2 cores
(BENCHMARKS.md, "One request at a time after the seed's prompt: the decode step written out"). Of the other
~19 ms, 8 ms was transformers' machinery around ~40 small tensor operations a layer: the model's decorators, a
causal mask built over the cached tokens, output capture, keyword arguments passed down four levels, and 211
module calls. Here the same operations are called directly, on the same weights, in the same order
(transformers 5.x `LlamaModel`, `LlamaDecoderLayer`, `LlamaAttention`, `LlamaMLP`, `LlamaRMSNorm`): a step took
72.8 → 64.8 ms (`bench/one_row_steps.py`), and the logits are bit-identical to the model's own forward with the
one-row kernels (`tests/engine/test_llama_step.py` asserts `torch.equal`, step by step and over whole
generations).

Only what was checked takes this path (`applies_to`): exactly transformers' Llama classes, plain linears and
embeddings (no adapter, no quantized weight), no hooks, no hub kernel in use, float32 on the CPU. Anything else
(a peft wrapper, Qwen, Mistral, a hooked or offloaded model) runs the model's own forward as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

import faithforge.engine.one_row as one_row  # the module: its kernels are looked up at each call
from faithforge.engine.errors import EngineError
from faithforge.engine.forward import crop_back


def applies_to(model) -> bool:
    """Whether `decode_step` computes exactly what `model`'s forward computes (see the module docstring)."""
    try:
        from transformers.models.llama import modeling_llama as llama
    except ImportError:  # pragma: no cover - transformers always ships Llama
        return False
    if type(model) is not llama.LlamaForCausalLM or not one_row.applies_to(model):
        return False
    if _patched(llama) or _runs_other_code(model, llama):
        return False
    inner = model.model
    if (type(inner) is not llama.LlamaModel or type(inner.embed_tokens) is not torch.nn.Embedding
            or getattr(model.config, "is_causal", True) is False):  # non-causal: the model's attention is SDPA's
        return False
    linears = [model.lm_head]
    for layer in inner.layers[: model.config.num_hidden_layers]:
        attention, mlp = layer.self_attn, layer.mlp
        if (type(layer) is not llama.LlamaDecoderLayer or type(attention) is not llama.LlamaAttention
                or type(mlp) is not llama.LlamaMLP
                or type(layer.input_layernorm) is not llama.LlamaRMSNorm
                or type(layer.post_attention_layernorm) is not llama.LlamaRMSNorm
                or attention.is_causal is not True):
            return False
        linears += [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj,
                    mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    return (type(inner.norm) is llama.LlamaRMSNorm
            and all(type(m) is torch.nn.Linear and one_row.is_dense(m.weight) for m in linears))


def _patched(llama) -> bool:
    """Whether a library replaced a Llama forward or the rotary function on the classes or the module (as
    liger-kernel does): the step mirrors transformers' own code only."""
    functions = (llama.LlamaForCausalLM.forward, llama.LlamaModel.forward, llama.LlamaDecoderLayer.forward,
                 llama.LlamaAttention.forward, llama.LlamaMLP.forward, llama.LlamaRMSNorm.forward,
                 llama.LlamaRotaryEmbedding.forward, llama.rotate_half, llama.apply_rotary_pos_emb)
    return any(getattr(f, "__module__", None) != llama.__name__ for f in functions)


def _runs_other_code(model, llama) -> bool:
    """Whether `model`'s forward would run code this step skips: hooks, a compiled module, a forward replaced on
    an instance (accelerate's offloading), or a hub kernel. transformers 5.x loads models with `use_kernels` on;
    where the `kernels` library finds a kernel for a layer, or for the rotary function a Llama attention calls, it
    sets that module's (or the function wrapper's, kept in `_kernel_funcs`, or the module-level
    `apply_rotary_pos_emb`'s) `forward`; where it finds none (no hub here, or no CPU kernel) the stock forward
    stays. The one-row kernels' own switch (`one_row.one_row_linears`) is the one replaced forward allowed."""
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        return True
    wrappers = [llama.apply_rotary_pos_emb]  # shared by every Llama attention
    for m in model.modules():
        wrappers += [m, *m.__dict__.get("_kernel_funcs", {}).values()]
    return any(_replaced(w) for w in wrappers)


def _replaced(module: torch.nn.Module) -> bool:
    """Whether calling `module` runs more or other than its class's forward (see `_runs_other_code`)."""
    own = module.__dict__.get("forward")
    return bool(module._forward_hooks or module._forward_pre_hooks
                or getattr(module, "_compiled_call_impl", None) is not None  # `module.compile()` in place
                or "_kernel_repo" in module.__dict__
                or (own is not None and getattr(own, "__func__", None) is not one_row._forward))


def decode_step(model, cache: DynamicCache, token: int, position: int) -> torch.Tensor:
    """Feed one `token` at `position` (the cache's length) through `model`, appending its keys and values to
    `cache`; returns float32 logits [vocab] for the next token. `model` must pass `applies_to`, and the call must
    run with gradients off (`generate` runs it under `torch.inference_mode()`): the model's forward sends one row
    through oneDNN only then (`one_row._forward`), and so does this.

    If the step fails part-way (e.g. out of memory), layers already extended are cropped back, so the cache again
    holds exactly its previous tokens, as `forward.forward_last_logits` does."""
    if torch.is_grad_enabled():
        raise EngineError("llama_step.decode_step runs with gradients off (under torch.inference_mode()), as the "
                          "engine's generate does")
    inner = model.model
    before = cache.get_seq_length()
    device = model.lm_head.weight.device
    try:
        hidden = inner.embed_tokens(torch.tensor([[token]], dtype=torch.long, device=device))  # (1, 1, hidden)
        cos, sin = inner.rotary_emb(hidden, position_ids=torch.tensor([[position]], dtype=torch.long, device=device))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (1, 1, 1, head_dim): one position for every head
        for layer in inner.layers[: model.config.num_hidden_layers]:
            hidden = hidden + _attention(layer.self_attn, _rms_norm(layer.input_layernorm, hidden), cos, sin, cache)
            hidden = hidden + _mlp(layer.mlp, _rms_norm(layer.post_attention_layernorm, hidden))
        hidden = _rms_norm(inner.norm, hidden)
        return _linear(hidden[:, -1], model.lm_head)[0].float()
    except BaseException:
        crop_back(cache, before)
        raise


def _linear(x: torch.Tensor, module: torch.nn.Linear) -> torch.Tensor:
    """One row through oneDNN where this build has it (`one_row`), else `F.linear`. Shapes: (..., in) → (..., out)."""
    if one_row.onednn_linear_available():
        return one_row.onednn_linear(x, module.weight, module.bias)
    return F.linear(x, module.weight, module.bias)


def _rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`LlamaRMSNorm.forward`: normalized in float32, scaled by the weight. Shape: (1, 1, hidden) → same."""
    dtype = x.dtype
    x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    return norm.weight * (x * torch.rsqrt(variance + norm.variance_epsilon)).to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' `apply_rotary_pos_emb` for one tensor: x·cos + rotate_half(x)·sin.
    Shape: (1, heads, 1, head_dim) → same."""
    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


def _attention(attention: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               cache: DynamicCache) -> torch.Tensor:
    """`LlamaAttention.forward` for one token, attending through `one_row.attend_one_row` (what the engine's
    attention function runs for one row); its states go to the cache slot of its `layer_idx`, as there (a pruned
    model's layers keep their original slots). Shape: (1, 1, hidden) → (1, 1, hidden)."""
    heads_shape = (1, 1, -1, attention.head_dim)
    query = _linear(x, attention.q_proj).view(heads_shape).transpose(1, 2)  # (1, heads, 1, head_dim)
    key = _linear(x, attention.k_proj).view(heads_shape).transpose(1, 2)  # (1, kv_heads, 1, head_dim)
    value = _linear(x, attention.v_proj).view(heads_shape).transpose(1, 2)
    keys, values = cache.update(_rotate(key, cos, sin), value, attention.layer_idx)
    out = one_row.attend_one_row(_rotate(query, cos, sin), keys, values, attention.scaling)
    return _linear(out.transpose(1, 2).reshape(1, 1, -1), attention.o_proj)


def _mlp(mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`LlamaMLP.forward`: down(act(gate(x)) · up(x)). Shape: (1, 1, hidden) → (1, 1, hidden)."""
    return _linear(mlp.act_fn(_linear(x, mlp.gate_proj)) * _linear(x, mlp.up_proj), mlp.down_proj)
