"""Encode a pair's shared prefix once: the backbone pass behind the DPO loss and the reference cache.

A preference batch is 2B rows, the B chosen sequences then the B rejected ones, each the same prompt followed
by a different answer (TRL's `DataCollatorForPreference`, `reference_cache.collate_pairs`). Row i and row i+B
are token-identical up to where the answers diverge, so the backbone computes the same hidden states for that
prefix twice: causal attention makes position j depend only on tokens 0..j. On the real demo's pairs the prompt
(a document and a question) is most of every row, so the duplicate is ~40% of the batch's tokens.

`shared_prefix_hidden` runs the backbone twice instead of once: on the B prefixes (the batch's shortest common
prefix), keeping their keys and values, and then on the 2B rest-of-rows against those keys and values, repeated
for both rows of the pair. Its result is the (2B, seq_len, hidden) tensor the plain forward returns, the same
numbers up to float rounding, differentiable through both passes, so the loss and its gradients are unchanged.
Where the layout is not a flush-left pair batch, or the model cannot keep a cache in this pass (gradient
checkpointing while training drops it; a sliding-window cache cannot be repeated), it runs the plain forward.

`share_pair_prefixes(model)` puts this in place of the backbone's forward while a DPO loss is computed: TRL's
fused head (`add_fused_lm_head`) calls the backbone with `input_ids` and `attention_mask` and reads
`last_hidden_state`, so the head, the loss and the metrics are TRL's own.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable

#: Keyword arguments the shared pass understands; any other one set to something (embeddings, positions, masks
#: for images, a request for attentions) sends the call down the plain forward.
_PLAIN_KEYS = {"input_ids", "attention_mask", "use_cache", "return_dict"}


def pair_prefix_lengths(input_ids, attention_mask):
    """Tokens that row i and row i+B share from the start, for a batch of 2B flush-left rows.

    Shapes: `input_ids`, `attention_mask` (2 * B, seq_len), long. Returns (B,) long: the length of the common
    prefix of the two rows' real tokens, capped one short of the shorter row so each row keeps a suffix to run.
    """
    half = input_ids.shape[0] // 2
    real = attention_mask.bool()
    same = (input_ids[:half] == input_ids[half:]) & real[:half] & real[half:]
    common = same.long().cumprod(dim=1).sum(dim=1)
    shorter = attention_mask.sum(dim=1).view(2, half).min(dim=0).values
    return common.minimum(shorter - 1).clamp(min=0)


def _flush_left(attention_mask) -> bool:
    """True when every row's real tokens are its first ones (right padding only). Shape: `attention_mask`
    (rows, seq_len), 0/1."""
    import torch

    lengths = attention_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return bool((attention_mask.bool() == (positions < lengths)).all())


def _cache_argument(forward: Callable) -> str:
    """The name a backbone's forward takes its KV cache by (`cache` since transformers 5.2x, before
    `past_key_values`)."""
    parameters = inspect.signature(forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def shared_prefix_hidden(forward: Callable, config, input_ids, attention_mask, cache_name: str | None = None):
    """The backbone's last hidden states for a pair batch, the batch's common prefix encoded once per pair.

    The prefix is the first S tokens, S the shortest of the pairs' common prefixes, so every row's tokens stay at
    the cache positions the plain forward gives them (no gap, no padding inside it): positions, rotary angles,
    ALiBi distances and local windows come out the same whatever the architecture measures them by. On the real
    demo's pairs (prompts of 68–80 tokens) that shares 36.6% of a batch's tokens against 38.7% for per-pair lengths.

    Args:
        forward: The backbone's own forward (a transformers decoder: `LlamaModel.forward` and the like).
        config: Its config (for the cache).
        input_ids, attention_mask: (2 * B, seq_len), long; rows i and i + B are a pair; right padding only.
        cache_name: The keyword `forward` takes its cache by (read from its signature when not given).

    Returns:
        (2 * B, seq_len, hidden_size) in the backbone's dtype, or None when this batch cannot share (odd rows, not
        flush left, no common prefix, a cache that keeps less than every token): the caller then runs the plain
        forward.
    """
    import torch
    from transformers import DynamicCache

    rows = input_ids.shape[0]
    if rows < 2 or rows % 2 or not _flush_left(attention_mask) or _rope_depends_on_length(config):
        return None
    half = rows // 2
    width = int(pair_prefix_lengths(input_ids, attention_mask).min())  # S: every row's first S tokens are real
    if width < 1:
        return None
    cache = DynamicCache(config=config)
    if not _keeps_every_token(cache):
        return None
    cache_name = cache_name or _cache_argument(forward)
    prefix = forward(input_ids=input_ids[:half, :width], attention_mask=attention_mask[:half, :width],
                     use_cache=True, **{cache_name: cache})
    if not _keeps_every_token(cache):  # layers made on first use
        return None
    for layer in cache.layers:  # one copy of each pair's keys and values per row: chosen rows, then rejected rows
        layer.keys = torch.cat([layer.keys, layer.keys], dim=0)
        layer.values = torch.cat([layer.values, layer.values], dim=0)
    # The suffixes continue at cache position S, with the whole rows' mask: what the plain forward sees.
    suffix = forward(input_ids=input_ids[:, width:], attention_mask=attention_mask, use_cache=True,
                     **{cache_name: cache})
    return torch.cat([prefix.last_hidden_state.repeat(2, 1, 1), suffix.last_hidden_state], dim=1)


def _rope_depends_on_length(config) -> bool:
    """Rotary angles chosen per call from the longest position it sees ("dynamic" NTK scaling, Phi-3's "longrope"):
    a prefix pass and a suffix pass could then use other frequencies than one whole pass (a review measured 2e-3
    past the original context on "dynamic"). Such models take the plain pass."""
    scaling = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    return kind in ("dynamic", "longrope")


def _keeps_every_token(cache) -> bool:
    """Every layer of the cache keeps all its tokens (a sliding window or a linear-attention state does not, so it
    cannot stand for the whole prefix)."""
    return all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers)


@contextlib.contextmanager
def share_pair_prefixes(model):
    """While inside, the model's backbone encodes each pair's common prefix once (`shared_prefix_hidden`).

    `model` is the causal LM (or a PEFT/Trainer wrapper of one) whose `get_decoder()` TRL's fused head calls.
    Calls the shared pass cannot serve run the backbone's own forward. A no-op for models without a decoder.
    """
    from transformers.modeling_outputs import BaseModelOutputWithPast

    backbone = decoder_of(model)
    if backbone is None:
        yield
        return
    import torch

    plain = backbone.forward
    # Read once per entry, not per forward: neither changes while a loss is computed.
    cache_name = _cache_argument(plain)
    checkpointed = any(getattr(m, "gradient_checkpointing", False) for m in backbone.modules())

    def forward(*args: Any, **kwargs: Any):
        # PEFT passes `inputs_embeds=None`, `output_attentions=False` and the like: None or False asks for nothing
        asks = {key for key, value in kwargs.items()
                if key not in _PLAIN_KEYS and not (value is None or value is False)}
        # with gradient checkpointing running, the layers drop the cache the suffix pass needs
        dropped = checkpointed and backbone.training and torch.is_grad_enabled()
        if args or asks or kwargs.get("input_ids") is None or kwargs.get("attention_mask") is None or dropped:
            return plain(*args, **kwargs)
        hidden = shared_prefix_hidden(plain, backbone.config, kwargs["input_ids"], kwargs["attention_mask"],
                                      cache_name)
        if hidden is None:
            return plain(*args, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=hidden)

    own = backbone.__dict__.get("forward")  # a forward set on the instance (accelerate's hooks) is put back
    backbone.forward = forward
    try:
        yield
    finally:
        if own is None:
            del backbone.forward  # the class's forward shows through again
        else:
            backbone.forward = own


def decoder_of(model):
    """The decoder stack under any wrapping (DDP's `module`, PEFT's `base_model.model`), or None."""
    inner = getattr(model, "module", model)
    get_decoder = getattr(inner, "get_decoder", None)
    if get_decoder is None:
        return None
    decoder = get_decoder()
    return decoder if decoder is not None and decoder is not inner else None
