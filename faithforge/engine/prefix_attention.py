"""Attention over a prefix that every row of a batch shares, read once per step instead of once per row.

Why: decoding is memory-bound on a CPU. A batch of B requests after a P-token system prompt used to expand the
prompt's keys and values into B copies (B × P states copied before the first token) and then read all B copies at
every generated token. At the seed's 6,287-token prompt on SmolLM2-135M in float32 that is 290 MB of states per
row (30 layers × 2 × 3 kv heads × 64 × 4 bytes a token), read on top of the 540 MB of weights: a step of 8 rows
read 2.9 GB where one copy of the prompt needs 0.8 GB (BENCHMARKS.md, "The seed's prompt lengths on SmolLM2").

How: the batch cache holds the rows' own states only ([batch, kv_heads, tokens, head_dim]) and views of the
engine's prefix states ([1, kv_heads, P, head_dim], never copied). Attention is split in two and joined exactly
by the log-sum-exp rule (the "cascade" / "bifurcated" attention of shared-prefix serving):

    out = (exp(m_p − m)·O_p + exp(m_r − m)·O_r) / (exp(m_p − m)·l_p + exp(m_r − m)·l_r),   m = max(m_p, m_r)

where for each query O is the unnormalised softmax-weighted sum of values, l the sum of weights and m the largest
score, over the prefix (p: every row's queries against the one prefix, as one matrix product per kv head) and
over the row's own tokens (r: with the padding and causal mask transformers builds). In float32 the result
equals SDPA over the concatenated states to rounding (tests/engine/test_prefix_attention.py).

Used by `faithforge.engine.batch.BatchRunner` for batches whose shared prefix is at least `MIN_SHARED_TOKENS`
long; shorter prefixes (the demo's ~70-token prompts) keep transformers' SDPA path, so their answers stay the
same to the bit. Models whose attention needs more than scores + mask (soft-capping, sliding windows, attention
sinks) are refused with the reason.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from faithforge.engine.errors import EngineError
from faithforge.engine.kv import GrowableLayer, new_cache

#: The attention implementation's name in transformers' registries (config._attn_implementation).
NAME = "faithforge_shared_prefix"
#: A batch shares its prefix this way from this many prefix tokens on. Below it the states it saves reading are
#: few and SDPA's one fused call per layer is cheaper than the two matrix products and the join here; the
#: demo's prompts (~70 tokens) stay on SDPA. Chosen from bench/prefix_smollm2.py's batched rows (BENCHMARKS.md).
MIN_SHARED_TOKENS = 512
#: Largest score matrix of the prefix part built at once, in elements (queries × prefix tokens × kv heads):
#: 2**25 float32 scores = 128 MiB, so a long batched prefill is done in slices of queries.
_MAX_PREFIX_SCORES = 1 << 25
#: Keyword arguments of attention that this implementation cannot honour (transformers passes None when off).
_UNSUPPORTED = ("softcap", "sliding_window", "s_aux")


class SharedPrefixLayer(GrowableLayer):
    """A batch cache layer: the rows' own states in a growable buffer, the shared prefix as views of one copy.

    `get_seq_length` counts the prefix too, so transformers sizes masks and positions over prefix + row tokens,
    while `keys` / `values` (what attention receives) are the rows' own states only."""

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor):
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values  # [1, kv_heads, P, head_dim]

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + (self._length if self.is_initialized else 0)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove and self.is_initialized and self._length + tokens_to_remove < 0:
            raise ValueError("a shared-prefix batch cache cannot be cropped into its prefix")
        super().crop(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("a shared-prefix batch cache is built for its batch")


def shared_prefix_cache(model, prefix_layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """An empty batch cache for `model` whose layers share `prefix_layers` (views [1, kv_heads, P, head_dim])."""
    cache = new_cache(model)
    cache.layers = [SharedPrefixLayer(k, v) for k, v in prefix_layers]
    return cache


@contextlib.contextmanager
def shared_prefix_attention(model) -> Iterator[None]:
    """Run `model`'s attention through `attention` (below) inside the block; SDPA (or what was set) after it."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              shared_prefix: DynamicCache | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention interface. query [batch, heads, new, head_dim]; key, value [batch, kv_heads, row
    tokens, head_dim] (the rows' own states); attention_mask boolean [batch, 1, new, P + row tokens] (True: attend)
    or None (no padding: causal). Returns ([batch, new, heads, head_dim], None).

    Without `shared_prefix` (the model called outside a shared batch) it is transformers' SDPA."""
    if shared_prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    unsupported = [name for name in _UNSUPPORTED if kwargs.get(name) is not None]
    if unsupported or dropout:
        raise EngineError(f"shared-prefix attention does not support {', '.join(unsupported) or 'dropout'} "
                          f"({type(module).__name__}); run the engine without it")
    layer = shared_prefix.layers[module.layer_idx]
    batch, heads, new, head_dim = query.shape
    kv_heads, rows = key.shape[1], key.shape[-2]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else head_dim ** -0.5

    # The prefix: all rows' queries of one kv head form one matrix against that head's one copy of the prefix.
    q = query.reshape(batch, kv_heads, groups * new, head_dim)
    flat = q.transpose(0, 1).reshape(kv_heads, batch * groups * new, head_dim)
    out_p, sum_p, max_p = _prefix_part(flat, layer.prefix_keys[0], layer.prefix_values[0], scale)
    out_p, sum_p, max_p = (t.reshape(kv_heads, batch, groups * new, -1).transpose(0, 1) for t in (out_p, sum_p, max_p))

    # The rows' own tokens, under the mask's last `rows` columns (padding and causality).
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scale  # [batch, kv_heads, groups*new, rows]
    allowed = _row_mask(attention_mask, batch, new, rows, query.device)
    if allowed is not None:
        scores = scores.view(batch, kv_heads, groups, new, rows).masked_fill(~allowed, float("-inf"))
        scores = scores.view(batch, kv_heads, groups * new, rows)
    top = torch.maximum(max_p, scores.amax(-1, keepdim=True))  # finite: the prefix is never masked
    weights = torch.exp(scores - top)
    rescale = torch.exp(max_p - top)
    numerator = out_p * rescale + torch.matmul(weights.to(value.dtype), value).float()
    denominator = sum_p * rescale + weights.sum(-1, keepdim=True)
    out = (numerator / denominator).to(query.dtype).reshape(batch, heads, new, head_dim)
    return out.transpose(1, 2).contiguous(), None


def _prefix_part(flat_queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unnormalised attention of queries [kv_heads, Q, head_dim] over the prefix keys/values [kv_heads, P,
    head_dim]: (weighted values [kv_heads, Q, head_dim], weight sums [kv_heads, Q, 1], largest scores [kv_heads,
    Q, 1]), float32, in slices of queries so no score matrix exceeds `_MAX_PREFIX_SCORES` elements."""
    kv_heads, queries, _ = flat_queries.shape
    step = max(1, _MAX_PREFIX_SCORES // max(1, kv_heads * keys.shape[-2]))
    outs, sums, maxes = [], [], []
    for start in range(0, queries, step):
        scores = torch.matmul(flat_queries[:, start:start + step], keys.transpose(-1, -2)).float() * scale
        largest = scores.amax(-1, keepdim=True)
        weights = torch.exp(scores - largest)
        outs.append(torch.matmul(weights.to(values.dtype), values).float())
        sums.append(weights.sum(-1, keepdim=True))
        maxes.append(largest)
    return torch.cat(outs, 1), torch.cat(sums, 1), torch.cat(maxes, 1)


def _row_mask(attention_mask: torch.Tensor | None, batch: int, new: int, rows: int, device: torch.device
              ) -> torch.Tensor | None:
    """Which row tokens each query may see, [batch, 1, 1, new, rows] (broadcast over kv heads and groups), or
    None when it may see them all (one new token and no padding)."""
    if attention_mask is not None:
        allowed = attention_mask[..., -rows:]
        if allowed.dtype != torch.bool:  # an additive float mask: 0 where allowed, a large negative elsewhere
            allowed = allowed > torch.finfo(allowed.dtype).min / 2
        return allowed.expand(batch, 1, new, rows).unsqueeze(2)
    if new == 1:
        return None
    query_at = torch.arange(rows - new, rows, device=device).unsqueeze(1)  # causal within the rows' tokens
    return (torch.arange(rows, device=device).unsqueeze(0) <= query_at).view(1, 1, 1, new, rows)


AttentionInterface.register(NAME, attention)
AttentionMaskInterface.register(NAME, sdpa_mask)
