"""Batched generation of many short requests that share the engine's prefix (evaluation, on-policy sampling).

Layout of row i in the batch cache: [shared prefix][pads][suffix_i][generated...]
- the prefix states are expanded to the batch once, into a buffer sized for prefix + suffixes + generated
  tokens (one copy of batch x prefix; the engine's own cache is only read); from `MIN_SHARED_TOKENS` shared
  tokens on they are not copied at all: the batch cache holds views of them and the rows' own states, and
  attention reads the prefix once per step for all rows (`faithforge.engine.prefix_attention`);
- suffixes are left-padded; the attention mask is 0 on pads and covers cached + new tokens;
- position ids are explicit: suffix_i runs shared, shared+1, ... whatever its padding, so each row's
  positions equal an unpadded re-encode of that row; pads get position `shared` (they are masked out);
- finished rows are dropped from the batch (`batch_select_indices`), so long and short answers can mix.
"""

from __future__ import annotations

import contextlib

import torch

from faithforge.engine.forward import forward_last_logits
from faithforge.engine.kv import WorkingCache, new_cache
from faithforge.engine.prefix_attention import (MIN_SHARED_TOKENS, check_read, is_shared_prefix_cache,
                                                engine_attention, shared_prefix_cache, supports_shared_prefix)
from faithforge.engine.prompts import common_prefix_length
from faithforge.engine.result import GenerationResult
from faithforge.engine.sampling import SamplingConfig, choose_tokens
from faithforge.engine.finish import StopTracker


class BatchRunner:
    """Runs one batch of fully rendered requests (token ids incl. prefix) against a WorkingCache at the prefix."""

    def __init__(self, model, tokenizer, working: WorkingCache, device: torch.device, eos: frozenset[int],
                 pad_id: int, stop: tuple[str, ...], prefill_chunk: int):
        self.model, self.tokenizer, self.working, self.device = model, tokenizer, working, device
        self.eos, self.pad_id, self.stop, self.prefill_chunk = eos, pad_id, stop, prefill_chunk

    def run(self, rows: list[list[int]], sampling: SamplingConfig, generator: torch.Generator | None,
            return_logits: bool) -> list[GenerationResult]:
        # Reuse what every row shares with the cached prefix, leaving each row at least one token to feed.
        shared = min(min(common_prefix_length(self.working.ids, r), len(r) - 1) for r in rows)
        suffixes = [r[shared:] for r in rows]
        width = max(len(s) for s in suffixes)
        # Read the prefix once per step, not once per row (a plain language model's config only).
        one_prefix = shared >= MIN_SHARED_TOKENS and supports_shared_prefix(self.model)
        if one_prefix:
            cache = shared_prefix_cache(self.model, self.working.prefix_views(shared))
        else:
            cache = self._batch_cache(len(rows), shared, shared + width + sampling.max_new_tokens)
        input_ids, mask, positions = self._padded_inputs(suffixes, shared, width)
        with engine_attention(self.model) if one_prefix else contextlib.nullcontext():
            logits = None
            for start in range(0, width, self.prefill_chunk):
                end = min(width, start + self.prefill_chunk)
                logits = self._forward(cache, input_ids[:, start:end], mask[:, :shared + end],
                                       positions[:, start:end])
            next_pos = torch.tensor([shared + len(s) for s in suffixes], dtype=torch.long, device=self.device)
            trackers, kept = self._decode(cache, logits, mask, next_pos, sampling, generator, return_logits)
        return [
            GenerationResult(text=t.final_text(), token_ids=t.token_ids, finish_reason=t.finish_reason,
                             prompt_tokens=len(r), cached_tokens=shared,
                             logits=torch.stack(kept[i]) if return_logits else None)
            for i, (t, r) in enumerate(zip(trackers, rows))
        ]

    def _forward(self, cache, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One model call of the batch; on a shared prefix, also checked to have read it (`check_read`)."""
        if not is_shared_prefix_cache(cache):
            return forward_last_logits(self.model, cache, input_ids, mask, positions)
        logits = forward_last_logits(self.model, cache, input_ids, mask, positions, shared_prefix=cache)
        check_read(cache)
        return logits

    def _batch_cache(self, batch: int, shared: int, capacity: int):
        """A fresh cache holding the first `shared` prefix positions for every row, with room for `capacity`."""
        cache = new_cache(self.model)
        for layer_idx, (k, v) in enumerate(self.working.prefix_views(shared)):
            k, v = k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
            layer = cache.layers[layer_idx]
            layer.lazy_initialization(k, v)
            layer.reserve(k, capacity)  # one allocation for the whole batch
            cache.update(k, v, layer_idx)
        return cache

    def _padded_inputs(self, suffixes: list[list[int]], shared: int, width: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded suffix ids, the attention mask over prefix + suffix, and each row's explicit positions."""
        batch = len(suffixes)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(batch, shared + width, dtype=torch.long)
        mask[:, :shared] = 1
        positions = torch.full((batch, width), shared, dtype=torch.long)
        for i, suffix in enumerate(suffixes):
            pad = width - len(suffix)
            input_ids[i, pad:] = torch.tensor(suffix, dtype=torch.long)
            mask[i, shared + pad:] = 1
            positions[i, pad:] = torch.arange(shared, shared + len(suffix))
        return input_ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _decode(self, cache, logits: torch.Tensor, mask: torch.Tensor, next_pos: torch.Tensor,
                sampling: SamplingConfig, generator: torch.Generator | None, return_logits: bool
                ) -> tuple[list[StopTracker], list[list[torch.Tensor]]]:
        """Sample until every row stops, dropping finished rows from the batch; each row's tracker and, when
        asked, the logits it sampled from."""
        batch = int(mask.shape[0])
        trackers = [StopTracker(self.tokenizer, self.eos, self.stop, None, sampling.max_new_tokens)
                    for _ in range(batch)]
        kept: list[list[torch.Tensor]] = [[] for _ in range(batch)]
        active = list(range(batch))  # original row index of each batch row still generating
        while True:
            tokens = choose_tokens(logits, sampling, generator)
            still = []
            for j, row in enumerate(active):
                if return_logits:
                    kept[row].append(logits[j].clone())
                if trackers[row].push(int(tokens[j])) is None:
                    still.append(j)
            if not still:
                return trackers, kept
            if len(still) < len(active):
                keep = torch.tensor(still, dtype=torch.long, device=self.device)
                cache.batch_select_indices(keep)
                mask, next_pos, tokens = mask[keep], next_pos[keep], tokens[keep]
                active = [active[j] for j in still]
            mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype, device=self.device)], dim=1)
            logits = self._forward(cache, tokens.unsqueeze(1), mask, next_pos.unsqueeze(1))
            next_pos = next_pos + 1
