"""Errors the engine raises for input a caller can fix; each message says what to change."""

from faithforge.core.errors import UserError


class EngineError(UserError):
    """Bad engine input: an empty prompt with no prefix, a mis-shaped message list, a model in training mode, …"""


class CacheMismatchError(EngineError):
    """A prefix cache, or a conversation, built for another model, tokenizer, prefix or engine."""
