"""Metric functions against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from faithforge.evaluation.metrics import (PairedCounts, content_retention, hallucination_rate, key_fact_recall,
                                           mcnemar_exact, newcombe_paired_interval, paired_bootstrap, paired_counts,
                                           per_category_rates, sentence_unsupported_rate, summary_length,
                                           wilson_interval)


def test_rates():
    assert hallucination_rate([True, False, False, True]) == 0.5
    assert math.isnan(hallucination_rate([]))
    assert sentence_unsupported_rate([1, 0, 2], [2, 1, 3]) == 0.5
    rates = per_category_rates([True, False, True, True], ["a", "a", "b", "b"])
    assert (rates["a"].n, rates["a"].hallucinated, rates["a"].rate) == (2, 1, 0.5)
    assert rates["b"].rate == 1.0


def test_wilson_interval_known_value():
    low, high = wilson_interval(5, 10, 0.95)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 20, 0.95)[0] == 0.0


def test_mcnemar_exact_hand_computed():
    # b=1, c=8: 2 * P(X <= 1 | n=9, p=1/2) = 2 * (1 + 9) / 512
    assert mcnemar_exact(1, 8) == pytest.approx(0.0390625, abs=1e-12)
    assert mcnemar_exact(8, 1) == mcnemar_exact(1, 8)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)


def test_paired_counts():
    counts = paired_counts([True, True, False, False, True], [False, True, True, False, False])
    assert (counts.fixed, counts.broken, counts.both, counts.neither) == (2, 1, 1, 1)


def _table(fixed: int, broken: int, both: int, neither: int) -> tuple[list[int], list[int]]:
    before = [1] * fixed + [0] * broken + [1] * both + [0] * neither
    after = [0] * fixed + [1] * broken + [1] * both + [0] * neither
    return before, after


def test_bootstrap_covers_true_difference_on_exact_table_and_is_seeded():
    before, after = _table(fixed=140, broken=20, both=60, neither=180)  # 0.5 → 0.2 exactly
    result = paired_bootstrap(before, after, samples=2000, confidence=0.95, seed=7)
    assert result.difference == pytest.approx(-0.3)
    assert result.ci_low < -0.3 < result.ci_high
    # the paired standard error is sqrt((b + c)/n² − d²/n) ≈ 0.0324: the 95% interval is about ±1.96 of it
    assert result.ci_high - result.ci_low == pytest.approx(2 * 1.96 * 0.0324, rel=0.15)
    assert paired_bootstrap(before, after, samples=2000, confidence=0.95, seed=7) == result
    narrower = paired_bootstrap(before, after, samples=2000, confidence=0.5, seed=7)
    assert narrower.ci_high - narrower.ci_low < result.ci_high - result.ci_low


def test_bootstrap_coverage_over_repeated_samples():
    """Drawn from a known population (0.5 → 0.2), the 90% interval should cover −0.3 about 90% of the time."""
    rng = np.random.default_rng(123)
    covered = 0
    trials = 200
    for trial in range(trials):
        before = rng.random(200) < 0.5
        after = np.where(before, rng.random(200) < 0.3, rng.random(200) < 0.1)
        result = paired_bootstrap(before, after, samples=400, confidence=0.9, seed=trial)
        covered += result.ci_low <= -0.3 <= result.ci_high
    assert 0.82 <= covered / trials <= 0.97


def test_bootstrap_of_identical_runs_is_a_point():
    result = paired_bootstrap([1, 0, 1], [1, 0, 1], samples=100, seed=0)
    assert (result.difference, result.ci_low, result.ci_high) == (0.0, 0.0, 0.0)


def test_newcombe_keeps_the_rates_uncertainty_where_no_item_changed():
    """0 of 10 hallucinated before and after: the bootstrap says [0, 0]; Newcombe's interval is Wilson's ±28 points."""
    low, high = newcombe_paired_interval(PairedCounts(fixed=0, broken=0, both=0, neither=10))
    wilson_high = wilson_interval(0, 10, 0.95)[1]
    assert low == pytest.approx(-wilson_high) and high == pytest.approx(wilson_high) and wilson_high > 0.27
    low, high = newcombe_paired_interval(PairedCounts(fixed=0, broken=0, both=4, neither=6))
    assert low < 0 < high and high - low < 2 * wilson_high + 0.5


def test_newcombe_covers_the_true_difference_about_as_often_as_it_says():
    rng = np.random.default_rng(0)
    trials, covered = 400, 0
    for _ in range(trials):  # P(fixed) = 0.15, P(broken) = 0.05: after − before = −0.10 on 60 items
        cells = rng.multinomial(60, [0.15, 0.05, 0.2, 0.6])
        low, high = newcombe_paired_interval(PairedCounts(*map(int, cells)))
        covered += low <= -0.10 <= high
    assert 0.92 <= covered / trials <= 0.99


def test_a_comparison_where_no_item_changed_has_an_interval_with_width():
    from faithforge.evaluation.compare import evaluate_pair
    from faithforge.evaluation.items import EvalItem

    items = [EvalItem(id=str(i), source=f"Anna{i} left Rome on Monday.") for i in range(10)]
    same = [f"Anna{i} left Rome." for i in range(10)]
    rate = evaluate_pair(items, same, same, bootstrap_samples=50).rate
    assert rate.difference == 0 and rate.ci_low < -0.2 and rate.ci_high > 0.2
    assert rate.method.startswith("Newcombe")


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([1, 0], [1], samples=10)
    with pytest.raises(ValueError, match="at least one item"):
        paired_bootstrap([], [], samples=10)


def test_key_fact_recall_uses_judge_normalization():
    facts = ["Alice", "3", "lamps", "Paris", "Monday"]
    assert key_fact_recall(facts, "ALICE bought three lamp in paris on Monday .") == 1.0
    assert key_fact_recall(facts, "Alice bought 3 lamps in Paris .") == 0.8
    assert key_fact_recall([], "anything") is None
    assert key_fact_recall(["3 lamps"], "she bought three Lamps") == 1.0
    assert key_fact_recall(["in Paris"], "at Paris") == 1.0  # stopwords ignored on both sides
    assert key_fact_recall(["3 lamps"], "3 red lamps") == 0.0  # contiguous, in order


def test_content_retention_and_length():
    source = "Alice bought 3 lamps in Paris ."
    assert content_retention(source, "Alice bought lamps .") == pytest.approx(3 / 5)
    assert summary_length("Alice bought 3 lamps .") == 4
