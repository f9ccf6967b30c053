"""What every stage needs: its sections of the validated config, the workspace, the store, the run id, a
progress sink.

A stage declares the config sections it reads with `@reads(...)` above its entry function; inside, `ctx.config`
is a `ConfigView` holding those sections and nothing else, so the declaration is the whole list of settings that
can change what the stage does (and what a reader of the stage has to look up). Reading another section fails at
once, naming the stage and the section.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable, TypeVar

from faithforge.core.config import PipelineConfig
from faithforge.core.store import Store
from faithforge.core.workspace import Workspace

#: progress(stage, done, total, message)
ProgressFn = Callable[[str, int, int, str], None]


def _no_progress(stage: str, done: int, total: int, message: str) -> None:  # noqa: ARG001
    return None


def _python_log(line: str) -> None:
    import logging

    logging.getLogger("faithforge.stages").info("%s", line)


@dataclass
class StageContext:
    config: "PipelineConfig | ConfigView"
    """The whole config where a context is opened; inside a stage, the view of the sections it declares."""
    workspace: Workspace
    store: Store
    run_id: str | None = None
    progress: ProgressFn = field(default=_no_progress)
    log: Callable[[str], None] = field(default=_python_log)
    """Where a stage sends log lines of work it runs in child processes (torchrun ranks): the Prefect run log inside
    a task (`faithforge.tasks.stage_runner.run_stage`), Python logging otherwise."""

    @classmethod
    def open(cls, config: PipelineConfig, run_id: str | None = None, progress: ProgressFn | None = None) -> "StageContext":
        workspace = Workspace.open(config.workspace)
        store = Store(config.database_url or workspace.database_url)
        return cls(config, workspace, store, run_id, progress or _no_progress)


def content_key(*parts: Any) -> str:
    """A short stable key for what a stage's output depends on (16 hex chars of SHA-256 over JSON)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class ConfigView:
    """The named sections (top-level fields) of a `PipelineConfig`, read-only; any other one is refused.

    `stage` names the reader in the error. A view of a view may only narrow: a stage called from inside another
    stage sees no more than its caller declared.
    """

    __slots__ = ("_config", "_sections", "_stage")

    def __init__(self, config: Any, sections: frozenset[str], stage: str):
        if isinstance(config, ConfigView):
            wider = sections - config._sections
            if wider:
                raise AttributeError(
                    f"stage {stage!r} reads config.{sorted(wider)[0]}, which its caller {config._stage!r} does not "
                    f"declare: add it to {config._stage}'s @reads")
            config = config._config
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_sections", sections)
        object.__setattr__(self, "_stage", stage)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # dunders and the slots themselves while unset (copy and pickle probe them)
            raise AttributeError(name)
        if name in self._sections:
            return getattr(self._config, name)
        if name not in type(self._config).model_fields:
            raise AttributeError(f"stage {self._stage!r} asked its config for {name!r}: a stage's config is a view "
                                 "of the sections it declares, not the whole PipelineConfig")
        raise AttributeError(f"stage {self._stage!r} reads config.{name} but declares only "
                             f"{', '.join(sorted(self._sections))}: add {name!r} to its @reads")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a stage's config is read-only")

    def __reduce__(self):
        """Copied and pickled as the same view (the config, the sections, the stage)."""
        return ConfigView, (self._config, self._sections, self._stage)

    @property
    def sections(self) -> frozenset[str]:
        return self._sections


F = TypeVar("F", bound=Callable[..., Any])


def reads(*sections: str) -> Callable[[F], F]:
    """Declare the config sections a stage entry reads; it is called with a context whose config holds only them.

    The decorated function's first argument is its `StageContext`. The sections must be fields of
    `PipelineConfig` (checked here, at import).
    """
    unknown = sorted(set(sections) - set(PipelineConfig.model_fields))
    if unknown:
        raise ValueError(f"@reads names {unknown}, which PipelineConfig does not have")
    declared = frozenset(sections)

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def narrowed(ctx: StageContext, *args: Any, **kwargs: Any):
            view = ConfigView(ctx.config, declared, function.__name__)
            return function(replace(ctx, config=view), *args, **kwargs)

        narrowed.config_sections = declared  # type: ignore[attr-defined]
        return narrowed  # type: ignore[return-value]

    return decorate
