"""People's labels on a run's outputs: what to label, saving each label as it is made, and the judge's accuracy on them.

An evaluation writes `outputs.jsonl` beside its report: one row per (model, item) with the source, the output, the
judge's verdict and its flagged spans. `faithforge label` (the terminal) and the pipeline's `label` step (the
Prefect UI's pause form) both read it through `read_label_items`, hide which model wrote each output, show them in
an order shuffled by a seed, and write labels through `append_label` — one JSON line per label, flushed and fsynced,
so a labeler can stop anywhere and resume (`labeled_ids`). The label rows are what `faithforge eval calibrate
--labels` reads: `{"source", "summary", "label": "faithful" | "hallucinated"}` plus `id`, `note`, `spans`.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from faithforge.core.errors import UserError
from faithforge.core.workspace import read_keyed_jsonl

#: The file an evaluation writes its outputs to for labeling (beside report.md).
OUTPUTS_FILE = "outputs.jsonl"
#: A person's verdict on one output.
Verdict = Literal["supported", "unsupported", "skip"]
LABEL_OF = {"supported": "faithful", "unsupported": "hallucinated"}


@dataclass(frozen=True)
class LabelItem:
    """One output to label. `model` and `judge_hallucinated` are kept for scoring, never shown to the labeler."""

    id: str
    source: str
    summary: str
    spans: tuple[tuple[int, int], ...] = ()
    """The judge's flagged spans, (start, end) character offsets in `summary`."""
    model: str | None = None
    judge_hallucinated: bool | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def output_rows(items: Sequence[Any], reports: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of `outputs.jsonl`: every model's output of every evaluation item (`EvalItem`s and the stage's
    `ModelReport`s by label)."""
    sources = {item.id: item.source for item in items}
    rows = []
    for label, report in reports.items():
        for result in report.items:
            rows.append({"id": f"{label}:{result.id}", "item": result.id, "model": label,
                         "source": sources[result.id], "summary": result.summary,
                         "judge": report.judge, "judge_hallucinated": result.hallucinated if result.judgeable else None,
                         "spans": [list(f.span) for f in result.flags if f.span is not None]})
    return rows


def read_label_items(path: str | Path) -> list[LabelItem]:
    """Items from `outputs.jsonl` (or an evaluation folder holding one), or any JSONL with `source` and `summary`
    (`id` optional: the line number)."""
    path = Path(path)
    if path.is_dir():
        path = path / OUTPUTS_FILE
    if not path.is_file():
        raise UserError(f"{path} not found; pass an evaluation folder (reports/eval-RUN) or a JSONL file of "
                        "outputs with source and summary")
    return read_keyed_jsonl(path, _label_item, what="an output to label", needs="source and summary")


def _label_item(row: dict, line: int) -> LabelItem:
    return LabelItem(id=str(row.get("id", line)), source=str(row["source"]), summary=str(row["summary"]),
                     spans=tuple((int(s), int(e)) for s, e in row.get("spans") or ()),
                     model=row.get("model"), judge_hallucinated=row.get("judge_hallucinated"),
                     meta={k: v for k, v in row.items() if k in ("item", "judge")})


def shuffled(items: Sequence[LabelItem], seed: int) -> list[LabelItem]:
    """The labeling order: shuffled by `seed`, so neighbours do not reveal which model wrote an output."""
    order = list(items)
    random.Random(seed).shuffle(order)
    return order


def skipped_path(labels_path: str | Path) -> Path:
    """Where skips are kept: beside the labels file, so the labels file holds labels only (calibration reads it)."""
    path = Path(labels_path)
    return path.with_name(path.name + ".skipped")


def labeled_ids(labels_path: str | Path) -> set[str]:
    """Ids already labeled or skipped for `labels_path`: a resumed session starts after them."""
    done = set()
    for path in (Path(labels_path), skipped_path(labels_path)):
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                done.add(str(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path}:{number}: not a label row; fix or remove that line to resume") from None
    return done


def label_row(item: LabelItem, verdict: Verdict, note: str = "") -> dict[str, Any]:
    """A label row as `eval calibrate --labels` reads it (a skip carries no `label`; it is kept apart)."""
    row: dict[str, Any] = {"id": item.id, "source": item.source, "summary": item.summary}
    if verdict == "skip":
        row["skipped"] = True
    else:
        row["label"] = LABEL_OF[verdict]
    if note.strip():
        row["note"] = note.strip()
    if item.spans:
        row["judge_spans"] = [item.summary[s:e] for s, e in item.spans]
    return row


def append_label(labels_path: str | Path, row: dict[str, Any]) -> None:
    """Append one label row (a skip goes to `skipped_path`) and make it durable before the next item is shown."""
    path = skipped_path(labels_path) if row.get("skipped") else Path(labels_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def calibration_rows(labels_path: str | Path) -> list[dict[str, Any]]:
    """The labeled (not skipped) rows of a labels file."""
    path = Path(labels_path)
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r.get("label") in ("faithful", "hallucinated")]


@dataclass(frozen=True)
class LabelAgreement:
    """The judge's verdicts against people's labels on the same outputs."""

    n: int
    accuracy: float | None
    precision: float | None
    """Of the outputs the judge flagged, the share people labeled unsupported."""
    recall: float | None
    """Of the outputs people labeled unsupported, the share the judge flagged."""
    human_rate: float | None
    judge_rate: float | None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def agreement(judge_flags: Iterable[bool], human_flags: Iterable[bool]) -> LabelAgreement:
    """Accuracy, precision and recall of the judge's flags against people's (True = hallucinated)."""
    pairs = list(zip(judge_flags, human_flags, strict=True))
    n = len(pairs)
    tp = sum(j and h for j, h in pairs)
    flagged, positive = sum(j for j, _ in pairs), sum(h for _, h in pairs)

    def share(a: int, b: int) -> float | None:
        return a / b if b else None

    return LabelAgreement(n=n, accuracy=share(sum(j == h for j, h in pairs), n), precision=share(tp, flagged),
                          recall=share(tp, positive), human_rate=share(positive, n), judge_rate=share(flagged, n))


def judge_agreement(items: Sequence[LabelItem], labels_path: str | Path) -> LabelAgreement:
    """The judge's agreement with the labels in `labels_path` on the items it judged."""
    by_id = {item.id: item for item in items}
    judged = [(by_id[r["id"]].judge_hallucinated, r["label"] == "hallucinated") for r in calibration_rows(labels_path)
              if r.get("id") in by_id and by_id[r["id"]].judge_hallucinated is not None]
    return agreement([j for j, _ in judged], [h for _, h in judged])


__all__ = ["LABEL_OF", "OUTPUTS_FILE", "LabelAgreement", "LabelItem", "Verdict", "agreement", "append_label",
           "calibration_rows", "judge_agreement", "label_row", "labeled_ids", "output_rows", "read_label_items",
           "shuffled", "skipped_path"]
