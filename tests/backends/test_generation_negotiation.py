"""Structured-output negotiation against loopback servers that refuse a response format the way real ones do
(the real llama.cpp server is exercised in tests/generation/test_generation_real_server.py)."""

from __future__ import annotations

from pathlib import Path

from faithforge.backends import HttpOptions
from faithforge.backends.ollama import OllamaBackend
from faithforge.backends.openai_compat import OpenAICompatBackend
from faithforge.backends.template import TemplateBackend
from faithforge.generation.coverage_db import CoverageDB
from faithforge.generation.runner import GenerationOptions, run_generation
from faithforge.generation.spec import load_spec
from tests.fixtures.fake_llm_servers import FakeOllama, FakeOpenAI, Reply, Status

FAST = HttpOptions(connect_timeout_s=1.0, read_timeout_s=2.0, deadline_s=30.0, retries=2, backoff_s=0.01)
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
MESSAGES = [{"role": "user", "content": "Give a."}]
ROOT = Path(__file__).resolve().parents[2]


def like_llama_cpp(body):
    """llama-cpp-python's server: HTTP 500 naming the allowed types for a json_schema response format."""
    kind = (body.get("response_format") or {}).get("type")
    if kind == "json_schema":
        return Status(500, "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                           "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}]")
    return Reply('{"a": 1}')


def test_openai_json_schema_refusal_falls_back_to_json_object_and_is_remembered():
    with FakeOpenAI(default=like_llama_cpp) as server:
        backend = OpenAICompatBackend("qwen3:8b", base_url=server.url, http=FAST)
        first = backend.chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=1)
        again = OpenAICompatBackend("qwen3:8b", base_url=server.url + "/v1", http=FAST).chat(
            MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=1)
        kinds = [b["response_format"]["type"] for b in server.chat_requests()]
    assert first.text == '{"a": 1}' and first.response_format == again.response_format == "json_object"
    assert kinds == ["json_schema", "json_object", "json_object"]  # the second backend starts where the first ended
    assert server.chat_requests()[1]["response_format"]["schema"] == SCHEMA
    assert backend.negotiator.rejections and "json_object" in backend.negotiator.rejections[0]


def test_openai_falls_back_to_plain_json_instructions_when_no_format_is_accepted():
    def no_formats(body):
        if "response_format" in body:
            return Status(400, "response_format is not supported by this model")
        return Reply('{"a": 2}')

    with FakeOpenAI(default=no_formats) as server:
        result = OpenAICompatBackend("qwen3:8b", base_url=server.url, http=FAST).chat(
            MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=1)
        last = server.chat_requests()[-1]
    assert result.response_format == "prompt" and "response_format" not in last
    assert "JSON Schema" in last["messages"][-1]["content"]  # the schema went into the prompt instead


def test_a_server_error_that_does_not_name_the_format_is_still_an_error():
    import pytest

    from faithforge.backends import BackendError

    with FakeOpenAI() as server:
        server.push(Status(500, "CUDA error: out of memory"))
        with pytest.raises(BackendError, match="out of memory"):
            OpenAICompatBackend("qwen3:8b", base_url=server.url, http=FAST).chat(
                MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=1)
        assert [b["response_format"]["type"] for b in server.chat_requests()] == ["json_schema"]


def test_ollama_schema_format_refusal_falls_back_to_format_json():
    def old_ollama(body):
        if isinstance(body.get("format"), dict):
            return Status(400, "invalid format: expected \"json\" or a JSON schema")
        return Reply('{"a": 3}')

    with FakeOllama(default=old_ollama) as server:
        result = OllamaBackend("qwen3:8b", base_url=server.url, http=FAST).chat(
            MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=1)
        formats = [b.get("format") for b in server.chat_requests()]
    assert result.response_format == "format_json" and formats == [SCHEMA, "json"]


def test_a_refused_format_is_not_an_outage_and_the_summary_names_the_mode(tmp_path):
    """A format refusal used to count as a backend error on every attempt: 5 in a row stopped the run with
    nothing stored. Now the run goes on in json_object mode and says so."""
    spec = load_spec(ROOT / "configs" / "specs" / "grounded-summaries.yaml")
    teacher = TemplateBackend()

    def answer(body):
        if body["response_format"]["type"] == "json_schema":
            return like_llama_cpp(body)
        return Reply(teacher.chat(body["messages"], schema=body["response_format"]["schema"], seed=body["seed"]).text)

    with FakeOpenAI(default=answer) as server:
        backend = OpenAICompatBackend("qwen3:8b", base_url=server.url, http=FAST)
        summary = run_generation(spec, backend, CoverageDB(f"sqlite:///{tmp_path / 'c.db'}"), tmp_path / "out",
                                 GenerationOptions(target=3, poll_s=0.01))
    assert summary.done_total == 3 and not summary.failures and summary.stopped == "completed"
    assert summary.response_formats == {"json_object": 3}
    assert "structured output: json_object 3" in summary.lines()
