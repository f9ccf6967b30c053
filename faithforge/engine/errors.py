"""Errors the engine raises for input a caller can fix; each message says what to change."""

from faithforge.core.errors import UserError


class EngineError(UserError):
    """Bad engine input: an empty prompt with no prefix, a mis-shaped message list, a model in training mode, …"""


class CacheMismatchError(EngineError):
    """A prefix cache, or a conversation, built for another model, tokenizer, prefix or engine."""


class PromptTooLongError(EngineError):
    """A prompt that, with the tokens to generate, does not fit the context: which one and by how much, so a caller
    that knows the prompt's document can name it."""

    def __init__(self, index: int, prompt_tokens: int, new_tokens: int, context_tokens: int):
        super().__init__(f"prompt {index} has {prompt_tokens} tokens; with {new_tokens} new tokens it exceeds "
                         f"llama.cpp's context of {context_tokens}: raise n_ctx")
        self.index, self.prompt_tokens, self.context_tokens = index, prompt_tokens, context_tokens
