"""What a summary says, beside whether it invents: length, coverage of the article's key content, refusals and
evasive non-answers — so "hallucinates less" can be checked against "says less".

Every measure here reads only the texts (no judge), so DPO cannot move its outputs into a judge's blind spot and
have these figures follow:

- **coverage**: the share of the key content a good summary would carry that this one carries, by distinct
  content words (`analyze(...).content_keys()`: names, numbers, dates and non-stopwords, stemmed). The key
  content is the reference summary where one exists, otherwise the article's lead (its first `LEAD_SENTENCES`
  sentences: news puts the main facts first).
- **refusal**: the output declines the task (empty, "I'm sorry, I cannot…", "As an AI…", "The document does not
  say").
- **evasive**: not a refusal, but a non-answer — it carries almost none of the article's content (fewer than
  `MIN_SOURCE_WORDS` content words of the source: "The article discusses a story."), or, on an item with key
  facts, it states none of them while adding nothing the source lacks (a restatement of the question: "…on the
  day he delivered the books" for "When did he deliver the books?" — 5 of 200 before DPO and 27 after on the
  synthetic task, in the field note the real-documents issue quotes).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from faithforge.evaluation.text_analysis import analyze, sentences_of

#: Sentences of the article that stand for its key content when there is no reference summary.
LEAD_SENTENCES = 3
#: An output with fewer of the source's content words than this says nothing about the source.
MIN_SOURCE_WORDS = 3

_REFUSAL = re.compile(
    r"^\s*(i(?:'m| am) sorry|sorry,|i apologi[sz]e|as an ai\b|i (?:can ?not|can'?t|am unable|'m unable|am not able|won'?t)\b"
    r"|unfortunately,? i\b)"
    r"|\b(?:the|this) (?:document|article|text|passage|story) does(?: not|n'?t) (?:say|state|mention|specify|"
    r"provide|contain|include|give)\b"
    r"|\bno (?:information|details?) (?:is|are|was|were)? ?(?:given|provided|available|stated)\b"
    r"|\b(?:i|we) (?:do not|don'?t) have (?:enough )?(?:information|access|details)\b",
    re.IGNORECASE)


#: Words about the text rather than of it ("the article discusses…"): never content of the summary.
_META = frozenset(analyze("article document text story report passage piece news summary discusses discussed "
                          "describes described talks mentions mentioned writer author about focuses "
                          # vague nouns a circular answer uses in place of the fact: "on the day he…"
                          "day time date place way thing").content_keys())


@dataclass(frozen=True)
class Coverage:
    """One output's length, coverage of the key content, and whether it refuses or evades."""

    length: int
    """Words and numbers in the output (punctuation not counted)."""
    coverage: float | None
    """Share of the key content's distinct content words the output carries (None: the key content is empty)."""
    refusal: bool
    evasive: bool


def key_content(source: str, reference: str | None = None) -> str:
    """The text whose content a good summary carries: the reference summary, else the article's lead."""
    if reference and reference.strip():
        return reference
    return " ".join(sentences_of(source)[:LEAD_SENTENCES]) or source


def coverage_share(source: str, summary: str, reference: str | None = None) -> float | None:
    """Distinct content words of `key_content(source, reference)` that `summary` carries, as a share."""
    wanted = set(analyze(key_content(source, reference)).content_keys())
    if not wanted:
        return None
    return len(wanted & set(analyze(summary).content_keys())) / len(wanted)


def is_refusal(summary: str) -> bool:
    return not summary.strip() or bool(_REFUSAL.search(summary))


def is_evasive(source: str, summary: str, key_facts: Sequence[str] = ()) -> bool:
    """A non-answer that is not a refusal: almost none of the source's content and nothing of its own, or (with
    key facts) a one-sentence answer that states none of them and adds nothing beyond the source."""
    if is_refusal(summary):
        return False
    available = set(analyze(source).content_keys())
    said = [w for w in dict.fromkeys(analyze(summary).content_keys()) if w not in _META]
    from_source = [w for w in said if w in available]
    novel = [w for w in said if w not in available]
    if len(from_source) < MIN_SOURCE_WORDS and len(novel) <= 1:
        return True  # "The article discusses a story.": the words about the text are not content
    if key_facts and len(sentences_of(summary)) <= 1:
        from faithforge.evaluation.metrics import key_fact_recall

        return key_fact_recall(key_facts, summary) == 0.0 and not novel
    return False


def measure(source: str, summary: str, *, key_facts: Sequence[str] = (), reference: str | None = None) -> Coverage:
    from faithforge.evaluation.metrics import summary_length

    share = coverage_share(source, summary, reference)
    return Coverage(length=summary_length(summary), coverage=None if share is None or math.isnan(share) else share,
                    refusal=is_refusal(summary), evasive=is_evasive(source, summary, key_facts))


__all__ = ["Coverage", "LEAD_SENTENCES", "MIN_SOURCE_WORDS", "coverage_share", "is_evasive", "is_refusal",
           "key_content", "measure"]
