"""`faithforge eval …`: calibrate a judge against labels, compare two stored evaluations.

The lead's CLI registers `app` (e.g. `app.add_typer(cli_eval.app, name="eval")`) and turns
`UserError` into a one-line message and exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from faithforge.errors import UserError

app = typer.Typer(help="Judge calibration and comparison of stored evaluations.", no_args_is_help=True)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


@app.command()
def calibrate(
    labels: Path = typer.Option(..., "--labels", help="JSONL with source, summary, label (faithful|hallucinated|0|1)."),
    judge: str = typer.Option("grounding", "--judge", help="grounding or nli."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="nli: local sequence-classification folder."),
    supported_label: Optional[int] = typer.Option(None, "--supported-label",
                                                  help="nli: index of the 'supported' class (default: by name)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Precision, recall and balanced accuracy of a judge on labeled summaries (nli: best threshold too)."""
    from faithforge.evaluation.calibration import calibrate as run_calibration
    from faithforge.evaluation.calibration import calibrate_nli, read_labels
    from faithforge.evaluation.judges import get_judge

    if judge not in ("grounding", "nli"):
        raise UserError(f"--judge {judge!r} cannot be calibrated from the command line; use grounding or nli")
    if judge == "grounding" and (checkpoint is not None or supported_label is not None):
        raise UserError("--checkpoint and --supported-label apply to --judge nli only")
    if judge == "nli":  # build the judge first: a bad checkpoint fails before any labels are read
        options = {"checkpoint": str(checkpoint) if checkpoint else None}
        if supported_label is not None:
            options["supported_label"] = supported_label
        nli_judge = get_judge("nli", **options)
        report = calibrate_nli(nli_judge, read_labels(labels))
    else:
        report = run_calibration(get_judge("grounding"), read_labels(labels))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    typer.echo(f"judge {report.judge} on {report.n} labeled summaries ({report.unjudgeable} unjudgeable); "
               f"positive class = hallucinated")
    typer.echo(f"  precision {_pct(report.precision)}  recall {_pct(report.recall)}  "
               f"specificity {_pct(report.specificity)}  balanced accuracy {_pct(report.balanced_accuracy)}")
    typer.echo(f"  TP {report.true_positives}  FP {report.false_positives}  TN {report.true_negatives}  "
               f"FN {report.false_negatives}")
    if report.threshold is not None:
        typer.echo(f"  threshold {report.threshold:.4f} (maximizes balanced accuracy; set it in the nli judge)")


@app.command()
def compare(
    run_a: str = typer.Argument(..., help="Evaluation artifact id, or a run id (its newest evaluation)."),
    run_b: str = typer.Argument(..., help="Evaluation artifact id, or a run id."),
    workspace: Path = typer.Option(Path(".faithforge"), "--workspace", help="Workspace holding faithforge.db."),
    database_url: Optional[str] = typer.Option(None, "--database-url", help="Run store URL (default: the workspace's SQLite)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Compare two stored evaluations (B − A): rates, recall, intervals, and whether they are comparable."""
    from faithforge.evaluation.persist import compare_runs
    from faithforge.store import Store

    if database_url is None:
        db = workspace.expanduser().resolve() / "faithforge.db"
        if not db.is_file():
            raise UserError(f"no run store at {db}; pass --workspace DIR of a workspace that has run an evaluation")
        database_url = f"sqlite:///{db}"
    result = compare_runs(Store(database_url), run_a, run_b)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"A = {result['a']} (judge {result['judge_a']}, {result['n_a']} items)   "
               f"B = {result['b']} (judge {result['judge_b']}, {result['n_b']} items)")
    typer.echo(f"{'metric':<22}{'A':>10}{'B':>10}{'B - A':>10}")
    for row in result["rows"]:
        cells = ["n/a" if row[k] is None else f"{row[k]:.4f}" for k in ("a", "b", "b_minus_a")]
        typer.echo(f"{row['metric']:<22}{cells[0]:>10}{cells[1]:>10}{cells[2]:>10}")
    for warning in result["warnings"]:
        typer.echo(f"warning: {warning}")
