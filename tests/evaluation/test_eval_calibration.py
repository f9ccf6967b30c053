"""Calibration: labels-file validation, agreement metrics, the nli threshold search, the crafted set."""

from __future__ import annotations

import json

import pytest

from faithforge.core.errors import UserError
from faithforge.evaluation import GroundingJudge
from faithforge.evaluation.calibration import (
    best_threshold,
    calibrate,
    confusion_report,
    make_calibration_set,
    read_labels,
)


def write(path, *rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = {"source": "Alice bought 3 lamps .", "summary": "Alice bought 3 lamps .", "label": "faithful"}
BAD = {"source": "Alice bought 3 lamps .", "summary": "Bob bought 3 lamps .", "label": 1}


def test_labels_accept_names_and_integers(tmp_path):
    examples = read_labels(write(tmp_path / "l.jsonl", GOOD, "", {**BAD, "label": "HALLUCINATED"}, {**GOOD, "label": 0},
                                 {**BAD, "label": "1"}, {**GOOD, "label": " 0"}))  # "0"/"1": a file from CSV
    assert [e.hallucinated for e in examples] == [False, True, False, True, False]
    assert [e.line for e in examples] == [1, 3, 4, 5, 6]


@pytest.mark.parametrize("row, problem", [
    ({"source": "s", "label": "faithful"}, "line 2: missing field(s) summary"),
    ({**GOOD, "label": "maybe"}, "line 2: unknown label 'maybe'"),
    ({**GOOD, "label": 2}, "line 2: unknown label 2"),
    ({**GOOD, "label": True}, "line 2: label True is ambiguous"),
    ({**GOOD, "summary": 5}, "line 2: summary must be a string"),
    ("{not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected an object"),
])
def test_bad_rows_name_file_line_and_fix(tmp_path, row, problem):
    path = write(tmp_path / "labels.jsonl", GOOD, row)
    with pytest.raises(UserError) as err:
        read_labels(path)
    message = str(err.value)
    assert f"labels file {path}, {problem}" in message
    assert '"label": "faithful" | "hallucinated" | 0 | 1' in message and "\n" not in message


def test_missing_file_and_single_class(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_labels(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="at least one faithful and one hallucinated"):
        read_labels(write(tmp_path / "one.jsonl", GOOD, GOOD))


def test_confusion_report_hand_computed():
    report = confusion_report("x", [True, True, True, False, False], [True, True, False, True, None])
    assert (report.true_positives, report.false_negatives, report.false_positives, report.true_negatives) == (2, 1, 1, 0)
    assert report.unjudgeable == 1
    assert report.precision == pytest.approx(2 / 3) and report.recall == pytest.approx(2 / 3)
    assert report.specificity == 0.0 and report.balanced_accuracy == pytest.approx(1 / 3)


def test_best_threshold_maximizes_balanced_accuracy():
    scores = [0.1, 0.2, 0.35, 0.6, 0.7, 0.9]
    labels = [True, True, False, True, False, False]  # hallucinated when score < t
    t = best_threshold(scores, labels)
    # 0.275 (recall 2/3, specificity 1) ties 0.65 (recall 1, specificity 2/3) at 5/6: the smaller wins
    assert t == pytest.approx(0.275)
    # check against brute force over a fine grid
    grid = [i / 1000 for i in range(1001)]
    best = max(confusion_report("", labels, [s < g for s in scores]).balanced_accuracy for g in grid)
    assert confusion_report("", labels, [s < t for s in scores]).balanced_accuracy == pytest.approx(best)


def test_crafted_set_is_deterministic_and_shows_the_grounding_blind_spot(tmp_path):
    path = make_calibration_set(tmp_path / "cal.jsonl", n=40, seed=0)
    assert path.read_bytes() == make_calibration_set(tmp_path / "again.jsonl", n=40, seed=0).read_bytes()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 40 and sum(r["label"] == "hallucinated" for r in rows) == 20
    report = calibrate(GroundingJudge(), read_labels(path))
    assert report.precision == 1.0 and report.specificity == 1.0
    missed = [r for r in rows if r["label"] == "hallucinated" and r["pattern"] == "changed-verb"]
    assert report.false_negatives == len(missed) > 0
    assert report.threshold is None
