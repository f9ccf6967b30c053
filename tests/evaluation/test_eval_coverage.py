"""Length, coverage, refusals and evasive non-answers beside the rate: hand-computed cases, and the report."""

from __future__ import annotations

import pytest

from faithforge.evaluation import EvalItem, compare_reports, evaluate_single, markdown_report
from faithforge.evaluation.coverage import coverage_share, is_evasive, is_refusal, key_content, measure

ARTICLE = ("Ivo delivered the books to Goran on Monday. Vera sold the hats at the market. Nia painted the chairs "
           "blue. The weather was cold all week.")


def test_coverage_is_the_share_of_the_leads_content_words_or_of_the_reference():
    assert key_content(ARTICLE) == ("Ivo delivered the books to Goran on Monday. Vera sold the hats at the market. "
                                    "Nia painted the chairs blue.")  # the first three sentences
    # lead content words: ivo deliver book goran monday vera sold hat market nia paint chair blue = 13
    assert coverage_share(ARTICLE, "Ivo delivered the books on Monday.") == pytest.approx(4 / 13)
    assert coverage_share(ARTICLE, "It was cold.") == 0.0  # "cold" is in the article, not in its lead
    # with a reference, the reference's content words are the key content: vera, sold, hats
    assert coverage_share(ARTICLE, "Vera sold hats.", reference="Vera sold the hats.") == 1.0


@pytest.mark.parametrize("text", ["", "  ", "I'm sorry, I cannot summarize this.", "I am sorry, but no.",
                                  "As an AI, I can't read documents.", "The document does not say when.",
                                  "Unfortunately, I am unable to help."])
def test_refusals(text):
    assert is_refusal(text) and not is_evasive(ARTICLE, text)


@pytest.mark.parametrize("text,key_facts,evasive", [
    ("The article discusses a story.", (), True),        # nothing of the source
    ("This text talks about Vera.", (), True),            # one source word
    ("Ivo delivered the books on Monday.", (), False),
    ("Ivo delivered the books to Goran.", ("Monday",), True),          # circular: no asked fact, nothing new
    ("Ivo delivered the books on the day he delivered them.", ("Monday",), True),
    ("Ivo delivered the books on Friday.", ("Monday",), False),        # a wrong answer: invented, not evasive
    ("Ivo delivered the books on Monday.", ("Monday",), False),
    ("Ivo delivered books to Goran. Vera sold hats at the market.", ("Monday",), False),  # a summary, not an answer
])
def test_evasive_non_answers(text, key_facts, evasive):
    assert is_evasive(ARTICLE, text, key_facts) is evasive and not is_refusal(text)


def test_the_report_puts_length_coverage_refusals_and_evasion_beside_the_rate():
    items = [EvalItem(id=str(i), source=ARTICLE) for i in range(4)]
    before = ["Ivo delivered the books to Goran on Monday. Vera sold the hats.", "Nia painted the chairs blue.",
              "Vera sold the hats at the market in Paris.", "Ivo delivered the books on Monday."]
    after = ["The article discusses a story.", "I'm sorry, I cannot help.", "Nia painted the chairs.",
             "Ivo delivered the books."]
    b = evaluate_single(items, before, "grounding", label="before")
    a = evaluate_single(items, after, "grounding", label="after")
    assert (b.refusals, b.evasive, a.refusals, a.evasive) == (0, 0, 1, 1)
    assert [r.length for r in a.items] == [5, 5, 4, 4]
    assert a.coverage == pytest.approx(sum(measure(ARTICLE, s).coverage for s in after) / 4)
    c = compare_reports(b, a, bootstrap_samples=200)
    assert c.length.n == 4 and c.length.difference == pytest.approx(a.mean_summary_length - b.mean_summary_length)
    assert c.coverage.difference < 0  # saying less shows
    text = markdown_report(c)
    assert "## Length and coverage beside the rate" in text
    assert "| after | 4.5 | " in text and "| 1 of 4 | 1 of 4 |" in text
    assert "coverage -" in text or "coverage −" in text
    assert c.to_dict()["after"]["items"][1]["refusal"] is True
