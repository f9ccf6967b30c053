"""The llm judge as a claim checker: a scripted in-process backend, the loopback fakes, and the real llama.cpp
server (through the session fixture `llama_server`, when llama-cpp-python is installed)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.fixtures.fake_judge_servers import LlamaCppLikeOpenAI, rule_judge
from tests.fixtures.fake_llm_servers import FakeOpenAI
from faithforge.core.errors import UserError
from faithforge.evaluation import EvalItem, evaluate_single, get_judge
from faithforge.evaluation.llm import CHECK_SCHEMA, CLAIMS_SCHEMA, LlmJudge, locate_claim, parse_check, parse_claims

SOURCE = "On Monday , Alice bought 3 lamps in Paris . The weather was mild ."


@dataclass
class _Result:
    text: str
    truncated: bool = False


class ScriptedBackend:
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


def claims(*texts) -> str:
    return json.dumps({"claims": list(texts)})


def check(supported: bool, reason: str = "") -> str:
    return json.dumps({"supported": supported, "reason": reason})


def test_extracts_claims_then_checks_each_against_the_source():
    summary = "Alice bought 3 lamps . She paid on Friday ."
    backend = ScriptedBackend(claims("Alice bought 3 lamps", "paid on Friday"), check(True),
                              check(False, "the source says Monday"))
    verdict = LlmJudge(backend, seed=5).judge(SOURCE, summary)
    extract, first, second = backend.calls
    assert extract["schema"] == CLAIMS_SCHEMA and summary in extract["messages"][-1]["content"]
    assert first["schema"] == second["schema"] == CHECK_SCHEMA and SOURCE in first["messages"][-1]["content"]
    assert first["messages"][-1]["content"].endswith("CLAIM:\nAlice bought 3 lamps")
    assert (first["seed"], first["temperature"]) == (5, 0.0)
    assert verdict.hallucinated and verdict.judgeable
    (flag,) = verdict.flags
    assert (flag.text, flag.kind, flag.sentence_index, flag.reason) == ("paid on Friday", "claim", 1,
                                                                        "the source says Monday")
    assert summary[flag.span[0]:flag.span[1]] == "paid on Friday"
    assert [s.supported for s in verdict.sentences] == [True, False]


def test_claims_are_located_ignoring_case_spacing_and_punctuation():
    assert locate_claim("He moved to Graz . Then left .", "moved to Graz.") == (3, 16)  # "moved to Graz"
    assert locate_claim("Alice bought 3 lamps.", "ALICE BOUGHT") == (0, 12)
    assert locate_claim("Alice bought 3 lamps.", "Bob") is None
    assert locate_claim("Alice bought 3 lamps.", "  ") is None


def test_an_unlocatable_claim_still_counts_and_names_its_sentence():
    backend = ScriptedBackend(claims("a purchase on Friday"), check(False, "invented"))
    verdict = LlmJudge(backend).judge(SOURCE, "Alice shopped . The purchase was on Friday .")
    assert verdict.hallucinated and verdict.flags[0].span is None and verdict.flags[0].sentence_index == 1


def test_no_claims_found_means_each_sentence_is_checked():
    backend = ScriptedBackend(claims(), check(True), check(True))
    verdict = LlmJudge(backend).judge(SOURCE, "Alice bought lamps . It was mild .")
    assert not verdict.hallucinated and len(backend.calls) == 3
    assert backend.calls[2]["messages"][-1]["content"].endswith("CLAIM:\nIt was mild .")


def test_an_empty_summary_is_faithful_without_a_call():
    backend = ScriptedBackend()
    assert not LlmJudge(backend).judge(SOURCE, "  ").hallucinated and backend.calls == []


def test_invalid_json_is_retried_once_with_the_problem():
    backend = ScriptedBackend("Sure! Here it is: {", claims("lamps in Rome"), check(False, "Paris"))
    verdict = LlmJudge(backend).judge(SOURCE, "Alice bought 3 lamps in Rome .")
    assert verdict.hallucinated and len(backend.calls) == 3
    assert "invalid: not valid JSON" in backend.calls[1]["messages"][-1]["content"]


def test_unjudgeable_steps_are_counted_apart():
    extraction_fails = ScriptedBackend("nope", json.dumps({"claim": []}))
    verdict = LlmJudge(extraction_fails).judge(SOURCE, "Alice bought 3 lamps .")
    assert not verdict.judgeable and "claim extraction" in verdict.error and '"claims" list' in verdict.error
    check_fails = ScriptedBackend(claims("Alice bought lamps"), "??", "??")
    assert not LlmJudge(check_fails).judge(SOURCE, "Alice bought lamps .").judgeable
    # an unsupported claim decides the item even when another claim could not be checked
    mixed = ScriptedBackend(claims("lamps in Rome", "Alice bought"), check(False, "Paris"), "??", "??")
    verdict = LlmJudge(mixed).judge(SOURCE, "Alice bought lamps in Rome .")
    assert verdict.judgeable and verdict.hallucinated


def test_truncated_answers_are_invalid():
    backend = ScriptedBackend(_Result('{"claims": [', truncated=True), _Result('{"claims": [', truncated=True))
    assert not LlmJudge(backend).judge(SOURCE, "x .").judgeable


class _Busy(Exception):
    fatal = False


class _NoModel(Exception):
    fatal = True


class _FormatRefused(Exception):
    """What a backend without negotiation raises for llama.cpp's refusal of json_schema."""


def test_backend_errors():
    assert not LlmJudge(ScriptedBackend(_Busy("503"))).judge(SOURCE, "x .").judgeable
    with pytest.raises(_NoModel):
        LlmJudge(ScriptedBackend(_NoModel("model 'x' not found"))).judge(SOURCE, "x .")


def test_a_refused_response_format_drops_the_schema_and_is_remembered():
    backend = ScriptedBackend(_FormatRefused("HTTP 500: response_format.type Input should be 'text' or 'json_object'"),
                              claims("Alice bought lamps"), check(True), claims("x"), check(True))
    judge = LlmJudge(backend)
    assert not judge.judge(SOURCE, "Alice bought lamps .").hallucinated
    assert [c["schema"] for c in backend.calls] == [CLAIMS_SCHEMA, None, None]
    assert judge.structured_output == "prompt"
    judge.judge(SOURCE, "x .")
    assert [c["schema"] for c in backend.calls[3:]] == [None, None]


def test_unjudgeable_items_are_counted_in_reports():
    items = [EvalItem(id=str(i), source=SOURCE) for i in range(3)]
    backend = ScriptedBackend(claims("a"), check(True), "bad", "bad", claims("Rome"), check(False, "invented"))
    report = evaluate_single(items, ["a .", "b .", "Rome ."], get_judge("llm", backend=backend))
    assert (report.n_judged, report.n_unjudgeable, report.hallucinated, report.rate) == (2, 1, 1, 0.5)


def test_parsers_and_a_bad_backend():
    assert parse_claims('{"claims": [" a ", ""]}') == ["a"]
    assert parse_check('```json\n{"supported": "no", "reason": "r"}\n```') == (False, "r")
    with pytest.raises(ValueError, match='boolean "supported"'):
        parse_check('{"supported": 3}')
    with pytest.raises(UserError, match="chat"):
        LlmJudge(object())


CRAFTED = [  # (summary, hallucinated, flagged text) — hand-checked against SOURCE under the fake's rule
    ("Alice bought 3 lamps in Paris .", False, []),                       # faithful
    ("On Monday Alice did not buy lamps .", True, ["On Monday Alice did not buy lamps ."]),  # negation
    ("Bob bought 3 lamps in Paris .", True, ["Bob bought 3 lamps in Paris ."]),            # swapped entity
    ("Alice bought 5 lamps . The weather was mild .", True, ["Alice bought 5 lamps ."]),  # changed number
]


@pytest.mark.parametrize("summary, hallucinated, flagged", CRAFTED)
def test_loopback_llama_cpp_like_server_negotiates_and_judges(summary, hallucinated, flagged):
    from faithforge.backends import make_backend

    with LlamaCppLikeOpenAI(default=rule_judge) as server:
        backend = make_backend("openai", "qwen3:8b", base_url=server.url, stream=False)
        judge = LlmJudge(backend)
        verdict = judge.judge(SOURCE, summary)
        assert verdict.judgeable and verdict.hallucinated is hallucinated
        assert [f.text for f in verdict.flags] == flagged
        assert server.formats[0] == "json_schema"  # tried first, refused with HTTP 500 …
        assert "json_schema" not in server.formats[1:]  # … and never again: the mode that worked is remembered
        assert judge.structured_output == "json_object"  # the backend's negotiation (issue 15) settled there


def test_loopback_streaming_openai_server():
    from faithforge.backends import make_backend

    with FakeOpenAI(default=rule_judge) as server:
        judge = get_judge("llm", backend=make_backend("openai", "qwen3:8b", base_url=server.url))
        verdict = judge.judge(SOURCE, "Alice bought 3 lamps in Lima .")
        assert verdict.hallucinated and verdict.flags[0].reason == "not in the source: lima"


def test_real_llama_cpp_server_returns_verdicts(llama_server):
    """SmolLM2-135M as a judge: its verdicts are not the point (it is far too small), the protocol is —
    structured output negotiated with a real server, both steps parsed, every item judged or counted apart."""
    from faithforge.backends import make_backend

    backend = make_backend("openai", llama_server.model, base_url=llama_server.root_url, stream=False)
    judge = LlmJudge(backend, max_tokens=256, max_claims=3)
    items = [EvalItem(id=str(i), source=SOURCE) for i in range(2)]
    report = evaluate_single(items, ["Alice bought 3 lamps in Paris .", "Bob sold 9 maps in Rome ."], judge)
    assert report.n_judged + report.n_unjudgeable == 2
    # llama.cpp's server refuses json_schema (HTTP 500) and accepts json_object: negotiated, not an outage
    assert judge.structured_output == "json_object"
    for item in report.items:
        assert item.judgeable or item.error
