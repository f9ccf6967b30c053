"""Several judges as one: a summary is hallucinated when any of them says so (`evaluate.judge: [grounding, nli]`).

Every judge splits summaries with the same `analyze`, so their sentence indices agree: a sentence is
supported only when every judge supports it. The combined verdict keeps each judge's own verdict in
`parts`, so reports show each judge's rate beside the combined one. An item is unjudgeable only when no
judge flagged it and at least one could not decide (a flag from any judge decides it).
"""

from __future__ import annotations

import inspect
from typing import Sequence

from faithforge.evaluation.verdict import Flag, Judge, SentenceResult, Verdict


def call_judge(judge: Judge, source: str, summary: str, truncated: bool = False) -> Verdict:
    """`judge.judge(...)`, passing `truncated` only to judges that take it (third-party judges may not)."""
    if not truncated:
        return judge.judge(source, summary)
    try:
        takes = "truncated" in inspect.signature(judge.judge).parameters
    except (TypeError, ValueError):
        takes = False
    if takes:
        return judge.judge(source, summary, truncated=True)
    from faithforge.evaluation.text import drop_truncated_word

    return judge.judge(source, drop_truncated_word(summary))


class CombinedJudge:
    """Runs every judge; hallucinated when any judge says so."""

    def __init__(self, judges: Sequence[Judge]):
        if len(judges) < 2:
            raise ValueError("a combined judge needs at least two judges")
        names = [j.name for j in judges]
        if len(set(names)) != len(names):
            raise ValueError(f"judge names repeat: {', '.join(names)}")
        self.judges = list(judges)
        self.name = "+".join(names)

    @property
    def components(self) -> list[Judge]:
        return list(self.judges)

    def judge(self, source: str, summary: str, *, truncated: bool = False) -> Verdict:
        parts = [call_judge(j, source, summary, truncated) for j in self.judges]
        judged = [p for p in parts if p.judgeable]
        hallucinated = any(p.hallucinated for p in judged)
        if not hallucinated and len(judged) < len(parts):
            errors = "; ".join(f"{p.judge}: {p.error}" for p in parts if not p.judgeable)
            return Verdict(judge=self.name, hallucinated=False, judgeable=False, error=errors, truncated=truncated,
                           parts=tuple(parts))
        sentences = _merge_sentences([p for p in judged if p.sentences])
        flags = tuple(Flag(f.text, f.span, f.kind, f.sentence_index, f"{p.judge}: {f.reason}")
                      for p in judged for f in p.flags)
        return Verdict(judge=self.name, hallucinated=hallucinated, sentences=sentences, flags=flags,
                       truncated=truncated, parts=tuple(parts))


def _merge_sentences(parts: list[Verdict]) -> tuple[SentenceResult, ...]:
    if not parts:
        return ()
    base = max(parts, key=lambda p: len(p.sentences)).sentences
    unsupported = {s.index for p in parts for s in p.sentences if not s.supported}
    return tuple(SentenceResult(index=s.index, text=s.text, supported=s.index not in unsupported) for s in base)
