"""Two groups of `bench/real_model.py` runs that differ in one setting, compared over their draws (issue 28).

A rate after DPO is a draw of the preference pairs as much as of the test questions: one run's interval counts
only the questions. To ask whether a setting (e.g. `pairs.sampler`) moves DPO's outcome, run the same seed
several times per setting with only `pairs.sample_seed` changed, then compare the groups over the draws:
Welch's t (two-sided) and Mann–Whitney's U on each measure, with the mean difference and its Welch 95%
interval. Nothing is run here; it reads the JSON block of each `--out` file.

    python bench/compare_draws.py --seed 8 \
        --a engine bench/results/real_model-seed8-draw-engine-s{5,6,7,8,9}-*.md \
        --b llama.cpp bench/results/real_model-seed8-draw-auto-s{5,6,7,8,9}-*.md
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from real_model import read_out
from scipy import stats

MEASURES = {
    "after DPO (%)": lambda r: 100 * r["models"]["dpo"]["rate"],
    "SFT control (%)": lambda r: 100 * r["models"]["control"]["rate"],
    "DPO − control (points)": lambda r: 100 * r["dpo_minus_control"]["difference"],
    "answers right after DPO": lambda r: r["models"]["dpo"]["answer_accuracy"][0],
    "answers right, control": lambda r: r["models"]["control"]["answer_accuracy"][0],
}


def rows_of(paths: list[Path], seed: int) -> list[dict]:
    """Each file's row for `seed` (a file that holds none is an error: the groups must be the same seed)."""
    rows = []
    for path in paths:
        found = [r for r in read_out(path) if r["seed"] == seed]
        if not found:
            raise SystemExit(f"{path}: no row for seed {seed}")
        rows.append(found[0])
    return rows


def welch(a: list[float], b: list[float]) -> tuple[float, float, float, float]:
    """mean(a) − mean(b), its Welch 95% interval (low, high) and the two-sided p-value (scipy's Welch test)."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    if statistics.variance(a) == statistics.variance(b) == 0:  # no spread: scipy's t would be 0/0
        return diff, diff, diff, 1.0 if diff == 0 else 0.0
    test = stats.ttest_ind(a, b, equal_var=False)
    interval = test.confidence_interval(0.95)
    return diff, float(interval.low), float(interval.high), float(test.pvalue)


def compare(name_a: str, rows_a: list[dict], name_b: str, rows_b: list[dict]) -> str:
    lines = [f"| measure | {name_a} ({len(rows_a)} draws) | {name_b} ({len(rows_b)} draws) | "
             f"{name_a} − {name_b} [Welch 95% CI] | Welch p | Mann–Whitney p |", "|---|---|---|---|---|---|"]
    for measure, get in MEASURES.items():
        a, b = [get(r) for r in rows_a], [get(r) for r in rows_b]
        diff, low, high, p = welch(a, b)
        u = stats.mannwhitneyu(a, b, alternative="two-sided").pvalue
        lines.append(f"| {measure} | {', '.join(f'{x:.1f}' for x in a)}: mean {statistics.fmean(a):.1f} | "
                     f"{', '.join(f'{x:.1f}' for x in b)}: mean {statistics.fmean(b):.1f} | "
                     f"{diff:+.1f} [{low:+.1f}, {high:+.1f}] | {p:.3f} | {u:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, required=True, help="The run seed both groups share.")
    parser.add_argument("--a", nargs="+", required=True, metavar=("NAME", "OUT_MD"),
                        help="The first group's name, then its --out files (one draw each).")
    parser.add_argument("--b", nargs="+", required=True, metavar=("NAME", "OUT_MD"),
                        help="The second group's name, then its --out files.")
    args = parser.parse_args()
    groups = []
    for flag, given in (("--a", args.a), ("--b", args.b)):
        if len(given) < 3:
            parser.error(f"{flag} needs a name and at least two --out files (a variance needs two draws)")
        groups.append((given[0], rows_of([Path(p) for p in given[1:]], args.seed)))
    (name_a, rows_a), (name_b, rows_b) = groups
    print(compare(name_a, rows_a, name_b, rows_b))


if __name__ == "__main__":
    main()
