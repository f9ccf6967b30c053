"""`faithforge judge train`: fine-tune the `trained` judge on the user's own documents (see evaluation/trained.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from faithforge.core.errors import UserError

app = typer.Typer(help="Judges made from your own documents.", no_args_is_help=True)


@app.command("train")
def train(
    documents: Path = typer.Option(..., "--documents", help="Your documents: JSONL, JSON, CSV, Parquet or a "
                                   "datasets folder (the text in the --text-column column)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to save the judge in (default: "
                                       "<workspace>/judges); the judge goes to OUT/<name>-<hash>/."),
    workspace: Path = typer.Option(Path(".faithforge"), "--workspace", "-w", envvar="FAITHFORGE_WORKSPACE",
                                   help="Workspace (for the default --out)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1,
                             help="Seed of the training examples and the head's initialization."),
    steps: int = typer.Option(40, "--steps", help="Training examples in batches of 16 (40 → 640 examples)."),
    method: str = typer.Option("alignment", "--method", help="alignment (frozen encoder + a logistic head, "
                               "minutes on CPU) or cross-encoder (fine-tunes the encoder; needs far more steps)."),
    text_column: str = typer.Option("document", "--text-column", help="Column holding each document's text."),
    id_column: Optional[str] = typer.Option(None, "--id-column", help="Column holding each document's id "
                                            "(default: a hash of the text)."),
    name: str = typer.Option("trained", "--name", help="Name of the judge folder (before its hash)."),
) -> None:
    """Build supported/unsupported examples from your documents and train a MiniLM-based judge on them (CPU)."""
    from faithforge.evaluation.trained import MAX_STEPS

    if not 1 <= steps <= MAX_STEPS:
        raise UserError(f"--steps must be between 1 and {MAX_STEPS:,} (got {steps})")
    if not name.strip():
        raise UserError("--name is empty; pass a short name for the judge folder")
    from faithforge.core.workspace import Workspace, writable_parent

    if out is not None:
        target = out.expanduser().resolve()
        if target.exists() and not target.is_dir():
            raise UserError(f"--out {out} is a file; pass a folder to save the judge in")
        if not target.exists():
            writable_parent(target)  # a parent that is a file or not writable: before any training
    else:  # the workspace's judges/ folder: checked now, created (with the workspace's marker) only to save
        target = Workspace.check(workspace) / "judges"
        if target.exists() and not target.is_dir():
            raise UserError(f"{target} is a file; move it or pass --out DIR")
    from faithforge.data.documents import read_documents
    from faithforge.evaluation.trained import TrainSettings, base_encoder_dir, train_judge

    docs = read_documents(documents, text_column=text_column, id_column=id_column, allow_duplicates=True,
                          settings={"path": "--documents", "text_column": "--text-column", "id_column": "--id-column"})
    if len(docs) < 2:
        raise UserError(f"{documents} holds {len(docs)} document; the judge needs at least 2 (a sentence of another "
                        f"document is one of its unsupported examples)")
    settings = TrainSettings(seed=seed, steps=steps, method=method)
    settings.check()
    base_encoder_dir()  # the encoder package is there, before any work
    typer.echo(f"training a judge on {len(docs)} documents from {documents}", err=True)
    if out is None:
        Workspace.open(workspace)  # a FaithForge workspace (marker and all), so `demo --fresh` may use it later
    folder = train_judge([(d.id, d.text) for d in docs], target, settings, name=name,
                         say=lambda message: typer.echo(message, err=True))
    typer.echo(f"trained judge saved to {folder}; use it with evaluate.judge: trained and its path {folder}")
