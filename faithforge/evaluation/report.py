"""Human-readable outputs of an evaluation: markdown, table rows, and a bar chart with CI whiskers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faithforge.evaluation.results import ComparisonReport, ItemResult, ModelReport


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
            "sentence_rate": model.sentence_rate, "key_fact_recall": model.recall,
            "content_retention": model.retention, "mean_summary_length": model.mean_summary_length,
        })
    return rows


def _comparison_lines(name: str, c: ComparisonReport) -> list[str]:
    lines = [f"- **{name}** ({c.after.label} − {c.before.label}, {c.n_paired} paired summaries): rate "
             f"{_signed_pct(c.rate.difference)}, {int(100 * c.confidence)}% paired bootstrap CI "
             f"[{_signed_pct(c.rate.ci_low)}, {_signed_pct(c.rate.ci_high)}] "
             f"({c.bootstrap_samples} resamples, seed {c.seed}); McNemar exact p = {_p(c.mcnemar_p)} "
             f"(fixed {c.fixed}, newly hallucinated {c.broken}, both {c.both}, neither {c.neither})"]
    if c.recall is not None:
        lines.append(f"  - key-fact recall {_signed_pct(c.recall.difference)}, CI "
                     f"[{_signed_pct(c.recall.ci_low)}, {_signed_pct(c.recall.ci_high)}] on {c.recall.n} items")
    if c.retention is not None:
        lines.append(f"  - content retention {_signed_pct(c.retention.difference)}, CI "
                     f"[{_signed_pct(c.retention.ci_low)}, {_signed_pct(c.retention.ci_high)}]")
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


def markdown_report(comparison: ComparisonReport, control: ComparisonReport | None = None, *,
                    worst_examples: int = 5, title: str = "Hallucination evaluation") -> str:
    """The report users read: rates with intervals and recall beside them, the tests, and worst examples."""
    conf = int(100 * comparison.confidence)
    lines = [f"# {title}", "",
             f"Judge: `{comparison.judge}`. Unit: {comparison.unit}. Rates are shares of judged summaries; "
             f"intervals are {conf}% Wilson intervals for single rates and paired bootstrap intervals for "
             f"differences.", "",
             "| model | judged | unjudgeable | hallucination rate | CI | sentence rate | key-fact recall "
             "| content retention |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for m in _models(comparison, control):
        lines.append(f"| {m.label} | {m.n_judged} | {m.n_unjudgeable} | {_pct(m.rate)} | {_ci(*m.rate_ci)} | "
                     f"{_pct(m.sentence_rate)} | {_pct(m.recall)} | {_pct(m.retention)} |")
    lines += ["", "## Paired comparisons", ""]
    lines += _comparison_lines("after vs before", comparison)
    if control is not None:
        lines += _comparison_lines("control vs before", control)
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


def bar_chart(comparison: ComparisonReport, path: str | Path, control: ComparisonReport | None = None) -> Path:
    """PNG bar chart of hallucination rates with CI whiskers, recall annotated on each bar."""
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
        ax.set_ylabel("hallucinated summaries")
        ax.set_title(f"judge: {comparison.judge}, {int(100 * comparison.confidence)}% CI", fontsize=9)
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out
