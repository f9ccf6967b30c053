"""The grounding judge on crafted examples: what it must flag, what it must accept, and why."""

from __future__ import annotations

import pytest

from faithforge.evaluation import GroundingJudge, get_judge
from faithforge.evaluation.text_analysis import analyze
from faithforge.core.errors import UserError

SOURCE = "The weather was mild . On Monday , Alice bought 3 lamps in Paris . Nobody seemed surprised ."


@pytest.fixture()
def judge() -> GroundingJudge:
    return GroundingJudge()


def kinds(verdict) -> list[tuple[str, str]]:
    return [(f.kind, f.text) for f in verdict.flags]


@pytest.mark.parametrize("summary", [
    "Alice bought 3 lamps in Paris on Monday .",
    "Alice bought three lamps in Paris on Monday.",           # number written as a word, prose punctuation
    "On Monday, ALICE purchased 3 Lamps in paris.",          # entity case, synonym verb, plural case
    "Alice 's purchase : three lamps , in Paris .",          # detached possessive
    "In Paris, Alice's lamps numbered three.",                # supported paraphrase
    "",                                                       # saying nothing states nothing unsupported
])
def test_supported_summaries_are_not_flagged(judge, summary):
    verdict = judge.judge(SOURCE, summary)
    assert not verdict.hallucinated, kinds(verdict)
    assert verdict.flags == ()


def test_invented_day_is_flagged_with_its_span(judge):
    summary = "Alice bought 3 lamps in Paris on Tuesday ."
    verdict = judge.judge(SOURCE, summary)
    assert verdict.hallucinated
    (flag,) = verdict.flags
    assert (flag.kind, flag.text, flag.sentence_index) == ("date", "Tuesday", 0)
    assert summary[flag.span[0]:flag.span[1]] == "Tuesday"
    assert "Monday" in flag.reason  # the reason says what the source does state


def test_day_invented_for_a_source_without_one(judge):
    verdict = judge.judge("Alice bought 3 lamps in Paris .", "Alice bought 3 lamps in Paris on Friday .")
    assert kinds(verdict) == [("date", "Friday")]
    assert "none" in verdict.flags[0].reason


def test_added_entity_is_flagged_even_at_sentence_start(judge):
    assert kinds(judge.judge(SOURCE, "Alice bought 3 lamps in Rome .")) == [("entity", "Rome")]
    assert kinds(judge.judge(SOURCE, "Bob bought 3 lamps in Paris .")) == [("entity", "Bob")]


def test_multiword_name_must_match_contiguously(judge):
    source = "Alice flew to New Jersey and then to York ."
    assert not judge.judge(source, "Alice flew to New Jersey .").hallucinated
    assert kinds(judge.judge(source, "Alice flew to New York .")) == [("entity", "New York")]


def test_changed_number_in_any_spelling(judge):
    assert kinds(judge.judge(SOURCE, "Alice bought four lamps in Paris .")) == [("number", "four")]
    assert kinds(judge.judge(SOURCE, "Alice bought 30 lamps .")) == [("number", "30")]


def test_number_formats_are_normalized(judge):
    source = "The city spent 1,000 dollars on twenty-one benches and 2.50 on paint."
    summary = "It spent 1000 dollars on 21 benches and 2.5 on paint ."
    assert not judge.judge(source, summary).hallucinated
    assert not judge.judge("He paid one thousand two hundred and five euros.", "He paid 1205 euros.").hallucinated


def test_sentence_initial_common_words_are_not_names(judge):
    source = "officials said the bridge opened after repairs ."
    assert not judge.judge(source, "Officials said the bridge opened . However , repairs came first .").hallucinated


def test_pronoun_one_is_not_a_count(judge):
    assert not judge.judge("Nobody came to the party .", "No one came to the party .").hallucinated
    assert kinds(judge.judge("Nobody came .", "One guest came .")) == [("number", "One")]


def test_unsupported_quote_is_flagged(judge):
    source = 'The mayor said "we will rebuild" on Monday .'
    assert not judge.judge(source, 'The mayor said "we will rebuild" .').hallucinated
    assert kinds(judge.judge(source, 'The mayor said "we will win" .')) == [("quote", '"we will win"')]


def test_per_sentence_results(judge):
    verdict = judge.judge(SOURCE, "Alice bought 3 lamps . She paid on Sunday . It was in Paris .")
    assert [s.supported for s in verdict.sentences] == [True, False, True]
    assert verdict.unsupported_sentences == 1
    assert verdict.flags[0].sentence_index == 1
    assert verdict.score == pytest.approx(2 / 3)


def test_analysis_keys():
    keys = [u.key for u in analyze("Alice's 3rd of twenty-one lamps, May 5.").units if u.kind != "punct"]
    assert keys == ["alice", "ord:3", "of", "#21", "lamp", "month:may", "#5"]


def test_judge_registry():
    assert get_judge("grounding").name == "grounding"
    with pytest.raises(UserError, match="unknown judge 'oracle'; choose one of grounding, grounded-qa, nli, llm"):
        get_judge("oracle")
    with pytest.raises(UserError, match="needs a checkpoint"):
        get_judge("nli")


CRAFTED_SOURCE = "On Monday , Alice bought 12 clocks in Graz . The shop had opened in March ."


@pytest.mark.parametrize("case, summary, hallucinated, flagged", [
    ("faithful paraphrase", "In March a shop opened ; on Monday Alice purchased twelve clocks there .", False, []),
    ("swapped entity", "On Monday , Bruno bought 12 clocks in Graz .", True, ["Bruno"]),
    ("changed number", "Alice bought 21 clocks in Graz .", True, ["21"]),
    # Its documented blind spots: these are hallucinations the grounding judge does NOT flag.
    ("negation (missed)", "Alice did not buy clocks in Graz .", False, []),
    ("changed relation (missed)", "On Monday , Alice stole 12 clocks in Graz .", False, []),
])
def test_crafted_pairs_hand_checked(judge, case, summary, hallucinated, flagged):
    verdict = judge.judge(CRAFTED_SOURCE, summary)
    assert verdict.hallucinated is hallucinated, case
    assert [f.text for f in verdict.flags] == flagged, case


def test_measured_limits_are_stated():
    from faithforge.evaluation.grounding import MEASURED_LIMITS

    assert "balanced accuracy 0.60" in MEASURED_LIMITS and "recall 0.24" in MEASURED_LIMITS
    assert "0.37" in MEASURED_LIMITS and "negations" in MEASURED_LIMITS
    import faithforge.evaluation.grounding as grounding

    assert "balanced accuracy 0.60" in grounding.__doc__ and "recall 0.24" in grounding.__doc__
