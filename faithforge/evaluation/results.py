"""Evaluation results: JSON-serializable records for one model and for a before/after comparison.

Every rate is a share of *summaries judged* (the unit); items a judge could not decide are counted in
`n_unjudgeable` and left out. Missing values (no items, no key facts) are None, never NaN.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict

UNIT = ("summary: a summary counts as hallucinated when at least one of its sentences states something "
        "the source does not support")


def clean(value: float | None) -> float | None:
    """NaN → None, so reports are strict JSON."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]):  # noqa: ANN206 - returns cls
        return cls.model_validate(data)


class FlagRecord(_Record):
    """A stored `Flag`: the unsupported text, its (start, end) in the summary, its kind and why."""

    text: str
    span: tuple[int, int] | None
    kind: str
    sentence_index: int | None
    reason: str


class ItemResult(_Record):
    """One summary's verdict and its recall."""

    id: str
    category: str
    summary: str
    hallucinated: bool
    judgeable: bool
    sentences: int
    unsupported_sentences: int
    recall: float | None
    retention: float | None
    flags: list[FlagRecord]
    error: str | None = None
    truncated: bool = False
    """The summary was cut off by the token limit (its last word was not judged as a claim)."""
    judges: dict[str, bool | None] = {}
    """Each combined judge's own verdict: hallucinated, or None where it could not decide."""
    length: int | None = None
    """Words and numbers in the summary."""
    coverage: float | None = None
    """Share of the key content (the reference summary, else the article's lead) the summary carries
    (`faithforge.evaluation.coverage`)."""
    refusal: bool = False
    """The summary declines the task ("I cannot…", "The document does not say")."""
    evasive: bool = False
    """A non-answer that is not a refusal (almost nothing of the source, or a circular answer)."""


class CategoryResult(_Record):
    n: int
    hallucinated: int
    rate: float | None
    recall: float | None


class JudgeRate(_Record):
    """One judge's rate when several judges are combined."""

    n_judged: int
    hallucinated: int
    rate: float | None
    rate_ci: tuple[float | None, float | None]


class ModelReport(_Record):
    """Rates, intervals and recall of one model's summaries."""

    label: str
    judge: str
    unit: str = UNIT
    n_items: int
    n_judged: int
    n_unjudgeable: int
    hallucinated: int
    rate: float | None
    rate_ci: tuple[float | None, float | None]
    """Wilson score interval of `rate` at `confidence`."""
    confidence: float
    sentences: int
    unsupported_sentences: int
    sentence_rate: float | None
    per_category: dict[str, CategoryResult]
    flags_by_kind: dict[str, int]
    recall: float | None
    """Mean per-item key-fact recall over items that list key facts (None when none do)."""
    recall_items: int
    retention: float | None
    """Mean share of the source's content words kept (reported beside recall, useful when no key facts)."""
    mean_summary_length: float | None
    items: list[ItemResult]
    n_truncated: int = 0
    """Summaries cut off by the token limit (counted apart: their cut-off last word is not a claim)."""
    judge_rates: dict[str, JudgeRate] = {}
    """With a judge list: each judge's own rate beside the combined `rate`."""
    calibrations: dict[str, dict[str, Any] | None] = {}
    """The stored held-out calibration of the judge and of each judge it combines (None: not calibrated)."""
    judge_limits: dict[str, str] = {}
    """Known measured limits of the judges used (the grounding judge's figures)."""
    judge_checkpoint: str | None = None
    """What identifies the judge's behaviour besides its name (`heldout.judge_checkpoint`: a checkpoint, a served
    model, its own settings, or the rules); None in evaluations stored before it was recorded."""
    coverage: float | None = None
    """Mean share of the key content covered (reference summary, else the article's lead), over all items."""
    refusals: int = 0
    """Summaries that decline the task."""
    evasive: int = 0
    """Non-answers that are not refusals."""


class Difference(_Record):
    """after − before of a per-item mean over the paired items, with a paired bootstrap interval."""

    before: float | None
    after: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    method: str = "paired bootstrap"
    """How the interval was computed: the paired bootstrap, or for a rate where no item changed (the bootstrap's
    interval is then [0, 0]) Newcombe's score interval (`metrics.newcombe_paired_interval`)."""


class ComparisonReport(_Record):
    """Before vs after (or before vs a control) on the same items with the same judge."""

    judge: str
    unit: str = UNIT
    before: ModelReport
    after: ModelReport
    confidence: float
    bootstrap_samples: int
    seed: int
    n_paired: int
    """Items judgeable in both runs; the paired statistics use only these."""
    rate: Difference
    recall: Difference | None
    retention: Difference | None
    fixed: int
    """Hallucinated before, faithful after."""
    broken: int
    """Faithful before, hallucinated after."""
    both: int
    neither: int
    mcnemar_p: float
    """Two-sided exact McNemar p-value on the discordant pairs (fixed vs broken)."""
    coverage: Difference | None = None
    """after − before of the key-content coverage, paired."""
    length: Difference | None = None
    """after − before of the summary length in words, paired."""

    def with_unit(self, unit: str) -> "ComparisonReport":
        """The same report with its unit, and its two models', stated in the run's task words
        (`faithforge.evaluation.wording`): a question-answering run's report.json used to call its unit a summary."""
        return self.model_copy(update={"unit": unit, "before": self.before.model_copy(update={"unit": unit}),
                                       "after": self.after.model_copy(update={"unit": unit})})
