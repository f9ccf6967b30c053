"""bench/judges_real_text.py rule 9: the rank mean fits nothing but a threshold, the cross-validation only ever
scores a row with a fit that did not see it, and the per-dataset rows fit on that dataset's dev rows only."""

from __future__ import annotations

import sys

import pytest

from tests.fixtures.bench_scripts import load_bench


@pytest.fixture(scope="module")
def bench():
    module = load_bench("judges_real_text")
    yield module
    sys.modules.pop(module.__name__, None)


def row(bench, i, dataset, inconsistent, cond, pmi, novel):
    return bench.Row(f"{dataset}-{i}", dataset, "dev", inconsistent,
                     {"likelihood.min_sentence_cond": cond, "likelihood.min_sentence_pmi": pmi,
                      "grounding.novel_share": novel, "likelihood.cond": cond})


def test_rank_mean_is_the_mean_of_each_scores_rank_among_the_dev_rows(bench):
    dev = [row(bench, 0, "x", False, -1.0, 2.0, 0.0), row(bench, 1, "x", True, -3.0, 0.5, 0.4),
           row(bench, 2, "x", True, -2.0, 1.0, 0.2), row(bench, 3, "x", False, -0.5, 3.0, 0.1)]
    score, cut = bench.fit_rank_mean(dev)
    # row 1: lowest cond (rank 4/4 when negated), lowest pmi (4/4), highest novel share (4/4)
    assert score(dev[1]) == pytest.approx(1.0)
    # row 3: highest cond (1/4), highest pmi (1/4), novel 0.1 is second lowest (2/4)
    assert score(dev[3]) == pytest.approx((0.25 + 0.25 + 0.5) / 3)
    # a new row below every dev score ranks 0 on each
    assert score(row(bench, 9, "x", False, 0.0, 9.0, -1.0)) == 0.0
    assert all((score(r) >= cut) == r.inconsistent for r in dev)


def test_cross_validation_scores_each_row_with_a_fit_that_did_not_see_it(bench):
    seen = []

    def fit(train):
        ids = {r.id for r in train}
        seen.append(ids)
        return (lambda r: 1.0 if r.id in ids else 0.0), 0.5  # flags exactly the rows it was fitted on

    rows = [row(bench, i, "x", i % 2 == 0, -1.0, 1.0, 0.0) for i in range(10)]
    # every held-out fold's rows are predicted "consistent": recall 0, specificity 1
    assert bench.cross_validated_bacc(fit, rows, folds=5, repeats=2) == pytest.approx(0.5)
    assert len(seen) == 10 and all(len(ids) == 8 for ids in seen)


def test_per_dataset_rows_fit_on_their_own_datasets_dev_rows(bench):
    fitted_on = {}

    def fit(dev, group):
        fitted_on[group] = {r.dataset for r in dev}
        return (lambda r: 0.0), 1.0

    dev = [row(bench, i, ds, i % 2 == 0, -1.0, 1.0, 0.0) for ds in bench.DATASETS for i in range(4)]
    _, run = bench.per_dataset_method("m", fit)
    decided = run(dev, dev)
    assert fitted_on == {ds: {ds} for ds in bench.DATASETS}
    assert set(decided) == {r.id for r in dev}
