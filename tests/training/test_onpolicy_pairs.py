"""On-policy pairs from the tiny model: sampled through the engine, judged, best vs worst past a margin."""

from __future__ import annotations

import pytest
from tests.fixtures.dpo_support import load

from faithforge.core.errors import UserError
from faithforge.evaluation import get_judge
from faithforge.training.onpolicy_pairs import build_onpolicy_pairs, score_summary
from faithforge.data.pairs import validate_pairs
from faithforge.data.teacher import generate_split, prompt_messages

SETTINGS = dict(k=4, temperature=1.5, seed=11, max_new_tokens=12, margin=0.5)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load(tiny_model_dir)


def test_pairs_prefer_the_more_faithful_sample_and_every_source_is_accounted_for(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    # 12 sources, sampling seed 13: since the one vocabulary (issue 26) seed 11 on 6 sources gave no pair
    examples = list(generate_split("train", 12, 3, 0.5))
    pairs, report = build_onpolicy_pairs(model, tokenizer, examples, **{**SETTINGS, "seed": 13})

    assert pairs, "the seeded tiny model must give at least one pair, or this test checks nothing"
    assert report.sources == 12 and report.samples == 12 * SETTINGS["k"]
    assert report.built == len(pairs)
    assert report.built + sum(report.dropped_sources.values()) == report.sources
    validate_pairs(pairs, "on-policy")
    by_id = {e.id: e for e in examples}
    judge = get_judge("grounding")
    for pair, scores in zip(pairs, report.scores):
        example = by_id[pair["source_id"]]
        assert pair["kind"] == "on-policy" and pair["id"] == scores["id"]
        assert pair["prompt"] == prompt_messages(example.source)
        chosen = score_summary(judge, example.source, pair["chosen"][0]["content"], example.facts.key_facts(), 1.0)
        rejected = score_summary(judge, example.source, pair["rejected"][0]["content"], example.facts.key_facts(), 1.0)
        assert chosen["score"] - rejected["score"] >= SETTINGS["margin"]
        assert chosen == scores["chosen"] and rejected == scores["rejected"]
    assert not model.training


def test_same_seed_same_pairs_and_an_unreachable_margin_drops_every_source_with_a_reason(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    examples = list(generate_split("train", 6, 3, 0.5))
    first, _ = build_onpolicy_pairs(model, tokenizer, examples, **SETTINGS)
    again, _ = build_onpolicy_pairs(model, tokenizer, examples, **SETTINGS)
    assert first == again

    pairs, report = build_onpolicy_pairs(model, tokenizer, examples, **{**SETTINGS, "margin": 3.0})
    assert pairs == [] and report.built == 0
    assert sum(report.dropped_sources.values()) == 6
    assert all("margin" in reason or "fewer than 2" in reason for reason in report.dropped_sources)
    assert any("margin 3.0" in reason for reason in report.dropped_sources)


def test_works_on_the_lora_policy_and_on_dict_rows(tiny_model_dir):
    from tests.fixtures.dpo_support import lora_policy

    policy, tokenizer = lora_policy(tiny_model_dir)
    policy.train()
    rows = [e.to_dict() for e in generate_split("train", 3, 3, 0.5)]
    pairs, report = build_onpolicy_pairs(policy, tokenizer, rows, **SETTINGS)
    assert report.samples == 3 * SETTINGS["k"] and policy.training  # mode restored
    assert {p["source_id"] for p in pairs} <= {r["id"] for r in rows}


def test_bad_settings_are_refused(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    examples = list(generate_split("train", 1, 3, 0.5))
    with pytest.raises(UserError, match="at least 2 samples"):
        build_onpolicy_pairs(model, tokenizer, examples, k=1)
    with pytest.raises(UserError, match="temperature > 0"):
        build_onpolicy_pairs(model, tokenizer, examples, temperature=0.0)
    with pytest.raises(UserError, match="lacks 'source'"):
        build_onpolicy_pairs(model, tokenizer, [{"id": "x"}])


def test_a_document_over_the_samplers_context_is_named_with_its_id():
    """llama.cpp's sampler said "prompt 164 has 30051 tokens …: raise n_ctx", naming neither the document nor a
    setting that exists (an attack, 2026-12-07). The sampler stands in for llama.cpp's check (tested with the
    real GGUF in tests/engine/test_gguf_sampler.py)."""
    from faithforge.engine.errors import PromptTooLongError

    class TooLong:
        def generate_batch(self, prompts, sampling, batch_size, progress):
            raise PromptTooLongError(5, 9000, sampling.max_new_tokens, 8192)

    rows = [{"id": f"doc-{n}", "source": f"Ann{n} went to Rome."} for n in range(3)]
    with pytest.raises(UserError, match=r"document doc-1 is 9,000 tokens .* context of 8,192: split it"):
        build_onpolicy_pairs(None, None, rows, k=4, sampler=TooLong(), judge="grounding")


def _scored(hallucinated: bool, recall: float | None) -> dict:
    return {"judgeable": True, "hallucinated": hallucinated, "recall": recall,
            "score": (0.0 if hallucinated else 1.0) + (recall or 0.0)}


def test_on_an_answerable_question_a_faithful_non_answer_is_not_chosen_over_a_wrong_answer():
    from faithforge.training.onpolicy_pairs import ChosenRules, OnPolicyReport, _best_and_worst

    # The SmolLM2 failure: no sample answers; the non-answer (score 1.0) beat the wrong answer (score 0.0).
    non_answers = {"Tomas ordered the bikes.": _scored(False, 0.0), "Tomas ordered the bikes in Rome.": _scored(True, 0.0)}
    report = OnPolicyReport()
    best, worst = _best_and_worst(non_answers, 0.5, ChosenRules(0.0), report)  # the old rule pairs them
    assert best[0] == "Tomas ordered the bikes." and worst[0] == "Tomas ordered the bikes in Rome."
    assert _best_and_worst(non_answers, 0.5, ChosenRules(1.0), report) is None
    assert report.dropped_sources == {"no sample may be chosen (recall below 1, or a question)": 1}

    # With an answer among the samples, the answer is chosen and the worst sample rejected.
    answered = {**non_answers, "Tomas ordered the bikes in Lyon.": _scored(False, 1.0)}
    best, worst = _best_and_worst(answered, 0.5, ChosenRules(1.0), OnPolicyReport())
    assert best[0] == "Tomas ordered the bikes in Lyon." and worst[0] == "Tomas ordered the bikes in Rome."

    # An answer the judge flags (an extra unsupported detail) still beats a non-answer as chosen: it answers.
    flagged = {"The document does not say.": _scored(False, 0.0), "In Lyon, France.": _scored(True, 1.0),
               "In Rome.": _scored(True, 0.0)}
    best, worst = _best_and_worst(flagged, 0.5, ChosenRules(1.0), OnPolicyReport())
    assert best[0] == "In Lyon, France." and worst[0] == "In Rome."


def test_under_faithful_chosen_a_flagged_answer_is_never_chosen():
    from faithforge.training.onpolicy_pairs import ChosenRules, OnPolicyReport, _best_and_worst

    # SmolLM2 seed 3: "Quinn painted the clocks on Saturday in Oslo." states the asked city and invents a day;
    # it outscores a wrong city (2 - 1 = 1 point) and, chosen, teaches the invented day with the answer.
    samples = {"Quinn painted the clocks on Saturday in Oslo.": _scored(True, 1.0),
               "Quinn painted the clocks in Rome.": _scored(True, 0.0),
               "Quinn painted the clocks in Oslo.": _scored(False, 1.0)}
    best, worst = _best_and_worst(samples, 0.5, ChosenRules(1.0, faithful_chosen=True), OnPolicyReport())
    assert best[0] == "Quinn painted the clocks in Oslo." and worst[0] == "Quinn painted the clocks in Rome."

    del samples["Quinn painted the clocks in Oslo."]
    report = OnPolicyReport()
    assert _best_and_worst(samples, 0.5, ChosenRules(1.0), report)[0][0] == "Quinn painted the clocks on Saturday in Oslo."
    assert _best_and_worst(samples, 0.5, ChosenRules(1.0, faithful_chosen=True), report) is None
    assert report.dropped_sources == {"no sample may be chosen (recall below 1, a question, or flagged)": 1}


def test_sources_without_key_facts_are_paired_as_before_under_min_chosen_recall():
    from faithforge.training.onpolicy_pairs import ChosenRules, OnPolicyReport, _best_and_worst

    unanswerable = {"The document does not say.": _scored(False, None), "On Monday.": _scored(True, None)}
    best, worst = _best_and_worst(unanswerable, 0.5, ChosenRules(1.0), OnPolicyReport())
    assert best[0] == "The document does not say." and worst[0] == "On Monday."


def test_min_chosen_recall_reaches_the_builder_and_drops_sources_with_a_reason(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    # Key facts no sample can contain: under min_chosen_recall 1.0 no sample may be chosen, so no source pairs.
    rows = [{**e.to_dict(), "key_facts": ["zqxj-never-generated"]} for e in generate_split("train", 6, 3, 0.5)]
    strict, report = build_onpolicy_pairs(model, tokenizer, rows, **SETTINGS, min_chosen_recall=1.0)
    assert strict == [] and sum(report.dropped_sources.values()) == 6
    assert report.dropped_sources["no sample may be chosen (recall below 1, or a question)"] >= 1
    assert set(report.dropped_sources) <= {"no sample may be chosen (recall below 1, or a question)",
                                           "fewer than 2 distinct judged samples"}


def test_a_question_is_never_chosen():
    from faithforge.training.onpolicy_pairs import ChosenRules, OnPolicyReport, _best_and_worst

    echo = {"On which day did Nia buy the drums?": _scored(False, None), "On Monday.": _scored(True, None),
            "Nia bought the drums.": _scored(False, None)}
    best, worst = _best_and_worst(echo, 0.5, ChosenRules(0.0), OnPolicyReport())
    assert best[0] == "Nia bought the drums." and worst[0] == "On Monday."
    only_echo = {"On which day did Nia buy the drums?": _scored(False, None), "On Monday.": _scored(True, None)}
    report = OnPolicyReport()
    assert _best_and_worst(only_echo, 0.5, ChosenRules(0.0), report) is None
    # "On Monday." may be chosen but is also the worst: best and worst differ by less than the margin.
    assert sum(report.dropped_sources.values()) == 1


def test_an_omission_pair_rejects_the_faithful_non_answer_when_the_answer_was_sampled():
    from faithforge.training.onpolicy_pairs import _omission_rival

    candidates = {"Ivo painted the chairs in Quito.": _scored(False, 1.0), "Ivo painted the chairs in Rome.":
                  _scored(True, 0.0), "Ivo painted the chairs.": _scored(False, 0.0),
                  "Ivo painted the chairs, it seems.": _scored(False, 0.0)}
    best = ("Ivo painted the chairs in Quito.", candidates["Ivo painted the chairs in Quito."])
    worst = ("Ivo painted the chairs in Rome.", candidates["Ivo painted the chairs in Rome."])
    rival = _omission_rival(candidates, (best, worst), 0.5)
    assert rival is not None and rival[0] in ("Ivo painted the chairs.", "Ivo painted the chairs, it seems.")
    assert rival[1]["recall"] == 0.0 and not rival[1]["hallucinated"]

    # No faithful non-answer besides the rejected one, or nothing to recall: no second pair.
    assert _omission_rival({best[0]: best[1], worst[0]: worst[1]}, (best, worst), 0.5) is None
    unanswerable = {"Nia bought the drums.": _scored(False, None), "On Monday.": _scored(True, None),
                    "Nia bought drums.": _scored(False, None)}
    picked = (("Nia bought the drums.", unanswerable["Nia bought the drums."]), ("On Monday.", unanswerable["On Monday."]))
    assert _omission_rival(unanswerable, picked, 0.5) is None


def test_the_builder_adds_omission_pairs_on_answerable_sources_only(model_and_tokenizer, monkeypatch):
    """The samples are fixed (a random-init model cannot be made to sample an answer on demand); the judge, the
    scoring and the pairing are the real ones, on grounded-qa questions."""
    from types import SimpleNamespace

    from faithforge.data.grounded_qa import make_question
    from faithforge.training import onpolicy_pairs

    unanswerable, answerable = make_question("train", 0, 0), make_question("train", 3, 0)
    assert answerable.key_facts == ("Dakar",) and unanswerable.key_facts == ()
    samples = {unanswerable.source: ["Yara repaired the clocks.", "Yara repaired the clocks on Friday.",
                                     "On which day did Yara repair the clocks?", "Yara repaired the clocks."],
               answerable.source: ["Kofi sold the plates in Dakar.", "Kofi sold the plates in Oslo.",
                                   "Kofi sold the plates.", "Kofi sold the plates in Dakar."]}
    monkeypatch.setattr(onpolicy_pairs, "_sample", lambda model, tokenizer, prompts, *rest: [
        SimpleNamespace(text=samples[prompt][i % 4]) for i, prompt in enumerate(prompts)])
    model, tokenizer = model_and_tokenizer
    pairs, report = build_onpolicy_pairs(model, tokenizer, [unanswerable, answerable], **SETTINGS,
                                         min_chosen_recall=1.0, omission_pairs=True)
    made = [(p["source_id"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs]
    assert made == [(unanswerable.id, "Yara repaired the clocks.", "Yara repaired the clocks on Friday."),
                    (answerable.id, "Kofi sold the plates in Dakar.", "Kofi sold the plates in Oslo."),
                    (answerable.id, "Kofi sold the plates in Dakar.", "Kofi sold the plates.")]
    assert report.built == 3 and report.omission_pairs == 1 and report.to_dict()["omission_pairs"] == 1
    assert report.dropped_samples == {"duplicate sample": 2}

    without, _ = build_onpolicy_pairs(model, tokenizer, [unanswerable, answerable], **SETTINGS, min_chosen_recall=1.0)
    assert [p["id"] for p in without] == [p["id"] for p in pairs[:2]]


def test_the_builder_passes_faithful_chosen_on(model_and_tokenizer, monkeypatch):
    """Fixed samples (as above), the real grounded-qa judge: the answer with an invented day is not chosen."""
    from types import SimpleNamespace

    from faithforge.data.grounded_qa import make_question
    from faithforge.training import onpolicy_pairs

    answerable = make_question("train", 3, 0)  # Kofi sold 4 plates in Dakar; asked: in which city
    # No faithful answer among the samples: only the flagged one states the city.
    texts = ["Kofi sold the plates in Dakar on Monday.", "Kofi sold the plates in Oslo.", "Kofi sold the plates.",
             "Kofi sold the plates in Oslo."]
    monkeypatch.setattr(onpolicy_pairs, "_sample", lambda model, tokenizer, prompts, *rest: [
        SimpleNamespace(text=texts[i % 4]) for i, _ in enumerate(prompts)])
    model, tokenizer = model_and_tokenizer
    settings = {**SETTINGS, "judge": "grounded-qa", "min_chosen_recall": 1.0}
    lenient, _ = build_onpolicy_pairs(model, tokenizer, [answerable], **settings)
    strict, report = build_onpolicy_pairs(model, tokenizer, [answerable], **settings, faithful_chosen=True)
    assert [p["chosen"][0]["content"] for p in lenient] == ["Kofi sold the plates in Dakar on Monday."]
    assert strict == [] and list(report.dropped_sources) == ["no sample may be chosen (recall below 1, a question, "
                                                             "or flagged)"]


def test_pairs_judge_is_its_own_setting_or_the_evaluations():
    from faithforge.core.config import PipelineConfig
    from faithforge.evaluation.grounded_qa_judge import GroundedQaJudge
    from faithforge.evaluation.grounding import GroundingJudge
    from faithforge.stages.pairs import _pairs_judge

    assert isinstance(_pairs_judge(PipelineConfig()), GroundingJudge)
    config = PipelineConfig.model_validate({"pairs": {"judge": "grounded-qa"}})
    assert isinstance(_pairs_judge(config), GroundedQaJudge)


class _GradedJudge:
    """Flags every summary (as `likelihood` flags most long real-news summaries) but scores each in degrees."""

    name = "graded"

    def judge(self, source: str, summary: str, *, truncated: bool = False):
        from faithforge.evaluation.verdict import Verdict

        return Verdict(judge=self.name, hallucinated=True, score=-float(len(summary.split())))


def test_judge_score_ranks_samples_a_verdict_cannot_tell_apart():
    source, key_facts = "Ada sold 3 lamps in Oslo .", []
    short = score_summary(_GradedJudge(), source, "Ada sold lamps .", key_facts, 1.0, "judge-score")
    long = score_summary(_GradedJudge(), source, "Ada sold 3 lamps in Oslo on Monday .", key_facts, 1.0, "judge-score")
    assert short["score"] - long["score"] == 5.0  # by verdict both would score 0: no pair
    by_verdict = score_summary(_GradedJudge(), source, "Ada sold lamps .", key_facts, 1.0)
    assert by_verdict["score"] == 0.0


def test_judge_score_refuses_a_judge_without_a_score():
    from faithforge.core.errors import UserError
    from faithforge.evaluation.grounding import GroundingJudge

    with pytest.raises(UserError, match="gives no support score"):
        score_summary(GroundingJudge(), "Ada sold 3 lamps .", "Ada sold 3 lamps .", [], 1.0, "judge-score")
