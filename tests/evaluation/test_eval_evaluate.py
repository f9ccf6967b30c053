"""evaluate_single / evaluate_pair / compare_reports end to end with the grounding judge, and the overlap guard."""

from __future__ import annotations

import json

import pytest

from faithforge.core.errors import UserError
from faithforge.evaluation import (
    ComparisonReport,
    EvalItem,
    Verdict,
    check_disjoint,
    compare_reports,
    evaluate_pair,
    evaluate_single,
)
from faithforge.evaluation.verdict import unjudgeable

ITEMS = [
    EvalItem(id="a", source="On Monday , Ada bought 3 lamps in Oslo .",
             key_facts=["Ada", "3", "lamps", "Oslo", "Monday"], category="day-stated"),
    EvalItem(id="b", source="Bruno sold 5 maps in Lima .", key_facts=["Bruno", "5", "maps", "Lima"],
             category="day-omitted"),
    EvalItem(id="c", source="Chen painted 2 rugs in Riga .", key_facts=["Chen", "2", "rugs", "Riga"],
             category="day-omitted"),
    EvalItem(id="d", source="On Friday , Dara ordered 4 pens in Graz .", key_facts=[], category="day-stated"),
]
BEFORE = [
    "Ada bought 3 lamps in Oslo on Monday .",      # faithful
    "Bruno sold 5 maps in Lima on Sunday .",      # invented day
    "Chen painted 2 rugs in Riga on Monday .",     # invented day
    "Dara ordered 4 pens in Graz on Friday .",     # faithful
]
AFTER = [
    "Ada bought 3 lamps in Oslo .",                # faithful, dropped the day (recall 0.8)
    "Bruno sold five maps in Lima .",              # fixed
    "Chen painted 2 rugs in Riga on Monday .",     # still hallucinated
    "Dara ordered 4 pens in Graz on Tuesday .",    # newly broken
]


def test_evaluate_single_rates_recall_and_categories():
    report = evaluate_single(ITEMS, BEFORE, "grounding", label="before")
    assert (report.n_items, report.n_judged, report.hallucinated, report.rate) == (4, 4, 2, 0.5)
    assert report.sentence_rate == 0.5
    assert report.per_category["day-omitted"].rate == 1.0
    assert report.per_category["day-stated"].rate == 0.0
    assert report.recall == 1.0 and report.recall_items == 3  # item d lists no key facts
    assert report.flags_by_kind == {"date": 2}
    assert report.rate_ci[0] < 0.5 < report.rate_ci[1]
    assert report.items[1].flags[0].text == "Sunday"


def test_evaluate_pair_paired_statistics():
    report = evaluate_pair(ITEMS, BEFORE, AFTER, "grounding", confidence=0.9, bootstrap_samples=500, seed=3)
    assert (report.fixed, report.broken, report.both, report.neither) == (1, 1, 1, 1)
    assert report.mcnemar_p == 1.0
    assert report.rate.before == 0.5 and report.rate.after == 0.5 and report.rate.difference == 0.0
    assert report.recall.difference == pytest.approx((0.8 - 1.0) / 3)
    assert report.after.recall == pytest.approx(2.8 / 3)
    assert report.n_paired == 4 and report.judge == "grounding"
    again = evaluate_pair(ITEMS, BEFORE, AFTER, "grounding", confidence=0.9, bootstrap_samples=500, seed=3)
    assert again.rate == report.rate


def test_report_round_trips_through_json():
    report = evaluate_pair(ITEMS, BEFORE, AFTER, bootstrap_samples=100)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert ComparisonReport.from_dict(data) == report


def test_control_reuses_before_report():
    before = evaluate_single(ITEMS, BEFORE, label="before")
    control = evaluate_single(ITEMS, [i.source for i in ITEMS], label="control")
    comparison = compare_reports(before, control, bootstrap_samples=200)
    assert comparison.after.label == "control" and comparison.after.rate == 0.0
    assert comparison.fixed == 2 and comparison.broken == 0


class _FlakyJudge:
    """Cannot decide item b; otherwise everything is hallucinated."""

    name = "flaky"

    def judge(self, source: str, summary: str, *, truncated: bool = False) -> Verdict:
        if "Bruno" in source:
            return unjudgeable(self.name, "no valid JSON after 2 attempts")
        return Verdict(judge=self.name, hallucinated=True)


def test_unjudgeable_items_are_counted_separately_and_excluded():
    report = evaluate_pair(ITEMS, BEFORE, AFTER, _FlakyJudge(), bootstrap_samples=100)
    assert report.before.n_unjudgeable == 1 and report.before.n_judged == 3
    assert report.before.rate == 1.0
    assert report.n_paired == 3 and report.both == 3


def test_mismatched_inputs_are_rejected():
    with pytest.raises(ValueError, match="4 items but 3 after summaries"):
        evaluate_pair(ITEMS, BEFORE, AFTER[:3])
    before = evaluate_single(ITEMS, BEFORE)
    other = evaluate_single(ITEMS[:3], AFTER[:3])
    with pytest.raises(ValueError, match="not on the same items"):
        compare_reports(before, other)


def test_check_disjoint():
    check_disjoint(["a", "b"], ["c"])
    with pytest.raises(UserError) as err:
        check_disjoint([f"id{i}" for i in range(10)], [f"id{i}" for i in range(3, 20)], what="test split and pairs")
    message = str(err.value)
    assert message.startswith("test split and pairs overlap: 7 of 10 evaluation ids")
    assert "id3, id4, id5, id6, id7, … (+2 more)" in message
    assert "\n" not in message
