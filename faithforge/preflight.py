"""Checks of a pipeline configuration that need no model: run before Prefect starts, so bad input costs seconds.

Every check raises a `UserError` (one line, what to fix). A stage would find the same problems, but only
after the server started and earlier stages ran — with Prefect's logs in front of the message.
"""

from __future__ import annotations

from pathlib import Path

from faithforge.config import PipelineConfig
from faithforge.errors import UserError
from faithforge.workspace import Workspace


def check_pipeline_inputs(cfg: PipelineConfig) -> Workspace:
    """Open the workspace and the run store, and check the GPU profile, model folder, judge and data spec."""
    workspace = Workspace.open(cfg.workspace)
    from faithforge.store import Store

    store = Store(cfg.database_url or workspace.database_url)  # a damaged or unreachable store fails here
    store.mark_crashed_runs()
    store.engine.dispose()
    from gpu import read_snapshot

    read_snapshot(cfg.gpu.profile)  # an unknown profile name fails here, listing the known ones
    if cfg.model.path and not (Path(cfg.model.path).expanduser() / "config.json").is_file():
        raise UserError(f"model.path {cfg.model.path} has no config.json; point it at a folder saved with "
                        "save_pretrained")
    from faithforge.stages.evaluate import judge_options

    judge_options(cfg.evaluate)  # nli without a checkpoint, llm without a model: before any training
    if cfg.evaluate.served_model:
        from faithforge.generation.backends import make_backend

        make_backend(cfg.evaluate.served_backend, cfg.evaluate.served_model, base_url=cfg.evaluate.served_base_url)
    if cfg.generate.backend != "template":
        from faithforge.generation.spec import load_spec
        from faithforge.stages.generate import generation_parameters

        load_spec(cfg.generate.spec)
        generation_parameters(cfg)  # the generation flow's parameters, validated
    return workspace
