"""Pure metric functions: rates, recall, retention and the paired before/after statistics.

No judge and no I/O here: inputs are per-item booleans, counts and strings, outputs are numbers.
Rates are shares of *judged* items; callers drop unjudgeable items first (and report how many).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

from faithforge.evaluation.text_analysis import analyze, contains_sequence

_BOOTSTRAP_CHUNK = 256  # resamples drawn at once: bounds memory at chunk × items indices


def hallucination_rate(hallucinated: Sequence[bool]) -> float:
    """Share of summaries with at least one unsupported sentence (NaN for no items)."""
    return float(np.mean(np.asarray(hallucinated, dtype=float))) if len(hallucinated) else math.nan


def sentence_unsupported_rate(unsupported: Sequence[int], totals: Sequence[int]) -> float:
    """Unsupported sentences over all sentences, pooled across summaries (NaN when there are none)."""
    total = int(np.sum(totals))
    return float(np.sum(unsupported)) / total if total else math.nan


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval for a proportion; stays inside [0, 1] and is sensible at 0 and n."""
    if n == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


@dataclass(frozen=True)
class CategoryRate:
    n: int
    hallucinated: int
    rate: float


def per_category_rates(hallucinated: Sequence[bool], categories: Sequence[str]) -> dict[str, CategoryRate]:
    """Hallucination rate within each category, categories in sorted order."""
    if len(hallucinated) != len(categories):
        raise ValueError(f"{len(hallucinated)} verdicts but {len(categories)} categories")
    out: dict[str, CategoryRate] = {}
    for name in sorted(set(categories)):
        flags = [h for h, c in zip(hallucinated, categories) if c == name]
        out[name] = CategoryRate(n=len(flags), hallucinated=int(sum(flags)), rate=hallucination_rate(flags))
    return out


def key_fact_recall(key_facts: Sequence[str], summary: str) -> float | None:
    """Share of the source's key facts the summary keeps; None when the source lists no key facts."""
    if not key_facts:
        return None
    haystack = analyze(summary).content_keys()
    kept = sum(contains_sequence(haystack, analyze(f).content_keys()) for f in key_facts)
    return kept / len(key_facts)


def content_retention(source: str, summary: str) -> float:
    """Share of the source's distinct content words (numbers, dates, non-stopwords) the summary keeps."""
    wanted = set(analyze(source).content_keys())
    if not wanted:
        return math.nan
    return len(wanted & set(analyze(summary).content_keys())) / len(wanted)


def summary_length(summary: str) -> int:
    """Words and numbers in a summary (punctuation not counted)."""
    return sum(1 for u in analyze(summary).units if u.kind != "punct")


@dataclass(frozen=True)
class PairedCounts:
    """The 2×2 table of a paired before/after comparison of hallucination flags."""

    fixed: int  # hallucinated before, faithful after
    broken: int  # faithful before, hallucinated after
    both: int  # hallucinated in both
    neither: int  # faithful in both


def paired_counts(before: Sequence[bool], after: Sequence[bool]) -> PairedCounts:
    _same_length(before, after)
    b, a = np.asarray(before, dtype=bool), np.asarray(after, dtype=bool)
    return PairedCounts(fixed=int(np.sum(b & ~a)), broken=int(np.sum(~b & a)), both=int(np.sum(b & a)),
                        neither=int(np.sum(~b & ~a)))


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs against p = 1/2."""
    n = fixed + broken
    if n == 0:
        return 1.0
    k = min(fixed, broken)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def newcombe_paired_interval(counts: PairedCounts, confidence: float = 0.95) -> tuple[float, float]:
    """Interval for after − before of a paired rate from Wilson score intervals (Newcombe 1998, "Improved
    confidence intervals for the difference between binomial proportions based on paired data", method 10).

    What a report uses where the paired bootstrap degenerates: with no item changed every resample's difference
    is 0, so the bootstrap said [0.0%, 0.0%] on 10 held-out documents, where a 20-point change cannot be excluded
    (an attack, 2026-12-07). This one keeps the uncertainty of the two rates: on 10 items, 0 of 10 before and after,
    about ±28 points."""
    a, b, c, d = counts.both, counts.fixed, counts.broken, counts.neither  # hallucinated: before+after, before only…
    n = a + b + c + d
    if n == 0:
        return (math.nan, math.nan)
    before, after = (a + b) / n, (a + c) / n
    low_before, high_before = wilson_interval(a + b, n, confidence)
    low_after, high_after = wilson_interval(a + c, n, confidence)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(margins) if margins else 0.0
    below = math.sqrt(max(0.0, (after - low_after) ** 2 - 2 * phi * (after - low_after) * (high_before - before)
                          + (high_before - before) ** 2))
    above = math.sqrt(max(0.0, (high_after - after) ** 2 - 2 * phi * (high_after - after) * (before - low_before)
                          + (before - low_before) ** 2))
    difference = after - before
    return (max(-1.0, difference - below), min(1.0, difference + above))


@dataclass(frozen=True)
class PairedDifference:
    """after − before of a per-item mean, with a paired bootstrap percentile interval."""

    before: float
    after: float
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    samples: int
    seed: int
    n: int


def paired_bootstrap(before: Sequence[float], after: Sequence[float], *, samples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> PairedDifference:
    """Resample items (keeping each item's before and after together) and take percentiles of the
    difference of means. Deterministic in `seed`."""
    _same_length(before, after)
    if not len(before):
        raise ValueError("paired bootstrap needs at least one item")
    if samples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need samples >= 1 and 0 < confidence < 1 (got {samples}, {confidence})")
    b = np.asarray(before, dtype=float)
    a = np.asarray(after, dtype=float)
    delta = a - b
    n = len(delta)
    rng = np.random.default_rng(seed)
    diffs = np.empty(samples)
    for start in range(0, samples, _BOOTSTRAP_CHUNK):
        size = min(_BOOTSTRAP_CHUNK, samples - start)
        idx = rng.integers(0, n, size=(size, n))
        diffs[start:start + size] = delta[idx].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return PairedDifference(before=float(b.mean()), after=float(a.mean()), difference=float(delta.mean()),
                            ci_low=float(low), ci_high=float(high), confidence=confidence, samples=samples,
                            seed=seed, n=n)


def _same_length(before: Sequence[object], after: Sequence[object]) -> None:
    if len(before) != len(after):
        raise ValueError(f"paired inputs differ in length: {len(before)} before, {len(after)} after")
