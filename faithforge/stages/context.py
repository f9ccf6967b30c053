"""What every stage needs: the validated config, the workspace, the store, the run id, a progress sink."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

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
    config: PipelineConfig
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
