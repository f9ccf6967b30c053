"""Quality gates: content checks on an example that already matched its schema.

A schema checks shape; a small teacher fills the shape with junk that passes it (measured with SmolLM2-135M
through llama.cpp's server: a URL as the document, "{{title}}" as the summary, key facts `[""]`). Each
check below has a stable reason name, counted in the run's summary and stored with the raw answer in the
quarantine ledger:

- `empty_field`: a string (at any depth) that is empty or only whitespace/punctuation, or an empty list;
- `placeholder`: template markers (`{{title}}`, `[insert name]`, `<name>`), "lorem ipsum", "TODO", a value that
  is only a type name or "N/A";
- `bare_url`: a field that is a URL with at most a couple of words around it;
- `too_short`: fewer words than the spec's `quality.min_words` for that field;
- `boilerplate`: a sentence repeated inside one field, two fields with the same text, or a generated source
  already used by an earlier example of this run;
- `hallucination_identical`: the hallucinated variant is the faithful summary again;
- `summary_not_grounded`: the grounding judge flags the faithful summary against its source;
- `hallucination_not_flagged`: the grounding judge does *not* flag the hallucinated variant (it would make
  a rejected answer that is not wrong);
- `key_fact_not_in_source`: a key fact whose names, numbers and dates (grounding judge) or words are not in the
  source.

The grounding judge is `faithforge.evaluation.grounding.GroundingJudge` (deterministic; names, numbers,
dates, quotes), so the gates reject only what that judge can see.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field

# Template markers a teacher copies from its prompt or invents: {{title}}, {title}, [insert name], <name>.
_PLACEHOLDER = re.compile(r"\{\{[^{}]*\}\}|\{[A-Za-z_][A-Za-z0-9_ ]{0,40}\}|\[(?:insert|your|name|title|date|"
                          r"placeholder|todo)[^\]]{0,40}\]|<(?:insert|your|name|title|date|placeholder)[^>]{0,40}>|"
                          r"\blorem ipsum\b|\bTODO\b|\bTBD\b|\bFIXME\b", re.IGNORECASE)
# Whole values that are a schema type name or a filler, not content.
_FILLER_VALUES = {"string", "str", "text", "n/a", "na", "none", "null", "example", "sample", "placeholder",
                  "title", "summary", "document", "source document", "key fact", "fact", "...", "…", "tbd", "todo"}
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?", re.UNICODE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
# Words that carry no fact, ignored when a key fact is matched to its source word by word.
_STOPWORDS = frozenset("a an the of in on at to for from by with and or but is was were are be been it its "
                       "this that these those as into than then there their they he she his her him we our you".split())

#: Order in which a failure's reason is chosen when several checks fail (the detail lists all of them).
REASON_ORDER = ("empty_field", "placeholder", "bare_url", "too_short", "boilerplate", "hallucination_identical",
                "summary_not_grounded", "hallucination_not_flagged", "key_fact_not_in_source")
QUALITY_REASONS = frozenset(REASON_ORDER)


class QualityRules(BaseModel):
    """A spec's quality gates (`quality:` in the spec YAML). Field names refer to the output schema."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Run the gates at all (off: only the schema is checked)."""
    min_words: dict[str, int] = Field(default_factory=dict)
    """Fewest words per top-level field (e.g. source_document: 12)."""
    source: str | None = None
    """Field holding the source document the summary must be grounded in."""
    summary: str | None = None
    """Field holding the faithful summary (checked with the grounding judge against `source`)."""
    hallucinated: str | None = None
    """Field holding the hallucinated variant (must differ from `summary` and be flagged by the judge)."""
    key_facts: str | None = None
    """Field holding the list of key facts (each must be in `source`)."""


@dataclass(frozen=True)
class QualityProblem:
    reason: str
    detail: str


def _strings(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, value) of every string and list at any depth (dict keys are not content)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}/{key}" if path else str(key))
    elif isinstance(value, list):
        yield path, value
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}/{i}")
    elif isinstance(value, str):
        yield path, value


def normalize(text: str) -> str:
    """Case-, accent- and punctuation-insensitive form of `text`, words joined by single spaces."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_WORD.findall(folded))


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


class QualityGate:
    """Checks examples of one run against `rules`; remembers generated sources to catch repeats."""

    def __init__(self, rules: QualityRules | None = None, *, remember_sources: bool = True):
        self.rules = rules or QualityRules()
        self.remember_sources = remember_sources
        self._sources: dict[str, str] = {}
        self._judge = None

    def judge(self):
        if self._judge is None:
            from faithforge.evaluation.grounding import GroundingJudge

            self._judge = GroundingJudge()
        return self._judge

    def check(self, payload: dict[str, Any], example_key: str = "") -> list[QualityProblem]:
        """Every problem of `payload`, most important first (empty: the example passes)."""
        if not self.rules.enabled:
            return []
        problems = self._shape(payload) + self._grounding(payload)
        problems.sort(key=lambda p: REASON_ORDER.index(p.reason))
        return problems

    def first_failure(self, payload: dict[str, Any], example_key: str = "") -> QualityProblem | None:
        """The failure to record for `payload` (its detail names every problem found), or None."""
        problems = self.check(payload, example_key)
        if not problems:
            return None
        return QualityProblem(problems[0].reason, "; ".join(dict.fromkeys(p.detail for p in problems)))

    def accept(self, payload: dict[str, Any], example_key: str) -> None:
        """Remember a stored example's generated source, so a later example cannot repeat it."""
        field = self.rules.source
        if self.remember_sources and field and isinstance(payload.get(field), str):
            self._sources.setdefault(normalize(payload[field]), example_key)

    # checks on every string field -------------------------------------------------------------------
    def _shape(self, payload: dict[str, Any]) -> list[QualityProblem]:
        out: list[QualityProblem] = []
        texts: dict[str, str] = {}
        for path, value in _strings(payload, ""):
            if isinstance(value, list):
                if not value:
                    out.append(QualityProblem("empty_field", f"{path} is an empty list"))
                continue
            words = _words(value)
            if not words:
                out.append(QualityProblem("empty_field", f"{path} is empty ({value!r})"))
                continue
            placeholder = _PLACEHOLDER.search(value)
            if placeholder or normalize(value) in _FILLER_VALUES or value.strip() in _FILLER_VALUES:
                shown = placeholder.group(0) if placeholder else value.strip()
                out.append(QualityProblem("placeholder", f"{path} holds a placeholder ({shown[:60]!r}), not content"))
                continue
            if _URL.search(value) and len(_words(_URL.sub(" ", value))) <= 3:
                out.append(QualityProblem("bare_url", f"{path} is a bare URL ({value.strip()[:80]!r}), not text"))
                continue
            sentences = [normalize(s) for s in _SENTENCE.split(value.strip()) if len(_words(s)) >= 3]
            repeated = {s for s in sentences if sentences.count(s) > 1}
            if repeated:
                out.append(QualityProblem("boilerplate", f"{path} repeats the sentence {sorted(repeated)[0][:60]!r}"))
            if "/" not in path:
                texts[path] = normalize(value)
        for field, least in self.rules.min_words.items():
            value = payload.get(field)
            if isinstance(value, str) and _words(value) and len(_words(value)) < least:
                out.append(QualityProblem("too_short", f"{field} has {len(_words(value))} words; write at least {least}"))
        seen: dict[str, str] = {}
        pair = {self.rules.summary, self.rules.hallucinated}
        for field, text in texts.items():
            other = seen.get(text)
            if other is not None and {field, other} != pair and len(text.split()) >= 3:
                out.append(QualityProblem("boilerplate", f"{field} repeats {other} word for word"))
            seen.setdefault(text, field)
        source = payload.get(self.rules.source or "")
        if self.remember_sources and isinstance(source, str) and normalize(source) in self._sources:
            out.append(QualityProblem("boilerplate", f"{self.rules.source} repeats the source of example "
                                                     f"{self._sources[normalize(source)]}; write a new document"))
        return out

    # checks against the source ------------------------------------------------------------------------
    def _grounding(self, payload: dict[str, Any]) -> list[QualityProblem]:
        r = self.rules
        source = payload.get(r.source) if r.source else None
        if not isinstance(source, str) or not _words(source):
            return []
        out: list[QualityProblem] = []
        summary = payload.get(r.summary) if r.summary else None
        hallucinated = payload.get(r.hallucinated) if r.hallucinated else None
        if isinstance(summary, str) and _words(summary):
            verdict = self.judge().judge(source, summary)
            if verdict.hallucinated:
                what = "; ".join(f.reason for f in verdict.flags[:3]) or "unsupported sentence"
                out.append(QualityProblem("summary_not_grounded", f"{r.summary} states what {r.source} does not ({what})"))
        if isinstance(hallucinated, str) and _words(hallucinated):
            if isinstance(summary, str) and normalize(hallucinated) == normalize(summary):
                out.append(QualityProblem("hallucination_identical",
                                          f"{r.hallucinated} is the same as {r.summary}; change exactly one fact"))
            elif not self.judge().judge(source, hallucinated).hallucinated:
                out.append(QualityProblem("hallucination_not_flagged",
                                          f"{r.hallucinated} states nothing that contradicts or goes beyond {r.source}; "
                                          "change a name, number, place or day"))
        facts = payload.get(r.key_facts) if r.key_facts else None
        if isinstance(facts, list):
            missing = [f for f in facts if isinstance(f, str) and _words(f) and not self._fact_in(source, f)]
            if missing:
                out.append(QualityProblem("key_fact_not_in_source",
                                          f"{r.key_facts} not in {r.source}: {', '.join(repr(m[:40]) for m in missing[:3])}"))
        return out

    def _fact_in(self, source: str, fact: str) -> bool:
        """A fact is in the source when its text is, or when the judge finds every name, number and date of
        it there and most of its other words appear too (a paraphrased fact)."""
        norm_source, norm_fact = normalize(source), normalize(fact)
        if f" {norm_fact} " in f" {norm_source} ":
            return True
        if self.judge().judge(source, fact).hallucinated:
            return False
        words = [w for w in norm_fact.split() if w not in _STOPWORDS]
        if not words:
            return True
        present = set(norm_source.split())
        return sum(w in present for w in words) >= 0.6 * len(words)  # 0.6: tolerates one inflected word in 3
