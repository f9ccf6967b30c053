"""The one interface every generation backend speaks, its result type and its typed errors.

`chat(messages, *, schema, max_tokens, temperature, seed) -> ChatResult` is the whole contract; the
evaluation engineer's LLM judge calls exactly this signature. Errors say whether retrying can help
(`retryable`) and whether the whole run should stop (`fatal`: a missing model or an unreachable server
would fail every example the same way).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from faithforge.core.errors import UserError


@dataclass(frozen=True)
class Usage:
    """Token counts and server-side timings of one call (0 where the server reported nothing)."""

    prompt_tokens: int = 0
    """Tokens in the prompt as the server counted them."""
    completion_tokens: int = 0
    """Tokens generated."""
    total_s: float = 0.0
    """Server-side wall time of the request, seconds."""
    load_s: float = 0.0
    """Time spent loading the model, seconds (Ollama only)."""
    prompt_eval_s: float = 0.0
    """Time spent reading the prompt, seconds (Ollama only)."""
    eval_s: float = 0.0
    """Time spent generating, seconds (Ollama only)."""

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ChatResult:
    """What a backend returned for one chat request."""

    text: str
    """The answer, with any `<think>…</think>` block removed."""
    thinking: str = ""
    """Reasoning the model emitted (separate field or inline think block); never parsed as the answer."""
    finish_reason: str = "stop"
    """`stop`, `length` (cut off at max_tokens), or whatever the server reported."""
    truncated: bool = False
    """True when the answer was cut off by the token limit."""
    usage: Usage = field(default_factory=Usage)
    """Token counts and timings."""
    model: str = ""
    """The model that answered, as the server named it."""
    response_format: str = ""
    """The structured-output mode the server accepted for this answer (`json_schema`, `json_object`, `prompt`,
    `format_schema`, `format_json`; empty when no schema was asked for or the backend has no such modes)."""


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that answers chat requests."""

    name: str
    model: str

    def chat(self, messages: list[dict], *, schema: dict | None = None, max_tokens: int = 1024,
             temperature: float = 0.0, seed: int | None = None) -> ChatResult:
        """Answer `messages`; `schema` asks for JSON matching it; `max_tokens` bounds the answer (tokens)."""
        ...


class BackendError(Exception):
    """A backend call failed. `reason` is a short machine-readable failure class for the summary."""

    reason = "backend_error"
    retryable = False
    fatal = False


class TransientBackendError(BackendError):
    """Busy server (503), dropped or refused connection: retried with backoff."""

    reason = "backend_unavailable"
    retryable = True


class BackendTimeoutError(TransientBackendError):
    """No byte arrived within the read timeout, or the request ran past its deadline."""

    reason = "timeout"


class ModelNotFoundError(BackendError, UserError):
    """The server does not have the model; retrying cannot help."""

    reason = "model_not_found"
    fatal = True


class BackendUnreachableError(BackendError, UserError):
    """Retries exhausted on a connection that never opened: the server is not running there."""

    reason = "backend_unreachable"
    fatal = True


class BackendConfigError(BackendError, UserError):
    """The backend cannot serve this request as configured (wrong spec, missing key, ...)."""

    reason = "backend_config"
    fatal = True


_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def split_think(text: str) -> tuple[str, str]:
    """Split inline reasoning from the answer: returns (answer, thinking).

    Handles closed `<think>…</think>` blocks anywhere, a block left open by a cut-off answer (all
    thinking, no answer), and a stray `</think>` whose opening tag the server swallowed.
    """
    thoughts = [m.group(0)[7:-8] for m in _THINK_BLOCK.finditer(text)]
    answer = _THINK_BLOCK.sub("", text)
    lower = answer.lower()
    if "<think>" in lower:
        start = lower.index("<think>")
        thoughts.append(answer[start + 7:])
        answer = answer[:start]
    elif "</think>" in lower:
        end = lower.index("</think>")
        thoughts.append(answer[:end])
        answer = answer[end + 8:]
    return answer.strip(), "\n".join(t.strip() for t in thoughts if t.strip())


def server_answer(content: str, thinking: str, finish_reason: str | None, usage: Usage, model: str) -> ChatResult:
    """A server's answer as a `ChatResult`: an inline think block leaves the text and joins the reasoning the
    server sent in its own field; no finish reason counts as `stop`, and `length` means cut off."""
    answer, inline = split_think(content)
    reason = finish_reason or "stop"
    return ChatResult(text=answer, thinking="\n".join(t for t in (thinking.strip(), inline) if t),
                      finish_reason=reason, truncated=reason == "length", usage=usage, model=model)


@dataclass(frozen=True)
class BackendOptions:
    """What `make_backend` hands a backend module's `build(model, options)`: what the run decides for any backend
    (each reads what applies to it), and the backend's own settings."""

    base_url: str | None = None
    """Server root (server backends; empty: the backend's default URL, if it has one)."""
    num_ctx: int = 8192
    """Context the request asks for, tokens (the GPU gate plans it; Ollama sends it as `num_ctx`)."""
    stream: bool = True
    """Stream the answer (a stalled server is noticed between chunks)."""
    http: Any = None
    """`HttpOptions` (timeouts, retries) for server backends; None: the defaults."""
    settings: Any = None
    """The backend's own `Options`, validated (a backend registered with `own_settings`: `make_backend` fills in
    its defaults when none are given); None for the others."""

