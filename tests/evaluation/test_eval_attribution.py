"""The grounded-qa judge: values attached to the wrong person are flagged; faithful answers and abstentions are not.

Cases written by hand from one document (not taken from the labeled set the judge is measured on)."""

from faithforge.data.grounded_qa import make_question
from faithforge.evaluation.grounded_qa_judge import GroundedQaJudge, parse_source

SOURCE = ("Document: Ada bought 5 lamps in Oslo on Monday. The street was quiet. Bruno painted 3 mugs in Lima on "
          "Friday. Chen sold 7 hats in Riga on Sunday.\nQuestion: On which day did Ada buy the lamps?")


def _flagged(answer: str, source: str = SOURCE) -> bool:
    return GroundedQaJudge().judge(source, answer).hallucinated


def test_reads_every_persons_facts_and_the_asked_person():
    doc = parse_source(SOURCE)
    assert doc.asked == "Ada"
    assert (doc.people["Bruno"].verb, doc.people["Bruno"].count, doc.people["Bruno"].item,
            doc.people["Bruno"].place, doc.people["Bruno"].day) == ("painted", "3", "mugs", "Lima", "Friday")
    assert parse_source("no document here") is None


def test_faithful_answers_and_abstentions_pass():
    for answer in ("Ada bought the lamps on Monday.", "On Monday.", "The document does not say.",
                   "Bruno painted 3 mugs in Lima, and Ada bought 5 lamps on Monday."):
        assert not _flagged(answer), answer


def test_values_of_another_person_are_flagged():
    assert _flagged("Ada bought the lamps on Friday.")  # Bruno's day: the grounding judge alone misses it
    assert _flagged("Ada painted the lamps on Monday.")  # Bruno's verb
    assert _flagged("Ada bought the mugs on Monday.")  # Bruno's item
    assert _flagged("Ada bought 7 lamps.")  # Chen's count
    assert _flagged("On Sunday.")  # no name: about the asked person, whose day is Monday


def test_a_person_as_a_place_and_invented_relations_are_flagged():
    assert _flagged("Ada bought the lamps in the city of Chen.")
    assert _flagged("Ada bought the lamps on the day Bruno painted 3 mugs.")
    assert not _flagged("On the day Ada bought the lamps, it was Monday.")  # a tautology, not a relation


def test_what_the_grounding_judge_flags_stays_flagged_and_a_cut_word_is_no_claim():
    assert _flagged("Ada bought the lamps on Tuesday.")  # a day the document never names
    assert not GroundedQaJudge().judge(SOURCE, "Ada bought the lamps on Monday in Ri", truncated=True).hallucinated


def test_generated_task_documents_parse():
    for index in range(30):
        example = make_question("val", index, seed=5)
        doc = parse_source(example.source)
        assert doc is not None and len(doc.people) == 3 and doc.asked in doc.people
        if example.extra["answerable"]:
            assert not _flagged(example.faithful, example.source), example.faithful
        else:
            assert _flagged(example.hallucinated, example.source), example.hallucinated
