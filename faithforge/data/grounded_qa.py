"""The real-model task: questions about a short multi-fact document, 70% of which (`UNANSWERABLE_SHARE`) the
document cannot answer.

Why this task: a pretrained instruct model summarizing a short document rarely invents anything (SmolLM2-135M
invented a day 0 times in 72 day-omitted sources of the template task, issue 14). Asked a direct question
whose answer is missing, the same model answers anyway — it names a day, a number or a place the document
never states. That invention is exactly what the `grounding` judge detects: an *unanswerable* question asks
for a kind of fact (a day, a count, a place) that appears nowhere in its document, so any day, number or place
name in the answer is, by construction, not in the source. *Answerable* questions keep the model honest in the
other direction: their answer is a key fact, so a model that learns to say "The document does not say." to
everything loses answer accuracy (reported as recall beside the rate).

Every document tells of three people (name, verb, count, item, place, day). Per document one fact kind
(`day`, `count` or `place`) is left out of every sentence; unanswerable questions ask for exactly that kind.
Deterministic in (split, index, seed), like the template teacher.
"""

from __future__ import annotations

import hashlib
import random

from faithforge.data.teacher import Example
from faithforge.data.vocabulary import COUNTS, DAYS, ITEMS, NAMES, PLACES, VERBS

TASK_NAME = "grounded-qa"
ABSTAIN = "The document does not say."
#: Chosen on the validation split (greedy SmolLM2-135M-Instruct, bench/real_outputs.py): with "Answer the question
#: using only the document. If the document does not contain the answer, reply exactly: The document does not
#: say." the judge flagged 17/112 answers (15%) and the model abstained on most answerable questions (accuracy
#: 22-43%); with this plain instruction it flagged 20/48 (42%; 18/36 unanswerable) and answered 9/12 answerable
#: questions correctly. A user's prompt rarely spells out the abstention; the plain one is the realistic case.
SYSTEM_PROMPT = "Answer the question about the document in one short sentence."

FILLERS = ("The weather was mild.", "It was a busy week.", "The shop was crowded.", "Nobody seemed surprised.",
           "The street was quiet.", "Prices had gone up.", "The market opened early.")
KINDS = ("day", "count", "place")
PEOPLE_PER_DOCUMENT = 3
#: Share of questions the document cannot answer (the rest are answerable, for answer accuracy). Chosen on the
#: validation split (48 items, 50% unanswerable, greedy SmolLM2-135M-Instruct): 7/21 unanswerable answers
#: invented a fact (33%) against 2/27 answerable ones, 19% overall; 70% unanswerable puts the expected overall
#: rate above 20% while 30% answerable questions still measure answer accuracy.
UNANSWERABLE_SHARE = 0.7


def _sentence(person: dict, omitted: str) -> str:
    count = "some" if omitted == "count" else str(person["count"])
    text = f"{person['name']} {person['verb'][0]} {count} {person['item']}"
    if omitted != "place":
        text += f" in {person['place']}"
    if omitted != "day":
        text += f" on {person['day']}"
    return text + "."


#: kind → (question, the sentence that answers it with `value`); `base` / `past` are the person's verb forms.
_TEMPLATES = {
    "day": ("On which day did {name} {base} the {item}?", "{name} {past} the {item} on {value}."),
    "count": ("How many {item} did {name} {base}?", "{name} {past} {value} {item}."),
    "place": ("In which city did {name} {base} the {item}?", "{name} {past} the {item} in {value}."),
}


def _question(person: dict, kind: str) -> str:
    _, base = person["verb"]
    return _TEMPLATES[kind][0].format(name=person["name"], base=base, item=person["item"])


def _statement(person: dict, kind: str, value: object) -> str:
    """The sentence that answers `person`'s question of `kind` with `value` (a day, a count or a place)."""
    past, _ = person["verb"]
    return _TEMPLATES[kind][1].format(name=person["name"], past=past, item=person["item"], value=value)


def _answer(person: dict, kind: str) -> tuple[str, str]:
    """(faithful answer, the key fact it must contain)."""
    fact = str(person[kind])
    return _statement(person, kind, fact), fact


def _invented(person: dict, kind: str, rng: random.Random) -> str:
    """A confident answer with a value of the asked kind that the document does not state."""
    return _statement(person, kind, rng.choice({"day": DAYS, "count": COUNTS, "place": PLACES}[kind]))


def make_question(split: str, index: int, seed: int) -> Example:
    rng = random.Random(f"faithforge-grounded-qa:{seed}:{split}:{index}")
    names = rng.sample(NAMES, PEOPLE_PER_DOCUMENT)
    items = rng.sample(ITEMS, PEOPLE_PER_DOCUMENT)
    people = [{"name": n, "item": i, "verb": rng.choice(VERBS), "count": rng.choice(COUNTS),
               "place": rng.choice(PLACES), "day": rng.choice(DAYS)} for n, i in zip(names, items)]
    omitted = rng.choice(KINDS)  # this kind of fact appears nowhere in the document
    sentences = [_sentence(p, omitted) for p in people]
    filler = rng.choice(FILLERS)
    sentences.insert(rng.randrange(len(sentences) + 1), filler)
    document = " ".join(sentences)
    target = rng.choice(people)
    unanswerable = rng.random() < UNANSWERABLE_SHARE
    kind = omitted if unanswerable else rng.choice([k for k in KINDS if k != omitted])
    source = f"Document: {document}\nQuestion: {_question(target, kind)}"
    if unanswerable:
        faithful, key_facts, category = ABSTAIN, (), f"unanswerable-{kind}"
        hallucinated = _invented(target, kind, rng)
    else:
        faithful, fact = _answer(target, kind)
        key_facts, category = (fact,), f"answerable-{kind}"
        hallucinated = ABSTAIN  # refusing an answerable question: the omission failure, not an invention
    example_id = hashlib.sha256(f"qa:{seed}:{split}:{index}".encode()).hexdigest()[:16]
    return Example(id=example_id, split=split, category=category, source=source, faithful=faithful,
                   warm_start_reference=faithful, facts=None, hallucinated=hallucinated if unanswerable else "",
                   omission=hallucinated if not unanswerable else "", key_facts=key_facts,
                   extra={"task": TASK_NAME, "kind": kind, "answerable": not unanswerable})


def generate_questions(split: str, count: int, seed: int):
    for index in range(count):
        yield make_question(split, index, seed)


def prompt_messages(source: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": source}]
