"""The one working KV cache of an engine, the token ids it holds, and how to return it to the prefix.

Layers are `GrowableLayer`s: a `DynamicLayer` that appends into a preallocated buffer (grown by 25% +
256 tokens when full) instead of `torch.cat`. transformers' DynamicLayer re-copies the whole cache at
every generated token (a 2,000-token prefix on the 8-layer, hidden-512 bench model: 64 MB per token);
here a token writes only its own states.

Restoring to the prefix crops with a negative count (`crop(-n)`): only the length changes, no copy.
BPE boundary: when a request's tokenization differs from the prefix's before the prefix ends (a merge
across the boundary), the cache is cropped to the longest common prefix and the prefix states cut off are
first copied aside (`_backup`, usually a few tokens), then written back when the prefix is restored.

Measured by bench/prefix_cache.py (see `RESTORE_TIMING_NOTE`): cropping wins over deep-copying by three
orders of magnitude, so the engine crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from faithforge.engine.errors import EngineError

RESTORE_TIMING_NOTE = (
    "2,000-token prefix, 8 layers x hidden 512 fp32 (62.5 MB of KV), 2 CPU cores shared with other jobs "
    "(load average ~7): crop back to the prefix 0.03-0.07 ms per restore, copy.deepcopy of the prefix cache "
    "78-206 ms (two runs of bench/prefix_cache.py)"
)

_GROW_FACTOR = 1.25  # new capacity = max(needed, 1.25 x old) + _GROW_SLACK tokens
_GROW_SLACK = 256


class GrowableLayer(DynamicLayer):
    """A DynamicLayer whose states live in a buffer [batch, kv_heads, capacity, head_dim] written in place.

    `keys` / `values` are views of the filled part, as transformers expects. Views handed out earlier can
    be overwritten by later writes after a crop: copy what must survive (see `WorkingCache._backup`).
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_buf = self._value_buf = None
        self._length = 0

    def reserve(self, like: torch.Tensor, tokens: int) -> None:
        """Make room for `tokens` in total, shaped like `like` apart from the sequence dimension."""
        shape = (*like.shape[:-2], tokens, like.shape[-1])
        if self._key_buf is not None and self._key_buf.shape[:-2] == like.shape[:-2] and self._key_buf.shape[-2] >= tokens:
            return
        key_buf = like.new_empty(shape)
        value_buf = like.new_empty(shape)
        if self._length:
            key_buf[..., : self._length, :] = self._key_buf[..., : self._length, :]
            value_buf[..., : self._length, :] = self._value_buf[..., : self._length, :]
        self._key_buf, self._value_buf = key_buf, value_buf

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        if self._key_buf is None or self._key_buf.shape[-2] < end or self._key_buf.shape[:-2] != key_states.shape[:-2]:
            old = 0 if self._key_buf is None else self._key_buf.shape[-2]
            self.reserve(key_states, max(end, int(old * _GROW_FACTOR)) + _GROW_SLACK)
        self._key_buf[..., self._length:end, :] = key_states
        self._value_buf[..., self._length:end, :] = value_states
        self._set_length(end)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._length if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop with a negative count (tokens to remove), got {tokens_to_remove}")
        if tokens_to_remove and self.is_initialized:
            self._set_length(max(0, self._length + tokens_to_remove))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self._key_buf, self._value_buf = self._key_buf[indices, ...], self._value_buf[indices, ...]
            self._set_length(self._length)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self._key_buf = self._key_buf.repeat_interleave(repeats, dim=0)
            self._value_buf = self._value_buf.repeat_interleave(repeats, dim=0)
            self._set_length(self._length)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx.to(self.device))

    def reset(self) -> None:
        super().reset()
        self._key_buf = self._value_buf = None
        self._length = 0

    def _set_length(self, length: int) -> None:
        self._length = length
        self.keys = self._key_buf[..., :length, :]
        self.values = self._value_buf[..., :length, :]


@dataclass
class KVSegment:
    """Key/value states of consecutive tokens, per layer ([batch, kv_heads, tokens, head_dim]), and their ids."""

    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


def new_cache(model) -> DynamicCache:
    """An empty DynamicCache of GrowableLayers for `model`; rejects layer types that cannot be cropped back."""
    cache = DynamicCache(config=model.config)
    unsupported = sorted({type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer})
    if unsupported:
        raise EngineError(
            f"the model's cache uses {', '.join(unsupported)} layers (sliding-window or linear attention), which "
            "cannot be cropped back to the prefix; the engine supports full-attention models (Llama, Qwen2 without "
            "sliding window, Mistral with sliding_window=None, ...)"
        )
    cache.layers = [GrowableLayer() for _ in cache.layers]
    return cache


def cache_nbytes(cache: DynamicCache) -> int:
    """Bytes held by the key/value tensors a cache currently exposes (views count their visible part)."""
    total = 0
    for layer in cache.layers:
        if layer.is_initialized:
            total += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
    return total


def cache_storage_nbytes(cache: DynamicCache) -> int:
    """Bytes of the distinct storages behind a cache's tensors: what it actually keeps alive (the buffers'
    full capacity: prefix + the longest request or conversation so far + growth slack)."""
    seen: dict[int, int] = {}
    for layer in cache.layers:
        if layer.is_initialized:
            for t in (layer.keys, layer.values):
                storage = t.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class WorkingCache:
    """A DynamicCache plus `ids`, the tokens whose states it holds (always len(ids) == its sequence length)."""

    def __init__(self, cache: DynamicCache, prefix_ids: list[int]):
        self.cache = cache
        self.prefix_ids = list(prefix_ids)
        self.ids: list[int] = list(prefix_ids)
        # (start, copy of prefix states [start:len(prefix)]) while the cache is cropped inside the prefix.
        self._backup: tuple[int, KVSegment] | None = None

    @property
    def length(self) -> int:
        return len(self.ids)

    def record_forward(self, ids: list[int]) -> None:
        """Note that the model just appended the states of `ids` to the cache."""
        self.ids.extend(ids)

    def truncate(self, n: int) -> None:
        """Keep the first `n` tokens' states; prefix states cut off are kept aside for `restore_prefix`."""
        if n >= self.length:
            return
        prefix_len = len(self.prefix_ids)
        if n < prefix_len:
            self._back_up_prefix_from(n)
        self.cache.crop(n - self.length)  # negative count: crop(+n) raises in transformers 5.x
        del self.ids[n:]

    def restore_prefix(self) -> None:
        """Return to exactly the prefix states (and nothing else)."""
        held = 0
        for a, b in zip(self.ids, self.prefix_ids):
            if a != b:
                break
            held += 1
        self.truncate(held)
        if held < len(self.prefix_ids):
            start, segment = self._backup  # set by truncate: the cache was cut inside the prefix
            self.append(KVSegment(segment.ids[held - start:],
                                  [(k[..., held - start:, :], v[..., held - start:, :]) for k, v in segment.layers]))
        self._backup = None

    def append(self, segment: KVSegment) -> None:
        """Append saved states after the current ones (`Cache.update` concatenates; no model call)."""
        if not segment.ids:
            return
        with torch.inference_mode():  # the buffers are inference tensors: written only in inference mode
            for layer_idx, (k, v) in enumerate(segment.layers):
                self.cache.update(k, v, layer_idx)
        self.ids.extend(segment.ids)

    def snapshot(self, start: int) -> KVSegment:
        """A copy (owned memory) of the states of tokens [start:]; used to park a conversation's own tokens."""
        if start >= self.length:
            return KVSegment([], [])
        layers = [(layer.keys[..., start:, :].clone(), layer.values[..., start:, :].clone()) for layer in self.cache.layers]
        return KVSegment(self.ids[start:], layers)

    def prefix_views(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of the first `n` tokens' states per layer (n <= length); no copy."""
        if n == 0:
            return []
        return [(layer.keys[..., :n, :], layer.values[..., :n, :]) for layer in self.cache.layers]

    def nbytes(self) -> int:
        return cache_nbytes(self.cache)

    def _back_up_prefix_from(self, n: int) -> None:
        # Invariant: ids[:start] == prefix_ids[:start] where start is the backup's start (len(prefix) if none),
        # so the states [n:start] currently in the cache are prefix states. Copied: later writes reuse the buffer.
        prefix_len = len(self.prefix_ids)
        start = prefix_len if self._backup is None else self._backup[0]
        if n >= start:
            return
        new = [(layer.keys[..., n:start, :].clone(), layer.values[..., n:start, :].clone()) for layer in self.cache.layers]
        if self._backup is not None:
            old = self._backup[1].layers
            new = [(torch.cat([k, ok], dim=-2), torch.cat([v, ov], dim=-2)) for (k, v), (ok, ov) in zip(new, old)]
        self._backup = (n, KVSegment(self.prefix_ids[n:], new))
