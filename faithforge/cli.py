"""The `faithforge` command line.

`faithforge demo` runs the whole pipeline flow on Prefect's embedded server and prints the before/after
hallucination rates. Errors the user can fix end with a one-line message and exit status 2, not a traceback.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from faithforge.errors import UserError

app = typer.Typer(help="FaithForge: make a local LLM hallucinate less, and measure it.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

# Stage outputs that `--fresh` removes; the run database and reports are history and stay.
DERIVED_DIRS = ("datasets", "pairs", "refcache", "models", "checkpoints", "adapters")


def _register_subcommands() -> None:
    from faithforge import cli_eval, cli_gpu, cli_model

    app.add_typer(cli_gpu.app, name="gpu")
    app.add_typer(cli_eval.app, name="eval")
    app.add_typer(cli_model.app, name="model")
    try:
        from faithforge.cli_generate import generate
    except ImportError:  # the generation CLI is optional in slim installs
        return
    app.command(name="generate", help="Generate examples from a spec with a local LLM (resumable).")(generate)


def _load(config: Optional[Path], overrides: dict[str, Any]):
    from faithforge.config import load_config

    path = config or os.environ.get("FAITHFORGE_CONFIG") or None
    return load_config(path, overrides={k: v for k, v in overrides.items() if v is not None})


@app.command("tiny-model")
def tiny_model(path: Path = typer.Argument(..., help="Folder to write the tokenizer and model to."),
               seed: int = typer.Option(0, help="Seed for the random initialization.")) -> None:
    """Build the tiny offline model: a word-level tokenizer trained on the synthetic corpus + a random-init Llama."""
    from faithforge.tiny_model import build_tiny_model

    try:
        out = build_tiny_model(path, seed=seed)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}; choose a writable folder") from None
    typer.echo(f"tiny model written to {out} (load it with AutoModelForCausalLM.from_pretrained)")


@app.command()
def demo(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: built-in demo settings)."),
    workspace: Optional[str] = typer.Option(None, "--workspace", "-w", help="Workspace directory (default ./.faithforge)."),
    seed: Optional[int] = typer.Option(None, help="Seed for data, model init, training and bootstrap."),
    fresh: bool = typer.Option(False, "--fresh", help="Recompute every stage instead of reusing earlier outputs."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Plan for a simulated GPU (see `faithforge gpu`)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's run logs."),
) -> None:
    """Run the whole pipeline (generate → pairs → reference log-probs → DPO → evaluate) on this machine."""
    overrides: dict[str, Any] = {"workspace": workspace, "seed": seed}
    if profile:
        overrides["gpu"] = {"profile": profile}
    cfg = _load(config, overrides)
    from faithforge.workspace import Workspace

    ws = Workspace.open(cfg.workspace)  # fails early, with the fix, if it is not writable
    from gpu import read_snapshot

    read_snapshot(cfg.gpu.profile)  # an unknown profile name fails here, listing the known ones
    if fresh:
        for sub in DERIVED_DIRS:
            shutil.rmtree(ws.dir(sub), ignore_errors=True)
            ws.dir(sub).mkdir()
    from faithforge.demo_runner import run_pipeline_with_progress

    summary = run_pipeline_with_progress(cfg, verbose=verbose)
    from faithforge.demo_report import print_summary

    print_summary(summary)


def main() -> None:
    # Before anything imports Prefect: its settings are read once.
    from faithforge.prefect_settings import offline_environment

    offline_environment()
    _register_subcommands()
    try:
        app()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
