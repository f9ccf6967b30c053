"""`faithforge generate`: one generation run with a rich progress bar, as a Prefect flow or without one.

Register with `app.command("generate")(generate)`. Both paths hand one `GenerateParameters` to
`faithforge.generation.job` (the flow through its tasks); the options take their defaults from that model.
Everything that can be checked is checked before the run starts, and bad input ends in one line (exit 2);
a run that stores nothing ends with its summary and the top failure reasons (exit 1). `-v` shows Prefect's
run log and tracebacks.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from faithforge.core.errors import USER_ERRORS, UserError, given_input, validation_message
from faithforge.core.settings import SettingsError
from faithforge.core.backend_registry import BACKENDS
from faithforge.generation.parameters import GenerateParameters

if TYPE_CHECKING:
    from faithforge.generation.job import GenerationResult

_FIELDS = GenerateParameters.model_fields
# Option names of the parameters whose flag is not --<field with dashes>.
_OPTION_OF = {"use_gpu_gate": "--no-gate", "fallback_models": "--fallback-model", "read_timeout_s": "--read-timeout",
              "spec": "--spec", "backend_options": "--backend-option"}


def _default(name: str) -> Any:
    return _FIELDS[name].default


def option_name(field: str) -> str:
    return _OPTION_OF.get(field, "--" + field.replace("_", "-"))


def _backend_option_flags(flags: list[str], backend: str, api_key_env: str | None,
                          api_key_secret: str | None) -> dict[str, dict]:
    """`--backend-option NAME.FIELD=VALUE` flags (and the openai key's two short flags) as `backend_options`: each
    names `--backend`, which must declare settings of its own; a setting given both ways is one line."""
    from faithforge.app.settings_flags import settings_flags

    if backend in BACKENDS.renamed:  # the parameters take the old name from a stored deployment; a person learns it
        raise UserError("--backend: " + BACKENDS.unknown(backend))
    short = {"api_key_env": api_key_env, "api_key_secret": api_key_secret}
    given = [f"--{field.replace('_', '-')}" for field, value in short.items() if value is not None]
    if given and backend != "openai":
        raise UserError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to --backend openai only "
                        "(the server that takes an API key)")
    for field, value in short.items():
        if value is not None and any(f.partition("=")[0].strip() == f"openai.{field}" for f in flags):
            raise UserError(f"--{field.replace('_', '-')} and --backend-option openai.{field} set the same thing; "
                            "give one")
    flags = [*flags, *(f"openai.{field}={value}" for field, value in short.items() if value is not None)]
    return settings_flags(flags, flag="--backend-option", registry=BACKENDS, chosen=[backend],
                          chosen_flag="--backend", example="ollama.keep_alive=1h")


def _as_typed(message: str, api_key_env: str | None, api_key_secret: str | None) -> str:
    """`message` about the openai key's settings named as the short flag that set them, when one did."""
    for field, value in (("api_key_env", api_key_env), ("api_key_secret", api_key_secret)):
        if value is not None:
            message = message.replace(f"--backend-option openai: {field}", f"--{field.replace('_', '-')}")
    if api_key_env is not None or api_key_secret is not None:
        message = message.replace("in api_key_secret)", "with --api-key-secret)")
    return message


def parameter_problems(exc: ValidationError) -> str:
    """Pydantic's errors as one line, each named by its command-line option."""
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "options"
        message = validation_message(err)
        message = message[:1].lower() + message[1:]
        joint = " " if field == "backend_options" and err["type"] == "value_error" else ": "  # "NAME: problem"
        parts.append(f"{option_name(field)}{joint}{message}{given_input(err)}")
    return "; ".join(parts)


def generate(
    spec: Annotated[Path, typer.Option("--spec", help="Generation spec YAML (see configs/specs/).")],
    backend: Annotated[str, typer.Option("--backend", help=f"One of: {BACKENDS.choices()}.")] = _default("backend"),
    model: Annotated[str, typer.Option("--model", help="Ollama tag, server model id, or local model folder.")] = _default("model"),
    target: Annotated[Optional[int], typer.Option("--target", help="Total examples (default: the spec's targets).")] = None,
    fallback_model: Annotated[Optional[list[str]], typer.Option(
        "--fallback-model", help="Smaller tier the GPU gate may pick instead (repeatable).")] = None,
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="Server root URL.")] = None,
    backend_option: Annotated[Optional[list[str]], typer.Option(
        "--backend-option", help="NAME.FIELD=VALUE: a setting of a backend that declares its own (backend_options, "
        "e.g. ollama.keep_alive=1h); repeatable.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", help="openai: env var with the key (short "
                                                       "for --backend-option openai.api_key_env=VAR).")] = None,
    api_key_secret: Annotated[Optional[str], typer.Option("--api-key-secret", help="openai: Prefect Secret block "
                                                          "with the key (openai.api_key_secret).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Parallel requests (gate may lower).")] = _default("batch_size"),
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Longest answer, tokens (gate may lower).")] = _default("max_tokens"),
    temperature: Annotated[float, typer.Option("--temperature")] = _default("temperature"),
    seed: Annotated[int, typer.Option("--seed")] = _default("seed"),
    read_timeout: Annotated[float, typer.Option("--read-timeout", help="Seconds of silence from the server before "
                                                "a request is given up and retried.")] = _default("read_timeout_s"),
    documents: Annotated[Optional[str], typer.Option("--documents", help="Your documents file (JSONL/CSV/Parquet) "
                                                     "for a spec with a documents: section.")] = None,
    workspace: Annotated[str, typer.Option("--workspace", "-w", help="Workspace directory.")] = _default("workspace"),
    database_url: Annotated[Optional[str], typer.Option("--database-url",
                                                        help="Coverage DB URL (share a PostgreSQL URL between machines).")] = None,
    gpu_profile: Annotated[Optional[str], typer.Option("--gpu-profile", help="Plan for a simulated GPU.")] = None,
    no_gate: Annotated[bool, typer.Option("--no-gate", help="Use --model/--batch-size/--max-tokens as given.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Stop after this many new examples.")] = None,
    unload_after: Annotated[bool, typer.Option("--unload-after", help="Unload the Ollama model when done.")] = False,
    prefect: Annotated[bool, typer.Option("--prefect/--no-prefect", help="Run as a Prefect flow.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's run log and tracebacks.")] = False,
) -> None:
    """Generate examples from a local LLM, resumably (rerun the same command to continue)."""
    console = Console(stderr=True)
    try:
        backend_options = _backend_option_flags(backend_option or [], backend, api_key_env, api_key_secret)
        params = GenerateParameters(spec=str(spec), backend=backend, model=model, target=target,  # type: ignore[arg-type]
                                    fallback_models=fallback_model or [], base_url=base_url,
                                    backend_options=backend_options, batch_size=batch_size, max_tokens=max_tokens,
                                    temperature=temperature, seed=seed, read_timeout_s=read_timeout,
                                    documents=documents, workspace=workspace, database_url=database_url,
                                    gpu_profile=gpu_profile, use_gpu_gate=not no_gate, limit=limit,
                                    unload_after=unload_after)
    except ValidationError as exc:
        said = _as_typed(parameter_problems(exc), api_key_env, api_key_secret)
        console.print(f"[red]error:[/red] {escape(said)}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    except USER_ERRORS as exc:  # a malformed --backend-option
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    try:
        result = _run(params, console, prefect=prefect, verbose=verbose)
    except USER_ERRORS as exc:
        from faithforge.generation.job import GenerationFailed

        if verbose:
            console.print(traceback.format_exc(), markup=False, highlight=False)
        if isinstance(exc, GenerationFailed) and exc.result is not None:
            _print_summary(console, exc.result, params.backend)
        if isinstance(exc, SettingsError) and exc.where.startswith("backend_options."):  # as the flag that sets it
            exc = UserError(_as_typed(f"--backend-option {exc.entry}: {exc.problem}", api_key_env, api_key_secret))
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(exc.exit_code) from None
    _print_summary(console, result, params.backend)
    if result.summary.stopped == "interrupted":  # Ctrl-C without Prefect: the summary, then a stop's status
        raise typer.Exit(130)
    if result.summary.stopped not in ("completed", "limit"):  # e.g. backend_errors, max_failures
        raise typer.Exit(1)


def _run(params: GenerateParameters, console: Console, *, prefect: bool, verbose: bool) -> GenerationResult:
    from faithforge.core.progress import StageReporter, add_sink, remove_sink
    from faithforge.generation import job

    job.validate(params)  # bad input fails here, in one line, before a server or a flow starts
    sink, display = _display(console, f"generating {Path(params.spec).stem}", job.PROGRESS_STAGE)
    with display:
        add_sink(sink)
        try:
            if not prefect:  # Ctrl-C ends the runner's loop; it releases its claims and returns its summary
                reporter = StageReporter(job.PROGRESS_STAGE)
                return job.run(params, reporter.counts, reporter.news)
            from faithforge.app.prefect_settings import offline_environment, quiet_prefect_logs
            from faithforge.app.stopping import Stopper

            offline_environment()
            if not verbose:  # our bar and summary speak for the run; Prefect's log (with tracebacks) only with -v
                quiet_prefect_logs()
            from faithforge.app.embedded_server import embedded_server
            from faithforge.core.orphans import start_reaper

            # Ctrl-C reaches the embedded Prefect server too (one process group): without the stopper the server
            # died and generation went on against it; it is installed before the server starts, so a stop while it
            # starts is one too. The reaper stops the server if this process is killed. Finished examples are files
            # and a rerun skips them.
            start_reaper()
            with Stopper(None, {job.PROGRESS_STAGE: "generation"}).installed() as stopper, \
                    embedded_server() as server:
                from faithforge.flows.generate import generate_flow  # after the server's start, so beside it

                if server is not None:
                    server.wait_until_ready()
                with stopper.owning_sigterm_in_flows():
                    return generate_flow(params)
        finally:
            remove_sink(sink)


def _display(console: Console, label: str, stage: str):
    """(progress sink, context manager to run in): a live bar on a terminal; on a file or a pipe, where a bar
    shows nothing until the end (a log stayed empty for the whole run, an attack, 2026-12-07), a time-stamped line
    at the start, one every 30 s with done/total and rate, and each line of news as it comes."""
    if not console.is_terminal:
        from faithforge.app.demo_runner import plain_lines

        lines, display = plain_lines(console, {stage: label})

        def plain_sink(reported: str, done: int, total: int, message: str) -> None:
            if reported == stage:
                lines(reported, done, total, message)

        return plain_sink, display
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    bar = Progress(*columns, console=console, transient=False)
    task_id = bar.add_task(label, total=None)

    def bar_sink(reported: str, done: int, total: int, message: str) -> None:
        if reported != stage:
            return
        if message:  # a line of news: printed above the bar, which stays where it is
            bar.console.print(message, markup=False, highlight=False)
        else:
            bar.update(task_id, completed=done, total=total)

    return bar_sink, bar


def _print_summary(console: Console, result: GenerationResult, backend: str) -> None:
    decision, kind = result.plan.decision, BACKENDS.get(backend)
    if kind.server or kind.model_is_folder:
        console.print(f"model {decision.model}, {decision.batch_size} parallel, max {decision.max_tokens} tokens "
                      f"({decision.source})", highlight=False, soft_wrap=True)
    else:  # the template teacher: the gate's model line named `qwen3:8b`, a model it never used (an attack)
        console.print(f"backend {backend}: {kind.summary}", highlight=False, soft_wrap=True)
    for line in result.summary.lines():
        console.print(line, markup=False, highlight=False, soft_wrap=True)  # a log's lines unbroken
    console.print(f"dataset: {result.export.path} ({result.export.examples} examples)", highlight=False,
                  soft_wrap=True)
    if result.unloaded:
        console.print(f"unloaded from Ollama: {', '.join(result.unloaded)}")
