"""The nightly generation deployment: every night at `NIGHTLY_CRON` (02:00; cron and timezone configurable),
resume generation.

`generation_deployment_kwargs(...)` returns the keyword arguments of `flow.to_deployment`, so a
`prefect.yaml` or a `serve()` script can share them; `generation_deployment(...)` builds the deployment.
Because generation resumes from its coverage database, a nightly run simply continues toward the target
(and does nothing once it is met).
"""

from __future__ import annotations

from typing import Any

from faithforge.generation.parameters import GenerateParameters

NIGHTLY_CRON = "0 2 * * *"
"""02:00 every day: the nightly schedule's one definition (`deploy.py --cron` overrides it; the prefect.yaml files
are written from it)."""


def generation_deployment_kwargs(params: GenerateParameters, *, name: str = "nightly-generation",
                                 cron: str = NIGHTLY_CRON, timezone: str = "UTC",
                                 work_pool_name: str | None = None, paused: bool = False) -> dict[str, Any]:
    """Arguments for `generate_flow.to_deployment(**kwargs)`; `timezone` is an IANA name (e.g. Europe/Berlin)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from prefect.schedules import Cron

    from faithforge.core.errors import UserError

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise UserError(f"unknown timezone {timezone!r}; use an IANA name such as UTC or Europe/Berlin") from None
    try:
        schedule = Cron(cron, timezone=timezone)
    except ValueError:
        raise UserError(f"cron {cron!r} is not a cron expression; write five fields: minute hour day month weekday "
                        f"(e.g. {NIGHTLY_CRON!r}: 02:00 every day)") from None
    kwargs: dict[str, Any] = {
        "name": name,
        "schedules": [schedule],
        "parameters": {"params": params.model_dump(mode="json")},
        "description": f"Resume generation of {params.spec} with {params.backend}/{params.model} toward "
                       f"{params.target if params.target is not None else 'the spec targets'} examples.",
        "tags": ["faithforge", "generation", "nightly"],
        "paused": paused,
    }
    if work_pool_name:
        kwargs["work_pool_name"] = work_pool_name
    return kwargs


def generation_deployment(params: GenerateParameters, **options: Any):
    """The `RunnerDeployment` of the nightly generation (serve it with `prefect.serve(...)`)."""
    from faithforge.flows.generate import generate_flow

    return generate_flow.to_deployment(**generation_deployment_kwargs(params, **options))
