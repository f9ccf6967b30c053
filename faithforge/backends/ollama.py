"""Ollama's native API (`/api/chat`, `/api/ps`, `/api/show`, unloading) over httpx.

Wire facts this follows (Ollama server source): `/api/chat` streams NDJSON by default; the last chunk has
`done: true`, `done_reason` (`stop`/`length`) and metrics in nanoseconds that are *omitted when zero*.
Errors are `{"error": "..."}` — 404 for an unknown model, 503 when the queue is full; once streaming
has begun the status stays 200 and an `{"error": ...}` line ends the stream. `num_ctx` is sent with the
same value on every request (a different value reloads the model). `think: false` keeps reasoning out
of JSON work; inline `<think>` blocks from older servers are stripped anyway. Structured output is
negotiated (`negotiation.py`): `format` with the schema, then `format: "json"`, then none (schema in the prompt).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, field_validator

from faithforge.backends.base import (BackendError, BackendOptions, ChatResult, TransientBackendError, Usage,
                                      server_answer)
from faithforge.backends.http import (Deadline, HttpOptions, json_object, lines_with_deadline, make_client,
                                      server_count, translate_transport_errors, with_retries)
from faithforge.backends.negotiation import OLLAMA_MODES, FormatNegotiator, NegotiatedChat
from faithforge.core.backend_registry import DEFAULT_OLLAMA_URL
from faithforge.core.errors import clip

_NS = 1e-9


@dataclass(frozen=True)
class LoadedModel:
    """A model Ollama holds in memory (`/api/ps`); sizes in bytes."""

    name: str
    size_bytes: int
    vram_bytes: int
    context_length: int
    expires_at: str


@dataclass(frozen=True)
class ModelInfo:
    """What `/api/show` says about a model, for the GPU planner."""

    name: str
    parameter_count: int
    """Parameters (0 when the server did not say)."""
    parameter_size: str
    """Ollama's human label, e.g. `8.2B`."""
    quantization: str
    """e.g. `Q4_K_M`."""
    family: str
    context_length: int
    """Longest context the model supports, tokens (0 when unknown)."""
    capabilities: tuple[str, ...]


def _usage(final: dict[str, Any]) -> Usage:
    """Metrics from a final chunk; absent fields (Ollama omits zeros) count as 0."""
    return Usage(
        prompt_tokens=server_count(final.get("prompt_eval_count")),
        completion_tokens=server_count(final.get("eval_count")),
        total_s=server_count(final.get("total_duration")) * _NS,
        load_s=server_count(final.get("load_duration")) * _NS,
        prompt_eval_s=server_count(final.get("prompt_eval_duration")) * _NS,
        eval_s=server_count(final.get("eval_duration")) * _NS,
    )


class OllamaBackend(NegotiatedChat):
    """Chat with a model served by Ollama.

    `num_ctx` (tokens) is constant for the backend's life; `keep_alive` (Ollama duration string or
    seconds) keeps the model loaded between examples; `stream=False` asks for one JSON body instead.
    """

    name = "ollama"
    chat_path = "/api/chat"
    format_field = "format"

    def __init__(self, model: str, *, base_url: str = DEFAULT_OLLAMA_URL, num_ctx: int = 8192,
                 keep_alive: str | int = "30m", think: bool | None = False, stream: bool = True,
                 http: HttpOptions | None = None):
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.num_ctx = num_ctx
        self.keep_alive = keep_alive
        self.think = think
        self.stream = stream
        self.http = http or HttpOptions()
        self._client = make_client(self.base_url, self.http)
        self._where = f"Ollama at {self.base_url}"
        self.negotiator = FormatNegotiator("ollama", self.base_url, model, OLLAMA_MODES)

    def __repr__(self) -> str:
        return f"OllamaBackend(model={self.model!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    # chat ---------------------------------------------------------------------------------------
    def _body(self, messages: list[dict], *, schema: dict | None, max_tokens: int, temperature: float,
              seed: int | None, mode: str | None) -> dict[str, Any]:
        options: dict[str, Any] = {"num_predict": max_tokens, "num_ctx": self.num_ctx, "temperature": temperature}
        if seed is not None:
            options["seed"] = seed
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": self.stream,
                                "options": options, "keep_alive": self.keep_alive}
        if mode == "format_schema":
            body["format"] = schema
        elif mode == "format_json":
            body["format"] = "json"
        if self.think is not None:
            body["think"] = self.think
        return body

    def _http(self) -> httpx.Client:
        return self._client

    def _decode(self, text: str) -> dict[str, Any]:
        return json_object(text, self._where, what="a line", failed="failed mid-answer")

    def _from_body(self, data: dict[str, Any]) -> ChatResult:
        return self._result([data])

    def _from_stream(self, response: httpx.Response, deadline: Deadline) -> ChatResult:
        chunks = []
        for line in lines_with_deadline(response, deadline):
            chunk = self._decode(line)
            chunks.append(chunk)
            if chunk.get("done"):
                break
        return self._result(chunks)

    def _not_found(self, message: str) -> str:
        return (f"model {self.model!r} is not available on {self._where} ({message}); "
                f"run `ollama pull {self.model}` or pass a model from `ollama list`")

    def _result(self, chunks: list[dict[str, Any]]) -> ChatResult:
        if not chunks or not chunks[-1].get("done"):
            raise TransientBackendError(f"{self._where} closed the stream before the final chunk")
        content = "".join((c.get("message") or {}).get("content") or "" for c in chunks)
        thinking = "".join((c.get("message") or {}).get("thinking") or "" for c in chunks)
        final = chunks[-1]
        return server_answer(content, thinking, final.get("done_reason"), _usage(final),
                             str(final.get("model") or self.model))

    # model management ---------------------------------------------------------------------------
    def _get_json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        def once() -> dict[str, Any]:
            try:
                response = self._client.request(method, path, json=body)
            except httpx.HTTPError as exc:
                raise translate_transport_errors(exc, self._where, self.http) from None
            if response.status_code >= 400:
                self._raise(response)
            data = response.json()
            if isinstance(data, dict) and "error" in data:
                raise BackendError(f"{self._where}: {data['error']}")
            return data

        return with_retries(once, self.http, self._where)

    def unload(self, model: str | None = None) -> None:
        """Ask Ollama to free `model`'s memory now (`keep_alive: 0`), e.g. before a GPU training stage."""
        self._get_json("POST", "/api/generate", {"model": model or self.model, "keep_alive": 0})

    def loaded_models(self) -> list[LoadedModel]:
        """Models Ollama holds in memory now (`/api/ps`)."""
        data = self._get_json("GET", "/api/ps")
        return [LoadedModel(name=str(m.get("name") or m.get("model") or ""), size_bytes=int(m.get("size") or 0),
                            vram_bytes=int(m.get("size_vram") or 0),
                            context_length=int(m.get("context_length") or 0),
                            expires_at=str(m.get("expires_at") or ""))
                for m in data.get("models") or []]

    def show(self, model: str | None = None) -> ModelInfo:
        """Size, quantization and context length of `model` (`/api/show`)."""
        name = model or self.model
        data = self._get_json("POST", "/api/show", {"model": name})
        details = data.get("details") or {}
        info = data.get("model_info") or {}
        context = next((int(v) for k, v in info.items() if k.endswith(".context_length") and v), 0)
        return ModelInfo(name=name, parameter_count=int(info.get("general.parameter_count") or 0),
                         parameter_size=str(details.get("parameter_size") or ""),
                         quantization=str(details.get("quantization_level") or ""),
                         family=str(details.get("family") or ""), context_length=context,
                         capabilities=tuple(data.get("capabilities") or ()))


def release_ollama_gpu(base_url: str = DEFAULT_OLLAMA_URL, models: list[str] | None = None,
                       http: HttpOptions | None = None) -> list[str]:
    """Unload `models` (default: every model Ollama has loaded) so a GPU stage gets the VRAM back.

    Returns the names unloaded. An Ollama that is not running holds no VRAM: that returns `[]`.
    """
    from faithforge.backends.base import BackendUnreachableError

    options = http or HttpOptions(retries=1, backoff_s=0.5)
    backend = OllamaBackend(models[0] if models else "", base_url=base_url, http=options)
    try:
        names = models if models is not None else [m.name for m in backend.loaded_models()]
        for name in names:
            backend.unload(name)
        return list(names)
    except BackendUnreachableError:
        return []
    finally:
        backend.close()


def release_gpu(base_url: str, models: list[str]) -> list[str]:
    """The registry's hook for `releases_gpu` (`faithforge.generation.job.release`)."""
    return release_ollama_gpu(base_url, models)


class Options(BaseModel):
    """The Ollama backend's own settings (`backend_options.ollama`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)

    keep_alive: str | int = "30m"
    """How long Ollama keeps the model loaded after a request: a duration with a unit (`30m`, `1h30m`), whole
    seconds (`3600`), 0 to unload at once, or -1 for ever (Ollama's own default is 5m; a long run keeps it longer,
    so no request waits for a reload)."""

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration_or_seconds(cls, value: Any) -> Any:
        """Ollama reads a string with Go's `time.ParseDuration`, which refuses a number without a unit (an HTTP 400
        on the first request), and a JSON number as seconds: whole seconds given as text (every value from the
        command line is text) are sent as a number, and a string that is not a Go duration is refused here."""
        what = "write a duration with a unit (30m, 1h30m, 90s) or whole seconds (3600; 0 unloads at once, -1 keeps it)"
        if isinstance(value, bool) or not isinstance(value, (str, int)):  # YAML `false` would be 0: unload each time
            raise ValueError(f"not a duration ({type(value).__name__}): {what}")
        if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
            return int(value)
        if isinstance(value, str) and not _GO_DURATION.fullmatch(value.strip()):
            raise ValueError(f"{clip(value, 40)} is not a duration: {what}")
        return value.strip() if isinstance(value, str) else value


#: A Go duration (`time.ParseDuration`): an optional sign, then one or more numbers each with its unit (Go takes
#: microseconds as `us`, `µs` U+00B5 or `μs` U+03BC).
_UNIT = "(ns|us|\u00b5s|\u03bcs|ms|s|m|h)"
_GO_DURATION = re.compile(rf"[+-]?(([0-9]+(\.[0-9]*)?|\.[0-9]+){_UNIT})+")


def build(model: str, options: BackendOptions) -> "OllamaBackend":
    """The registered builder (`faithforge.core.backend_registry`)."""
    return OllamaBackend(model, base_url=options.base_url or DEFAULT_OLLAMA_URL, num_ctx=options.num_ctx,
                         keep_alive=options.settings.keep_alive, stream=options.stream, http=options.http)

