"""Chat backends behind one interface (`ChatBackend.chat`), and `make_backend` to build one by name.

Which backends exist, and what each can do, is registered once in `faithforge.core.backend_registry`."""

from __future__ import annotations

from faithforge.backends.base import (
    BackendConfigError,
    BackendError,
    BackendOptions,
    BackendTimeoutError,
    BackendUnreachableError,
    ChatBackend,
    ChatResult,
    ModelNotFoundError,
    TransientBackendError,
    Usage,
)
from faithforge.backends.http import HttpOptions
from faithforge.core.backend_registry import BACKENDS
from faithforge.core.registry import load_attribute


def make_backend(name: str, model: str, *, base_url: str | None = None, num_ctx: int = 8192,
                 keep_alive: str | int = "30m", stream: bool = True, api_key_env: str | None = None,
                 api_key_secret: str | None = None, http: HttpOptions | None = None,
                 delay_s: float = 0.0) -> ChatBackend:
    """Build the registered backend called `name` for `model` (a `UserError` listing the choices otherwise)."""
    kind = BACKENDS.get(name)
    options = BackendOptions(base_url=base_url, num_ctx=num_ctx, keep_alive=keep_alive, stream=stream,
                             api_key_env=api_key_env, api_key_secret=api_key_secret, http=http, delay_s=delay_s)
    return load_attribute(kind, "build")(model, options)


__all__ = ["BackendConfigError", "BackendError", "BackendOptions", "BackendTimeoutError", "BackendUnreachableError",
           "ChatBackend", "ChatResult", "HttpOptions", "ModelNotFoundError", "TransientBackendError", "Usage",
           "make_backend"]
