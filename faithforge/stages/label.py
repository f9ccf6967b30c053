"""Stage: people's labels on the run's outputs — what to ask, the form's text, and what their answers change.

Plain Python, no Prefect: `flows/pipeline.py` (its `label_step`) pauses the run with the form this module describes and hands the
answers back here. Outputs are drawn from every evaluated model's `outputs.jsonl`, shuffled by the run's seed,
with the model hidden. Answers are saved in the evaluation's folder (`labels.jsonl`, what `faithforge eval
calibrate --labels` reads); the judge is re-calibrated on them (stored in the workspace's `calibrations/`, so later
reports carry it) and `report.md` gains "Judge accuracy on your labels". No answers (nobody came before the
timeout) leave the report saying "unlabeled".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from faithforge.core.errors import UserError
from faithforge.core.workspace import atomic_write_text
from faithforge.evaluation.labeling import (LabelItem, append_label, judge_agreement, label_row, read_label_items,
                                            shuffled)
from faithforge.stages.context import StageContext, reads
from faithforge.stages.outputs import EvaluationOutput, StageOutput

#: The form's choices, in the order the UI lists them.
CHOICES = ("supported", "unsupported", "skip")
#: Characters of the source each form item shows.
EXCERPT_CHARS = 600
LABELS_FILE = "labels.jsonl"
SECTION = "## Judge accuracy on your labels"


class LabelOutput(StageOutput):
    """What the label step asked, what came back, and the judge's agreement with it."""

    status: str
    """`labeled`, `partly labeled` (some forms timed out) or `unlabeled` (nobody answered before the timeout)."""
    asked: int = 0
    labeled: int = 0
    skipped: int = 0
    labels_path: Optional[str] = None
    agreement: Optional[dict[str, Any]] = None
    """The judge against the labels: n, accuracy, precision, recall, human_rate, judge_rate."""
    calibration: Optional[str] = None
    """The re-calibration's summary line, or why there is none."""


@reads("label", "seed")
def label_batches(ctx: StageContext, evaluation: EvaluationOutput) -> list[list[LabelItem]]:
    """The outputs to ask about, shuffled by the run's seed, `label.items` of them in forms of `label.batch_size`."""
    cfg = ctx.config.label
    items = shuffled(read_label_items(evaluation.path), ctx.config.seed)[:cfg.items]
    return [items[i:i + cfg.batch_size] for i in range(0, len(items), cfg.batch_size)]


def _excerpt(item: LabelItem) -> str:
    text = " ".join(item.source.split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS].rsplit(" ", 1)[0] + " …"


def _flagged(item: LabelItem) -> str:
    spans = [item.summary[a:b] for a, b in item.spans if 0 <= a < b <= len(item.summary)]
    return ", ".join(f"“{s}”" for s in spans) if spans else "none"


def form_description(batch: Sequence[LabelItem], number: int, batches: int) -> str:
    """The markdown above the form: each output with its source excerpt and the judge's flagged spans."""
    lines = [f"### Label outputs ({number} of {batches})", "",
             "For each output: does the source support **everything** it says? Choose *unsupported* if any "
             "statement is not in the source (an invented name, number, date, event or relation). Which model "
             "wrote an output is not shown.", ""]
    for i, item in enumerate(batch, 1):
        lines += [f"**Output {i}**", "", f"> Source: {_excerpt(item)}", "", f"Output: {item.summary or '(empty)'}",
                  "", f"Judge's flagged spans: {_flagged(item)}", "", "---", ""]
    return "\n".join(lines)


def form_fields(batch: Sequence[LabelItem]) -> dict[str, tuple[str, str]]:
    """Field name → (title, description) for each output of a form (`output_1`, …)."""
    return {f"output_{i}": (f"Output {i}", f"{item.summary[:300] or '(empty)'} — flagged: {_flagged(item)}")
            for i, item in enumerate(batch, 1)}


def answers_from_form(batch: Sequence[LabelItem], values: dict[str, Any]) -> list[tuple[LabelItem, str]]:
    """(item, choice) for each output of a submitted form; an unknown choice is an error."""
    out = []
    for i, item in enumerate(batch, 1):
        choice = str(values.get(f"output_{i}", "skip"))
        if choice not in CHOICES:
            raise UserError(f"form answer {choice!r} for output {i} is not one of {', '.join(CHOICES)}")
        out.append((item, choice))
    return out


@reads("evaluate", "seed")
def record_labels(ctx: StageContext, evaluation: EvaluationOutput, answers: Sequence[tuple[LabelItem, str]],
                  *, asked: int, timed_out: int, note: str = "", base_model: str | None = None) -> LabelOutput:
    """Save the answers, measure and re-calibrate the judge on them, and add the section to report.md.
    `base_model`: the run's starting model folder, which a judge that reads it is built with (as in evaluate)."""
    folder = Path(evaluation.path)
    labels = folder / LABELS_FILE
    for item, choice in answers:
        append_label(labels, label_row(item, choice, note))  # type: ignore[arg-type]
    labeled = sum(choice != "skip" for _, choice in answers)
    status = "unlabeled" if not answers else "partly labeled" if timed_out else "labeled"
    agreement = judge_agreement(read_label_items(folder), labels) if labeled else None
    calibration = _recalibrate(ctx, labels, base_model) if labeled else None
    out = LabelOutput(path=str(labels if labeled else folder), status=status, asked=asked, labeled=labeled,
                      skipped=len(answers) - labeled, labels_path=str(labels) if labeled else None,
                      agreement=agreement.to_dict() if agreement else None, calibration=calibration)
    _add_to_report(Path(evaluation.markdown_path), out, ctx.config.evaluate.judge, timed_out)
    return out


def _recalibrate(ctx: StageContext, labels: Path, base_model: str | None) -> str:
    """`faithforge eval calibrate --labels` on these labels with the run's judge (built as the evaluate stage
    builds it), stored for later reports."""
    from faithforge.evaluation import get_judge
    from faithforge.evaluation.calibration import read_labels
    from faithforge.evaluation.heldout import calibrate_heldout, save_calibration
    from faithforge.evaluation.judge_options import judge_options

    cfg = ctx.config.evaluate
    try:
        options = judge_options(cfg, base_model=base_model, cache_root=str(ctx.workspace.dir("cache")))
        result = calibrate_heldout(get_judge(cfg.judge, **options), read_labels(labels),
                                   labels_path=labels, holdout=0.5, seed=ctx.config.seed)
    except (UserError, ValueError) as exc:  # e.g. too few labels, or one class only, to split
        return f"not re-calibrated: {str(exc).splitlines()[0][:200]}"
    save_calibration(ctx.workspace.calibrations, result)
    return result.summary_line()


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _add_to_report(report: Path, out: LabelOutput, judge: Any, timed_out: int) -> None:
    from faithforge.evaluation.report import with_section

    lines: list[str] = []
    if out.status == "unlabeled":
        lines.append(f"Unlabeled: the run asked about {out.asked} outputs in the Prefect UI and nobody answered before "
                     "the timeout (`label.timeout_s`). Label them later with `faithforge label "
                     f"{Path(report).parent}`.")
    else:
        a = out.agreement or {}
        lines += [f"{out.labeled} outputs labeled by you ({out.skipped} skipped"
                  + (f", {timed_out} form(s) timed out" if timed_out else "") + f"), judge `{judge}`:", "",
                  "| accuracy | precision | recall | rate by your labels | rate by the judge | n |",
                  "|---:|---:|---:|---:|---:|---:|",
                  f"| {_pct(a.get('accuracy'))} | {_pct(a.get('precision'))} | {_pct(a.get('recall'))} | "
                  f"{_pct(a.get('human_rate'))} | {_pct(a.get('judge_rate'))} | {a.get('n', 0)} |", "",
                  f"Labels: `{out.labels_path}`. Re-calibration: {out.calibration}."]
    text = report.read_text(encoding="utf-8") if report.is_file() else ""
    atomic_write_text(report, with_section(text, SECTION, lines))  # a rerun replaces its own section
