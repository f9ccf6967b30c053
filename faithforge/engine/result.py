"""What one generation returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from faithforge.engine.finish import FinishReason


@dataclass(frozen=True)
class GenerationResult:
    """One generated continuation.

    text: generated text, special tokens skipped, cut before the stop string when finish_reason == "stop".
    token_ids: every generated token id in order, EOS included when it ended generation, the tokens of a
        matched stop string included (the text is cut, the ids are not).
    finish_reason: "eos" | "stop" | "callback" | "length" (see `stopping`).
    prompt_tokens: tokens the model conditioned on before the first generated token (prefix + request).
    cached_tokens: of those, how many were reused from the cache instead of being recomputed.
    logits: only with return_logits=True: float32 [len(token_ids), vocab], row t = the raw (unfiltered)
        next-token logits token_ids[t] was chosen from.
    """

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    cached_tokens: int
    logits: torch.Tensor | None = field(default=None, repr=False)

    @property
    def computed_prompt_tokens(self) -> int:
        """Prompt tokens that had to go through the model (prompt_tokens - cached_tokens)."""
        return self.prompt_tokens - self.cached_tokens
