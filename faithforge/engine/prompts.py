"""Turn the prefix and a request (or a conversation transcript) into the token ids the model must see.

Three prefix kinds, fixed when the engine is built:
- chat (`list[dict]` messages, e.g. a system prompt): requests are rendered through the tokenizer's chat
  template with `add_generation_prompt=True`; a `str` prompt is one user message, a `list[dict]` prompt
  is appended after the prefix messages.
- text (`str`): the request text is appended to the prefix text and the whole string is tokenized at once,
  exactly as a re-encode would (so a BPE merge across the boundary shows up and is handled by the engine).
- ids (`list[int]`): request ids are appended; a `str` request is tokenized on its own without special tokens.

The engine never trusts that the prefix tokens are a prefix of the full tokenization: it compares them
(`common_prefix_length`) and reuses only the common part.
"""

from __future__ import annotations

from typing import Union

from faithforge.engine.errors import EngineError

Message = dict
Prompt = Union[str, list[Message], list[int]]
Turn = tuple[str, Union[str, list[int]]]  # (role, content): content is text, or ids in ids mode


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Number of leading ids two sequences share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _check_messages(messages: list, what: str) -> list[Message]:
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise EngineError(f"{what}[{i}] must be a dict with str 'role' and 'content', got {m!r}")
    return list(messages)


def _is_id_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)


class PromptRenderer:
    """Renders prefix + turns to token ids for one tokenizer and one prefix (see module docstring)."""

    def __init__(self, tokenizer, prefix: Prompt):
        self.tokenizer = tokenizer
        if isinstance(prefix, str):
            self.kind = "text"
            self._prefix_text = prefix
            self.prefix_ids = self._encode_text(prefix)
        elif _is_id_list(prefix):
            self.kind = "ids"
            self.prefix_ids = list(prefix)
        elif isinstance(prefix, list):
            self.kind = "chat"
            if getattr(tokenizer, "chat_template", None) is None:
                raise EngineError("a message-list prefix needs a tokenizer with a chat_template; "
                                  "set tokenizer.chat_template or pass the prefix as text")
            self._prefix_messages = _check_messages(prefix, "prefix")
            self.prefix_ids = self._encode_chat(self._prefix_messages, add_generation_prompt=False)
        else:
            raise EngineError(f"prefix must be str, list[dict] messages or list[int] token ids, got {type(prefix).__name__}")

    def request_turns(self, prompt: Prompt) -> list[Turn]:
        """The turns one request adds after the prefix (validated for this prefix kind)."""
        if isinstance(prompt, str):
            return [("user", prompt)]
        if isinstance(prompt, list) and not prompt:
            return []  # nothing after the prefix: continue it directly (chat: just the generation prompt)
        if _is_id_list(prompt):
            if self.kind == "chat":
                raise EngineError("a chat-template prefix takes a str or a list of messages as the prompt, not token ids")
            return [("user", list(prompt))]
        if isinstance(prompt, list):
            if self.kind != "chat":
                raise EngineError(f"a message-list prompt needs a message-list (chat) prefix; this engine's prefix is {self.kind}")
            return [(m["role"], m["content"]) for m in _check_messages(prompt, "prompt")]
        raise EngineError(f"prompt must be str, list[dict] messages or list[int] token ids, got {type(prompt).__name__}")

    def render(self, turns: list[Turn]) -> list[int]:
        """Token ids of prefix + turns, ready for the model to continue (chat: ends with the generation prompt)."""
        if self.kind == "chat":
            messages = self._prefix_messages + [{"role": r, "content": c} for r, c in turns]
            return self._encode_chat(messages, add_generation_prompt=True)
        if self.kind == "text" and all(isinstance(c, str) for _, c in turns):
            return self._encode_text(self._prefix_text + "".join(c for _, c in turns))
        ids = list(self.prefix_ids)
        for _, content in turns:
            ids.extend(content if isinstance(content, list) else self._encode_text(content, special=False))
        return ids

    def reply_turn(self, text: str, token_ids: list[int]) -> Turn:
        """How a generated reply joins a conversation transcript (ids mode keeps the exact ids)."""
        return ("assistant", list(token_ids) if self.kind == "ids" else text)

    def _encode_text(self, text: str, special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _encode_chat(self, messages: list[Message], add_generation_prompt: bool) -> list[int]:
        # Render to text, then encode without special tokens: templates write BOS themselves.
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return self._encode_text(text, special=False)
