"""A prefilled prefix, detached from an engine: reuse it in another engine or save it to disk.

It carries the fingerprint of the model and tokenizer it was computed with (`fingerprint.py`); an engine
refuses one whose fingerprint or prefix token ids differ from its own, with `CacheMismatchError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from faithforge.engine.errors import CacheMismatchError
from faithforge.engine.kv import KVSegment


@dataclass
class PrefixCache:
    """Prefix token ids, their key/value states per layer, and the (model, tokenizer) fingerprint."""

    token_ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    fingerprint: str

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to `path` with torch.save (tensors, ids and fingerprint only; loads with weights_only=True)."""
        torch.save({"token_ids": self.token_ids, "layers": [list(kv) for kv in self.layers],
                    "fingerprint": self.fingerprint}, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> "PrefixCache":
        data = torch.load(path, map_location=map_location, weights_only=True)
        return cls(list(data["token_ids"]), [tuple(kv) for kv in data["layers"]], data["fingerprint"])

    def check_compatible(self, fingerprint: str, prefix_ids: list[int]) -> None:
        """Raise CacheMismatchError unless this cache was built from the same model, tokenizer and prefix."""
        if self.fingerprint != fingerprint:
            raise CacheMismatchError(
                f"this prefix cache was built with a different model or tokenizer (fingerprint {self.fingerprint[:12]} "
                f"!= {fingerprint[:12]}); build the engine without prefix_cache= to re-encode the prefix, or load "
                "the model and tokenizer the cache was made with"
            )
        if self.token_ids != prefix_ids:
            first = next((i for i, (a, b) in enumerate(zip(self.token_ids, prefix_ids)) if a != b),
                         min(len(self.token_ids), len(prefix_ids)))
            raise CacheMismatchError(
                f"this prefix cache holds a different prefix ({len(self.token_ids)} tokens vs {len(prefix_ids)}, first "
                f"difference at token {first}); pass the same prefix it was built from, or omit prefix_cache="
            )

    def segment(self, device: torch.device) -> KVSegment:
        return KVSegment(list(self.token_ids), [(k.to(device), v.to(device)) for k, v in self.layers])
