"""Chat backends behind one interface (`ChatBackend.chat`), and `make_backend` to build one by name."""

from __future__ import annotations

from faithforge.core.errors import UserError
from faithforge.backends.base import (
    BackendConfigError,
    BackendError,
    BackendTimeoutError,
    BackendUnreachableError,
    ChatBackend,
    ChatResult,
    ModelNotFoundError,
    TransientBackendError,
    Usage,
)
from faithforge.backends.http import HttpOptions

BACKEND_NAMES = ("ollama", "openai", "local", "template")


def make_backend(name: str, model: str, *, base_url: str | None = None, num_ctx: int = 8192,
                 keep_alive: str | int = "30m", stream: bool = True, api_key_env: str | None = None,
                 api_key_secret: str | None = None, http: HttpOptions | None = None,
                 delay_s: float = 0.0) -> ChatBackend:
    """Build the backend called `name` (one of `BACKEND_NAMES`) for `model`."""
    if name == "ollama":
        from faithforge.backends.ollama import DEFAULT_OLLAMA_URL, OllamaBackend

        return OllamaBackend(model, base_url=base_url or DEFAULT_OLLAMA_URL, num_ctx=num_ctx,
                             keep_alive=keep_alive, stream=stream, http=http)
    if name == "openai":
        from faithforge.backends.openai_compat import OpenAICompatBackend

        if not base_url:
            raise UserError("the openai backend needs --base-url (the server root that serves /v1/chat/completions)")
        return OpenAICompatBackend(model, base_url=base_url, api_key_env=api_key_env,
                                   api_key_secret=api_key_secret, stream=stream, http=http)
    if name == "local":
        from faithforge.backends.local import LocalTransformersBackend

        return LocalTransformersBackend(model)
    if name == "template":
        from faithforge.backends.template import TemplateBackend

        return TemplateBackend(model or "template-teacher", delay_s=delay_s)
    raise UserError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")


__all__ = ["BACKEND_NAMES", "BackendConfigError", "BackendError", "BackendTimeoutError", "BackendUnreachableError",
           "ChatBackend", "ChatResult", "HttpOptions", "ModelNotFoundError", "TransientBackendError", "Usage",
           "make_backend"]
