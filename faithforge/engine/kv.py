"""The one working KV cache of an engine, the token ids it holds, and how to return it to the prefix.

Restoring to the prefix crops with a negative count (`DynamicCache.crop(-n)`), which in transformers 5.x
is a slice (a view, no copy). `DynamicLayer.update` appends with `torch.cat` into a new tensor and never
writes into the old one, so views of earlier states stay valid: that is what makes the two cases below
cheap and exact.

- Normal case: the request's tokens follow the whole prefix. Afterwards crop back to len(prefix).
- BPE boundary: the request's tokenization differs from the prefix's before the prefix ends (a merge
  across the boundary). The cache is cropped to the longest common prefix, and the cropped-off prefix
  states are kept as views (`_backup`) and appended again (`Cache.update`) when the prefix is restored.

Measured alternative (bench/prefix_cache.py, CPU, 2 threads, 8 layers x hidden 512, 2,000-token prefix):
see `RESTORE_TIMING_NOTE`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from faithforge.engine.errors import EngineError

RESTORE_TIMING_NOTE = (
    "crop to the prefix: ~0.01 ms per restore (a slice per layer); copy.deepcopy of the prefilled "
    "2,000-token cache: ~10 ms per restore (32 MB copied), measured by bench/prefix_cache.py"
)


@dataclass
class KVSegment:
    """Key/value states of consecutive tokens, per layer ([batch, kv_heads, tokens, head_dim]), and their ids."""

    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


def new_cache(model) -> DynamicCache:
    """An empty DynamicCache for `model`; rejects layer types that cannot be cropped back to a prefix."""
    cache = DynamicCache(config=model.config)
    unsupported = sorted({type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer})
    if unsupported:
        raise EngineError(
            f"the model's cache uses {', '.join(unsupported)} layers (sliding-window or linear attention), which "
            "cannot be cropped back to the prefix; the engine supports full-attention models (Llama, Qwen2 without "
            "sliding window, Mistral with sliding_window=None, ...)"
        )
    return cache


def cache_nbytes(cache: DynamicCache) -> int:
    """Bytes held by the key/value tensors a cache currently exposes (views count their visible part)."""
    total = 0
    for layer in cache.layers:
        if layer.is_initialized:
            total += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
    return total


def cache_storage_nbytes(cache: DynamicCache) -> int:
    """Bytes of the distinct storages behind a cache's tensors: what it actually keeps alive. After a crop
    this includes the cropped-off tail of the last request until the next request replaces the storage."""
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
        # (start, segment of prefix states [start:len(prefix)]) while the cache is cropped inside the prefix.
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
        # so the states [n:start] currently in the cache are prefix states and can be saved as views.
        prefix_len = len(self.prefix_ids)
        start = prefix_len if self._backup is None else self._backup[0]
        if n >= start:
            return
        new = [(layer.keys[..., n:start, :], layer.values[..., n:start, :]) for layer in self.cache.layers]
        if self._backup is not None:
            old = self._backup[1].layers
            new = [(torch.cat([k, ok], dim=-2), torch.cat([v, ov], dim=-2)) for (k, v), (ok, ov) in zip(new, old)]
        self._backup = (n, KVSegment(self.prefix_ids[n:], new))
