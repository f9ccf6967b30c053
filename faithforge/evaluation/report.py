"""Human-readable outputs of an evaluation: markdown, table rows, and a bar chart with CI whiskers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faithforge.core.judge_registry import JUDGE_RULES
from faithforge.evaluation.combined import rule_of_name
from faithforge.evaluation.results import ComparisonReport, ItemResult, ModelReport
from faithforge.evaluation.wording import SUMMARIES, TaskWords


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _signed_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f} pp"


def _ci(low: float | None, high: float | None) -> str:
    return "n/a" if low is None or high is None else f"[{_pct(low)}, {_pct(high)}]"


def _p(value: float) -> str:
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def _models(comparison: ComparisonReport, control: ComparisonReport | None) -> list[ModelReport]:
    return [comparison.before, comparison.after] + ([control.after] if control else [])


def table_rows(comparison: ComparisonReport, control: ComparisonReport | None = None) -> list[dict[str, Any]]:
    """One row per model (for a Prefect table artifact): rate with its interval, recall beside it."""
    rows = []
    for model in _models(comparison, control):
        rows.append({
            "model": model.label, "judge": model.judge, "judged": model.n_judged,
            "unjudgeable": model.n_unjudgeable, "hallucination_rate": model.rate,
            "rate_ci_low": model.rate_ci[0], "rate_ci_high": model.rate_ci[1],
            # task-neutral names: the column is answer recall on a question-answering run, key-fact recall on
            # summaries (the report beside the table names it in the task's words)
            "sentence_rate": model.sentence_rate, "recall": model.recall,
            "content_retention": model.retention, "mean_length_words": model.mean_summary_length,
            "truncated": model.n_truncated, "coverage": model.coverage, "refusals": model.refusals,
            "evasive": model.evasive,
            **{f"rate_{name}": rate.rate for name, rate in model.judge_rates.items()},
            "judge_balanced_accuracy": ((model.calibrations.get(model.judge) or {}).get("test") or {})
            .get("balanced_accuracy"),
        })
    return rows


def _comparison_lines(name: str, c: ComparisonReport, words: TaskWords = SUMMARIES) -> list[str]:
    lines = [f"- **{name}** ({c.after.label} − {c.before.label}, {c.n_paired} paired {words.units}): rate "
             f"{_signed_pct(c.rate.difference)}, {int(100 * c.confidence)}% paired bootstrap CI "
             f"[{_signed_pct(c.rate.ci_low)}, {_signed_pct(c.rate.ci_high)}] "
             f"({c.bootstrap_samples} resamples, seed {c.seed}); McNemar exact p = {_p(c.mcnemar_p)} "
             f"(fixed {c.fixed}, newly hallucinated {c.broken}, both {c.both}, neither {c.neither})"]
    if c.recall is not None:
        lines.append(f"  - {words.recall} {_signed_pct(c.recall.difference)}, CI "
                     f"[{_signed_pct(c.recall.ci_low)}, {_signed_pct(c.recall.ci_high)}] on {c.recall.n} items")
    if c.retention is not None:
        lines.append(f"  - content retention {_signed_pct(c.retention.difference)}, CI "
                     f"[{_signed_pct(c.retention.ci_low)}, {_signed_pct(c.retention.ci_high)}]")
    return lines


def said_lines(comparison: ComparisonReport, control: ComparisonReport | None = None,
               words: TaskWords = SUMMARIES) -> list[str]:
    """"Length and coverage beside the rate": so that "hallucinates less" is never "says less" unseen."""
    lines = ["", "## Length and coverage beside the rate", "",
             f"Judge-free: coverage is the share of the key content (the reference {words.unit}, else the source's "
             f"first three sentences) whose content words the {words.unit} carries; a refusal declines the task; an "
             "evasive answer carries almost nothing of the source, or restates the question without its answer.", "",
             "| model | mean length (words) | coverage | refusals | evasive |", "|---|---:|---:|---:|---:|"]
    for m in _models(comparison, control):
        length = "n/a" if m.mean_summary_length is None else f"{m.mean_summary_length:.1f}"
        lines.append(f"| {m.label} | {length} | {_pct(m.coverage)} | {m.refusals} of {m.n_items} | "
                     f"{m.evasive} of {m.n_items} |")
    for name, c in (("after vs before", comparison), ("control vs before", control)):
        if c is None:
            continue
        parts = []
        if c.length is not None and c.length.difference is not None:
            parts.append(f"length {c.length.difference:+.1f} words [{c.length.ci_low:+.1f}, {c.length.ci_high:+.1f}]")
        if c.coverage is not None:
            parts.append(f"coverage {_signed_pct(c.coverage.difference)} "
                         f"[{_signed_pct(c.coverage.ci_low)}, {_signed_pct(c.coverage.ci_high)}]")
        if parts:
            lines.append(f"- {name} (paired, {int(100 * c.confidence)}% bootstrap): " + "; ".join(parts))
    return lines


def _worst(model: ModelReport, limit: int) -> list[ItemResult]:
    flagged = [r for r in model.items if r.judgeable and r.hallucinated]
    return sorted(flagged, key=lambda r: (-r.unsupported_sentences, -len(r.flags), r.id))[:limit]


def _highlight(item: ItemResult) -> str:
    """The summary with each located flagged span in **bold**."""
    text, out, cursor = item.summary, [], 0
    for flag in sorted((f for f in item.flags if f.span), key=lambda f: f.span[0]):
        start, end = flag.span
        if start < cursor:
            continue
        out += [text[cursor:start], f"**{text[start:end]}**"]
        cursor = end
    out.append(text[cursor:])
    return "".join(out).replace("\n", " ")


def judge_accuracy_lines(model: ModelReport) -> list[str]:
    """What is known of the judge's accuracy: its stored held-out calibration, or that it has none.

    The first line is the headline: a report whose judge was never calibrated says so there."""
    own = model.calibrations.get(model.judge)
    if own is not None:
        first = f"> Judge accuracy: {_calibration_text(own)}."
    else:
        first = (f"> **Judge `{model.judge}` has no calibration on record: its accuracy on this kind of data is "
                 f"unmeasured** (run `faithforge eval calibrate --labels FILE --judge {model.judge.replace('+', ' --judge ')}`).")
    lines = [first]
    for name, calibration in model.calibrations.items():
        if name != model.judge:
            lines.append(f"> - `{name}`: " + (_calibration_text(calibration) if calibration else "no calibration on record"))
    for name, limit in model.judge_limits.items():
        lines.append(f"> - `{name}` known limits: {limit}.")
    return lines


def _calibration_text(c: dict[str, Any]) -> str:
    test = c.get("test") or {}

    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    thresholds = ", ".join(f"{k} threshold {v:.3f}" for k, v in sorted((c.get("thresholds") or {}).items()))
    subsets = "; ".join(f"{name} BAcc {num(r.get('balanced_accuracy'))}, recall {num(r.get('recall'))}"
                        for name, r in sorted((c.get("per_subset") or {}).items()))
    return (f"`{c.get('judge')}` ({c.get('checkpoint')}) on {test.get('n')} held-out labels from "
            f"{Path(str(c.get('labels'))).name}: balanced accuracy {num(test.get('balanced_accuracy'))}, "
            f"precision {num(test.get('precision'))}, recall {num(test.get('recall'))}"
            + (f", {thresholds}" if thresholds else "") + (f" ({subsets})" if subsets else ""))


def markdown_report(comparison: ComparisonReport, control: ComparisonReport | None = None, *,
                    worst_examples: int = 5, title: str = "Hallucination evaluation",
                    words: TaskWords = SUMMARIES, note: str | None = None) -> str:
    """The report users read: rates with intervals and recall beside them, the tests, and worst examples, in the
    task's own words (`words`: "answer" and "answer recall" for a question-answering run).

    Its first line states the judge's measured accuracy, or that it has none; `note` (which judge chose the
    training pairs) is quoted right under it."""
    conf = int(100 * comparison.confidence)
    lines = judge_accuracy_lines(comparison.before) + ([f"> {note}"] if note else []) + ["", f"# {title}", "",
             f"Judge: `{comparison.judge}`. Unit: {words.unit}: {words.rule}. Rates are shares of judged "
             f"{words.units}; intervals are {conf}% Wilson intervals for single rates and paired bootstrap "
             f"intervals for differences.", "",
             f"| model | judged | unjudgeable | hallucination rate | CI | sentence rate | {words.recall} "
             "| content retention |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for m in _models(comparison, control):
        lines.append(f"| {m.label} | {m.n_judged} | {m.n_unjudgeable} | {_pct(m.rate)} | {_ci(*m.rate_ci)} | "
                     f"{_pct(m.sentence_rate)} | {_pct(m.recall)} | {_pct(m.retention)} |")
    judge_names = list(dict.fromkeys(n for m in _models(comparison, control) for n in m.judge_rates))
    if judge_names:
        lines += ["", "## Each judge", "",
                  f"One {words.unit} is {JUDGE_RULES[rule_of_name(comparison.judge)]}; each judge's own rate is "
                  "beside the combined one.",
                  "", "| model | combined | " + " | ".join(judge_names) + " |",
                  "|---|---:|" + "---:|" * len(judge_names)]
        for m in _models(comparison, control):
            cells = [f"{_pct(m.judge_rates[n].rate)} {_ci(*m.judge_rates[n].rate_ci)}" if n in m.judge_rates
                     else "n/a" for n in judge_names]
            lines.append(f"| {m.label} | {_pct(m.rate)} | " + " | ".join(cells) + " |")
    truncated = [m for m in _models(comparison, control) if m.n_truncated]
    if truncated:
        lines += ["", "Cut off by the token limit (their last word is not judged as a claim): "
                  + ", ".join(f"{m.label} {m.n_truncated} of {m.n_items}" for m in truncated) + "."]
    lines += said_lines(comparison, control, words)
    lines += ["", "## Paired comparisons", ""]
    lines += _comparison_lines("after vs before", comparison, words)
    if control is not None:
        lines += _comparison_lines("control vs before", control, words)
    categories = sorted({name for m in _models(comparison, control) for name in m.per_category})
    if len(categories) > 1:
        lines += ["", "## By category", "", "| category | " + " | ".join(
            f"{m.label} rate | {m.label} recall" for m in _models(comparison, control)) + " |",
            "|---|" + "---:|---:|" * len(_models(comparison, control))]
        for name in categories:
            cells = []
            for m in _models(comparison, control):
                c = m.per_category.get(name)
                cells += [_pct(c.rate) if c else "n/a", _pct(c.recall) if c else "n/a"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for m in _models(comparison, control):
        worst = _worst(m, worst_examples)
        if not worst:
            continue
        lines += ["", f"## Worst examples: {m.label}", ""]
        for item in worst:
            reasons = "; ".join(f.reason for f in item.flags) or "judged unsupported"
            lines.append(f"- `{item.id}` ({item.category}): {_highlight(item)} — {reasons}")
    return "\n".join(lines) + "\n"


def bar_chart(comparison: ComparisonReport, path: str | Path, control: ComparisonReport | None = None, *,
              words: TaskWords = SUMMARIES) -> Path:
    """PNG bar chart of hallucination rates with CI whiskers, recall annotated on each bar, in the task's `words`
    (the axis counts hallucinated answers on a question-answering run, summaries otherwise)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    models = _models(comparison, control)
    rates = [m.rate or 0.0 for m in models]
    lower = [max(0.0, (m.rate or 0.0) - (m.rate_ci[0] if m.rate_ci[0] is not None else m.rate or 0.0)) for m in models]
    upper = [max(0.0, (m.rate_ci[1] if m.rate_ci[1] is not None else m.rate or 0.0) - (m.rate or 0.0)) for m in models]
    fig, ax = plt.subplots(figsize=(1.8 + 1.4 * len(models), 3.6), dpi=100)
    try:
        bars = ax.bar([m.label for m in models], rates, yerr=[lower, upper], capsize=6,
                      color=["#b0b0b0", "#3b7dd8", "#e39b3b"][:len(models)])
        for bar, m in zip(bars, models):
            ax.annotate(f"{_pct(m.rate)}\nrecall {_pct(m.recall)}", (bar.get_x() + bar.get_width() / 2, 0),
                        xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"hallucinated {words.units}")
        ax.set_title(f"judge: {comparison.judge}, {int(100 * comparison.confidence)}% CI", fontsize=9)
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out


def with_section(markdown: str, heading: str, body: list[str]) -> str:
    """`markdown` with the section `heading` (a whole `## …` line) set to `body`: added at the end, or, when a
    rerun wrote it before, replacing it and whatever followed it (a section added after the run is always the
    last, so its last occurrence is the one written; a summary that happens to quote the heading is not)."""
    lines = markdown.splitlines()
    at = max((i for i, line in enumerate(lines) if line == heading), default=None)
    kept = "\n".join(lines if at is None else lines[:at])
    return kept.rstrip() + "\n\n" + "\n".join([heading, "", *body]) + "\n"
