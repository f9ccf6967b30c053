"""`faithforge label`: label a run's outputs in the terminal — supported, unsupported or skip, with a note.

Shows each output with its source (the words of the judge's flagged sentences highlighted in the source, the
flagged spans in the output), never which model wrote it, in an order shuffled by `--seed`. Keys: `s` supported,
`u` unsupported, `k` skip, `q` quit; after `s`/`u` an optional note (Enter for none). Every label is written to the
labels file at once (JSONL, fsynced), so `q`, Ctrl-C or a closed terminal loses nothing and the same command
resumes after the last label. The file is what `faithforge eval calibrate --labels FILE` reads.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional, TextIO

import typer

from faithforge.core.errors import UserError

KEYS = {"s": "supported", "u": "unsupported", "k": "skip"}
#: Characters of the source shown around the first highlighted word (the whole source when shorter).
SOURCE_WINDOW = 1600


def _read_key(stream: TextIO) -> str:
    """One key press from a terminal (no Enter needed), or the first character of a line from a pipe."""
    if stream.isatty():
        import termios
        import tty

        fd = stream.fileno()
        saved = termios.tcgetattr(fd)
        try:
            # TCSANOW, not tty's default TCSAFLUSH: a flush discards keys typed ahead of the prompt
            tty.setcbreak(fd, termios.TCSANOW)
            key = stream.read(1)
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        if key in ("\x03", "\x04"):  # Ctrl-C / Ctrl-D in cbreak mode
            return "q"
        return key.lower()
    line = stream.readline()
    return "q" if not line else (line.strip()[:1].lower() or "")


def _read_note(stream: TextIO) -> str:
    line = stream.readline()
    return line.rstrip("\n") if line else ""


def _source_text(item, flagged_words: set[str]):
    from rich.text import Text

    source = item.source
    if len(source) > SOURCE_WINDOW:
        source = source[:SOURCE_WINDOW] + " …"
    text = Text(source)
    if flagged_words:
        text.highlight_words(sorted(flagged_words), style="bold yellow", case_sensitive=False)
    return text


def _flagged_words(item) -> set[str]:
    """Words (4+ letters) of the judge's flagged spans' sentences that also occur in the source: where to look."""
    import re

    from faithforge.evaluation.text_analysis import sentences_of

    if not item.spans:
        return set()
    sentences = [s for s in sentences_of(item.summary)
                 if any(span_text in s for span_text in (item.summary[a:b] for a, b in item.spans))]
    lowered = item.source.lower()
    return {w for s in sentences for w in re.findall(r"[A-Za-z][A-Za-z'-]{3,}", s) if w.lower() in lowered}


def _output_text(item):
    from rich.text import Text

    text = Text(item.summary or "(empty output)")
    for start, end in item.spans:
        text.stylize("bold red underline", start, end)
    return text


def run_labeler(items_path: Path, labels_path: Path, *, seed: int, stream: TextIO,
                console=None, limit: int | None = None,
                on_label: Optional[Callable[[dict], None]] = None) -> dict[str, int]:
    """Label the outputs of `items_path` not yet in `labels_path`; returns counts by verdict (and `left`)."""
    from rich.console import Console
    from rich.panel import Panel

    from faithforge.evaluation.labeling import append_label, label_row, labeled_ids, read_label_items, shuffled

    console = console or Console()
    items = shuffled(read_label_items(items_path), seed)
    done = labeled_ids(labels_path)
    todo = [item for item in items if item.id not in done]
    if limit is not None:
        todo = todo[:limit]
    counts = {"supported": 0, "unsupported": 0, "skip": 0, "already": len(done & {i.id for i in items})}
    console.print(f"{len(items)} outputs, {counts['already']} already labeled in {labels_path}; "
                  f"{len(todo)} to go. Keys: s supported · u unsupported · k skip · q quit")
    for number, item in enumerate(todo, 1):
        console.rule(f"{counts['already'] + number} of {len(items)}")
        console.print(Panel(_source_text(item, _flagged_words(item)), title="source", title_align="left"))
        console.print(Panel(_output_text(item), title="output (judge's flags in red)", title_align="left"))
        console.print("Does the source support everything the output says? [s/u/k/q] ", end="", markup=False)
        key = ""
        while key not in KEYS and key != "q":
            key = _read_key(stream)
        if key == "q":
            console.print("\nstopped; run the same command to resume")
            break
        verdict = KEYS[key]
        console.print(verdict)
        note = ""
        if verdict != "skip":
            console.print("note (Enter for none): ", end="")
            note = _read_note(stream)
            if not stream.isatty():  # a terminal echoed the Enter; a pipe did not
                console.print()
        row = label_row(item, verdict, note)
        append_label(labels_path, row)
        counts[verdict] += 1
        if on_label:
            on_label(row)
    counts["left"] = len([i for i in items if i.id not in labeled_ids(labels_path)])
    # Only when there are labels to measure on: after none, it named a file that was never written (an attack).
    measure = (f" Measure the judge on them: faithforge eval calibrate --labels {labels_path}"
               if Path(labels_path).is_file() else " No labels yet; rerun the same command to start.")
    console.print(f"labeled {counts['supported']} supported, {counts['unsupported']} unsupported, skipped "
                  f"{counts['skip']}; {counts['left']} left.{measure}")
    return counts


def label(
    outputs: Path = typer.Argument(..., help="An evaluation folder (reports/eval-RUN, it holds outputs.jsonl) or a "
                                   "JSONL file with source and summary per line."),
    labels: Path = typer.Option(Path("labels.jsonl"), "--labels", "-o",
                                help="The labels file to write (and resume); `eval calibrate --labels` reads it."),
    seed: int = typer.Option(0, help="Seed of the shuffled order (keep it to resume in the same order)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Stop after this many labels in this session."),
) -> None:
    """Label outputs as supported or unsupported by their source, in the terminal (resumable)."""
    if labels.is_dir():
        raise UserError(f"--labels {labels} is a folder; name a JSONL file, e.g. {labels / 'labels.jsonl'}")
    from faithforge.core.workspace import writable_parent

    writable_parent(labels.expanduser().resolve())  # before the first label is given, not after
    run_labeler(outputs, labels, seed=seed, stream=sys.stdin, limit=limit)
