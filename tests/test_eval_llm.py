"""The llm judge with a scripted fake chat backend."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from faithforge.errors import UserError
from faithforge.evaluation import EvalItem, evaluate_single, get_judge
from faithforge.evaluation.llm import VERDICT_SCHEMA, LlmJudge, parse_verdict

SOURCE = "On Monday , Alice bought 3 lamps in Paris ."


@dataclass
class _Result:
    text: str
    truncated: bool = False


class FakeBackend:
    """Replies from a script and records every request."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.calls: list[dict] = []

    def chat(self, messages, *, schema=None, max_tokens=1024, temperature=0.0, seed=None):
        self.calls.append({"messages": messages, "schema": schema, "max_tokens": max_tokens,
                           "temperature": temperature, "seed": seed})
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply if isinstance(reply, _Result) else _Result(reply)


def claims(*pairs) -> str:
    return json.dumps({"unsupported_claims": [{"claim": c, "reason": r} for c, r in pairs]})


def test_faithful_verdict_and_request_shape():
    backend = FakeBackend(claims())
    verdict = LlmJudge(backend, seed=5).judge(SOURCE, "Alice bought 3 lamps .")
    assert not verdict.hallucinated and verdict.judgeable
    (call,) = backend.calls
    assert call["schema"] == VERDICT_SCHEMA and call["seed"] == 5 and call["temperature"] == 0.0
    assert SOURCE in call["messages"][-1]["content"]


def test_unsupported_claim_is_located():
    summary = "Alice bought 3 lamps . She paid on Friday ."
    backend = FakeBackend("```json\n" + claims(("on friday", "the source says Monday")) + "\n```")
    verdict = LlmJudge(backend).judge(SOURCE, summary)
    assert verdict.hallucinated
    (flag,) = verdict.flags
    assert (flag.text, flag.kind, flag.sentence_index) == ("on Friday", "claim", 1)
    assert summary[flag.span[0]:flag.span[1]] == "on Friday"
    assert [s.supported for s in verdict.sentences] == [True, False]


def test_unlocatable_claim_still_counts():
    verdict = LlmJudge(FakeBackend(claims(("a purchase on Friday", "invented")))).judge(SOURCE, "Alice shopped .")
    assert verdict.hallucinated and verdict.flags[0].span is None


def test_invalid_json_is_retried_once():
    backend = FakeBackend("Sure! Here it is: {", claims(("Rome", "not in source")))
    verdict = LlmJudge(backend).judge(SOURCE, "Alice bought 3 lamps in Rome .")
    assert verdict.hallucinated and len(backend.calls) == 2
    assert "invalid" in backend.calls[1]["messages"][-1]["content"]


def test_two_invalid_answers_make_the_item_unjudgeable():
    backend = FakeBackend("nope", json.dumps({"claims": []}))
    verdict = LlmJudge(backend).judge(SOURCE, "Alice bought 3 lamps .")
    assert not verdict.judgeable and "after 2 attempts" in verdict.error
    assert "unsupported_claims" in verdict.error


def test_truncated_answer_is_invalid():
    backend = FakeBackend(_Result('{"unsupported_claims": [', truncated=True), _Result('{"unsupported_claims": [',
                                                                                       truncated=True))
    assert not LlmJudge(backend).judge(SOURCE, "x").judgeable


class _Busy(Exception):
    fatal = False


class _NoModel(Exception):
    fatal = True


def test_backend_errors():
    assert not LlmJudge(FakeBackend(_Busy("503"))).judge(SOURCE, "x").judgeable
    with pytest.raises(_NoModel):
        LlmJudge(FakeBackend(_NoModel("model 'x' not found"))).judge(SOURCE, "x")


def test_unjudgeable_items_are_counted_in_reports():
    items = [EvalItem(id=str(i), source=SOURCE) for i in range(3)]
    backend = FakeBackend(claims(), "bad", "bad", claims(("Rome", "invented")))
    report = evaluate_single(items, ["a .", "b .", "Rome ."], get_judge("llm", backend=backend))
    assert (report.n_judged, report.n_unjudgeable, report.hallucinated, report.rate) == (2, 1, 1, 0.5)


def test_parse_verdict_and_bad_backend():
    assert parse_verdict('{"unsupported_claims": []}') == []
    with pytest.raises(ValueError, match=r'unsupported_claims\[0\] needs a string "claim"'):
        parse_verdict('{"unsupported_claims": [{"reason": "x"}]}')
    with pytest.raises(UserError, match="chat"):
        LlmJudge(object())
