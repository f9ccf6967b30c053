"""Structured-output negotiation: per server and model, the strongest response format the server accepts.

Servers differ: Ollama and vLLM accept an OpenAI `json_schema` response format, llama-cpp-python's server
answers HTTP 500 `Input should be 'text' or 'json_object'` to it (research notes, December 2026), older
Ollama releases reject a schema in `format`. A rejection that *names the response format* is not an
outage: the backend moves to the next, weaker mode and tries again at once, and remembers the mode that
worked for that server and model for the rest of the process (every later backend object for the same
server and model starts there).
"""

from __future__ import annotations

import abc

import json
import re
import threading
from dataclasses import replace
from typing import Any

import httpx

from faithforge.backends.base import BackendError, ChatResult, ModelNotFoundError
from faithforge.backends.http import (
    Deadline,
    HttpOptions,
    error_message,
    raise_for_status,
    translate_transport_errors,
    with_retries,
)

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


class NegotiatedChat(abc.ABC):
    """`chat` for an HTTP backend with a `negotiator`: one request in the negotiated mode, retried on a busy
    server or dropped connection (never on a missing model); a refused response format moves to the next,
    weaker mode at once. `request_body` resolves the mode (and states the schema in the prompt in
    `prompt` mode); the backend's `_body` writes its own request.

    One request (`_chat_once`) is the same skeleton for every HTTP backend: POST `chat_path` under the
    request deadline; an error status whose message names the response format (and the body asked for one
    in `format_field`) is `FormatRejected`, any other goes to the backend's `_raise`; a 2xx answer is one
    JSON body (`stream` false, read by `_from_body`) or a stream (read by `_from_stream`); transport errors
    become typed backend errors. The backend supplies `_body(messages, ..., mode=)`, `chat_path`,
    `format_field`, `stream`, `_http()` (its httpx client), `_not_found(message)`, `_from_body(data)`,
    `_from_stream(response, deadline)`, `_decode(text)`, `http` (HttpOptions) and `_where` (the server, for
    messages)."""

    chat_path: str
    """Path of the chat endpoint under the base URL."""
    format_field: str
    """The request-body field that carries the response format."""
    negotiator: FormatNegotiator
    stream: bool
    http: HttpOptions
    _where: str
    stream_type: str = "application/x-ndjson"
    """The content type of the backend's stream (a one-object `application/json` body is then a whole answer)."""

    def chat(self, messages: list[dict], *, schema: dict | None = None, max_tokens: int = 1024,
             temperature: float = 0.0, seed: int | None = None) -> ChatResult:
        while True:
            mode = self.negotiator.mode if schema is not None else ""
            body = self.request_body(messages, schema=schema, max_tokens=max_tokens, temperature=temperature,
                                     seed=seed, mode=mode or None)
            try:
                return with_retries(lambda: self._chat_once(body, mode), self.http, self._where)
            except FormatRejected as exc:  # not an outage: ask again at once in the next, weaker mode
                self.negotiator.reject(mode, str(exc))

    def _chat_once(self, body: dict[str, Any], mode: str = "") -> ChatResult:
        deadline = Deadline(self.http.deadline_s, self._where)
        try:
            with self._http().stream("POST", self.chat_path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    message = error_message(response.content)
                    if (self.format_field in body and response.status_code not in (401, 403, 404, 429, 503)
                            and names_response_format(message)):
                        raise FormatRejected(f"HTTP {response.status_code}: {message}")
                    self._raise(response)
                result = self._answer(response, deadline)
                return replace(result, response_format=mode)
        except httpx.HTTPError as exc:
            raise translate_transport_errors(exc, self._where, self.http) from None

    def _answer(self, response: httpx.Response, deadline: Deadline) -> ChatResult:
        """The answer of a 2xx response. A server that ignores `stream: true` and sends one JSON body is read as
        one; an HTML page (a proxy's, a wrong --base-url's) is named as such, not "closed the stream"; an answer
        whose JSON has another shape (`choices` a string, `usage` not numbers) is a `BackendError` saying so, never
        a traceback (an attack, 2026-12-07)."""
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "text/html":
            response.read()
            raise BackendError(f"{self._where} sent an HTML page instead of an answer ({response.text[:120]!r}); "
                               "check --base-url")
        try:
            if not self.stream or (kind == "application/json" and self.stream_type != kind):
                response.read()
                return self._from_body(self._decode(response.text))
            return self._from_stream(response, deadline)
        except (AttributeError, TypeError, ValueError, KeyError, IndexError, ArithmeticError) as exc:
            raise BackendError(f"{self._where} sent an answer of another shape than its API's "
                               f"({type(exc).__name__}: {exc})") from None

    def request_body(self, messages: list[dict], *, schema: dict | None, max_tokens: int, temperature: float,
                     seed: int | None, mode: str | None = None) -> dict[str, Any]:
        """The request for `mode` (default: the negotiated one; ignored without a schema); in `prompt` mode
        the schema is stated in the last user message."""
        mode = (mode or self.negotiator.mode) if schema is not None else None
        if mode == "prompt":
            messages = with_schema_instruction(messages, schema or {})
        return self._body(messages, schema=schema, max_tokens=max_tokens, temperature=temperature, seed=seed,
                          mode=mode)

    def _raise(self, response: httpx.Response) -> None:
        """Raise the typed error for an error status (the body is read): 404 is a missing model."""
        if response.status_code == 404:
            raise ModelNotFoundError(self._not_found(error_message(response.content)))
        raise_for_status(response, self._where)

    # what each backend supplies -----------------------------------------------------------------
    @abc.abstractmethod
    def _not_found(self, message: str) -> str:
        """What to say for a 404 whose body says `message`: which model is missing and how to fix it."""

    @abc.abstractmethod
    def _body(self, messages: list[dict], *, schema: dict | None, max_tokens: int, temperature: float,
              seed: int | None, mode: str | None) -> dict[str, Any]:
        """The backend's request body for `mode` (None: no response format)."""

    @abc.abstractmethod
    def _http(self) -> httpx.Client:
        """The backend's HTTP client (one per backend, with its timeouts and retries)."""

    @abc.abstractmethod
    def _decode(self, text: str) -> dict[str, Any]:
        """One response body (or stream line) as a JSON object, or a `BackendError` saying what came instead."""

    @abc.abstractmethod
    def _from_body(self, data: dict[str, Any]) -> ChatResult:
        """The result of a whole (non-streamed) response body."""

    @abc.abstractmethod
    def _from_stream(self, response: httpx.Response, deadline: Deadline) -> ChatResult:
        """The result of a streamed response, read line by line within `deadline`."""
