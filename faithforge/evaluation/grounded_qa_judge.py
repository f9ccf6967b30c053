"""The `grounded-qa` judge: the grounding judge plus who-did-what, for the real-model task's documents.

Why: the `grounding` judge checks that each name, number, day and place of an answer occurs *somewhere* in the
document. On the grounded-qa task (faithforge/data/grounded_qa.py) half of SmolLM2's hallucinations use values
that do occur — another person's day ("Ivo bought the chairs on Sunday", Sunday being Goran's), another verb
("Bruno delivered 2 lamps" where he painted them), a person named as a city ("in the city of Hana"), or a
relation the document never states ("on the day Vera painted 6 books") — and it misses them (recall 0.51 on the
labeled real outputs). A model trained on pairs that judge chose could learn to move its inventions into that
blind spot; this judge, which knows the task's document structure, measures whether it did.

The documents are regular ("Ada bought 5 lamps in Oslo on Monday.", a fact left out per document), so each
person's facts are read back from the text itself. An answer sentence is checked against the people it names
(the asked person when it names none): every day, place, count, item and verb it states must belong to one of
them; a person's name used as a place, or an event tied to another person's event ("on the day X …"), is an
unsupported relation. Everything the grounding judge flags stays flagged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from faithforge.core.errors import UserError
from faithforge.data.vocabulary import DAYS, VERBS
from faithforge.evaluation.grounding import GroundingJudge
from faithforge.evaluation.text_analysis import drop_truncated_word
from faithforge.evaluation.verdict import Flag, Verdict

NAME = "grounded-qa"
_FACT = re.compile(r"^(?P<name>[A-Z][a-z]+) (?P<verb>[a-z]+) (?P<count>\d+|some) (?P<item>[a-z]+)"
                   r"(?: in (?P<place>[A-Z][a-z]+))?(?: on (?P<day>[A-Z][a-z]+))?$")
_PAST_VERBS = {past for past, _ in VERBS}
_WORD = re.compile(r"[A-Za-z]+|\d+")
_NUMBER_WORDS = {"two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
                 "nine": "9", "ten": "10", "eleven": "11", "twelve": "12"}


@dataclass
class Person:
    name: str
    verb: str
    count: str | None
    item: str
    place: str | None
    day: str | None


@dataclass
class Document:
    people: dict[str, Person] = field(default_factory=dict)
    asked: str | None = None

    @property
    def items(self) -> set[str]:
        return {p.item for p in self.people.values()}

    @property
    def places(self) -> set[str]:
        return {p.place for p in self.people.values() if p.place}


def parse_source(source: str) -> Document | None:
    """The people and their facts, and the person asked about; None when the source is not a grounded-qa item."""
    match = re.match(r"Document: (?P<doc>.*)\nQuestion: (?P<question>.*)$", source, flags=re.S)
    if not match:
        return None
    document = Document()
    for sentence in re.split(r"(?<=\.)\s+", match["doc"].strip()):
        fact = _FACT.match(sentence.rstrip("."))
        if fact:
            document.people[fact["name"]] = Person(fact["name"], fact["verb"],
                                                   None if fact["count"] == "some" else fact["count"],
                                                   fact["item"], fact["place"], fact["day"])
    if not document.people:
        return None
    named = [w for w in _WORD.findall(match["question"]) if w in document.people]
    document.asked = named[0] if named else None
    return document


def _sentences(text: str) -> list[tuple[int, str]]:
    """(start offset, sentence) pairs, split at . ! ? and line breaks."""
    return [(m.start(), m.group()) for m in re.finditer(r"[^.!?\n]+[.!?]?", text) if m.group().strip()]


def attribution_flags(document: Document, answer: str) -> list[Flag]:
    """Values the answer attaches to people who do not have them (see the module docstring)."""
    flags: list[Flag] = []
    for index, (offset, sentence) in enumerate(_sentences(answer)):
        words = [(m.start() + offset, m.group()) for m in _WORD.finditer(sentence)]
        named = [w for _, w in words if w in document.people]
        people = [document.people[n] for n in dict.fromkeys(named)] or (
            [document.people[document.asked]] if document.asked in document.people else [])
        if not people:
            continue

        def flag(start: int, text: str, reason: str) -> None:
            flags.append(Flag(text=text, span=(start, start + len(text)), kind="inconsistent",
                              sentence_index=index, reason=reason))

        for position, (start, word) in enumerate(words):
            lowered = word.lower()
            previous = " ".join(w.lower() for _, w in words[max(0, position - 3):position])
            if word in document.people and re.search(r"(city|town|place) (of|called)$|\bin$", previous):
                flag(start, word, f"{word} is a person in the document, not a place")
            elif word in DAYS and all(p.day != word for p in people):
                flag(start, word, f"the document does not give {word} to {_names(people)}")
            elif word in document.places and all(p.place != word for p in people):
                flag(start, word, f"the document does not put {_names(people)} in {word}")
            elif lowered in document.items and all(p.item != lowered for p in people):
                flag(start, word, f"the document does not give {lowered} to {_names(people)}")
            elif lowered in _PAST_VERBS and all(p.verb != lowered for p in people):
                flag(start, word, f"the document does not say {_names(people)} {lowered} anything")
            elif (_NUMBER_WORDS.get(lowered) or (word if word.isdigit() else None)) and all(
                    p.count != _NUMBER_WORDS.get(lowered, word) for p in people) and not _ordinal(sentence, word):
                flag(start, word, f"the document does not give the count {word} to {_names(people)}")
        relation = re.search(r"\bon the day(?: when| that| of)?\b(?P<rest>.*)", sentence, flags=re.I)
        if relation and len(people) > 1:
            subject = named[0]
            others = [w for w in _WORD.findall(relation["rest"]) if w in document.people and w != subject]
            if others:
                flag(offset + relation.start(), relation.group().strip(),
                     f"the document does not relate {subject}'s event to {others[0]}'s")
    return flags


def _ordinal(sentence: str, number: str) -> bool:
    return re.search(rf"\b{number}(st|nd|rd|th)\b", sentence) is not None


def _names(people: list[Person]) -> str:
    return " or ".join(p.name for p in people)


class GroundedQaJudge:
    """The grounding judge's verdict, plus the attribution check on grounded-qa sources (see module docstring)."""

    name = NAME

    def __init__(self) -> None:
        self._grounding = GroundingJudge()

    def judge(self, source: str, summary: str, *, truncated: bool = False) -> Verdict:
        verdict = self._grounding.judge(source, summary, truncated=truncated)
        document = parse_source(source)
        if document is None:
            return Verdict(judge=NAME, hallucinated=verdict.hallucinated, sentences=verdict.sentences,
                           flags=verdict.flags, judgeable=verdict.judgeable, error=verdict.error,
                           truncated=verdict.truncated)
        extra = attribution_flags(document, drop_truncated_word(summary) if truncated else summary)
        taken = {flag.span for flag in verdict.flags}
        flags = verdict.flags + tuple(f for f in extra if f.span not in taken)
        return Verdict(judge=NAME, hallucinated=bool(flags), sentences=verdict.sentences, flags=flags,
                       judgeable=verdict.judgeable, error=verdict.error, truncated=verdict.truncated)


def build(**options) -> GroundedQaJudge:
    """The registered builder (`faithforge.core.judge_registry`); this judge takes no options."""
    if options:
        raise UserError(f"the {NAME} judge takes no options (got {', '.join(sorted(options))})")
    return GroundedQaJudge()
