"""One model call that appends to a KV cache, with the three arguments transformers 5.x gets wrong silently
if left implicit (see the research notes, "prefix-cache pitfalls"):

- attention_mask covers cached + new tokens ([batch, past + new]; a mask over the new tokens only gave
  max |Δlogit| 43.6);
- position_ids are explicit (LlamaModel otherwise uses arange(new) + cache length and ignores padding);
- logits_to_keep=1: only the last position's logits are built (a 2,000-token prefill otherwise builds
  [2000, vocab] floats: 256 MB at vocab 32k).

The cache goes in as `cache=`: transformers 5.24 renamed the forward argument `past_key_values` to `cache`
and warns that the old name goes in 5.40 (`deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")`
on every model's forward). Models whose forward predates the rename still get `past_key_values`.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
from transformers.cache_utils import DynamicCache


@lru_cache(maxsize=None)
def _cache_argument_of(forward_owner: type) -> str:
    parameters = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_argument(model) -> str:
    """The name under which `model`'s forward takes a KV cache (`cache`, or `past_key_values` before 5.24).

    A peft wrapper forwards **kwargs to the model it wraps, so the wrapped model's signature decides."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_argument_of(type(inner))


def forward_last_logits(model, cache: DynamicCache, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        position_ids: torch.Tensor, **attention_kwargs) -> torch.Tensor:
    """Run `model` on input_ids [batch, new] after `cache`; returns float32 logits [batch, vocab] of the last position.
    `attention_kwargs` reach the attention function (`shared_prefix` of `faithforge.engine.prefix_attention`).

    If the call fails part-way (e.g. out of memory), layers that were already extended are cropped back so
    the cache again holds exactly its previous tokens, then the error propagates.
    """
    before = cache.get_seq_length()
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=True, logits_to_keep=1, **{cache_argument(model): cache}, **attention_kwargs)
    except BaseException:
        crop_back(cache, before)
        raise
    return out.logits[:, -1, :].float()


def forward_token(model, cache: DynamicCache, token: int, position: int, **attention_kwargs) -> torch.Tensor:
    """Feed one `token` at `position` (the cache's length) through `model`'s own forward; float32 logits [vocab]
    for the next token. The counterpart of `llama_step.decode_step`, which writes the same step out."""
    device = next(model.parameters()).device
    return forward_last_logits(model, cache, torch.tensor([[token]], dtype=torch.long, device=device),
                               torch.ones(1, position + 1, dtype=torch.long, device=device),
                               torch.tensor([[position]], dtype=torch.long, device=device), **attention_kwargs)[0]


def crop_back(cache: DynamicCache, tokens: int) -> None:
    """Crop every layer that holds more than `tokens` back to `tokens`: undoes a forward that failed part-way,
    after some layers had appended their states and others had not."""
    for layer in cache.layers:
        extra = layer.get_seq_length() - tokens
        if extra > 0:
            layer.crop(-extra)


def prefill_in_chunks(model, cache: DynamicCache, ids: list[int], device: torch.device, chunk: int,
                      **attention_kwargs) -> torch.Tensor:
    """Append `ids` (one sequence) to `cache` in chunks of at most `chunk` tokens; returns last logits [vocab].
    `attention_kwargs` reach the attention function (`one_row` of `faithforge.engine.prefix_attention`).

    Chunking bounds the attention scores held at once to chunk x (cache + chunk) per head.
    """
    logits = None
    for start in range(0, len(ids), chunk):
        piece = ids[start:start + chunk]
        past = cache.get_seq_length()
        logits = forward_last_logits(
            model, cache,
            torch.tensor([piece], dtype=torch.long, device=device),
            torch.ones(1, past + len(piece), dtype=torch.long, device=device),
            torch.arange(past, past + len(piece), device=device).unsqueeze(0), **attention_kwargs,
        )
    return logits[0]
