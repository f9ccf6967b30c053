"""Markdown, table rows, the PNG chart, storing evaluations and comparing two stored runs."""

from __future__ import annotations

import pytest

from faithforge.core.errors import UserError
from faithforge.evaluation import EvalItem, compare_reports, evaluate_single
from faithforge.evaluation.persist import compare_runs, load_evaluation, save_evaluation
from faithforge.evaluation.report import bar_chart, markdown_report, table_rows, with_section
from faithforge.core.store import Store

ITEMS = [EvalItem(id=f"i{k}", source=f"Alice bought {k} lamps in Paris .", key_facts=["Alice", str(k), "Paris"],
                  category="odd" if k % 2 else "even") for k in range(2, 8)]
BEFORE = [f"Alice bought {k} lamps in Paris on Monday ." for k in range(2, 8)]
AFTER = [f"Alice bought {k} lamps in Paris ." for k in range(2, 8)]
CONTROL = ["Alice bought lamps ."] * 6


@pytest.fixture(scope="module")
def reports():
    before = evaluate_single(ITEMS, BEFORE, label="before")
    after = evaluate_single(ITEMS, AFTER, label="after")
    control = evaluate_single(ITEMS, CONTROL, label="control")
    return (compare_reports(before, after, bootstrap_samples=200),
            compare_reports(before, control, bootstrap_samples=200))


def test_the_report_module_writes_every_part_of_report_md(reports):
    """The note on who chose the pairs sits under the judge-accuracy headline, before the title; a section added
    after the run (the labels) is appended once and replaced, not repeated, on a rerun."""
    comparison, control = reports
    text = markdown_report(comparison, control, note="Pairs chosen by `grounding`.")
    head, title = text.split("\n\n# Hallucination evaluation", 1)
    assert head.splitlines()[0].startswith("> ") and head.splitlines()[-1] == "> Pairs chosen by `grounding`."
    first = with_section(text, "## Judge accuracy on your labels", ["3 outputs labeled"])
    again = with_section(first, "## Judge accuracy on your labels", ["4 outputs labeled"])
    assert first.startswith(text.rstrip()) and first.endswith("\n\n## Judge accuracy on your labels\n\n3 outputs labeled\n")
    assert again == first.replace("3 outputs", "4 outputs")


def test_markdown_has_rates_ci_recall_judge_unit_and_flagged_spans(reports):
    comparison, control = reports
    text = markdown_report(comparison, control, worst_examples=2)
    assert "Judge: `grounding`" in text and "Unit: summary" in text
    assert "| before | 6 | 0 | 100.0% | [61.0%, 100.0%] | 100.0% | 100.0% |" in text
    assert "| control | 6 | 0 | 0.0% |" in text and "| 33.3% |" in text  # recall beside the rate
    assert "McNemar exact p = 0.0312 (fixed 6, newly hallucinated 0" in text
    assert "key-fact recall -66.7 pp" in text
    assert "## By category" in text
    assert "Alice bought 2 lamps in Paris on **Monday** ." in text
    assert text.count("- `i") == 2


def test_table_rows(reports):
    rows = table_rows(*reports)
    assert [r["model"] for r in rows] == ["before", "after", "control"]
    assert rows[2]["hallucination_rate"] == 0.0 and rows[2]["recall"] == pytest.approx(1 / 3)


def test_bar_chart_writes_png(reports, tmp_path):
    path = bar_chart(reports[0], tmp_path / "charts" / "rates.png", control=reports[1])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_store_and_compare_runs(reports, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    run = store.start_run("pipeline", {})
    first = save_evaluation(store, reports[0], uri="reports/a.json", run_id=run)
    second = save_evaluation(store, reports[1], uri="reports/b.json")
    assert load_evaluation(store, run) == (first, reports[0])  # a run id finds its evaluation
    result = compare_runs(store, first, second)
    rows = {r["metric"]: r for r in result["rows"]}
    assert rows["after rate"]["b_minus_a"] == 0.0
    assert rows["after recall"]["b_minus_a"] == pytest.approx(1 / 3 - 1)
    assert result["warnings"] == []
    other = store.add_artifact("adapter", "adapters/x", "h")
    with pytest.raises(UserError, match="is a adapter artifact, not an evaluation"):
        compare_runs(store, first, other)
    with pytest.raises(UserError, match="'nope' is unknown"):
        compare_runs(store, "nope", first)
    with pytest.raises(UserError, match=f"A and B are the same evaluation \\({first}, named '{run}' and '{first}'\\); "):
        compare_runs(store, run, first)  # a table of zeros before (an attack, 2026-12-07)


@pytest.mark.parametrize("rule", ["any", "all"])
def test_a_judge_list_report_states_the_rule_it_decided_by(rule):
    """The "Each judge" section said "when any judge says so" under every rule (a review, 2026-12-07): its
    sentence is now the rule's own, and the combined rate follows that rule."""
    from faithforge.core.judge_registry import JUDGE_RULES
    from faithforge.evaluation.judges import build_judges

    judge = build_judges(["grounding", "grounded-qa"], rule=rule)
    comparison = compare_reports(evaluate_single(ITEMS, BEFORE, judge, label="before"),
                                 evaluate_single(ITEMS, AFTER, judge, label="after"), bootstrap_samples=50)
    text = markdown_report(comparison)
    assert f"One summary is {JUDGE_RULES[rule]}; each judge's own rate" in text
    other = next(r for r in ("any", "all") if r != rule)
    assert JUDGE_RULES[other] not in text
