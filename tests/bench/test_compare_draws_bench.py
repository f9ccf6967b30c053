"""bench/compare_draws.py: two groups of real_model runs compared over their draws; the Welch figures agree
with scipy's own test and with an interval worked out by hand, and a file without the seed is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats

from tests.fixtures.bench_scripts import load_bench

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # it reads --out files with real_model.read_out, as when run from bench/
    return load_bench("compare_draws")


def _out(path: Path, seed: int, dpo: float, control: float, right: int) -> Path:
    row = {"seed": seed, "models": {"dpo": {"rate": dpo, "answer_accuracy": [right, 59]},
                                    "control": {"rate": control, "answer_accuracy": [right - 1, 59]}},
           "dpo_minus_control": {"difference": dpo - control}}
    path.write_text("| table |\n\n```json\n" + json.dumps([row]) + "\n```\n")
    return path


def test_welch_matches_scipy_and_hand(monkeypatch):
    bench = _bench(monkeypatch)
    a, b = [63.5, 44.5, 49.5, 57.0, 57.5], [44.5, 42.5, 30.5, 49.0, 49.0]
    diff, low, high, p = bench.welch(a, b)
    assert diff == pytest.approx(11.3)
    assert p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    # by hand: sample variances 55.3 and 57.675, se² = (55.3 + 57.675) / 5;
    # Welch–Satterthwaite dof ≈ 8.0, t(0.975, 8) ≈ 2.306
    se = ((55.3 + 57.675) / 5) ** 0.5
    assert (high - low) / 2 == pytest.approx(2.306 * se, rel=1e-3)


def test_groups_read_from_out_files_and_a_missing_seed_is_refused(monkeypatch, tmp_path):
    bench = _bench(monkeypatch)
    first = [_out(tmp_path / f"a{i}.md", 8, r, 0.6, 40) for i, r in enumerate((0.55, 0.50, 0.60))]
    second = [_out(tmp_path / f"b{i}.md", 8, r, 0.5, 35) for i, r in enumerate((0.40, 0.45, 0.44))]
    table = bench.compare("engine", bench.rows_of(first, 8), "llama.cpp", bench.rows_of(second, 8))
    line = next(row for row in table.splitlines() if row.startswith("| after DPO"))
    assert "55.0, 50.0, 60.0: mean 55.0" in line and "mean 43.0" in line and "+12.0 [" in line
    with pytest.raises(SystemExit, match="no row for seed 7"):
        bench.rows_of(first, 7)
