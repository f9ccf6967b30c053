"""Judge summaries and turn verdicts into the reports the pipeline stores: one model, or a pair."""

from __future__ import annotations

from collections import Counter
from statistics import fmean
from typing import Sequence

from pathlib import Path

from faithforge.evaluation.combined import CombinedJudge
from faithforge.evaluation.heldout import calibrations_for, judge_checkpoint
from faithforge.evaluation.items import EvalItem
from faithforge.evaluation.judges import resolve_judge
from faithforge.evaluation.metrics import (
    content_retention,
    hallucination_rate,
    key_fact_recall,
    mcnemar_exact,
    newcombe_paired_interval,
    paired_bootstrap,
    paired_counts,
    per_category_rates,
    sentence_unsupported_rate,
    summary_length,
    wilson_interval,
)
from faithforge.evaluation.results import (
    CategoryResult,
    ComparisonReport,
    Difference,
    FlagRecord,
    ItemResult,
    JudgeRate,
    ModelReport,
    clean,
)
from faithforge.evaluation.verdict import Judge


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def _check_lengths(items: Sequence[EvalItem], summaries: Sequence[str], label: str) -> None:
    if len(items) != len(summaries):
        raise ValueError(f"{len(items)} items but {len(summaries)} {label} summaries")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise ValueError(f"duplicate item ids: {', '.join(duplicates[:5])}")


def evaluate_single(items: Sequence[EvalItem], summaries: Sequence[str],
                    judge: Judge | str | Sequence[str] = "grounding", *, label: str = "model",
                    confidence: float = 0.95, truncated: Sequence[bool] | None = None,
                    calibration_dir: str | Path | None = None,
                    results: Sequence[ItemResult] | None = None) -> ModelReport:
    """Judge each summary against its item's source and aggregate rates, intervals and recall.

    `results`: the items already judged elsewhere (`judge_item` on each, e.g. fanned out over Prefect workers), in
    item order; the report is then built from them exactly as from a serial pass.

    `truncated[i]`: summary i was cut off by the token limit (its last word is not judged; counted apart).
    `calibration_dir`: where stored judge calibrations live; the report carries the judge's (or says none).
    """
    _check_lengths(items, summaries, label)
    if truncated is not None and len(truncated) != len(summaries):
        raise ValueError(f"{len(summaries)} summaries but {len(truncated)} truncation flags")
    judge = resolve_judge(judge)
    cut = list(truncated) if truncated is not None else [False] * len(summaries)
    if results is None:
        results = [judge_item(judge, item, summary, was_cut) for item, summary, was_cut in zip(items, summaries, cut)]
    elif [r.id for r in results] != [item.id for item in items]:
        raise ValueError(f"{len(results)} judged results do not match the {len(items)} items in order")
    report = _aggregate(list(results), label=label, judge=judge.name, confidence=confidence,
                        lengths=[summary_length(s) for s in summaries])
    components = judge.judges if isinstance(judge, CombinedJudge) else [judge]
    limits = {j.name: j.limits for j in components if isinstance(getattr(j, "limits", None), str)}
    return report.model_copy(update={"calibrations": calibrations_for(calibration_dir, judge),
                                     "judge_limits": limits, "judge_checkpoint": judge_checkpoint(judge)})


def judge_item(judge: Judge, item: EvalItem, summary: str, was_cut: bool = False) -> ItemResult:
    """One summary judged against its item's source, with its recall, retention and judge-free measures: what
    every item of a report holds. Depends on nothing but its arguments, so items can be judged anywhere."""
    verdict = judge.judge(item.source, summary, truncated=was_cut)
    retention = content_retention(item.source, summary)
    return ItemResult(
        id=item.id, category=item.category, summary=summary, hallucinated=verdict.hallucinated,
        judgeable=verdict.judgeable, sentences=len(verdict.sentences),
        unsupported_sentences=verdict.unsupported_sentences,
        recall=key_fact_recall(item.key_facts, summary), retention=clean(retention),
        flags=[FlagRecord(**f.to_dict()) for f in verdict.flags], error=verdict.error, truncated=was_cut,
        judges={p.judge: (p.hallucinated if p.judgeable else None) for p in verdict.parts},
        **_said(item, summary))


def _said(item: EvalItem, summary: str) -> dict:
    """Length, coverage, refusal and evasion of one summary: judge-free (`faithforge.evaluation.coverage`)."""
    from faithforge.evaluation.coverage import measure

    m = measure(item.source, summary, key_facts=item.key_facts, reference=item.reference)
    return {"length": m.length, "coverage": m.coverage, "refusal": m.refusal, "evasive": m.evasive}


def _judge_rates(results: list[ItemResult], confidence: float) -> dict[str, JudgeRate]:
    names = list(dict.fromkeys(name for r in results for name in r.judges))
    rates = {}
    for name in names:
        decided = [r.judges[name] for r in results if r.judges.get(name) is not None]
        k = sum(bool(d) for d in decided)
        low, high = wilson_interval(k, len(decided), confidence)
        rates[name] = JudgeRate(n_judged=len(decided), hallucinated=k,
                                rate=clean(hallucination_rate([bool(d) for d in decided])),
                                rate_ci=(clean(low), clean(high)))
    return rates


def _aggregate(results: list[ItemResult], *, label: str, judge: str, confidence: float,
               lengths: list[int]) -> ModelReport:
    judged = [r for r in results if r.judgeable]
    flags = [r.hallucinated for r in judged]
    k = sum(flags)
    low, high = wilson_interval(k, len(judged), confidence)
    per_category = {
        name: CategoryResult(n=rate.n, hallucinated=rate.hallucinated, rate=clean(rate.rate),
                             recall=_mean([r.recall for r in judged if r.category == name]))
        for name, rate in per_category_rates(flags, [r.category for r in judged]).items()}
    kinds = Counter(flag.kind for r in judged for flag in r.flags)
    recalls = [r.recall for r in results if r.recall is not None]
    return ModelReport(
        label=label, judge=judge, n_items=len(results), n_judged=len(judged),
        n_unjudgeable=len(results) - len(judged), hallucinated=k, rate=clean(hallucination_rate(flags)),
        rate_ci=(clean(low), clean(high)), confidence=confidence,
        sentences=sum(r.sentences for r in judged), unsupported_sentences=sum(r.unsupported_sentences for r in judged),
        sentence_rate=clean(sentence_unsupported_rate([r.unsupported_sentences for r in judged],
                                                      [r.sentences for r in judged])),
        per_category=per_category, flags_by_kind=dict(sorted(kinds.items())),
        recall=_mean(recalls), recall_items=len(recalls), retention=_mean([r.retention for r in results]),
        mean_summary_length=fmean(lengths) if lengths else None, items=results,
        n_truncated=sum(r.truncated for r in results), judge_rates=_judge_rates(results, confidence),
        coverage=_mean([r.coverage for r in results]), refusals=sum(r.refusal for r in results),
        evasive=sum(r.evasive for r in results))


def compare_reports(before: ModelReport, after: ModelReport, *, confidence: float = 0.95,
                    bootstrap_samples: int = 2000, seed: int = 0) -> ComparisonReport:
    """Paired statistics of two reports on the same items (use it to compare a control with `before`
    without judging `before` twice)."""
    if [r.id for r in before.items] != [r.id for r in after.items]:
        raise ValueError(f"reports {before.label!r} and {after.label!r} are not on the same items in the same order")
    if before.judge != after.judge:
        raise ValueError(f"reports were judged by different judges ({before.judge!r} vs {after.judge!r})")
    pairs = [(b, a) for b, a in zip(before.items, after.items) if b.judgeable and a.judgeable]
    counts = paired_counts([b.hallucinated for b, _ in pairs], [a.hallucinated for _, a in pairs])
    options = dict(samples=bootstrap_samples, confidence=confidence, seed=seed)

    def difference(field: str, over=pairs) -> Difference | None:
        values = [(getattr(b, field), getattr(a, field)) for b, a in over]
        values = [(float(x), float(y)) for x, y in values if x is not None and y is not None]
        if not values:
            return None
        d = paired_bootstrap([x for x, _ in values], [y for _, y in values], **options)
        if field == "hallucinated" and d.ci_low == d.ci_high:  # no item changed: the bootstrap has no spread
            low, high = newcombe_paired_interval(counts, confidence)  # the table of these same pairs
            return Difference(before=d.before, after=d.after, difference=d.difference, ci_low=low, ci_high=high,
                              n=d.n, method="Newcombe score, no item changed")
        return Difference(before=d.before, after=d.after, difference=d.difference, ci_low=d.ci_low,
                          ci_high=d.ci_high, n=d.n)

    def _all_items(field: str) -> Difference | None:  # judge-free measures: every item, judgeable or not
        return difference(field, over=list(zip(before.items, after.items)))

    empty = Difference(before=None, after=None, difference=None, ci_low=None, ci_high=None, n=0)
    return ComparisonReport(
        judge=before.judge, before=before, after=after, confidence=confidence, bootstrap_samples=bootstrap_samples,
        seed=seed, n_paired=len(pairs), rate=difference("hallucinated") or empty, recall=difference("recall"),
        retention=difference("retention"), fixed=counts.fixed, broken=counts.broken, both=counts.both,
        neither=counts.neither, mcnemar_p=mcnemar_exact(counts.fixed, counts.broken),
        coverage=_all_items("coverage"), length=_all_items("length"))


def evaluate_pair(items: Sequence[EvalItem], before: Sequence[str], after: Sequence[str],
                  judge: Judge | str | Sequence[str] = "grounding", *, confidence: float = 0.95,
                  bootstrap_samples: int = 2000, seed: int = 0, labels: tuple[str, str] = ("before", "after"),
                  calibration_dir: str | Path | None = None) -> ComparisonReport:
    """Judge both sets of summaries of the same items and compare them, paired by item."""
    judge = resolve_judge(judge)
    first = evaluate_single(items, before, judge, label=labels[0], confidence=confidence,
                            calibration_dir=calibration_dir)
    second = evaluate_single(items, after, judge, label=labels[1], confidence=confidence,
                             calibration_dir=calibration_dir)
    return compare_reports(first, second, confidence=confidence, bootstrap_samples=bootstrap_samples, seed=seed)
