"""Run the pipeline flow in this process on Prefect's embedded server (or the one the user set), with rich progress
bars."""

from __future__ import annotations

import os
import time

from faithforge.core.config import PipelineConfig
from faithforge.core import progress as progress_registry
from faithforge.core.progress import PlainLines, add_sink, remove_sink

STAGE_LABELS = {
    "generate": "generate examples", "base_model": "base model", "warm_start": "warm-start SFT",
    "pairs": "preference pairs", "reference": "reference log-probs", "train": "DPO training",
    "control": "SFT control", "evaluate": "evaluate",
}


def run_pipeline_with_progress(config: PipelineConfig, verbose: bool = False) -> dict:
    from faithforge.app.prefect_settings import offline_environment, quiet_library_logs, quiet_prefect_logs

    offline_environment()
    if not verbose:  # a failing stage's one-line error is printed by the CLI; Prefect's log only with --verbose
        quiet_prefect_logs()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not user news
    quiet_library_logs()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")

    from rich.console import Console

    console = Console()
    sink, display = stage_display(console)
    add_sink(sink)
    started = time.perf_counter()
    from pathlib import Path

    from faithforge.app.stopping import Stopper
    from faithforge.core.workspace import Workspace

    store_url = config.database_url or Workspace(Path(config.workspace).expanduser().resolve()).database_url
    from faithforge.app.embedded_server import embedded_server
    from faithforge.core.orphans import start_reaper

    # In this order: a watcher process that stops the embedded server (a `uvicorn` child), and any other child, if
    # this process is killed (SIGKILL cannot be handled); the Stopper, so a Ctrl-C or SIGTERM while the server starts
    # is a stop too (one line, exit 130); the server, before the flows, torch and transformers are imported, so it
    # starts while they are (faithforge/app/embedded_server.py).
    start_reaper()
    try:
        with Stopper(store_url, STAGE_LABELS).installed() as stopper, embedded_server() as server:
            _say_which_server(console, server)
            from faithforge.app.prefect_settings import without_heartbeats
            from faithforge.flows.pipeline import pipeline

            if server is not None:
                server.wait_until_ready()
            with display, without_heartbeats(), stopper.owning_sigterm_in_flows():
                summary = pipeline(config)
    finally:
        remove_sink(sink)
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    return summary


def _say_which_server(console, server) -> None:
    """The demo's first line: the Prefect server it runs on. Said once `embedded_server` has decided, from all of
    Prefect's settings: read from `PREFECT_API_URL` alone, a server named by the active Prefect profile was
    announced as an embedded one being started (an attack, 2026-12-07)."""
    from faithforge.app.embedded_server import configured_api_url

    if server is None:  # a server the user configured, checked to answer
        console.print(f"[bold]FaithForge demo[/bold]: using the Prefect server at {configured_api_url()}",
                      highlight=False)
    else:
        console.print("[bold]FaithForge demo[/bold]: starting Prefect's embedded server (first start takes ~10 s)…")


def stage_display(console, every_s: float = 30.0):
    """(progress sink, context manager to run the work in): a file or a pipe gets plain lines, a line per stage
    at its start, every `every_s` seconds and at its end (a live bar would show nothing there until the end);
    a terminal gets bars."""
    return _bars(console) if console.is_terminal else plain_lines(console, STAGE_LABELS, every_s)


def plain_lines(console, labels: dict[str, str], every_s: float = 30.0) -> tuple[PlainLines, PlainLines]:
    """(sink, context manager): progress as time-stamped plain lines on `console`'s file (a log file or a pipe)."""
    def write(line: str) -> None:
        console.file.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        console.file.flush()

    lines = PlainLines(write, labels, every_s=every_s)
    return lines, lines


def _bars(console):
    """Rich bars whose clock runs from the stage's start to its end (`progress.begin` / `progress.end`), not
    from its first count to its first full count (rich's own column stops at the first done == total)."""
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
    from rich.text import Text

    class StageClock(ProgressColumn):
        def render(self, task) -> Text:
            end = task.fields.get("ended_at") or time.monotonic()
            return Text(progress_registry.clock_text(end - task.fields["started_at"]), style="progress.elapsed")

    bars: dict[str, int] = {}
    display = Progress(TextColumn("{task.description:<22}"), BarColumn(), TextColumn("{task.fields[note]}"),
                       StageClock(), console=console, transient=False)

    def sink(stage: str, done: int, total: int, message: str) -> None:
        now = time.monotonic()
        if stage not in bars:
            bars[stage] = display.add_task(STAGE_LABELS.get(stage, stage), total=max(total, 1), note="",
                                           started_at=now, ended_at=None)
        elif message == progress_registry.STARTED:
            display.update(bars[stage], started_at=now, ended_at=None)
        ended = progress_registry.has_ended(stage)
        display.update(bars[stage], completed=min(done, total), total=max(total, 1),
                       note="" if message == progress_registry.STARTED else message,
                       **({"ended_at": now} if ended else {}))

    return sink, display
