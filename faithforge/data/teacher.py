"""The offline template teacher: source documents and summaries from a deterministic parameter grid.

It reproduces the real cause of summary hallucination (XSum: reference summaries that state facts their
source does not contain). Every source names a person, an item with a count, and a place; a share of the
sources also states the day. The *warm-start* reference summary always states a day — when the source
has none, the reference invents one — so a model trained on it learns to invent days. The faithful
summary states exactly the source's facts, and hallucinated variants add, swap or drop one.

Text is word-tokenized with spaces around punctuation ("On Monday , Ada bought 3 lamps in Oslo .") so
that the tiny word-level tokenizer round-trips it exactly.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from typing import Iterator

from faithforge.data import vocabulary
from faithforge.data.vocabulary import DAYS, ITEMS, NAMES, PLACES

#: The shared vocabulary (faithforge/data/vocabulary.py), as this task writes it: counts and verbs as words.
COUNTS = tuple(str(n) for n in vocabulary.COUNTS)
VERBS = tuple(past for past, _ in vocabulary.VERBS)
# Filler sentences carry no checkable fact; they make sources longer than summaries, as real sources are.
FILLERS = (
    "The weather was mild .",
    "It was a busy morning .",
    "The shop was crowded .",
    "Nobody seemed surprised .",
    "The street was quiet .",
    "Prices had gone up .",
)
SYSTEM_PROMPT = "Summarize the document . State only facts the document states ."

#: Every word the teacher can write (the tiny tokenizer's vocabulary is trained on these).
VOCABULARY_TEXTS: tuple[str, ...] = (
    NAMES + PLACES + DAYS + ITEMS + COUNTS + VERBS + FILLERS + (SYSTEM_PROMPT, "On , in on . was were")
)


@dataclass(frozen=True)
class Facts:
    name: str
    verb: str
    count: str
    item: str
    place: str
    day: str | None

    def key_facts(self) -> list[str]:
        """The checkable facts a faithful summary keeps (for recall)."""
        facts = [self.name, self.count, self.item, self.place]
        if self.day is not None:
            facts.append(self.day)
        return facts


@dataclass(frozen=True)
class Example:
    """One generated example: a source document and the summaries derived from it."""

    id: str
    split: str
    category: str  # "day-stated" or "day-omitted"
    source: str
    faithful: str
    warm_start_reference: str
    facts: Facts | None  # the teacher's structured facts; None for examples from an LLM generator
    hallucinated: str = ""  # a variant with an invented or swapped fact
    omission: str = ""  # a variant that drops the stated day ("" when the source states none)
    key_facts: tuple[str, ...] = ()  # the checkable facts a faithful summary keeps (for recall)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.key_facts and self.facts is not None:
            object.__setattr__(self, "key_facts", tuple(self.facts.key_facts()))

    def to_dict(self) -> dict:
        row = asdict(self)
        row["key_facts"] = list(self.key_facts)
        return row

    @classmethod
    def from_dict(cls, row: dict) -> "Example":
        data = dict(row)
        data["facts"] = Facts(**data["facts"]) if data.get("facts") else None
        data["key_facts"] = tuple(data.get("key_facts") or ())
        return cls(**data)


def summarize(facts: Facts, day: str | None) -> str:
    text = f"{facts.name} {facts.verb} {facts.count} {facts.item} in {facts.place}"
    return f"{text} on {day} ." if day else f"{text} ."


def render_source(facts: Facts, rng: random.Random) -> str:
    core = f"{facts.name} {facts.verb} {facts.count} {facts.item} in {facts.place} ."
    if facts.day is not None:
        core = f"On {facts.day} , {core}"
    filler = list(rng.sample(FILLERS, 2))
    position = rng.randrange(3)
    sentences = filler[:position] + [core] + filler[position:]
    return " ".join(sentences)


def _example_id(split: str, index: int, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{split}:{index}".encode()).hexdigest()[:16]


def make_example(split: str, index: int, seed: int, omitted_fact_share: float) -> Example:
    """Deterministic in (split, index, seed): the same call always gives the same example."""
    rng = random.Random(f"faithforge-teacher:{seed}:{split}:{index}")
    omits_day = rng.random() < omitted_fact_share
    facts = Facts(
        name=rng.choice(NAMES), verb=rng.choice(VERBS), count=rng.choice(COUNTS), item=rng.choice(ITEMS),
        place=rng.choice(PLACES), day=None if omits_day else rng.choice(DAYS),
    )
    source = render_source(facts, rng)
    faithful = summarize(facts, facts.day)
    if facts.day is None:
        invented = rng.choice(DAYS)
        warm_reference = summarize(facts, invented)  # the XSum-style noisy reference
        hallucinated = summarize(facts, rng.choice(DAYS))  # invented day
        omission = ""
    else:
        warm_reference = faithful
        swapped = rng.choice([d for d in DAYS if d != facts.day])
        hallucinated = summarize(facts, swapped)  # swapped day
        omission = summarize(facts, None)
    return Example(
        id=_example_id(split, index, seed), split=split,
        category="day-omitted" if facts.day is None else "day-stated",
        source=source, faithful=faithful, warm_start_reference=warm_reference, facts=facts,
        hallucinated=hallucinated, omission=omission,
    )


def generate_split(split: str, count: int, seed: int, omitted_fact_share: float) -> Iterator[Example]:
    for index in range(count):
        yield make_example(split, index, seed, omitted_fact_share)


def prompt_messages(source: str) -> list[dict[str, str]]:
    """The fixed prompt every stage uses: one system message (shared prefix) and the source."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": source}]
