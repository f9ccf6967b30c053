"""A multi-turn conversation after an engine's prefix: each turn extends the cached states of the last one.

The transcript (`turns`) is the source of truth: every turn renders prefix + transcript + new prompt in
full and reuses the longest common prefix with the cached tokens, so only the new user turn (and the last
generated token, which was sampled but never fed) go through the model. While another request uses the
engine, the conversation parks a copy of its own tokens' states (not the prefix's).
"""

from __future__ import annotations

import torch

from faithforge.engine.kv import KVSegment
from faithforge.engine.prompts import Prompt, Turn
from faithforge.engine.result import GenerationResult
from faithforge.engine.sampling import SamplingConfig
from faithforge.engine.finish import TokenCallback


class Conversation:
    """Multi-turn state bound to one `PrefixCachedEngine`; create with `engine.conversation()`.

    turns: (role, content) pairs after the prefix: the user prompts sent and the replies generated
        (chat/text prefix: reply text; ids prefix: reply token ids).
    """

    def __init__(self, engine):
        self._engine = engine
        self.turns: list[Turn] = []
        self._parked: KVSegment | None = None
        self._parked_epoch = -1

    def send(self, prompt: Prompt, sampling: SamplingConfig = SamplingConfig(), *,
             stop: str | list[str] | None = None, callback: TokenCallback | None = None,
             return_logits: bool = False) -> GenerationResult:
        """Add `prompt` as the next turn, generate the reply, and append both to `turns`."""
        engine = self._engine
        engine._check_ready()
        turns = self.turns + engine.renderer.request_turns(prompt)
        engine._attach(self)
        result = engine._run_turns(turns, sampling, stop, callback, return_logits)
        self.turns = turns + [engine.renderer.reply_turn(result.text, result.token_ids)]
        return result

    def next_token_logits(self, prompt: Prompt) -> torch.Tensor:
        """float32 [vocab] logits after prefix + transcript + `prompt`, without adding a turn."""
        engine = self._engine
        engine._check_ready()
        full_ids = engine.renderer.render(self.turns + engine.renderer.request_turns(prompt))
        engine._attach(self)
        with torch.inference_mode():
            return engine._sync(full_ids)[0].clone()

    @property
    def parked_nbytes(self) -> int:
        """Bytes of this conversation's own states held while another request uses the engine."""
        return self._parked.nbytes() if self._parked is not None else 0

    def _park(self, segment: KVSegment, epoch: int) -> None:
        self._parked, self._parked_epoch = segment, epoch

    def _unpark(self, epoch: int) -> KVSegment | None:
        parked, self._parked = self._parked, None
        return parked if parked is not None and self._parked_epoch == epoch else None
