"""Any OpenAI-compatible `/v1/chat/completions` server (vLLM, llama.cpp server, LM Studio, Ollama's
`/v1`, hosted APIs) over httpx.

Structured output is negotiated per server and model (`negotiation.py`): `response_format` `json_schema`,
then `json_object` with the schema attached, then no response format with the schema in the prompt; streaming is Server-Sent
Events (`data: {...}` lines ending with `data: [DONE]`) with `finish_reason` on the last choice chunk and
`usage` on a final chunk (`stream_options.include_usage`). Errors are `{"error": {"message": ...}}`,
as a non-2xx body or as an SSE event after streaming has begun. Temperature is always sent: these
servers default to 1.0, unlike Ollama's 0.8.

The API key comes from an environment variable or a Prefect Secret block, resolved on first use and
never printed.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

import httpx
from pydantic import BaseModel, ConfigDict, StringConstraints, field_validator

from faithforge.backends.base import (BackendConfigError, BackendOptions, ChatResult, TransientBackendError, Usage,
                                      server_answer)
from faithforge.backends.http import Deadline, HttpOptions, json_object, lines_with_deadline, make_client, server_count
from faithforge.backends.negotiation import OPENAI_MODES, FormatNegotiator, NegotiatedChat
from faithforge.core.errors import UserError


def resolve_api_key(env_var: str | None, secret_block: str | None) -> str | None:
    """The API key from `env_var`, else from the Prefect Secret block named `secret_block`, else None."""
    if env_var:
        value = os.environ.get(env_var)
        if value:
            return value
        if not secret_block:
            raise BackendConfigError(f"environment variable {env_var} is empty; export the API key there")
    if secret_block:
        try:
            from prefect.blocks.system import Secret  # Prefect only when a block is named

            value = Secret.load(secret_block).get()
        except Exception as exc:  # noqa: BLE001 - Prefect raises ValueError, httpx errors, ...
            raise BackendConfigError(
                f"cannot load Prefect Secret block {secret_block!r} ({type(exc).__name__}); create it with "
                f"`Secret(value=...).save({secret_block!r})` or use --api-key-env") from None
        return str(value)
    return None


class OpenAICompatBackend(NegotiatedChat):
    """Chat with an OpenAI-compatible server; `base_url` is the root that has `/v1/chat/completions` (a URL
    ending in `/v1`, as OpenAI clients take it, works too)."""

    name = "openai"
    chat_path = "/v1/chat/completions"
    format_field = "response_format"
    stream_type = "text/event-stream"
    extra_body: dict[str, Any] = {}
    """Fields sent with every request besides the standard ones (a served sampler's, e.g. `top_k`); never
    overriding the model, the messages, the token limit or the temperature."""

    def __init__(self, model: str, *, base_url: str, api_key_env: str | None = None,
                 api_key_secret: str | None = None, stream: bool = True, http: HttpOptions | None = None):
        self.model = model
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):  # OpenAI clients take the URL with /v1; this class adds it itself
            self.base_url = self.base_url[:-3]
        self.api_key_env = api_key_env
        self.api_key_secret = api_key_secret
        self.stream = stream
        self.http = http or HttpOptions()
        self._client: httpx.Client | None = None
        self._where = f"the OpenAI-compatible server at {self.base_url}"
        self.negotiator = FormatNegotiator("openai", self.base_url, model, OPENAI_MODES)

    def __repr__(self) -> str:  # the key never appears here
        return f"OpenAICompatBackend(model={self.model!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _http(self) -> httpx.Client:
        if self._client is None:
            key = resolve_api_key(self.api_key_env, self.api_key_secret)
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._client = make_client(self.base_url, self.http, headers)
        return self._client

    def _body(self, messages: list[dict], *, schema: dict | None, max_tokens: int, temperature: float,
              seed: int | None, mode: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {**self.extra_body, "model": self.model, "messages": messages,
                                "max_tokens": max_tokens, "temperature": temperature, "stream": self.stream}
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        if seed is not None:
            body["seed"] = seed
        if mode == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "example", "schema": schema, "strict": True}}
        elif mode == "json_object":  # llama.cpp's server compiles the attached schema into a grammar
            body["response_format"] = {"type": "json_object", "schema": schema}
        return body

    def _not_found(self, message: str) -> str:
        return (f"{self._where} has no model {self.model!r} or no /v1/chat/completions ({message}); "
                "check --model and --base-url")

    def _decode(self, text: str) -> dict[str, Any]:
        return json_object(text, self._where)

    def _from_body(self, data: dict[str, Any]) -> ChatResult:
        choice = (data.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        thinking = message.get("reasoning_content") or message.get("reasoning") or ""
        return self._result(message.get("content") or "", thinking, choice.get("finish_reason"),
                            data.get("usage"), data.get("model"))

    def _from_stream(self, response: httpx.Response, deadline: Deadline) -> ChatResult:
        content, thinking = [], []
        finish, usage, model, done = None, None, None, False
        for line in lines_with_deadline(response, deadline):
            if not line.startswith("data:"):
                continue  # SSE comments (": keep-alive"), event names, ids
            payload = line[5:].strip()
            if payload == "[DONE]":
                done = True
                break
            event = self._decode(payload)
            model = event.get("model") or model
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                delta = choice.get("delta") or {}
                content.append(delta.get("content") or "")
                thinking.append(delta.get("reasoning_content") or delta.get("reasoning") or "")
                finish = choice.get("finish_reason") or finish
            if finish is not None and usage:
                # The usage chunk comes last (`stream_options.include_usage`): the answer is whole. A server that
                # then kept the stream open without `data: [DONE]` had a finished answer thrown away after the
                # read timeout and asked again (an attack, 2026-12-07).
                break
        if not done and finish is None:
            raise TransientBackendError(f"{self._where} closed the stream before `data: [DONE]`")
        return self._result("".join(content), "".join(thinking), finish, usage, model)

    def _result(self, content: str, thinking: str, finish: str | None, usage: dict | None,
                model: str | None) -> ChatResult:
        usage = usage if isinstance(usage, dict) else {}  # counts are bookkeeping: odd ones are read as 0
        return server_answer(content, thinking, finish,
                             Usage(prompt_tokens=server_count(usage.get("prompt_tokens")),
                                   completion_tokens=server_count(usage.get("completion_tokens"))),
                             str(model or self.model))


class Options(BaseModel):
    """The OpenAI-compatible backend's own settings (`backend_options.openai`): where its API key is. The key itself
    is never a setting (it would be stored with the run's parameters)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)

    api_key_env: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    """The environment variable holding the API key (e.g. OPENAI_API_KEY). Empty: no key is sent (a local server)."""
    api_key_secret: str | None = None
    """The name of a Prefect Secret block holding the API key (read when the first request is made; used when
    `api_key_env` is empty or unset on the machine that runs the requests)."""

    @field_validator("api_key_env", "api_key_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """An empty field of the UI form, or `--api-key-env ""`, means no key, as before these were settings."""
        return None if isinstance(value, str) and not value.strip() else value


def check_settings(settings: Options) -> None:
    """Refuse, before a run, a key variable that is empty here with no Secret block to fall back on."""
    name = settings.api_key_env
    if name and not settings.api_key_secret and not os.environ.get(name):
        # a variable's name is upper case by convention; anything else may be a key pasted in its place: not echoed
        shown = name if re.fullmatch(r"[A-Z_][A-Z0-9_]{0,63}", name) else ("(not an upper-case name: it takes the "
                                                                         "variable's name, not the key)")
        raise UserError(f"api_key_env {shown}: that environment variable is empty; export the API key there (or "
                        "name a Prefect Secret block in api_key_secret)")


def build(model: str, options: BackendOptions) -> OpenAICompatBackend:
    """The registered builder (`faithforge.core.backend_registry`)."""
    if not options.base_url:
        raise UserError("the openai backend needs --base-url (the server root that serves /v1/chat/completions)")
    return OpenAICompatBackend(model, base_url=options.base_url, api_key_env=options.settings.api_key_env,
                               api_key_secret=options.settings.api_key_secret, stream=options.stream, http=options.http)

