"""`faithforge generate`: run the generation flow with a rich progress bar.

Register with `app.command("generate")(generate)`. `--no-prefect` runs the same loop without Prefect
(no server start; useful offline and on a worker box).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from faithforge.errors import UserError
from faithforge.generation.backends import BACKEND_NAMES


def _run_direct(params, on_progress) -> dict:
    """The flow's steps as plain calls (no Prefect)."""
    from faithforge.generation import progress as listeners
    from faithforge.generation.backends import HttpOptions, make_backend
    from faithforge.generation.backends.ollama import release_ollama_gpu
    from faithforge.generation.coverage import CoverageDB
    from faithforge.generation.files import export_jsonl
    from faithforge.generation.gate import GateDecision, decide
    from faithforge.generation.runner import GenerationOptions, run_generation
    from faithforge.generation.spec import load_spec
    from tasks.generation import estimate_prompt_tokens, resolve_paths

    spec = load_spec(params.spec)
    paths = resolve_paths(params, spec.name)
    decision = (decide(params.backend, [params.model, *params.fallback_models], batch_size=params.batch_size,
                       max_tokens=params.max_tokens, prompt_tokens=estimate_prompt_tokens(params),
                       base_url=params.base_url, gpu_profile=params.gpu_profile)
                if params.use_gpu_gate else
                GateDecision(params.model, params.batch_size, params.max_tokens, "configured", "gate turned off"))
    backend = make_backend(params.backend, decision.model, base_url=params.base_url, num_ctx=params.num_ctx,
                           api_key_env=params.api_key_env, api_key_secret=params.api_key_secret,
                           http=HttpOptions(read_timeout_s=params.read_timeout_s))
    db = CoverageDB(paths["database_url"])
    options = GenerationOptions(target=params.target, batch_size=decision.batch_size, max_tokens=decision.max_tokens,
                                temperature=params.temperature, seed=params.seed, claim_ttl_s=params.claim_ttl_s,
                                max_failures=params.max_failures, limit=params.limit)
    summary = run_generation(spec, backend, db, Path(paths["examples_dir"]), options,
                             lambda done, target: listeners.notify(done, target))
    count = export_jsonl(db, spec.name, Path(paths["export"]))
    unloaded = release_ollama_gpu(params.base_url or "http://127.0.0.1:11434", [decision.model]) \
        if params.unload_after and params.backend == "ollama" else []
    return {"plan": {"decision": decision.to_dict(), **paths}, "summary": summary.to_dict(),
            "export": {"path": paths["export"], "examples": count}, "unloaded": unloaded}


def generate(
    spec: Annotated[Path, typer.Option("--spec", help="Generation spec YAML (see configs/specs/).")],
    backend: Annotated[str, typer.Option("--backend", help=f"One of: {', '.join(BACKEND_NAMES)}.")] = "ollama",
    model: Annotated[str, typer.Option("--model", help="Ollama tag, server model id, or local model folder.")] = "qwen3:8b",
    target: Annotated[Optional[int], typer.Option("--target", min=0,
                                                  help="Total examples (default: the spec's targets).")] = None,
    fallback_model: Annotated[Optional[list[str]], typer.Option(
        "--fallback-model", help="Smaller tier the GPU gate may pick instead (repeatable).")] = None,
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="Server root URL.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", help="openai: env var with the key.")] = None,
    api_key_secret: Annotated[Optional[str], typer.Option("--api-key-secret",
                                                          help="openai: Prefect Secret block with the key.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Parallel requests (gate may lower).")] = 1,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=16, help="Longest answer, tokens (gate may lower).")] = 4000,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, max=2.0)] = 0.8,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    workspace: Annotated[str, typer.Option("--workspace", help="Workspace directory.")] = ".faithforge",
    database_url: Annotated[Optional[str], typer.Option("--database-url",
                                                        help="Coverage DB URL (share a PostgreSQL URL between machines).")] = None,
    gpu_profile: Annotated[Optional[str], typer.Option("--gpu-profile", help="Plan for a simulated GPU.")] = None,
    no_gate: Annotated[bool, typer.Option("--no-gate", help="Use --model/--batch-size/--max-tokens as given.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Stop after this many new examples.")] = None,
    unload_after: Annotated[bool, typer.Option("--unload-after", help="Unload the Ollama model when done.")] = False,
    prefect: Annotated[bool, typer.Option("--prefect/--no-prefect", help="Run as a Prefect flow.")] = True,
) -> None:
    """Generate examples from a local LLM, resumably (rerun the same command to continue)."""
    console = Console(stderr=True)
    from faithforge.generation import progress as listeners
    from faithforge.generation.parameters import GenerateParameters

    try:
        params = GenerateParameters(spec=str(spec), backend=backend, model=model, target=target,  # type: ignore[arg-type]
                                    fallback_models=fallback_model or [], base_url=base_url, api_key_env=api_key_env,
                                    api_key_secret=api_key_secret, batch_size=batch_size, max_tokens=max_tokens,
                                    temperature=temperature, seed=seed, workspace=workspace, database_url=database_url,
                                    gpu_profile=gpu_profile, use_gpu_gate=not no_gate, limit=limit,
                                    unload_after=unload_after)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task_id = bar.add_task(f"generating {spec.stem}", total=None)

        def on_progress(done: int, total: int) -> None:
            bar.update(task_id, completed=done, total=total)

        listeners.add_listener(on_progress)
        try:
            if prefect:
                from faithforge.prefect_settings import offline_environment

                offline_environment()
                from flows.generate import generate_flow

                result = generate_flow(params)
            else:
                result = _run_direct(params, on_progress)
        except UserError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(exc.exit_code) from None
        finally:
            listeners.remove_listener(on_progress)
    _print_summary(console, result)


def _print_summary(console: Console, result: dict) -> None:
    from faithforge.generation.summary import GenerationSummary

    data = dict(result["summary"])
    data.pop("target_total", None)
    summary = GenerationSummary(**data)
    decision = result["plan"]["decision"]
    console.print(f"model {decision['model']}, {decision['batch_size']} parallel, max {decision['max_tokens']} tokens "
                  f"({decision['source']})")
    for line in summary.lines():
        console.print(line)
    console.print(f"dataset: {result['export']['path']} ({result['export']['examples']} examples)")
    if result.get("unloaded"):
        console.print(f"unloaded from Ollama: {', '.join(result['unloaded'])}")
    if summary.stopped != "completed" and summary.stopped != "limit":
        raise typer.Exit(1)
