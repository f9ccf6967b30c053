"""Judge artefacts seen on a real model (issue 14, item 4): quote spacing, and a name cut off by the token limit;
and the pipeline's judge plumbing (a judge list from the config, truncation flags from the generator)."""

from __future__ import annotations

from dataclasses import dataclass

from faithforge.core.config import EvaluateConfig
from faithforge.evaluation import EvalItem, GroundingJudge, evaluate_pair, evaluate_single, get_judge, markdown_report
from faithforge.evaluation.text_analysis import drop_truncated_word
from faithforge.evaluation.judge_options import judge_options
from faithforge.stages.evaluate import summarize_with_backend

SOURCE = 'Anna said "I moved to Graz ." Then she left for Vienna .'


def test_a_quote_is_not_flagged_for_spacing_or_for_ending_a_sentence():
    judge = GroundingJudge()
    for summary in ('Anna said: "I moved to Graz." Then "she left".',
                    'Anna said "I moved to Graz ." Then she left .',
                    "Anna said “I moved to Graz.” She left for Vienna."):
        verdict = judge.judge(SOURCE + ' Later " she left " quietly .', summary)
        assert not verdict.hallucinated, (summary, verdict.flags)
    changed = judge.judge(SOURCE, 'Anna said "I moved to Linz." Then she left.')
    assert [(f.kind, f.text, f.sentence_index) for f in changed.flags] == [("entity", "Linz", 0),
                                                                         ("quote", '"I moved to Linz."', 0)]


def test_a_truncated_last_word_is_not_a_claim():
    judge = GroundingJudge()
    cut = "Anna moved to Graz and then left for Vie"
    assert judge.judge(SOURCE, cut).hallucinated  # read as a finished summary, "Vie" is an invented name
    verdict = judge.judge(SOURCE, cut, truncated=True)
    assert not verdict.hallucinated and verdict.truncated
    # only the last word is spared: an invented name before it still counts
    assert judge.judge(SOURCE, "Anna moved to Linz and then left for Vie", truncated=True).flags[0].text == "Linz"
    assert drop_truncated_word("left for Vie") == "left for"
    assert drop_truncated_word("left for Vienna.") == "left for Vienna."  # ends with punctuation: nothing cut
    assert drop_truncated_word("paid 1,0") == "paid"


def test_reports_count_truncated_summaries_apart():
    items = [EvalItem(id="a", source=SOURCE), EvalItem(id="b", source=SOURCE)]
    report = evaluate_single(items, ["Anna left for Vie", "Anna left for Vienna ."], "grounding",
                             truncated=[True, False], label="after")
    assert (report.n_truncated, report.hallucinated) == (1, 0)
    assert report.items[0].truncated and not report.items[1].truncated
    pair = evaluate_pair(items, ["Anna left .", "Anna left ."], ["Anna left .", "Anna left ."], bootstrap_samples=50)
    assert "Cut off by the token limit" not in markdown_report(pair)
    with_cut = pair.model_copy(update={"after": report})
    assert "Cut off by the token limit (their last word is not judged as a claim): after 1 of 2." in \
        markdown_report(with_cut)


@dataclass
class _Answer:
    text: str
    truncated: bool


class _Backend:
    def __init__(self):
        self.answers = [_Answer("Anna left for Vie", True), _Answer("Anna left .", False)]

    def chat(self, messages, *, schema, max_tokens, temperature, seed):
        return self.answers.pop(0)


def test_served_summaries_report_their_truncation():
    cut: list[bool] = []
    texts = summarize_with_backend(_Backend(), ["s1", "s2"], max_new_tokens=8, seed=0, truncated=cut)
    assert texts == ["Anna left for Vie", "Anna left ."] and cut == [True, False]


def test_the_configured_judge_list_reaches_the_pipeline_judge():
    cfg = EvaluateConfig(judge=["grounding", "llm"], llm_backend="openai", llm_base_url="http://127.0.0.1:9")
    judge = get_judge(cfg.judge, **judge_options(cfg))
    assert judge.name == "grounding+llm" and [j.name for j in judge.judges] == ["grounding", "llm"]
    single = EvaluateConfig()
    assert get_judge(single.judge, **judge_options(single)).name == "grounding"  # a single string still works


def test_the_stage_output_carries_the_judge_accuracy_line():
    from faithforge.stages.evaluate import _judge_accuracy

    items = [EvalItem(id="a", source=SOURCE)]
    report = evaluate_pair(items, ["Anna left ."], ["Bob left ."], bootstrap_samples=50)
    assert _judge_accuracy(report).startswith("Judge `grounding` has no calibration on record")
