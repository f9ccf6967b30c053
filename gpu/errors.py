"""Errors raised by the GPU gate. All are `UserError`s: one line that says what to fix (CLI exit 2)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or environment the user can fix; the message says how (one line; the CLI exits with 2).

    Defined here because `gpu/` imports nothing from `faithforge/`; `faithforge.core.errors.UserError` is this class."""

    exit_code = 2


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
