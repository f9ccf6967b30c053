"""Kernels for decoding one row on the CPU: what `PrefixCachedEngine.generate` runs at every generated token.

Why: one request at a time, a decode step multiplies one hidden-state row by every weight matrix and reads the
whole KV cache once; both are bound by memory, not arithmetic. Profiled on 2 cores with SmolLM2-135M in float32
after the seed field note's 6,287-token system prompt (BENCHMARKS.md, "One row at a time"), a step took ~90 ms:
- ~47 ms in the linears: 540 MB of weights at ~11 GB/s. PyTorch sends a one-row float32 product to MKL's
  matrix-vector kernel, which runs as fast on one thread as on two, although the memory gives one core 18.6 GB/s
  and two 27 GB/s (a plain `sum` over 400 MB). oneDNN's matmul (`mkldnn::_linear_pointwise`, which PyTorch's
  compiler uses for low-precision or fused CPU linears) reads the same weights with both cores: 45.8 → 29.5 ms
  for SmolLM2's 211 matrices in isolation, ~34 ms inside the model.
- ~31 ms in attention: 290 MB of keys and values. The fused kernel gives each query head its own work item, so
  SmolLM2's 9 query heads read each of the 3 kv heads three times, and 3 kv heads split badly over 2 threads.
  Here the query heads that share a kv head are one block of queries (each kv head read once), and the keys are
  cut into chunks so that kv heads × chunks is a multiple of the threads ("split-K", the flash-decoding layout).
  The parts' outputs are joined by their log-sum-exp, as in `prefix_attention`.
- When a request is first read (its ~20 tokens after the prompt), transformers' SDPA has a mask and so copies
  every kv head three times (`repeat_kv`: 870 MB written, then read) before attending: ~160 of the ~280 ms of
  the request's first call. The same two-part attention needs no copy.

Both equal stock PyTorch up to float rounding (a sum taken in another order): attention outputs within 1e-5,
logits within 1e-4, the same greedy tokens (tests/engine/test_one_row.py; bench/prefix_smollm2.py checks the
real model). Used for float32 models on the CPU only, where they were measured; anything else runs as before.
"""

from __future__ import annotations

import contextlib
import math
import threading
from functools import lru_cache
from typing import Iterator

import torch
import torch.nn.functional as F

#: Fewest keys per chunk worth a split: below it the extra kernel calls and the join cost more than the better
#: thread balance saves (a decode step over a few hundred keys takes microseconds).
MIN_CHUNK_TOKENS = 256

_local = threading.local()  # .depth > 0 while this thread decodes one row (see `one_row_linears`)
_lock = threading.Lock()
_patched: dict[int, list] = {}  # id(model) → [blocks inside, the nn.Linear modules given `_forward`]


@lru_cache(maxsize=None)
def onednn_linear_available() -> bool:
    """Whether this PyTorch build runs oneDNN's linear on the CPU (x86 and Arm builds do; it is probed, not
    assumed, because the operator is PyTorch's internal one)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x, w = torch.ones(1, 4), torch.ones(3, 4)
        return bool(torch.equal(onednn_linear(x, w, None), F.linear(x, w)))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def applies_to(model) -> bool:
    """Whether `model` decodes through these kernels: float32 weights on the CPU, transformers' SDPA attention,
    one plain language-model config (as `prefix_attention.supports_shared_prefix`)."""
    if hasattr(model, "_orig_mod") or getattr(model, "_compiled_call_impl", None) is not None:
        return False  # torch.compile'd (wrapped, or `model.compile()` in place): switching forwards and the config
        # would defeat its guards
    try:
        weight = next(model.parameters())
    except StopIteration:
        return False
    config = getattr(model, "config", None)
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and config is not None
            and getattr(config, "_attn_implementation", None) == "sdpa" and not getattr(config, "sub_configs", None))


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` through oneDNN. Shapes: x (..., in), weight (out, in), bias (out,) → (..., out)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def is_dense(weight: torch.Tensor) -> bool:
    """A plain strided tensor or parameter, what oneDNN is given: a tensor subclass (e.g. a quantized weight that
    reports float32) keeps `F.linear`."""
    return type(weight) in (torch.Tensor, torch.nn.Parameter) and weight.layout == torch.strided


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear.forward, with one float32 row through oneDNN while this thread is inside `one_row_linears`.
    Plain dense weights only: a tensor subclass (e.g. a quantized weight that reports float32) keeps `F.linear`."""
    weight = self.weight
    if (getattr(_local, "depth", 0) and x.numel() == x.shape[-1] and x.dtype == torch.float32
            and weight.dtype == torch.float32 and is_dense(weight)
            and x.device.type == "cpu" and not torch.is_grad_enabled()):
        return onednn_linear(x, weight, self.bias)
    return F.linear(x, weight, self.bias)


@contextlib.contextmanager
def one_row_linears(model) -> Iterator[None]:
    """Inside the block, this thread's one-row float32 products in `model`'s `nn.Linear`s run through oneDNN.

    Only modules of exactly `nn.Linear` are switched (quantized or adapter layers keep their forward; an adapter's
    inner `nn.Linear`s are switched). Other threads using the model meanwhile are unaffected: the switch is read
    per thread. Blocks may overlap on one model: the first in installs, the last out removes, under a lock."""
    if not onednn_linear_available():
        yield
        return
    key = id(model)
    with _lock:
        entry = _patched.get(key)
        if entry is None:
            modules = [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in m.__dict__]
            for m in modules:
                m.forward = _forward.__get__(m)
            entry = _patched[key] = [0, modules]
        entry[0] += 1
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth
        with _lock:
            entry[0] -= 1
            if entry[0] == 0:
                for m in entry[1]:  # only the forward installed here (another may have been set since)
                    own = m.__dict__.get("forward")
                    if getattr(own, "__func__", None) is _forward and getattr(own, "__self__", None) is m:
                        del m.__dict__["forward"]
                del _patched[key]


def key_chunks(kv_heads: int, tokens: int, threads: int) -> int:
    """How many chunks to cut the keys into: the fewest that make kv_heads × chunks a multiple of `threads`
    (every thread gets as many work items), or 1 where a chunk would hold fewer than `MIN_CHUNK_TOKENS` keys."""
    chunks = max(1, threads) // math.gcd(kv_heads, max(1, threads))
    return chunks if tokens >= chunks * MIN_CHUNK_TOKENS else 1


def attend_one_row(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of one row's n new tokens, the last n of its keys: each sees every earlier key and the new ones
    up to itself (no padding). n is 1 while decoding, the request's length when it is first read.

    Shapes: query (1, heads, n, head_dim); key, value (1, kv_heads, tokens, head_dim), views of a cache buffer (any
    strides along the tokens); head h reads kv head h // (heads / kv_heads), as transformers' repeat_kv.
    Returns (1, heads, n, head_dim) in the query's dtype.

    Parts joined by their log-sum-exp: the keys every new token sees (all of them while decoding one token; the
    earlier ones otherwise), no mask, in chunks (see `key_chunks`), with all of a kv head's queries as one block;
    and, for n > 1, the new keys, causal, the kv head's query heads as the kernel's heads."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    _, heads, new, head_dim = query.shape
    kv_heads, tokens = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    seen_by_all = tokens if new == 1 else tokens - new
    k, v = key[0], value[0]  # (kv_heads, tokens, head_dim)
    parts_out, parts_lse = [], []
    if new > 1:  # the new keys: (kv_heads as the batch, groups as heads, new, head_dim), each kv head broadcast
        out, lse = flash(query.reshape(kv_heads, groups, new, head_dim),
                         k[:, seen_by_all:].unsqueeze(1).expand(kv_heads, groups, new, head_dim),
                         v[:, seen_by_all:].unsqueeze(1).expand(kv_heads, groups, new, head_dim),
                         is_causal=True, scale=scale)
        parts_out.append(out.reshape(kv_heads, 1, groups * new, head_dim))
        parts_lse.append(lse.reshape(kv_heads, 1, groups * new))
    if seen_by_all:
        q = query.reshape(kv_heads, 1, groups * new, head_dim)  # a kv head's queries as one block
        chunks = key_chunks(kv_heads, seen_by_all, torch.get_num_threads())
        size = seen_by_all // chunks
        # (kv_heads, chunks, size, head_dim) as views: chunk c of a kv head holds its keys [c·size, (c+1)·size).
        k_chunks, v_chunks = (t.as_strided((kv_heads, chunks, size, head_dim),
                                           (t.stride(0), size * t.stride(1), t.stride(1), t.stride(2)),
                                           t.storage_offset()) for t in (k, v))
        out, lse = flash(q.expand(kv_heads, chunks, groups * new, head_dim), k_chunks, v_chunks, scale=scale)
        parts_out.append(out)
        parts_lse.append(lse)
        if chunks * size < seen_by_all:  # the last seen_by_all % chunks keys
            rest = slice(chunks * size, seen_by_all)
            out, lse = flash(q, k[:, rest].unsqueeze(1), v[:, rest].unsqueeze(1), scale=scale)
            parts_out.append(out)
            parts_lse.append(lse)
    if len(parts_out) == 1 and parts_out[0].shape[1] == 1:
        return parts_out[0].reshape(1, heads, new, head_dim)
    out, lse = torch.cat(parts_out, 1).float(), torch.cat(parts_lse, 1)
    weight = torch.softmax(lse, dim=1).unsqueeze(-1)  # each part's share of the whole softmax's mass
    return (out * weight).sum(1).to(query.dtype).reshape(1, heads, new, head_dim)


def can_attend(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, is_causal: bool | None = None) -> bool:
    """Whether `attend_one_row` computes what SDPA would for this call of transformers' attention: one row on the
    CPU in float32, queries, keys and values of one head size (not multi-head latent attention), whole groups of
    query heads per kv head, a causal module, and a plain causal mask (`is_plain_causal`)."""
    return (query.shape[0] == 1 and query.device.type == "cpu"
            and query.dtype == key.dtype == value.dtype == torch.float32
            and query.shape[-1] == key.shape[-1] == value.shape[-1] and query.shape[1] % key.shape[1] == 0
            and getattr(module, "is_causal", True) and is_causal is not False
            and is_plain_causal(attention_mask, query.shape[2], key.shape[2]))


def is_plain_causal(attention_mask: torch.Tensor | None, new: int, tokens: int) -> bool:
    """Whether `attention_mask` (transformers' boolean [1, 1, new, tokens], True: attend, or None) lets each of the
    last `new` tokens see every earlier token and the new ones up to itself, and nothing else is hidden."""
    if attention_mask is None:
        return True
    if attention_mask.dtype != torch.bool or tuple(attention_mask.shape) != (1, 1, new, tokens):
        return False
    past = tokens - new
    own = torch.ones(new, new, dtype=torch.bool, device=attention_mask.device).tril()
    return bool(attention_mask[0, 0, :, :past].all()) and torch.equal(attention_mask[0, 0, :, past:], own)
