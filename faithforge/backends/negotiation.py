"""Structured-output negotiation: per server and model, the strongest response format the server accepts.

Servers differ: Ollama and vLLM accept an OpenAI `json_schema` response format, llama-cpp-python's server
answers HTTP 500 `Input should be 'text' or 'json_object'` to it (research notes, December 2026), older
Ollama releases reject a schema in `format`. A rejection that *names the response format* is not an
outage: the backend moves to the next, weaker mode and tries again at once, and remembers the mode that
worked for that server and model for the rest of the process (every later backend object for the same
server and model starts there).
"""

from __future__ import annotations

import json
import re
import threading

from faithforge.backends.base import BackendError, ChatResult
from faithforge.backends.http import with_retries

#: OpenAI-compatible modes, strongest first: a JSON Schema the server enforces; a JSON object with the schema
#: attached (llama.cpp turns it into a grammar); no response format, the schema stated in the prompt.
OPENAI_MODES = ("json_schema", "json_object", "prompt")
#: Ollama's native `format`, strongest first: the schema; plain `"json"`; none (schema in the prompt).
OLLAMA_MODES = ("format_schema", "format_json", "prompt")

# Words a server uses when it rejects the structured-output part of a request (OpenAI/vLLM/llama.cpp name
# the `response_format` field or its types; Ollama names `format`; vLLM names guided decoding / grammars).
_FORMAT_WORDS = re.compile(r"response_format|json_schema|json_object|structured output|guided|grammar|\bformat\b",
                           re.IGNORECASE)

_remembered: dict[tuple[str, str, str], int] = {}
_lock = threading.Lock()


class FormatRejected(BackendError):
    """The server refused the response format of the request (HTTP 4xx/5xx whose message names it)."""

    reason = "format_rejected"


def names_response_format(message: str) -> bool:
    return bool(_FORMAT_WORDS.search(message or ""))


def forget_all() -> None:
    """Drop every remembered mode (tests that restart a server on a reused port)."""
    with _lock:
        _remembered.clear()


class FormatNegotiator:
    """The current mode for one (API kind, server, model); `reject` moves to the next one."""

    def __init__(self, kind: str, base_url: str, model: str, modes: tuple[str, ...]):
        self.key = (kind, base_url.rstrip("/"), model)
        self.modes = modes
        self.rejections: list[str] = []
        """`mode: server message` for every mode this backend saw rejected."""

    @property
    def mode(self) -> str:
        with _lock:
            return self.modes[_remembered.get(self.key, 0)]

    def can_fall_back(self, mode: str) -> bool:
        return self.modes.index(mode) < len(self.modes) - 1

    def reject(self, mode: str, message: str) -> str:
        """Record that `mode` was refused (`message`: the server's words) and return the mode to try next."""
        self.rejections.append(f"{mode}: {message[:200]}")
        with _lock:
            index = max(_remembered.get(self.key, 0), self.modes.index(mode) + 1)
            _remembered[self.key] = min(index, len(self.modes) - 1)
            return self.modes[_remembered[self.key]]


def with_schema_instruction(messages: list[dict], schema: dict) -> list[dict]:
    """`messages` with the schema stated in the last user message, unless a message already states it
    (specs append it themselves by default: `schema_in_prompt`)."""
    if any("JSON Schema" in str(m.get("content") or "") for m in messages):
        return messages
    out = [dict(m) for m in messages]
    for message in reversed(out):
        if message.get("role") == "user":
            message["content"] = (f"{message.get('content') or ''}\n\nReply with only one JSON object that matches "
                                  f"this JSON Schema:\n{json.dumps(schema, ensure_ascii=False, sort_keys=True)}")
            break
    return out


class NegotiatedChat:
    """`chat` for an HTTP backend with a `negotiator`: one request in the negotiated mode, retried on a busy
    server or dropped connection (never on a missing model); a refused response format moves to the next,
    weaker mode at once. The backend supplies `request_body(messages, ..., mode=)`, `_chat_once(body, mode)`,
    `http` (HttpOptions) and `_where` (the server, for messages)."""

    def chat(self, messages: list[dict], *, schema: dict | None = None, max_tokens: int = 1024,
             temperature: float = 0.0, seed: int | None = None) -> ChatResult:
        while True:
            mode = self.negotiator.mode if schema is not None else ""  # type: ignore[attr-defined]
            body = self.request_body(messages, schema=schema, max_tokens=max_tokens,  # type: ignore[attr-defined]
                                     temperature=temperature, seed=seed, mode=mode or None)
            try:
                return with_retries(lambda: self._chat_once(body, mode), self.http,  # type: ignore[attr-defined]
                                    self._where)  # type: ignore[attr-defined]
            except FormatRejected as exc:  # not an outage: ask again at once in the next, weaker mode
                self.negotiator.reject(mode, str(exc))  # type: ignore[attr-defined]
