"""The grounded-qa task: deterministic, and an unanswerable question asks for a kind of fact its document never
states (so any such fact in an answer is an invention the grounding judge can see)."""

from __future__ import annotations

from faithforge.evaluation import get_judge
from faithforge.data.grounded_qa import ABSTAIN, DAYS, PLACES, generate_questions, make_question


def test_questions_are_deterministic_and_split_between_answerable_and_not():
    assert make_question("test", 3, 0) == make_question("test", 3, 0) != make_question("test", 3, 1)
    examples = list(generate_questions("train", 400, seed=0))
    unanswerable = [e for e in examples if not e.extra["answerable"]]
    assert 0.6 < len(unanswerable) / len(examples) < 0.8  # UNANSWERABLE_SHARE = 0.7
    assert len({e.id for e in examples}) == 400


def test_unanswerable_questions_ask_for_a_kind_the_document_never_states():
    judge = get_judge("grounding")
    for example in generate_questions("val", 300, seed=0):
        document = example.source.split("\nQuestion: ")[0]
        kind = example.extra["kind"]
        if example.extra["answerable"]:
            assert example.key_facts[0] in document and example.key_facts[0] in example.faithful
            assert not judge.judge(example.source, example.faithful).hallucinated
            continue
        assert example.faithful == ABSTAIN and example.key_facts == ()
        if kind == "day":
            assert not any(day in document for day in DAYS)
        elif kind == "place":
            assert not any(place in document for place in PLACES)
        else:
            assert not any(ch.isdigit() for ch in document)
        assert judge.judge(example.source, example.hallucinated).hallucinated  # the invented answer is caught
        assert not judge.judge(example.source, ABSTAIN).hallucinated
