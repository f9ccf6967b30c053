"""What every judge returns, and the interface every judge implements."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Literal, Protocol, Sequence, runtime_checkable

FlagKind = Literal["number", "date", "entity", "quote", "claim", "inconsistent"]


@dataclass(frozen=True)
class Flag:
    """One unsupported span in a summary and why it is unsupported.

    `span` is (start, end) character offsets into the summary, or None when the judge cannot locate
    the claim (an LLM judge quoting a claim that is not verbatim in the summary).
    """

    text: str
    span: tuple[int, int] | None
    kind: FlagKind
    sentence_index: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SentenceResult:
    """The verdict on one summary sentence; `score` is the judge's support score where it has one."""

    index: int
    text: str
    supported: bool
    score: float | None = None


@dataclass(frozen=True)
class Verdict:
    """A judge's decision on one (source, summary) pair.

    `judgeable` is False when the judge could not decide (an LLM that never returned valid JSON); such
    items are counted separately and left out of rates, never counted as faithful.
    """

    judge: str
    hallucinated: bool
    sentences: tuple[SentenceResult, ...] = ()
    flags: tuple[Flag, ...] = ()
    judgeable: bool = True
    error: str | None = None
    score: float | None = None
    truncated: bool = False
    """The summary was cut off by the token limit; its final word was not judged as a claim."""
    parts: tuple["Verdict", ...] = ()
    """A combined judge's verdict keeps each judge's own verdict here."""
    features: dict[str, float] = field(default_factory=dict)
    """Named scores a judge measured beside its decision (the likelihood judge's mean log-probabilities): what a
    combination fitted on labels reads (`faithforge.evaluation.fitted`)."""

    @property
    def unsupported_sentences(self) -> int:
        return sum(1 for s in self.sentences if not s.supported)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Judge(Protocol):
    """Decides whether a summary states anything its source does not support."""

    name: str

    def judge(self, source: str, summary: str, *, truncated: bool = False) -> Verdict:
        """Judge one summary against its source. `truncated`: the summary was cut off by the token limit, so its
        final word may be cut short and is not a claim (`text_analysis.drop_truncated_word`)."""
        ...


def unjudgeable(judge: str, error: str) -> Verdict:
    """A verdict for an item the judge could not decide."""
    return Verdict(judge=judge, hallucinated=False, judgeable=False, error=error)


def verdict_from_sentences(judge: str, sentences: list[SentenceResult], flags: list[Flag],
                           score: float | None = None) -> Verdict:
    """A summary is hallucinated when at least one of its sentences is unsupported."""
    return Verdict(judge=judge, hallucinated=any(not s.supported for s in sentences),
                   sentences=tuple(sentences), flags=tuple(flags), score=score)


def thresholded_verdict(judge: str, spans: Sequence[tuple[int, int]],
                        scored: Iterable[tuple[int, str, float, str]], threshold: float, *,
                        truncated: bool = False) -> Verdict:
    """A verdict from per-sentence support scores: `scored` yields (index, text, score, reason); a sentence is
    supported when its score reaches `threshold`, an unsupported one is flagged at its span with `reason`, and
    the summary's score is its weakest sentence's (1.0 with none)."""
    results: list[SentenceResult] = []
    flags: list[Flag] = []
    for index, text, score, reason in scored:
        supported = score >= threshold
        results.append(SentenceResult(index=index, text=text, supported=supported, score=score))
        if not supported:
            flags.append(Flag(text, spans[index], "inconsistent", index, reason))
    score = min((r.score for r in results if r.score is not None), default=1.0)
    return replace(verdict_from_sentences(judge, results, flags, score=score), truncated=truncated)


__all__ = ["Flag", "FlagKind", "Judge", "SentenceResult", "Verdict", "thresholded_verdict", "unjudgeable", "verdict_from_sentences"]
