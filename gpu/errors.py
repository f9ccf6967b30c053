"""Errors raised by the GPU gate: one line that says what to fix (the CLI exits with 2)."""

from __future__ import annotations


class GpuGateError(Exception):
    """Base class for the GPU gate's actionable errors: one line that says what to fix.

    `gpu/` imports nothing of the application, so this is the gate's own type; the application treats it as its
    `UserError` at the boundary (`faithforge.core.errors.USER_ERRORS`: the CLI prints it as one line and exits 2,
    a flow run fails with that line)."""

    exit_code = 2


class UnknownProfileError(GpuGateError, ValueError):
    """`FAITHFORGE_GPU_PROFILE` / `profile=` names no simulated GPU."""


class ModelConfigError(GpuGateError, ValueError):
    """A model's config.json is missing, unreadable, or of an architecture the estimator cannot size."""


class PlanNotRunnableError(GpuGateError):
    """The plan cannot run here: it needs an offload target that is not configured, or fits nowhere."""


class OomBackoffExhausted(GpuGateError):
    """CUDA ran out of memory after every allowed micro-batch back-off."""
