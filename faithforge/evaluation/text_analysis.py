"""Text analysis shared by every judge and metric: tokens, sentences and normalized keys.

Everything that compares a summary with its source goes through `analyze`, so "3" and "three",
"1,000" and "1000", "Lamps" and "lamp", "Alice 's" and "Alice" get the same key in the judge, in
key-fact recall and in content retention alike.

Works on ordinary prose and on word-tokenized text with spaces around punctuation
("On Monday , Alice bought 3 lamps in Paris .").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

UnitKind = Literal["number", "date", "word", "punct"]

_TOKEN = re.compile(
    r"""
      \d+(?:[.,]\d+)*(?:st|nd|rd|th)?\b      # 3  1,000  3.5  3rd
    | [^\W\d_]+(?:[-'’][^\W\d_]+)*            # words, with inner hyphens or apostrophes
    | ['’][sS]\b                              # a detached possessive clitic ("Alice 's")
    | \S                                      # any other single character
    """,
    re.VERBOSE,
)

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9,
}
_TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_ORDINAL_WORDS = {
    # "first" and "second" are left out: "at first", "a second" are rarely counts.
    "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10,
    "eleventh": 11, "twelfth": 12,
}
# "one" is a pronoun in "no one", "one of them", "the one": not a count there.
_ONE_PRONOUN_BEFORE = {"no", "any", "every", "some", "each", "this", "that", "which", "the", "anyone"}
_ONE_PRONOUN_AFTER = {"of", "another", "'s", "’s"}

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
          "october", "november", "december")
RELATIVE_DAYS = ("today", "yesterday", "tomorrow", "tonight")
# Abbreviations count only when capitalized ("Sat", "Mar"): lower-case "sat", "mar", "sun" are words.
_DATE_ABBREVIATIONS = {
    "mon": "monday", "tue": "tuesday", "tues": "tuesday", "wed": "wednesday", "thu": "thursday",
    "thur": "thursday", "thurs": "thursday", "fri": "friday", "sat": "saturday", "sun": "sunday",
    "jan": "january", "feb": "february", "mar": "march", "apr": "april", "jun": "june", "jul": "july",
    "aug": "august", "sep": "september", "sept": "september", "oct": "october", "nov": "november",
    "dec": "december",
}
# Month names that are also ordinary words count as months only when capitalized mid-sentence.
_AMBIGUOUS_MONTHS = {"may", "march"}

#: Closed-class words and common sentence openers: never names, never content.
STOPWORDS = frozenset("""
a an the and or but nor so yet for of in on at by to from with without within into onto upon about above
below over under after before during since until till while as than then there here where when why how
what which who whom whose that this these those it its it's he him his she her hers they them their theirs
we us our ours you your yours i me my mine is am are was were be been being has have had having do does
did done not no yes all any both each every few more most other some such only own same too very can
could shall should will would may might must also just even still already again ever never always often
sometimes meanwhile however therefore thus hence moreover furthermore instead otherwise besides although
though because if unless whether nobody somebody someone anyone everyone everybody nothing something
anything everything none many much several one's 's ’s said says say according mr mrs ms dr
""".split())

_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "prof", "jr", "sr", "vs", "etc", "inc", "ltd",
                            "co", "no", "gen", "col", "lt", "sgt", "capt", "gov", "sen", "rep"})
_SENTENCE_END = frozenset({".", "!", "?", "…"})
QUOTE_CHARS = frozenset({'"', "“", "”", "«", "»", "„"})


@dataclass(frozen=True)
class Token:
    """One surface token with its character span in the analyzed text."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Unit:
    """A token, or several number-word tokens read as one number, with its normalized key.

    `key` is what comparisons use: `#3` for any spelling of three, `ord:3` for "3rd"/"third",
    `day:monday`, `month:may`, `rel:yesterday`, the stem of a word, or the character of punctuation.
    """

    kind: UnitKind
    key: str
    text: str
    start: int
    end: int
    sentence: int
    capitalized: bool
    sentence_initial: bool

    @property
    def is_content(self) -> bool:
        """A unit that carries meaning: numbers, dates and non-stopword words."""
        return self.kind in ("number", "date") or (self.kind == "word" and self.key not in STOPWORDS)


@dataclass(frozen=True)
class Analysis:
    """A text cut into sentences and normalized units."""

    text: str
    units: tuple[Unit, ...]
    sentence_spans: tuple[tuple[int, int], ...]

    def sentence_text(self, index: int) -> str:
        start, end = self.sentence_spans[index]
        return self.text[start:end]

    def sentence_units(self, index: int) -> list[Unit]:
        return [u for u in self.units if u.sentence == index]

    @property
    def keys(self) -> list[str]:
        return [u.key for u in self.units]

    def content_keys(self) -> list[str]:
        return [u.key for u in self.units if u.is_content]


def tokenize(text: str) -> list[Token]:
    return [Token(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def stem(word: str) -> str:
    """Lower-case and strip the simple inflections summaries vary on: possessive and plural."""
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    elif w.endswith("'"):
        w = w[:-1]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("xes", "ches", "shes", "sses", "zes", "oes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def _decimal_key(digits: str) -> str | None:
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", digits):
        digits = digits.replace(",", "")
    elif digits.count(",") == 1 and "." not in digits:
        digits = digits.replace(",", ".")  # decimal comma ("1,5")
    try:
        value = Decimal(digits)
    except InvalidOperation:
        return None
    text = format(value.normalize(), "f")
    return text


def _digit_key(text: str) -> str | None:
    match = re.fullmatch(r"([\d.,]+?)(st|nd|rd|th)?", text)
    if not match:
        return None
    number = _decimal_key(match.group(1))
    if number is None:
        return None
    return f"ord:{number}" if match.group(2) else f"#{number}"


def _number_word_kind(word: str) -> str | None:
    if word in _UNITS:
        return "unit"
    if word in _TEENS:
        return "teen"
    if word in _TENS:
        return "tens"
    if word in _SCALES:
        return "scale"
    return None


def _parse_number_words(words: list[str], start: int) -> tuple[int, int] | None:
    """Read the longest number phrase at `words[start]`; returns (value, tokens consumed)."""
    total, current, i, prev = 0, 0, start, None
    consumed_any = False
    while i < len(words):
        word = words[i]
        parts = word.split("-") if "-" in word else [word]
        kinds = [_number_word_kind(p) for p in parts]
        if word == "and" and consumed_any and i + 1 < len(words) and _number_word_kind(words[i + 1]) \
                and prev == "scale":
            i += 1
            continue
        if word == "a" and not consumed_any and i + 1 < len(words) and words[i + 1] in _SCALES:
            current, prev, consumed_any, i = 1, "unit", True, i + 1
            continue
        if any(k is None for k in kinds):
            break
        # A hyphenated token is one word: it is read whole or not at all ("twenty-one" is 21, but
        # "one-two" is no single number), so the state before it is restored when it stops midway.
        saved = (total, current, prev, consumed_any)
        stop = False
        for part, kind in zip(parts, kinds):
            if consumed_any and ((prev in ("unit", "teen") and kind in ("unit", "teen", "tens"))
                                 or (prev == "tens" and kind in ("tens", "teen"))):
                stop = True  # "five six" are two numbers, not eleven
                break
            if kind in ("unit", "teen", "tens"):
                current += {**_UNITS, **_TEENS, **_TENS}[part]
            elif part == "hundred":
                current = max(current, 1) * 100
            else:
                total += max(current, 1) * _SCALES[part]
                current = 0
            prev, consumed_any = kind, True
        if stop:
            total, current, prev, consumed_any = saved
            break
        i += 1
    if not consumed_any or i == start:
        return None
    while i > start and words[i - 1] == "and":
        i -= 1
    return total + current, i - start


_OPENING_QUOTES = frozenset({"“", "«", "„"})
_CLOSING_QUOTES = frozenset({"”", "»"})


def _split_sentences(tokens: list[Token]) -> list[int]:
    """Sentence index of every token. A sentence ends at . ! ? (not after an abbreviation or initial).

    A closing quote right after the end mark stays with its sentence (`He said "I left Graz." Then …`):
    otherwise it would open a quote in the next sentence and pair with that sentence's next quote mark.
    """
    index, out = 0, []
    straight_open = False  # inside a "…" quote (straight marks open and close alternately)
    ended = False  # the previous token ended a sentence; the split waits for closing quotes
    for i, tok in enumerate(tokens):
        closes = tok.text in _CLOSING_QUOTES or (tok.text == '"' and straight_open)
        if ended and not closes:
            index += 1
            ended = False
        out.append(index)
        if tok.text == '"':
            straight_open = not straight_open
        if tok.text in _SENTENCE_END:
            prev = tokens[i - 1].text if i else ""
            is_abbreviation = tok.text == "." and (prev.lower() in _ABBREVIATIONS
                                                   or (len(prev) == 1 and prev.isupper()))
            nxt = tokens[i + 1].text if i + 1 < len(tokens) else ""
            if not is_abbreviation and nxt not in _SENTENCE_END:
                ended = True
    return out


def analyze(text: str) -> Analysis:
    """Tokenize, split into sentences and normalize `text`."""
    tokens = tokenize(text)
    sentence_of = _split_sentences(tokens)
    lowered = [t.text.lower() for t in tokens]
    units: list[Unit] = []
    seen_word_in_sentence: set[int] = set()
    i = 0
    while i < len(tokens):
        tok, sent = tokens[i], sentence_of[i]
        initial = tok.text[0].isalpha() and sent not in seen_word_in_sentence
        if tok.text[0].isalnum():
            seen_word_in_sentence.add(sent)
        capitalized = tok.text[0].isupper()
        kind, key, span_end = _classify(tokens, lowered, i, initial=initial, capitalized=capitalized)
        end_tok = tokens[span_end - 1]
        units.append(Unit(kind=kind, key=key, text=text[tok.start:end_tok.end], start=tok.start,
                          end=end_tok.end, sentence=sent, capitalized=capitalized, sentence_initial=initial))
        i = max(span_end, i + 1)  # always advance, whatever a parser reports (a 0-token parse hung here)
    spans: dict[int, tuple[int, int]] = {}
    for tok, sent in zip(tokens, sentence_of):
        start, _ = spans.get(sent, (tok.start, tok.end))
        spans[sent] = (start, tok.end)
    ordered = tuple(spans[k] for k in sorted(spans))
    # Renumber sentences densely (a text that opens with "." would otherwise skip index 0).
    remap = {old: new for new, old in enumerate(sorted(spans))}
    units = [Unit(**{**u.__dict__, "sentence": remap[u.sentence]}) for u in units]
    return Analysis(text=text, units=tuple(units), sentence_spans=ordered)


def _classify(tokens: list[Token], lowered: list[str], i: int, *, initial: bool, capitalized: bool
              ) -> tuple[UnitKind, str, int]:
    """(kind, key, end token index) of the unit starting at token `i`: a number (digits, ordinals, number
    words, which may span several tokens), a date word, a stemmed word, or punctuation."""
    tok, low = tokens[i], lowered[i]
    is_word = tok.text[0].isalpha()
    if tok.text[0].isdigit():
        key = _digit_key(tok.text)
        return ("number", key, i + 1) if key else ("word", low, i + 1)
    if is_word and low in _ORDINAL_WORDS:
        return "number", f"ord:{_ORDINAL_WORDS[low]}", i + 1
    if is_word and _number_word_kind(low.split("-")[0]) is not None or (
            low == "a" and i + 1 < len(tokens) and lowered[i + 1] in _SCALES):
        parsed = _parse_number_words(lowered, i)
        if low == "one" and ((i and lowered[i - 1] in _ONE_PRONOUN_BEFORE)
                             or (i + 1 < len(tokens) and lowered[i + 1] in _ONE_PRONOUN_AFTER)):
            parsed = None
        if parsed is None:
            return "word", stem(low), i + 1
        value, consumed = parsed
        return "number", f"#{value}", i + consumed
    if is_word and low in DAYS:
        return "date", f"day:{low}", i + 1
    if is_word and low in MONTHS and (low not in _AMBIGUOUS_MONTHS or (capitalized and not initial)):
        return "date", f"month:{low}", i + 1
    if is_word and low in RELATIVE_DAYS:
        return "date", f"rel:{low}", i + 1
    if is_word and capitalized and low in _DATE_ABBREVIATIONS and not initial:
        full = _DATE_ABBREVIATIONS[low]
        return "date", (f"day:{full}" if full in DAYS else f"month:{full}"), i + 1
    if is_word or tok.text.lower() in ("'s", "’s"):
        return "word", stem(low), i + 1
    return "punct", tok.text, i + 1


def contains_sequence(haystack: list[str], needle: list[str]) -> bool:
    """True when `needle` occurs as a contiguous run in `haystack` (an empty needle always does)."""
    if not needle:
        return True
    n = len(needle)
    first = needle[0]
    for i in range(len(haystack) - n + 1):
        if haystack[i] == first and haystack[i:i + n] == needle:
            return True
    return False


def drop_truncated_word(summary: str) -> str:
    """`summary` without its final word when it ends mid-word or mid-number (cut off by a token limit).

    A summary that ends with punctuation keeps everything; one that ends in a word or number loses that
    word, which may be cut short ("moved to Gra") and so is not a claim. The result is a prefix of
    `summary`, so character spans found in it are valid in `summary` too.
    """
    tokens = tokenize(summary)
    if not tokens or not tokens[-1].text[0].isalnum():
        return summary
    return summary[:tokens[-1].start].rstrip()


def sentences_of(text: str) -> list[str]:
    """The sentences of `text` as `analyze` splits them (the unit every judge scores)."""
    analysis = analyze(text)
    return [analysis.sentence_text(i) for i in range(len(analysis.sentence_spans))]
