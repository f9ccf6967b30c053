"""Training examples for the trained judge, made from the user's own documents only.

Each example is (premise, hypothesis, label): the premise is a window of consecutive sentences of one document,
the hypothesis one sentence, the label 1 when the premise supports it and 0 when it does not. Supported
hypotheses are a sentence of the window as it is (`extract`) or lightly rewritten without changing what it
claims (`compress`: a parenthetical, a comma-delimited aside, an opening adverbial phrase or a trailing
attribution dropped; `reorder`: two conjuncts swapped). Unsupported hypotheses change one thing a reader
would call a hallucination, the kinds FactCC (Kryściński et al., 2020) and the field's error studies name:

- `entity`: a name (or, in lower-cased text, a rare word) replaced by another from the same or another document;
- `roles`: two names of the sentence swapped ("Vera sold the hats" when Ivo did);
- `number`: a number changed (a year by a few years, a count scaled, a number word replaced);
- `date`: a day, month or relative day replaced by another;
- `negation`: "not" inserted after an auxiliary, an existing negation removed, or "never" before a past verb;
- `relation`: a verb or relation word replaced by its opposite (won → lost, rose → fell, before → after);
- `other-document`: a sentence of another document;
- `addition`: a faithful sentence with something unsupported added (a clause of another document, an
  attribution, an age or a time the document does not give).

Everything is deterministic for a seed. Names are found with `text.analyze`: a word capitalized inside a
sentence is a name; in text that is lower-cased throughout (the XSum and CNN/DM files of the QAGS set are), a
content word that occurs in few of the documents stands in for a name. Nothing here reads a summary or a label.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from faithforge.core.errors import UserError
from faithforge.evaluation.text_analysis import DAYS, MONTHS, STOPWORDS, analyze

FAITHFUL_KINDS = ("extract", "compress", "reorder")
UNFAITHFUL_KINDS = ("entity", "roles", "number", "date", "negation", "relation", "other-document", "addition")
KINDS = FAITHFUL_KINDS + UNFAITHFUL_KINDS

#: Sentences shorter or longer than this (in words) are not used as hypotheses.
MIN_WORDS, MAX_WORDS = 6, 60

_AUXILIARIES = ("is", "was", "are", "were", "has", "have", "had", "will", "would", "can", "could", "should",
                "did", "does", "do", "must", "might")
_NEGATIONS = re.compile(r"\s+(not|never)\b|n't\b", re.IGNORECASE)
_RELATIONS = (
    ("won", "lost"), ("win", "lose"), ("wins", "loses"), ("bought", "sold"), ("buy", "sell"),
    ("increased", "decreased"), ("rose", "fell"), ("rise", "fall"), ("higher", "lower"), ("more", "fewer"),
    ("before", "after"), ("arrested", "released"), ("opened", "closed"),
    ("accepted", "rejected"), ("approved", "rejected"), ("allowed", "banned"), ("gave", "received"),
    ("killed", "injured"), ("hired", "fired"), ("started", "ended"), ("began", "finished"),
    ("first", "last"), ("largest", "smallest"), ("biggest", "smallest"), ("best", "worst"),
    ("supported", "opposed"), ("support", "oppose"), ("agreed", "refused"), ("found", "lost"),
    ("attacked", "defended"), ("beat", "lost to"), ("signed", "released"), ("cut", "raised"),
    ("guilty", "innocent"), ("dead", "alive"), ("early", "late"), ("above", "below"),
    ("men", "women"), ("man", "woman"), ("husband", "wife"), ("son", "daughter"), ("father", "mother"),
    ("boy", "girl"), ("north", "south"), ("east", "west"), ("young", "old"),
)
_RELATION_MAP = {**{a: b for a, b in _RELATIONS}, **{b: a for a, b in _RELATIONS if " " not in b}}
_NUMBER_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty",
                 "fifty", "hundred")
_RELATIVE = ("today", "yesterday", "tomorrow", "tonight")
_TITLES = frozenset({"mr", "mrs", "ms", "miss", "dr", "sir", "lord", "lady", "captain", "coach", "manager",
                     "president", "minister", "chancellor", "judge", "professor", "prof", "st", "striker",
                     "midfielder", "defender", "goalkeeper", "chairman", "boss", "senator", "governor"})
_ORDINAL_WORDS = ("second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


@dataclass(frozen=True)
class TrainingExample:
    premise: str
    hypothesis: str
    label: int
    """1: the premise supports the hypothesis; 0: it does not."""
    kind: str
    document: str
    """The id of the document the premise comes from."""


@dataclass
class _Doc:
    id: str
    sentences: list[str]
    words: list[int]
    names: list[str] = field(default_factory=list)


def document_hash(text: str) -> str:
    """SHA-256 of a document's UTF-8 text: how a trained judge's lineage names its training documents."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _same_case(original: str, replacement: str) -> str:
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    if original.islower():
        return replacement.lower()
    return replacement


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[1:2].islower() or len(text) < 2 else text


def _name_spans(sentence: str, names: set[str]) -> list[tuple[int, int, str]]:
    """(start, end, text) of each name mention: consecutive name words joined into one mention."""
    analysis = analyze(sentence)
    spans: list[tuple[int, int, str]] = []
    for unit in analysis.units:
        if unit.kind != "word" or unit.text.lower() not in names:
            continue
        if spans and sentence[spans[-1][1]:unit.start] == " ":
            start = spans[-1][0]
            spans[-1] = (start, unit.end, sentence[start:unit.end])
        else:
            spans.append((unit.start, unit.end, unit.text))
    return spans


class CorruptionBuilder:
    """Builds examples from a set of documents; every random choice comes from one `random.Random(seed)`."""

    def __init__(self, documents: Sequence[tuple[str, str]], *, seed: int = 0, premise_words: int = 110):
        if len(documents) < 2:
            raise UserError(f"training a judge needs at least 2 documents (got {len(documents)}); a sentence of "
                            f"another document is one of the unsupported kinds")
        if premise_words < 2 * MIN_WORDS:
            raise UserError(f"premise_words must be at least {2 * MIN_WORDS} (got {premise_words})")
        self.seed = seed
        self.premise_words = premise_words
        self.docs: list[_Doc] = []
        for doc_id, text in documents:
            analysis = analyze(text)
            sentences = [analysis.sentence_text(i).strip() for i in range(len(analysis.sentence_spans))]
            sentences = [s for s in sentences if s]
            self.docs.append(_Doc(str(doc_id), sentences, [len(s.split()) for s in sentences]))
        self._find_names([text for _, text in documents])

    # names --------------------------------------------------------------------------------------
    def _find_names(self, texts: list[str]) -> None:
        """Words capitalized inside a sentence are names; in a corpus with (almost) none, rare content words."""
        capitalized: Counter[str] = Counter()
        document_frequency: Counter[str] = Counter()
        per_doc: list[set[str]] = []
        for text in texts:
            analysis = analyze(text)
            words = set()
            for unit in analysis.units:
                if unit.kind != "word" or not unit.text.isalpha() or len(unit.text) < 3:
                    continue
                low = unit.text.lower()
                if low in STOPWORDS or low in DAYS or low in MONTHS:
                    continue
                words.add(low)
                if unit.capitalized and not unit.sentence_initial:
                    capitalized[low] += 1
            per_doc.append(words)
            document_frequency.update(words)
        total_words = sum(len(w) for w in per_doc) or 1
        cased = len(capitalized) >= 0.02 * total_words
        rare = max(2, int(0.05 * len(texts)))
        for doc, text, words in zip(self.docs, texts, per_doc):
            if cased:  # and a capitalized first word right before a name ("Vera Novak, who ...")
                names = {w for w in words if w in capitalized}
                for first, second in re.findall(r"\b([A-Z][\w'-]+) ([A-Z][\w'-]+)", text):
                    if second.lower() in names and first.lower() in words:
                        names.add(first.lower())
                doc.names = sorted(names)
                continue
            # Lower-cased text: a rare word is taken for a name only where names stand: beside another rare
            # word ("claire tarplee"), after a title ("mr flower"), or before "'s" / "said" / "says".
            candidates = {w for w in words if document_frequency[w] <= rare}
            tokens = re.findall(r"[a-z][a-z'-]*|\S", text.lower())
            names = set()
            for i, token in enumerate(tokens):
                base = token[:-2] if token.endswith("'s") else token
                if base not in candidates:
                    continue
                before = tokens[i - 1] if i else ""
                after = tokens[i + 1] if i + 1 < len(tokens) else ""
                if (before in candidates or after in candidates or before in _TITLES or token.endswith("'s")
                        or after in ("'s", "said", "says", "told")):
                    names.add(base)
            doc.names = sorted(names)
        self.cased = cased

    # the sentence transforms --------------------------------------------------------------------
    def transform(self, kind: str, doc_index: int, sentence: str, rng: random.Random) -> str | None:
        """`sentence` changed by `kind`, or None when that kind does not apply to it."""
        method = getattr(self, "_" + kind.replace("-", "_"))
        out = method(doc_index, sentence, rng)
        if out is None:
            return None
        out = re.sub(r"\s+", " ", out).strip()
        if kind != "extract" and out == sentence.strip():
            return None
        return out

    def _extract(self, doc_index: int, sentence: str, rng: random.Random) -> str | None:
        return sentence

    def _compress(self, doc_index: int, sentence: str, rng: random.Random) -> str | None:
        options = []
        if re.search(r"\s*\([^()]{2,80}\)", sentence):
            options.append(re.sub(r"\s*\([^()]{2,80}\)", "", sentence, count=1))
        aside = re.search(r", (?:who|which|whose|where)\b[^,.;]{3,80},", sentence)
        if aside:
            options.append(sentence[:aside.start()] + sentence[aside.end() - 1:].lstrip(","))
        opening = re.match(r"^(?:On|In|At|Last|This|Earlier|Later|After|Before|During|Since|When|"
                           r"However|But|Meanwhile)\b[^,]{0,50}, (.+)$", sentence)
        if opening and len(opening.group(1).split()) >= MIN_WORDS - 2:
            options.append(_upper_first(opening.group(1)))
        attribution = re.search(r",? (?:he|she|they|it|police|officials|[a-z]+ (?:spokesman|spokeswoman)) "
                                r"(?:said|says|added|told [^.,]{1,30}|reported|confirmed)\.?\s*$", sentence)
        if attribution and len(sentence[:attribution.start()].split()) >= MIN_WORDS - 2:
            options.append(sentence[:attribution.start()].rstrip(" ,") + ".")
        middle = [m for m in re.finditer(r", ([^,.;\"“”]{3,40}),", sentence)
                  if not _NEGATIONS.search(m.group(1)) and len(m.group(1).split()) <= 6]
        if middle:
            m = rng.choice(middle)
            options.append(sentence[:m.start()] + sentence[m.end() - 1:].replace(",", "", 1))
        options = [o for o in options if len(o.split()) >= MIN_WORDS - 2]
        return rng.choice(options) if options else None

    def _reorder(self, doc_index: int, sentence: str, rng: random.Random) -> str | None:
        """Two conjuncts swapped where that cannot change the claim: two names, or two plural nouns."""
        names = set(self.docs[doc_index].names)

        def same_kind(a: str, b: str) -> bool:
            a, b = a.lower(), b.lower()
            if a in STOPWORDS or b in STOPWORDS or a == b:
                return False
            return (a in names and b in names) or (a.endswith("s") and b.endswith("s") and len(a) > 3
                                                   and len(b) > 3 and not a.endswith(("ss", "ous")))

        pairs = [m for m in re.finditer(r"\b([A-Za-z][\w'-]+) and ([A-Za-z][\w'-]+)\b", sentence)
                 if same_kind(m.group(1), m.group(2))]
        if not pairs:
            return None
        m = rng.choice(pairs)
        first, second = m.group(1), m.group(2)
        if m.start() == 0:  # the first word keeps the sentence's capital
            first, second = _lower_first(first), _upper_first(second)
        return sentence[:m.start()] + f"{second} and {first}" + sentence[m.end():]

    def _entity(self, doc_index: int, sentence: str, rng: random.Random) -> str | None:
        doc = self.docs[doc_index]
        spans = _name_spans(sentence, set(doc.names))
        if not spans:
            return None
        start, end, text = rng.choice(spans)
        present = {w.lower() for w in re.findall(r"[\w'-]+", sentence)}
        own = [n for n in doc.names if n not in present]
        others = [n for i, d in enumerate(self.docs) if i != doc_index for n in d.names[:50] if n not in present]
        pool = own if own and rng.random() < 0.6 else (others or own)
        if not pool:
            return None
        words = text.split()
        replacement = " ".join(_same_case(w, rng.choice(pool)) for w in words[:1]) if len(words) == 1 else \
            " ".join(_same_case(w, rng.choice(pool)) for w in words[-1:])
        if len(words) > 1:  # a two-word name: change its last word, or all of it
            replacement = " ".join(words[:-1] + [replacement]) if rng.random() < 0.5 else \
                " ".join(_same_case(w, rng.choice(pool)) for w in words)
        if replacement.lower() == text.lower():
            return None
        return sentence[:start] + replacement + sentence[end:]

    def _roles(self, doc_index: int, sentence: str, rng: random.Random) -> str | None:
        spans = _name_spans(sentence, set(self.docs[doc_index].names))
        distinct = []
        for span in spans:
            if all(span[2].lower() != other[2].lower() for other in distinct):
                distinct.append(span)
        if len(distinct) < 2:
            return None
        first, second = sorted(rng.sample(distinct, 2))
        a, b = first[2], second[2]
        return (sentence[:first[0]] + _same_case(a, b) + sentence[first[1]:second[0]] + _same_case(b, a)
                + sentence[second[1]:])

    def _number(self, doc_index: int, sentence: str, rng: random.Random) -> str | None:
        units = [u for u in analyze(sentence).units if u.kind == "number"]
        if not units:
            return None
        unit = rng.choice(units)
        text = unit.text
        digits = text.replace(",", "")
        if re.fullmatch(r"\d+", digits):
            value = int(digits)
            if 1900 <= value <= 2099:
                new = value + rng.choice([-5, -3, -2, -1, 1, 2, 3, 5])
            elif value < 10:
                new = rng.choice([v for v in range(2, 13) if v != value])
            else:
                new = max(1, int(value * rng.choice([0.5, 0.25, 2, 3, 10, 1.5])))
                new = new if new != value else value + 1
            replacement = f"{new:,}" if "," in text else str(new)
        elif re.fullmatch(r"\d+\.\d+", digits):
            replacement = f"{float(digits) * rng.choice([0.5, 2, 1.5]):.{len(digits.split('.')[1])}f}"
        elif re.fullmatch(r"\d+(st|nd|rd|th)", digits):
            value = int(re.match(r"\d+", digits).group(0)) + rng.choice([1, 2, 3])
            replacement = f"{value}{'th' if 10 <= value % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(value % 10, 'th')}"
        elif text.lower() in _ORDINAL_WORDS:
            replacement = _same_case(text, rng.choice([w for w in _ORDINAL_WORDS if w != text.lower()]))
        else:
            low = text.lower()
            choices = [w for w in _NUMBER_WORDS if w not in low.split()]
            replacement = _same_case(text, rng.choice(choices))
        if replacement == text:
            return None
        return sentence[:unit.start] + replacement + sentence[unit.end:]

    def _date(self, doc_index: int, sentence: str, rng: random.Random) -> str | None:
        units = [u for u in analyze(sentence).units if u.kind == "date" and u.text.isalpha()]
        if not units:
            return None
        unit = rng.choice(units)
        low = unit.text.lower()
        if unit.key.startswith("day:"):
            pool = [d for d in DAYS if d != unit.key[4:]]
        elif unit.key.startswith("month:"):
            pool = [m for m in MONTHS if m != unit.key[6:] and m not in ("may", "march")]
        else:
            pool = [r for r in _RELATIVE if r != low]
        return sentence[:unit.start] + _same_case(unit.text, rng.choice(pool)) + sentence[unit.end:]

    def _negation(self, doc_index: int, sentence: str, rng: random.Random) -> str | None:
        special = re.search(r"\b(can't|cannot|won't)\b", sentence, re.IGNORECASE)
        if special:
            positive = {"can't": "can", "cannot": "can", "won't": "will"}[special.group(1).lower()]
            return sentence[:special.start()] + _same_case(special.group(1), positive) + sentence[special.end():]
        if _NEGATIONS.search(sentence):
            return _NEGATIONS.sub("", sentence, count=1)
        auxiliaries = [m for m in re.finditer(r"\b(" + "|".join(_AUXILIARIES) + r")\b", sentence, re.IGNORECASE)]
        if auxiliaries:
            m = rng.choice(auxiliaries)
            return sentence[:m.end()] + " not" + sentence[m.end():]
        past = [m for m in re.finditer(r"\b(?:he|she|they|it|we|i|who) ([a-z]{3,}ed)\b", sentence, re.IGNORECASE)]
        if past:
            m = rng.choice(past)
            return sentence[:m.start(1)] + "never " + sentence[m.start(1):]
        return None

    def _relation(self, doc_index: int, sentence: str, rng: random.Random) -> str | None:
        hits = [m for m in re.finditer(r"\b[A-Za-z]+\b", sentence) if m.group(0).lower() in _RELATION_MAP]
        if not hits:
            return None
        m = rng.choice(hits)
        return sentence[:m.start()] + _same_case(m.group(0), _RELATION_MAP[m.group(0).lower()]) + sentence[m.end():]

    def _other_sentence(self, doc_index: int, rng: random.Random) -> str | None:
        for _ in range(8):
            other = rng.randrange(len(self.docs))
            if other == doc_index or not self.docs[other].sentences:
                continue
            usable = [s for s, n in zip(self.docs[other].sentences, self.docs[other].words)
                      if MIN_WORDS <= n <= MAX_WORDS]
            if usable:
                return rng.choice(usable)
        return None

    def _other_document(self, doc_index: int, sentence: str, rng: random.Random) -> str | None:
        return self._other_sentence(doc_index, rng)

    def _addition(self, doc_index: int, sentence: str, rng: random.Random) -> str | None:
        body = sentence.rstrip().rstrip(".!?\"'”’ ")
        if not body or body != sentence.rstrip()[:len(body)] or '"' in body[-3:]:
            return None
        end = sentence.rstrip()[len(body):] or "."
        doc_text = " ".join(self.docs[doc_index].sentences).lower()
        choice = rng.randrange(4)
        if choice == 0:
            other = self._other_sentence(doc_index, rng)
            if other is None:
                return None
            clause = re.split(r"[,;:]", other.rstrip(".!? "))[0]
            clause = " ".join(clause.split()[:14])
            if len(clause.split()) < 4:
                return None
            return f"{body}, and {_lower_first(clause)}{end}"
        if choice == 1:
            others = [n for i, d in enumerate(self.docs) if i != doc_index for n in d.names[:20]
                      if n not in doc_text]
            if not others:
                return None
            name = rng.choice(others)
            return f"{body}, according to {name.title() if self.cased else name}{end}"
        if choice == 2:
            spans = _name_spans(sentence, set(self.docs[doc_index].names))
            if not spans:
                return None
            start, _, text = rng.choice(spans)
            age = rng.choice([a for a in range(19, 86) if str(a) not in doc_text])
            lead = "the" if start else "The"
            return sentence[:start] + f"{lead} {age}-year-old " + text + sentence[start + len(text):]
        missing_days = [d for d in DAYS if d not in doc_text]
        if not missing_days:
            return None
        day = rng.choice(missing_days)
        return f"{body} on {day.title() if self.cased else day}{end}"

    # windows and the whole set ------------------------------------------------------------------
    def premise(self, doc_index: int, sentence_index: int, rng: random.Random) -> str:
        """Consecutive sentences of the document around `sentence_index`, at most `premise_words` words, the
        sentence at a random place in the window."""
        doc = self.docs[doc_index]
        start = end = sentence_index
        used = doc.words[sentence_index]
        lean = rng.random()
        while True:
            grow_left = start > 0 and (rng.random() < lean or end + 1 >= len(doc.sentences))
            nxt = start - 1 if grow_left else end + 1
            if nxt < 0 or nxt >= len(doc.sentences) or used + doc.words[nxt] > self.premise_words:
                break
            used += doc.words[nxt]
            start, end = (nxt, end) if grow_left else (start, nxt)
        return " ".join(doc.sentences[start:end + 1])

    def build(self, count: int, *, unfaithful_share: float = 0.5) -> list[TrainingExample]:
        """`count` examples, about `unfaithful_share` of them unsupported with the unsupported kinds equally
        often where they apply, taken round-robin over the documents so each document contributes."""
        if count < 1:
            raise UserError(f"the number of training examples must be at least 1 (got {count})")
        rng = random.Random(self.seed)
        candidates: list[list[int]] = []
        for doc in self.docs:
            usable = [i for i, n in enumerate(doc.words) if MIN_WORDS <= n <= MAX_WORDS]
            rng.shuffle(usable)
            candidates.append(usable)
        if not any(candidates):
            raise UserError(f"no document has a sentence of {MIN_WORDS}-{MAX_WORDS} words; train the judge on "
                            f"documents with ordinary prose")
        order = list(range(len(self.docs)))
        rng.shuffle(order)
        examples: list[TrainingExample] = []
        position = [0] * len(self.docs)
        kind_turn = 0
        stalled = 0
        while len(examples) < count and stalled < len(order):
            stalled = 0
            for doc_index in order:
                if len(examples) >= count:
                    break
                usable = candidates[doc_index]
                if not usable:
                    stalled += 1
                    continue
                sentence_index = usable[position[doc_index] % len(usable)]
                position[doc_index] += 1
                sentence = self.docs[doc_index].sentences[sentence_index]
                unfaithful = rng.random() < unfaithful_share
                kinds = list(UNFAITHFUL_KINDS if unfaithful else FAITHFUL_KINDS)
                if unfaithful:  # rotate the starting kind so each applies about equally often
                    kinds = kinds[kind_turn % len(kinds):] + kinds[:kind_turn % len(kinds)]
                    kind_turn += 1
                else:  # an extract half the time, otherwise a paraphrase where one applies
                    kinds = ["extract"] if rng.random() < 0.4 else rng.sample(["compress", "reorder"], 2) + ["extract"]
                for kind in kinds:
                    hypothesis = self.transform(kind, doc_index, sentence, rng)
                    if hypothesis is None:
                        continue
                    examples.append(TrainingExample(self.premise(doc_index, sentence_index, rng), hypothesis,
                                                    0 if unfaithful else 1, kind, self.docs[doc_index].id))
                    break
                if position[doc_index] >= 8 * len(usable):
                    candidates[doc_index] = []  # each sentence has been tried several times
        return examples


def build_examples(documents: Iterable[tuple[str, str]], count: int, *, seed: int = 0,
                   premise_words: int = 110) -> list[TrainingExample]:
    """`count` (premise, hypothesis, label) examples from (id, text) documents; the same for the same seed."""
    return CorruptionBuilder(list(documents), seed=seed, premise_words=premise_words).build(count)


def kind_counts(examples: Iterable[TrainingExample]) -> dict[str, int]:
    counts = Counter(e.kind for e in examples)
    return {kind: counts.get(kind, 0) for kind in KINDS}


__all__ = ["CorruptionBuilder", "FAITHFUL_KINDS", "KINDS", "TrainingExample", "UNFAITHFUL_KINDS",
           "build_examples", "document_hash", "kind_counts"]
