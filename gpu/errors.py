"""Errors raised by the GPU gate. All are `UserError`s: one line that says what to fix (CLI exit 2)."""

from __future__ import annotations


import re

#: `scheme://user:password@` in a URL: the password is never printed, logged or stored in a message.
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@'\"]*):(?P<password>[^/\s@'\"]*)@")


def redact_credentials(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` URL in it replaced by `***`."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


class UserError(Exception):
    """Bad input or environment the user can fix; the message says how (one line; the CLI exits with 2).

    Defined here because `gpu/` imports nothing from `faithforge/`; `faithforge.core.errors.UserError` is this class.
    A password inside a URL in the message is redacted when the error is made, so no log or store keeps it."""

    exit_code = 2

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_credentials(a) if isinstance(a, str) else a for a in args))


class GpuGateError(UserError):
    """Base class for the GPU gate's actionable errors."""


class UnknownProfileError(GpuGateError, ValueError):
    """`FAITHFORGE_GPU_PROFILE` / `profile=` names no simulated GPU."""


class ModelConfigError(GpuGateError, ValueError):
    """A model's config.json is missing, unreadable, or of an architecture the estimator cannot size."""


class PlanNotRunnableError(GpuGateError):
    """The plan cannot run here: it needs an offload target that is not configured, or fits nowhere."""


class OomBackoffExhausted(GpuGateError):
    """CUDA ran out of memory after every allowed micro-batch back-off."""
