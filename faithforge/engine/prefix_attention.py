"""Attention over a prefix that every row of a batch shares, read once per step instead of once per row.

Why: decoding is memory-bound on a CPU. A batch of B requests after a P-token system prompt used to expand the
prompt's keys and values into B copies (B × P states copied before the first token) and then read all B copies at
every generated token. At the seed's 6,287-token prompt on SmolLM2-135M in float32 that is 290 MB of states per
row (30 layers × 2 × 3 kv heads × 64 × 4 bytes a token), read on top of the 540 MB of weights: a step of 8 rows
read 2.9 GB where one copy of the prompt needs 0.8 GB (BENCHMARKS.md, "The seed's prompt lengths on SmolLM2").

How: the batch cache holds the rows' own states only ([batch, kv_heads, tokens, head_dim]) and views of the
engine's prefix states ([1, kv_heads, P, head_dim], never copied). Attention runs in two parts, each giving every
query its softmax-weighted values O and the log-sum-exp L of its scores: over the prefix (p: every row's queries
against the one prefix, as one call) and over the row's own tokens (r: under the padding and causal mask
transformers builds). They are joined exactly (the "cascade" / "bifurcated" attention of shared-prefix serving):

    out = (exp(L_p − m)·O_p + exp(L_r − m)·O_r) / (exp(L_p − m) + exp(L_r − m)),   m = max(L_p, L_r)

On the CPU both parts are PyTorch's fused flash-attention kernel, which returns L beside O; elsewhere the scores
are built here in float32. In float32 the result equals SDPA over the concatenated states to rounding
(tests/engine/test_prefix_attention.py).

The same attention function also serves `PrefixCachedEngine.generate` (one request at a time), whose calls it
sends to `faithforge.engine.one_row` (one row, no padding: no prefix to share, but the kv heads read once).

Used by `faithforge.engine.batch.BatchRunner` for batches whose shared prefix is at least `MIN_SHARED_TOKENS`
long; shorter prefixes (the demo's ~70-token prompts) keep transformers' SDPA path, so their answers stay the
same to the bit. Models whose attention needs more than scores + mask (soft-capping, sliding windows, attention
sinks) are refused with the reason.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from faithforge.engine.errors import EngineError
from faithforge.engine.kv import GrowableLayer, new_cache
from faithforge.engine.one_row import attend_one_row, can_attend

#: The attention implementation's name in transformers' registries (config._attn_implementation).
NAME = "faithforge_shared_prefix"
#: A batch shares its prefix this way from this many prefix tokens on. Measured on SmolLM2 (bench/prefix_smollm2.py,
#: BENCHMARKS.md): 1.02x the copied batch at 512 tokens, 1.32x at 2,048, 1.77x at 6,287, and 1.00x with long
#: per-row prompts. Below it the gain is nil, and SDPA keeps short prompts (the demo's ~70 tokens) bit-identical
#: to the answers its figures were measured with.
MIN_SHARED_TOKENS = 512
#: Largest score matrix built at once, in elements (queries × keys, over all heads and rows): 2**25 float32
#: scores = 128 MiB, so a long batched prefill is done in slices of its new tokens (a review measured 1.7 GB
#: for 8 rows × 1,500 new tokens before the rows' part was sliced too).
_MAX_SCORES = 1 << 25
#: Keyword arguments of attention that carry nothing this implementation must honour (`output_attentions` only
#: while false). Any other with a value (soft-capping, a sliding window, attention sinks, block-sparse indices,
#: ...) is refused, not ignored.
_HARMLESS = frozenset({"position_ids", "use_cache", "cache_position", "is_causal", "output_attentions"})

_switch_lock = threading.Lock()
_switched: dict[int, list] = {}  # id(config) → [batches inside, the implementation to restore]


class SharedPrefixLayer(GrowableLayer):
    """A batch cache layer: the rows' own states in a growable buffer, the shared prefix as views of one copy.

    `get_seq_length` counts the prefix too, so transformers sizes masks and positions over prefix + row tokens,
    while `keys` / `values` (what attention receives) are the rows' own states only."""

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor):
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values  # [1, kv_heads, P, head_dim]
        self.pending = False  # states appended that `attention` has not yet read (see `check_read`)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.pending = True
        return super().update(key_states, value_states, *args, **kwargs)

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + (self._length if self.is_initialized else 0)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove and self.is_initialized and self._length + tokens_to_remove < 0:
            raise ValueError("a shared-prefix batch cache cannot be cropped into its prefix")
        super().crop(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        # Deliberate: only `generate`'s beam search / num_return_sequences repeats a cache; the batch runner never
        # does, and the inherited version would fail on rows not yet written. Refused rather than half-supported.
        raise NotImplementedError("a shared-prefix batch cache is built for its batch")


def shared_prefix_cache(model, prefix_layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """An empty batch cache for `model` whose layers share `prefix_layers` (views [1, kv_heads, P, head_dim])."""
    cache = new_cache(model)
    cache.layers = [SharedPrefixLayer(k, v) for k, v in prefix_layers]
    return cache


def is_shared_prefix_cache(cache: DynamicCache) -> bool:
    """Whether `cache` was built by `shared_prefix_cache` (its model calls go through `attention`)."""
    return bool(cache.layers) and isinstance(cache.layers[0], SharedPrefixLayer)


def supports_shared_prefix(model) -> bool:
    """Whether `model` can run the shared-prefix path: one plain language-model config (a composite one, e.g. a
    vision-language model, keeps per-part attention settings that one switch would overwrite)."""
    return not getattr(model.config, "sub_configs", None)


def check_read(cache: DynamicCache) -> None:
    """After a model call on a shared-prefix batch cache: every layer's new states went through `attention`.
    Without this, a model whose attention setting was changed under the batch would run SDPA over the rows'
    own states alone and silently ignore the prefix."""
    if any(getattr(layer, "pending", False) for layer in cache.layers):
        raise EngineError("the model's attention did not read the shared prefix (its attention setting changed "
                          "during a batch); run one batch at a time on a model")


@contextlib.contextmanager
def engine_attention(model) -> Iterator[None]:
    """Run `model`'s attention through `attention` (below) inside the block, then set back what was there: for a
    batch that shares its prefix, and for `PrefixCachedEngine.generate`'s one-row decode steps.

    Several blocks may overlap on one model (two engines, two threads): the first in switches, the last out
    restores, under a lock, so none leaves the model switched or switches it back under another."""
    config = model.config
    with _switch_lock:
        entry = _switched.setdefault(id(config), [0, config._attn_implementation])
        entry[0] += 1
        config._attn_implementation = NAME
    try:
        yield
    finally:
        with _switch_lock:
            entry[0] -= 1
            if entry[0] == 0:
                config._attn_implementation = entry[1]
                del _switched[id(config)]


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              shared_prefix: DynamicCache | None = None, one_row: bool = False, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention interface. query [batch, heads, new, head_dim]; key, value [batch, kv_heads, row
    tokens, head_dim] (the rows' own states); attention_mask boolean [batch, 1, new, P + row tokens] (True: attend)
    or None (no padding: causal). Returns ([batch, new, heads, head_dim], None).

    With `one_row` (`PrefixCachedEngine.generate`), what `one_row.can_attend` accepts goes through
    `one_row.attend_one_row`. Otherwise, without `shared_prefix` (the model called outside a shared batch) it is
    transformers' SDPA."""
    unsupported = sorted(name for name, v in kwargs.items() if v is not None and name not in _HARMLESS)
    if kwargs.get("output_attentions"):
        unsupported.append("output_attentions")
    if shared_prefix is None:
        if (one_row and not unsupported and not dropout
                and can_attend(module, query, key, value, attention_mask, kwargs.get("is_causal"))):
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            return attend_one_row(query, key, value, scale).transpose(1, 2).contiguous(), None
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if unsupported or dropout:
        raise EngineError(f"shared-prefix attention does not support {', '.join(unsupported) or 'dropout'} "
                          f"({type(module).__name__}); run the engine without it")
    layer = shared_prefix.layers[module.layer_idx]
    batch, heads, new, head_dim = query.shape
    rows = key.shape[-2]
    scale = scaling if scaling is not None else head_dim ** -0.5
    allowed = _row_mask(attention_mask, batch, new, rows, query.device)
    # Slices of the new tokens, so no score matrix over prefix + rows exceeds _MAX_SCORES elements.
    step = max(1, _MAX_SCORES // max(1, batch * heads * (layer.prefix_keys.shape[-2] + rows)))
    outs = [_attend(query[:, :, t:t + step], layer.prefix_keys[0], layer.prefix_values[0], key, value,
                    None if allowed is None else allowed[..., t:t + step, :], scale)
            for t in range(0, new, step)]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, 2)
    layer.pending = False
    return out.transpose(1, 2).contiguous(), None


def _attend(query: torch.Tensor, prefix_keys: torch.Tensor, prefix_values: torch.Tensor, keys: torch.Tensor,
            values: torch.Tensor, allowed: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Attention of query [batch, heads, n, head_dim] over the prefix [kv_heads, P, head_dim] and the rows' own
    keys/values [batch, kv_heads, rows, head_dim] under `allowed` ([batch, 1, 1, n, rows] or None: all).
    Returns [batch, heads, n, head_dim] in the query's dtype.

    On the CPU both parts run in PyTorch's fused flash-attention kernel, which also returns each query's
    log-sum-exp, and are joined by it: a version that built the score matrices itself ran a batch of 8
    ~400-token prompts after a 1,024-token prefix 1.8x slower than the copied prefix (prefill-bound;
    BENCHMARKS.md). Elsewhere the scores are built here, in float32."""
    if query.device.type == "cpu":
        return _attend_fused(query, prefix_keys, prefix_values, keys, values, allowed, scale)
    return _attend_unfused(query, prefix_keys, prefix_values, keys, values, allowed, scale)


def _attend_fused(query: torch.Tensor, prefix_keys: torch.Tensor, prefix_values: torch.Tensor, keys: torch.Tensor,
                  values: torch.Tensor, allowed: torch.Tensor | None, scale: float) -> torch.Tensor:
    """`_attend` through `aten::_scaled_dot_product_flash_attention_for_cpu` (output and log-sum-exp)."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    batch, heads, n, head_dim = query.shape
    kv_heads = keys.shape[1]
    groups = heads // kv_heads
    q = query.reshape(batch, kv_heads, groups * n, head_dim)  # head h reads kv head h // groups, as repeat_kv
    # The prefix: all rows' queries of one kv head against that head's one copy, as one batch-1 call.
    flat = q.transpose(0, 1).reshape(1, kv_heads, batch * groups * n, head_dim)
    out_p, lse_p = flash(flat, prefix_keys.unsqueeze(0), prefix_values.unsqueeze(0), scale=scale)
    out_p = out_p.reshape(kv_heads, batch, groups * n, head_dim).transpose(0, 1)
    lse_p = lse_p.reshape(kv_heads, batch, groups * n).transpose(0, 1)
    # The rows' own tokens under an additive mask (the kernel takes the query's dtype): padding and causality.
    mask = None
    if allowed is not None:
        mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(~allowed, float("-inf"))
        mask = mask.expand(batch, 1, groups, n, keys.shape[-2]).reshape(batch, 1, groups * n, keys.shape[-2])
    out_r, lse_r = flash(q, keys, values, attn_mask=mask, scale=scale)
    # A query that sees none of its row's tokens (a pad) gets log-sum-exp 0 and output 0 from the kernel; its
    # output is never read (pads are masked for every other query), and it stays finite.
    top = torch.maximum(lse_p, lse_r)
    weight_p, weight_r = torch.exp(lse_p - top).unsqueeze(-1), torch.exp(lse_r - top).unsqueeze(-1)
    out = (out_p.float() * weight_p + out_r.float() * weight_r) / (weight_p + weight_r)
    return out.to(query.dtype).reshape(batch, heads, n, head_dim)


def _attend_unfused(query: torch.Tensor, prefix_keys: torch.Tensor, prefix_values: torch.Tensor, keys: torch.Tensor,
                    values: torch.Tensor, allowed: torch.Tensor | None, scale: float) -> torch.Tensor:
    """`_attend` with the score matrices built here, in float32 (devices without the CPU kernel)."""
    batch, heads, n, head_dim = query.shape
    kv_heads = keys.shape[1]
    groups = heads // kv_heads
    q = query.reshape(batch, kv_heads, groups * n, head_dim)  # head h reads kv head h // groups, as repeat_kv

    # The prefix: all rows' queries of one kv head form one matrix against that head's one copy of the prefix.
    flat = q.transpose(0, 1).reshape(kv_heads, batch * groups * n, head_dim)
    scores_p = torch.matmul(flat, prefix_keys.transpose(-1, -2)).float() * scale  # [kv_heads, batch*groups*n, P]
    max_p = scores_p.amax(-1, keepdim=True)
    weights_p = torch.exp(scores_p - max_p)
    out_p = torch.matmul(weights_p.to(prefix_values.dtype), prefix_values).float()
    out_p, sum_p, max_p = (t.reshape(kv_heads, batch, groups * n, -1).transpose(0, 1)
                           for t in (out_p, weights_p.sum(-1, keepdim=True), max_p))

    # The rows' own tokens, under the mask's last `rows` columns (padding and causality).
    rows = keys.shape[-2]
    scores = torch.matmul(q, keys.transpose(-1, -2)).float() * scale  # [batch, kv_heads, groups*n, rows]
    if allowed is not None:
        scores = scores.view(batch, kv_heads, groups, n, rows).masked_fill(~allowed, float("-inf"))
        scores = scores.view(batch, kv_heads, groups * n, rows)
    top = torch.maximum(max_p, scores.amax(-1, keepdim=True))  # finite: the prefix is never masked
    weights = torch.exp(scores - top)
    rescale = torch.exp(max_p - top)
    numerator = out_p * rescale + torch.matmul(weights.to(values.dtype), values).float()
    denominator = sum_p * rescale + weights.sum(-1, keepdim=True)
    return (numerator / denominator).to(query.dtype).reshape(batch, heads, n, head_dim)


def _row_mask(attention_mask: torch.Tensor | None, batch: int, new: int, rows: int, device: torch.device
              ) -> torch.Tensor | None:
    """Which row tokens each query may see, [batch, 1, 1, new, rows] (broadcast over kv heads and groups), or
    None when it may see them all (one new token and no padding)."""
    if attention_mask is not None:  # boolean: transformers builds it with `sdpa_mask`, registered below
        return attention_mask[..., -rows:].expand(batch, 1, new, rows).unsqueeze(2)
    if new == 1:
        return None
    query_at = torch.arange(rows - new, rows, device=device).unsqueeze(1)  # causal within the rows' tokens
    return (torch.arange(rows, device=device).unsqueeze(0) <= query_at).view(1, 1, 1, new, rows)


AttentionInterface.register(NAME, attention)
AttentionMaskInterface.register(NAME, sdpa_mask)
