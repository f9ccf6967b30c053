"""Several judges as one (`evaluate.judge: [grounding, nli]`), deciding by `evaluate.judge_rule`: `any` (the default:
hallucinated when any judge says so), `all` (when every judge does), or `logistic` (a combination fitted on
labels, `faithforge.evaluation.fitted`, reads every judge's numbers).

Every judge splits summaries with the same `analyze`, so their sentence indices agree: a sentence is
supported only when every judge supports it. The combined verdict keeps each judge's own verdict in
`parts`, so reports show each judge's rate beside the combined one. An item is unjudgeable only when no
judge flagged it and at least one could not decide (a flag from any judge decides it).
"""

from __future__ import annotations

from typing import Any, Sequence

from faithforge.core.judge_registry import JUDGE_RULES
from faithforge.evaluation.verdict import Flag, Judge, SentenceResult, Verdict

#: How a combined judge's name joins its judges' names, by rule (`rule_of_name` reads it back).
_JOINERS = {"any": "+", "all": "&", "logistic": "+"}
_LOGISTIC_SUFFIX = "~logistic"


class CombinedJudge:
    """Runs every judge; decides by its rule (`JUDGE_RULES`: any, all, or a fitted logistic combination)."""

    def __init__(self, judges: Sequence[Judge], *, rule: str = "any", combination: Any = None):
        if len(judges) < 2 and rule != "logistic":
            raise ValueError("a combined judge needs at least two judges (or one with a fitted logistic rule)")
        names = [j.name for j in judges]
        if len(set(names)) != len(names):
            raise ValueError(f"judge names repeat: {', '.join(names)}")
        if rule not in JUDGE_RULES or (rule == "logistic") != (combination is not None):
            raise ValueError(f"rule {rule!r}: any, all, or logistic with a fitted combination")
        self.judges = list(judges)
        self.rule = rule
        self.combination = combination
        self.name = _JOINERS[rule].join(names) + (_LOGISTIC_SUFFIX if rule == "logistic" else "")

    @property
    def components(self) -> list[Judge]:
        return list(self.judges)

    def judge(self, source: str, summary: str, *, truncated: bool = False) -> Verdict:
        parts = [j.judge(source, summary, truncated=truncated) for j in self.judges]
        judged = [p for p in parts if p.judgeable]
        score = None
        if self.rule == "logistic":
            if len(judged) < len(parts):  # the fit needs every judge's numbers: no partial decision
                errors = "; ".join(f"{p.judge}: {p.error}" for p in parts if not p.judgeable)
                return Verdict(judge=self.name, hallucinated=False, judgeable=False, error=errors,
                               truncated=truncated, parts=tuple(parts))
            from faithforge.evaluation.fitted import verdict_features

            probability = self.combination.probability(verdict_features(
                Verdict(judge=self.name, hallucinated=False, parts=tuple(parts))))
            hallucinated, score = probability >= self.combination.threshold, 1.0 - probability
        elif self.rule == "all":
            hallucinated = bool(judged) and len(judged) == len(parts) and all(p.hallucinated for p in judged)
        else:
            hallucinated = any(p.hallucinated for p in judged)
        if not hallucinated and len(judged) < len(parts):
            errors = "; ".join(f"{p.judge}: {p.error}" for p in parts if not p.judgeable)
            return Verdict(judge=self.name, hallucinated=False, judgeable=False, error=errors, truncated=truncated,
                           parts=tuple(parts))
        sentences = _merge_sentences([p for p in judged if p.sentences])
        flags = tuple(Flag(f.text, f.span, f.kind, f.sentence_index, f"{p.judge}: {f.reason}")
                      for p in judged for f in p.flags) if hallucinated else ()
        if not hallucinated:  # a sentence one judge doubted is not shown as unsupported when the rule says faithful
            sentences = tuple(SentenceResult(s.index, s.text, True, s.score) for s in sentences)
        return Verdict(judge=self.name, hallucinated=hallucinated, sentences=sentences, flags=flags,
                       truncated=truncated, parts=tuple(parts), score=score)


def rule_of_name(name: str) -> str:
    """The rule a combined judge called `name` decides by (its name says it: `a+b`, `a&b`, `a+b~logistic`)."""
    if name.endswith(_LOGISTIC_SUFFIX):
        return "logistic"
    return "all" if _JOINERS["all"] in name else "any"


def _merge_sentences(parts: list[Verdict]) -> tuple[SentenceResult, ...]:
    if not parts:
        return ()
    base = max(parts, key=lambda p: len(p.sentences)).sentences
    unsupported = {s.index for p in parts for s in p.sentences if not s.supported}
    return tuple(SentenceResult(index=s.index, text=s.text, supported=s.index not in unsupported) for s in base)
