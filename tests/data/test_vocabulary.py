"""One vocabulary for the synthetic tasks: the toy teacher and the grounded-qa task draw from
faithforge/data/vocabulary.py, and no other module keeps its own copy (the two copies had drifted: 'Split' in one,
'Nantes' in the other; counts as text in one, numbers in the other)."""

from __future__ import annotations

from pathlib import Path

from faithforge.data import grounded_qa, teacher, vocabulary
from tests.fixtures.source_scan import copies_of

ROOT = Path(__file__).resolve().parents[2]


def test_both_tasks_use_the_shared_lists():
    assert teacher.NAMES is vocabulary.NAMES and teacher.PLACES is vocabulary.PLACES
    assert teacher.DAYS is vocabulary.DAYS and teacher.ITEMS is vocabulary.ITEMS
    assert teacher.COUNTS == tuple(str(n) for n in vocabulary.COUNTS)
    assert teacher.VERBS == tuple(past for past, _ in vocabulary.VERBS)
    assert grounded_qa.NAMES is vocabulary.NAMES and grounded_qa.PLACES is vocabulary.PLACES
    assert grounded_qa.COUNTS is vocabulary.COUNTS and grounded_qa.VERBS is vocabulary.VERBS


def test_names_and_places_are_unambiguous_capitalized_words():
    words = vocabulary.NAMES + vocabulary.PLACES
    assert len(set(words)) == len(words)  # a name is never also a place
    assert all(w[:1].isupper() and w.isalpha() for w in words)
    ordinary = {"split", "bath", "nice", "reading", "mobile", "hope", "may", "will", "rose"}  # words that are places
    assert not {w.lower() for w in words} & ordinary


def test_generated_examples_use_only_the_vocabulary():
    toy = teacher.generate_split("train", 40, seed=3, omitted_fact_share=0.5)
    assert {e.facts.place for e in toy} <= set(vocabulary.PLACES)
    assert {e.facts.count for e in toy} <= {str(n) for n in vocabulary.COUNTS}
    questions = grounded_qa.generate_questions("train", 40, seed=3)
    places = {w.strip(".,") for q in questions for w in q.source.split() if w.strip(".,") in vocabulary.PLACES}
    assert places and places <= set(vocabulary.PLACES)


def test_no_other_module_keeps_a_copy_of_a_vocabulary_list():
    owner = [ROOT / "faithforge" / "data" / "vocabulary.py"]
    for words in (vocabulary.NAMES, vocabulary.PLACES, vocabulary.ITEMS):
        assert copies_of(set(words), ["faithforge"], at_least=3, owners=owner) == []
