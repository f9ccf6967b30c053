"""Chat backends behind one interface (`ChatBackend.chat`), and `make_backend` to build one by name.

Which backends exist, and what each can do, is registered once in `faithforge.core.backend_registry`."""

from __future__ import annotations

from typing import Any

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
from faithforge.core.errors import UserError
from faithforge.core.registry import load_attribute
from faithforge.core.settings import SettingsError, validated_model


def make_backend(name: str, model: str, *, base_url: str | None = None, num_ctx: int = 8192, stream: bool = True,
                 http: HttpOptions | None = None, settings: dict | None = None,
                 where: str = "backend_options") -> ChatBackend:
    """Build the registered backend called `name` for `model` (a `UserError` listing the choices otherwise), with
    `settings` checked against its own `Options` (`where`: the config field they came from, for the message)."""
    kind = BACKENDS.get(name)
    options = BackendOptions(base_url=base_url, num_ctx=num_ctx, stream=stream, http=http,
                             settings=backend_settings(name, settings, where=where))
    return load_attribute(kind, "build")(model, options)


def check_backend_options(backend_options: dict, used: str | tuple[str, ...], *,
                          where: str = "backend_options") -> None:
    """Every entry of a section's `backend_options` checked before any work: those of the backends the run `used`
    (an absent one: its defaults; and its `check_settings`), and every other entry that holds something (a typo
    never waits for the day that backend is chosen; an empty entry is what the UI form submits for one nobody
    set)."""
    used = (used,) if isinstance(used, str) else used
    for name in dict.fromkeys([*used, *(n for n, given in backend_options.items() if given is not None)]):
        backend_settings(name, backend_options.get(name), where=where, checked=name in used)


def backend_settings(name: str, given: dict | None, *, where: str = "backend_options", checked: bool = False) -> Any:
    """The backend `name`'s own `Options` filled from `given` (None: its defaults), checked now: a bad or unknown
    field is one line naming `where.<name>` and every problem. `checked` (the run uses it on this machine): the
    module's `check_settings` runs too (an empty environment variable); `make_backend` leaves that to the checks
    before a run, since a backend may be built where its requests are not made, and fails at its first request
    anyway. None for a backend without settings of its own (which then refuses any given)."""
    kind = BACKENDS.get(name)
    if not kind.own_settings:
        if given:
            raise SettingsError(f"{where}.{name}", name, f"the {name} backend has no settings of its own; its "
                                "choices are in the section's other fields")
        return None
    model = load_attribute(kind, "Options", None)
    if model is None:
        raise TypeError(f"backend {name} is registered with own_settings but {kind.module} defines no Options model")
    settings = validated_model(model, given, where=f"{where}.{name}", entry=name, kind="backend")
    check = load_attribute(kind, "check_settings", None) if checked else None
    try:
        if check is not None:
            check(settings)
    except SettingsError:
        raise
    except UserError as exc:  # named as the config field that set it
        raise SettingsError(f"{where}.{name}", name, str(exc)) from None
    return settings


__all__ = ["BackendConfigError", "BackendError", "BackendOptions", "BackendTimeoutError", "BackendUnreachableError",
           "ChatBackend", "ChatResult", "HttpOptions", "ModelNotFoundError", "TransientBackendError", "Usage",
           "backend_settings", "check_backend_options", "make_backend"]
