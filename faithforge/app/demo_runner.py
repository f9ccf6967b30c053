"""Run the pipeline flow in this process on Prefect's embedded server, with rich progress bars."""

from __future__ import annotations

import logging
import os
import time

from faithforge.core.config import PipelineConfig
from faithforge.core.progress import add_sink, remove_sink

STAGE_LABELS = {
    "generate": "generate examples", "base_model": "base model", "warm_start": "warm-start SFT",
    "pairs": "preference pairs", "reference": "reference log-probs", "train": "DPO training",
    "control": "SFT control", "evaluate": "evaluate",
}


def run_pipeline_with_progress(config: PipelineConfig, verbose: bool = False) -> dict:
    from faithforge.app.prefect_settings import offline_environment

    offline_environment()
    if not verbose:
        # Our progress bars and summary speak for the run; a failing stage's one-line error is printed by the
        # CLI, so Prefect's own log (with tracebacks) is shown only with --verbose.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
        # The embedded server's own log (uvicorn, FastAPI, prefect.server) goes to this terminal too: two runs
        # sharing Prefect's SQLite database printed its "database is locked" tracebacks, which both runs survive.
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not user news
    for noisy in ("transformers", "datasets", "bitsandbytes", "accelerate", "peft", "kernels"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    bars: dict[str, int] = {}
    progress = Progress(TextColumn("{task.description:<22}"), BarColumn(), TextColumn("{task.fields[note]}"),
                        TimeElapsedColumn(), console=console, transient=False)

    def sink(stage: str, done: int, total: int, message: str) -> None:
        if stage not in bars:
            bars[stage] = progress.add_task(STAGE_LABELS.get(stage, stage), total=max(total, 1), note="")
        progress.update(bars[stage], completed=min(done, total), total=max(total, 1), note=message)

    add_sink(sink)
    started = time.perf_counter()
    console.print("[bold]FaithForge demo[/bold]: starting Prefect's embedded server (first start takes ~10 s)…")
    from pathlib import Path

    from faithforge.app.stopping import Stopper
    from faithforge.core.workspace import Workspace

    store_url = config.database_url or Workspace(Path(config.workspace).expanduser().resolve()).database_url
    try:
        from faithforge.app.prefect_settings import without_heartbeats
        from flows.pipeline import pipeline

        with Stopper(store_url, STAGE_LABELS).installed(), progress, without_heartbeats():
            summary = pipeline(config)
    finally:
        remove_sink(sink)
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    return summary
