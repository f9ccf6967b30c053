"""How far a judge can be trusted: its agreement with human labels, and the nli threshold.

Labels file: JSON Lines, one object per line with
    {"source": "...", "summary": "...", "label": "hallucinated"}
`label` is "faithful" or "hallucinated" (any case), or the integer 1 (hallucinated) / 0 (faithful).
"Hallucinated" is the positive class: precision is the share of flagged summaries that really are
hallucinated, recall the share of hallucinated summaries the judge flags. Blank lines are skipped.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from faithforge.data import vocabulary
from faithforge.core.errors import UserError
from faithforge.evaluation.verdict import Judge
from faithforge.core.workspace import atomic_write_jsonl, numbered_jsonl_rows

#: Label values; "0" and "1" as text too (a labels file converted from CSV), as the error's hint lists 0 | 1.
_LABELS = {"faithful": False, "hallucinated": True, "0": False, "1": True}


@dataclass(frozen=True)
class LabeledExample:
    source: str
    summary: str
    hallucinated: bool
    line: int
    dataset: str | None = None
    """Subset the row belongs to (e.g. `xsum`, `cnndm`): calibration reports each subset too."""
    split: str | None = None
    """`validation` or `test` when the labels fix the split themselves."""


_SPLITS = {"validation": "validation", "val": "validation", "dev": "validation", "test": "test"}


def _fail(path: Path, line: int, problem: str) -> UserError:
    return UserError(f"labels file {path}, line {line}: {problem}; each line must be a JSON object "
                     f'{{"source": "...", "summary": "...", "label": "faithful" | "hallucinated" | 0 | 1}}')


def _parse_label(value: Any, path: Path, line: int) -> bool:
    if isinstance(value, bool):
        raise _fail(path, line, f"label {value!r} is ambiguous (use 1 for hallucinated, 0 for faithful)")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LABELS:
        return _LABELS[value.strip().lower()]
    raise _fail(path, line, f"unknown label {value!r}")


def read_labels(path: str | Path) -> list[LabeledExample]:
    """Read and validate a labels file; any problem raises `UserError` naming the file and line."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"labels file {file} not found; pass a JSONL file of source, summary and label rows "
                        "(`faithforge label` writes one from a run's outputs)")
    examples: list[LabeledExample] = []
    for number, row in numbered_jsonl_rows(file, lambda line, problem: _fail(file, line, problem)):
        if not isinstance(row, dict):
            raise _fail(file, number, f"expected an object, got {type(row).__name__}")
        missing = [k for k in ("source", "summary", "label") if k not in row]
        if missing:
            raise _fail(file, number, f"missing field(s) {', '.join(missing)}")
        for key in ("source", "summary"):
            if not isinstance(row[key], str):
                raise _fail(file, number, f"{key} must be a string, got {type(row[key]).__name__}")
        empty = [key for key in ("source", "summary") if not row[key].strip()]
        if empty:  # a judge has nothing to compare: scoring it would add a meaningless verdict
            raise _fail(file, number, f"{' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty; fill "
                                      f"in the text or delete the row")
        dataset = row.get("dataset")
        if dataset is not None and not isinstance(dataset, str):
            raise _fail(file, number, f"dataset must be a string naming the subset, got {type(dataset).__name__}")
        split = row.get("split")
        if split is not None and (not isinstance(split, str) or split.strip().lower() not in _SPLITS):
            raise _fail(file, number, f"split {split!r} is neither validation nor test; use one of those or "
                                      f"leave the field out (rows are then split by source)")
        examples.append(LabeledExample(row["source"], row["summary"], _parse_label(row["label"], file, number),
                                       number, dataset=dataset or None,
                                       split=_SPLITS[split.strip().lower()] if split else None))
    positives = sum(e.hallucinated for e in examples)
    if not examples or positives in (0, len(examples)):
        raise UserError(f"labels file {file} needs at least one faithful and one hallucinated example "
                        f"(has {positives} hallucinated of {len(examples)})")
    return examples


@dataclass(frozen=True)
class CalibrationReport:
    """Agreement of a judge with labels; hallucinated is the positive class."""

    judge: str
    n: int
    unjudgeable: int
    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int
    precision: float | None
    recall: float | None
    specificity: float | None
    balanced_accuracy: float | None
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confusion_report(judge: str, labels: Sequence[bool], predicted: Sequence[bool | None],
                     threshold: float | None = None) -> CalibrationReport:
    """Precision, recall, specificity and balanced accuracy; None predictions are unjudgeable and skipped."""
    pairs = [(y, p) for y, p in zip(labels, predicted) if p is not None]
    tp = sum(y and p for y, p in pairs)
    fp = sum(p and not y for y, p in pairs)
    tn = sum(not y and not p for y, p in pairs)
    fn = sum(y and not p for y, p in pairs)

    def share(a: int, b: int) -> float | None:
        return a / (a + b) if a + b else None

    recall, specificity = share(tp, fn), share(tn, fp)
    balanced = (recall + specificity) / 2 if recall is not None and specificity is not None else None
    return CalibrationReport(judge=judge, n=len(labels), unjudgeable=len(labels) - len(pairs), true_positives=tp,
                             false_positives=fp, true_negatives=tn, false_negatives=fn, precision=share(tp, fp),
                             recall=recall, specificity=specificity, balanced_accuracy=balanced,
                             threshold=threshold)


def calibrate(judge: Judge, examples: Sequence[LabeledExample]) -> CalibrationReport:
    """Judge every labeled example and report agreement."""
    predicted: list[bool | None] = []
    for example in examples:
        verdict = judge.judge(example.source, example.summary)
        predicted.append(verdict.hallucinated if verdict.judgeable else None)
    return confusion_report(judge.name, [e.hallucinated for e in examples], predicted,
                            threshold=getattr(judge, "threshold", None))


def best_threshold(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """The threshold t maximizing balanced accuracy of "hallucinated when score < t".

    Candidates are midpoints between consecutive distinct scores plus one value beyond each end; ties
    go to the smallest threshold (flag the least).
    """
    distinct = sorted(set(scores))
    candidates = [max(0.0, distinct[0] - 1e-6)]
    candidates += [(a + b) / 2 for a, b in zip(distinct, distinct[1:])]
    candidates.append(min(1.0, distinct[-1] + 1e-6))
    best, best_value = candidates[0], -1.0
    for t in candidates:
        value = confusion_report("", labels, [s < t for s in scores]).balanced_accuracy or 0.0
        if value > best_value + 1e-12:
            best, best_value = t, value
    return best


def calibrate_nli(judge: Any, examples: Sequence[LabeledExample]) -> CalibrationReport:
    """Pick the nli judge's threshold maximizing balanced accuracy, set it on the judge, report at it.

    A summary's score is its weakest sentence's best-chunk support (the judge flags the summary exactly
    when that score is below the threshold)."""
    scores = [min((s for _, _, s in judge.sentence_scores(e.source, e.summary)), default=1.0) for e in examples]
    labels = [e.hallucinated for e in examples]
    judge.threshold = best_threshold(scores, labels)
    return confusion_report(judge.name, labels, [s < judge.threshold for s in scores], threshold=judge.threshold)


# A small crafted labeled set ---------------------------------------------------------------------
# From the synthetic tasks' one vocabulary (faithforge/data/vocabulary.py).
_NAMES = vocabulary.NAMES[:8]
_PLACES = vocabulary.PLACES[:8]
_ITEMS = vocabulary.ITEMS[:6]
_DAYS = vocabulary.DAYS
_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


def _crafted(rng: random.Random, hallucinated: bool) -> dict[str, Any]:
    name, other_name = rng.sample(_NAMES, 2)
    place, other_place = rng.sample(_PLACES, 2)
    item = rng.choice(_ITEMS)
    count, other_count = rng.sample(sorted(_WORDS), 2)
    day, other_day = rng.sample(_DAYS, 2)
    states_day = rng.random() < 0.5
    lead = f"On {day} , " if states_day else ""
    source = f"The street was quiet . {lead}{name} bought {count} {item} in {place} . Prices had gone up ."
    if hallucinated:
        pattern, summary = rng.choice([
            ("swapped-name", f"{other_name} bought {count} {item} in {place} ."),
            ("changed-number", f"{name} bought {other_count} {item} in {place} ."),
            ("changed-place", f"{name} bought {count} {item} in {other_place} ."),
            ("invented-day", f"{name} bought {count} {item} in {place} on {other_day} ."),
            ("invented-quote", f'{name} bought {count} {item} and said "{other_place} is best" .'),
            ("changed-verb", f"{name} sold {count} {item} in {place} ."),  # the grounding judge's blind spot
        ])
    else:
        pattern, summary = rng.choice([
            ("copy", f"{name} bought {count} {item} in {place} ."),
            ("number-spelled-out", f"{name} bought {_WORDS[count]} {item} in {place} ."),
            ("case-and-paraphrase", f"In {place.upper()} , {name.lower()} purchased {count} {item} ."),
            ("dropped-facts", f"{name} 's purchase : {count} {item} ."),
            ("with-day", f"{name} bought {count} {item} in {place}" + (f" on {day} ." if states_day else " .")),
        ])
    return {"source": source, "summary": summary, "label": "hallucinated" if hallucinated else "faithful",
            "pattern": pattern}


def make_calibration_set(path: str | Path, n: int = 40, seed: int = 0) -> Path:
    """Write `n` crafted labeled examples (half hallucinated) to a JSONL file; deterministic in `seed`.

    Each row also names its `pattern`. One hallucinated pattern (a changed verb) is outside what the
    grounding judge checks, so the set shows that judge's recall honestly rather than a perfect score.
    """
    if n < 2:
        raise UserError(f"a calibration set needs at least 2 examples (got {n})")
    rng = random.Random(f"faithforge-calibration:{seed}")
    rows = [_crafted(rng, hallucinated=i % 2 == 1) for i in range(n)]
    rng.shuffle(rows)
    return atomic_write_jsonl(path, rows)
