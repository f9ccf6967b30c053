"""When a sequence is finished: EOS, a stop string, a caller's callback, or the token budget.

`finish_reason` values, in the precedence used when several apply to the same token:
"eos" > "stop" > "callback" > "length".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from faithforge.engine.errors import EngineError

FinishReason = Literal["eos", "stop", "length", "callback"]


@dataclass(frozen=True)
class TokenEvent:
    """What a callback sees after each generated token.

    token_id: the token just generated (EOS included); index: its 0-based position among the generated tokens;
    text: the decoded generated text so far (special tokens skipped, stop strings not yet removed).
    """

    token_id: int
    index: int
    text: str


TokenCallback = Callable[[TokenEvent], "bool | None"]
"""Called once per generated token; return True to stop generation (finish_reason "callback")."""


def normalize_stop(stop: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Stop strings as a tuple; rejects empty strings (they would match before the first token)."""
    if stop is None:
        return ()
    strings = (stop,) if isinstance(stop, str) else tuple(stop)
    for s in strings:
        if not isinstance(s, str) or s == "":
            raise EngineError(f"stop strings must be non-empty str, got {s!r}; pass stop=None for no stop strings")
    return strings


def eos_ids(tokenizer, model) -> frozenset[int]:
    """Token ids that end generation: the tokenizer's EOS plus the model's generation_config EOS (int or list)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    return frozenset(ids)


class StopTracker:
    """Follows one sequence's generated tokens and says when, and why, it must stop."""

    def __init__(self, tokenizer, eos: frozenset[int], stop: tuple[str, ...], callback: TokenCallback | None,
                 max_new_tokens: int):
        self._tokenizer = tokenizer
        self._eos = eos
        self._stop = stop
        self._callback = callback
        self._max_new_tokens = max_new_tokens
        self._longest_stop = max((len(s) for s in stop), default=0)
        self._searched_upto = 0  # characters of `text` already known to hold no stop string
        self.token_ids: list[int] = []
        self.finish_reason: FinishReason | None = None
        self.stop_at: int | None = None  # character index where the matched stop string begins

    def push(self, token_id: int) -> FinishReason | None:
        """Record a generated token; returns the finish reason if the sequence is now finished."""
        self.token_ids.append(token_id)
        is_eos = token_id in self._eos
        text = self._decode() if (self._stop or self._callback) else ""
        reason: FinishReason | None = "eos" if is_eos else None
        if reason is None and self._stop:
            reason = self._find_stop(text)
        if self._callback is not None:
            wants_stop = self._callback(TokenEvent(token_id, len(self.token_ids) - 1, text))
            if reason is None and wants_stop:
                reason = "callback"
        if reason is None and len(self.token_ids) >= self._max_new_tokens:
            reason = "length"
        self.finish_reason = reason
        return reason

    def final_text(self) -> str:
        """Generated text without special tokens, cut before the stop string when one matched."""
        text = self._decode()
        return text[: self.stop_at] if self.stop_at is not None else text

    def _decode(self) -> str:
        return self._tokenizer.decode(self.token_ids, skip_special_tokens=True)

    def _find_stop(self, text: str) -> FinishReason | None:
        # A stop string can straddle the previous end of text, so look back len(longest) - 1 characters.
        start = max(0, self._searched_upto - self._longest_stop + 1)
        hits = [i for i in (text.find(s, start) for s in self._stop) if i >= 0]
        self._searched_upto = len(text)
        if hits:
            self.stop_at = min(hits)
            return "stop"
        return None
