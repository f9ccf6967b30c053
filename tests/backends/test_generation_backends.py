"""Ollama and OpenAI-compatible backends against loopback fakes that speak the real wire formats."""

from __future__ import annotations

import json
import socket

import pytest

from faithforge.backends import (
    BackendError,
    BackendTimeoutError,
    BackendUnreachableError,
    HttpOptions,
    ModelNotFoundError,
    make_backend,
)
from faithforge.backends.base import BackendConfigError
from faithforge.backends.ollama import OllamaBackend, release_ollama_gpu
from faithforge.backends.openai_compat import OpenAICompatBackend
from tests.fixtures.fake_llm_servers import Drop, FakeOllama, FakeOpenAI, MidStreamError, Raw, Reply, Stall, Status

FAST = HttpOptions(connect_timeout_s=1.0, read_timeout_s=0.5, deadline_s=30.0, retries=2, backoff_s=0.01)
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
MESSAGES = [{"role": "system", "content": "JSON only."}, {"role": "user", "content": "Give a."}]


def ollama(server: FakeOllama, **kw) -> OllamaBackend:
    return OllamaBackend("qwen3:8b", base_url=server.url, http=kw.pop("http", FAST), **kw)


# Ollama ----------------------------------------------------------------------------------------------
def test_ollama_streams_ndjson_and_sends_the_documented_request():
    with FakeOllama() as server:
        server.push(Reply('{"a": 1}', pieces=4, prompt_tokens=7, completion_tokens=5))
        result = ollama(server, num_ctx=4096, keep_alive="10m").chat(MESSAGES, schema=SCHEMA, max_tokens=64,
                                                                     temperature=0.3, seed=11)
    assert result.text == '{"a": 1}' and not result.truncated and result.finish_reason == "stop"
    assert result.usage.prompt_tokens == 7 and result.usage.completion_tokens == 5
    assert result.usage.load_s == 0.0  # omitted by the server when zero
    assert result.usage.eval_s == pytest.approx(1.5)
    body = server.chat_requests()[0]
    assert body["format"] == SCHEMA and body["think"] is False and body["stream"] is True
    assert body["options"] == {"num_predict": 64, "num_ctx": 4096, "temperature": 0.3, "seed": 11}
    assert body["keep_alive"] == "10m" and body["messages"] == MESSAGES


def test_ollama_odd_counts_are_read_as_zero_and_never_cost_the_answer():
    """`prompt_eval_count: "lots"` failed a whole answer, and `Infinity` was a traceback (OverflowError), where the
    OpenAI backend read both as 0 (a review, 2026-12-07)."""
    with FakeOllama() as server:
        server.push(Reply('{"a": 1}', prompt_tokens="lots"), Reply('{"a": 2}', prompt_tokens=float("inf")),
                    Reply('{"a": 3}', completion_tokens=[1]))
        backend = ollama(server)
        answers = [backend.chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=None) for _ in range(3)]
    assert [a.text for a in answers] == ['{"a": 1}', '{"a": 2}', '{"a": 3}']
    assert [(a.usage.prompt_tokens, a.usage.completion_tokens) for a in answers] == [(0, 34), (0, 34), (12, 0)]


def test_ollama_num_ctx_is_the_same_on_every_request():
    with FakeOllama() as server:
        backend = ollama(server, num_ctx=2048)
        for n in (16, 4000):
            backend.chat(MESSAGES, schema=None, max_tokens=n, temperature=0.0, seed=None)
    assert {b["options"]["num_ctx"] for b in server.chat_requests()} == {2048}
    assert "format" not in server.chat_requests()[0] and "seed" not in server.chat_requests()[0]["options"]


def test_ollama_non_streaming_body():
    with FakeOllama() as server:
        server.push(Reply('{"a": 2}', thinking="hmm"))
        result = ollama(server, stream=False).chat(MESSAGES, schema=SCHEMA, max_tokens=32, temperature=0, seed=1)
    assert result.text == '{"a": 2}' and result.thinking == "hmm"
    assert server.chat_requests()[0]["stream"] is False


def test_ollama_done_reason_length_is_truncation():
    with FakeOllama() as server:
        server.push(Reply('{"a": ', finish="length"))
        result = ollama(server).chat(MESSAGES, schema=SCHEMA, max_tokens=3, temperature=0, seed=1)
    assert result.truncated and result.finish_reason == "length"


def test_ollama_thinking_field_and_inline_think_block_are_kept_out_of_the_answer():
    with FakeOllama() as server:
        server.push(Reply('{"a": 3}', thinking="let me think"),
                    Reply('<think>old servers put it inline</think>\n{"a": 4}'))
        backend = ollama(server)
        first = backend.chat(MESSAGES, schema=SCHEMA, max_tokens=32, temperature=0, seed=1)
        second = backend.chat(MESSAGES, schema=SCHEMA, max_tokens=32, temperature=0, seed=1)
    assert (first.text, first.thinking) == ('{"a": 3}', "let me think")
    assert (second.text, second.thinking) == ('{"a": 4}', "old servers put it inline")


def test_ollama_missing_model_is_fatal_names_ollama_pull_and_is_not_retried():
    with FakeOllama(models=("llama3:8b",)) as server:
        with pytest.raises(ModelNotFoundError, match=r"ollama pull qwen3:8b") as info:
            ollama(server).chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=1)
    assert info.value.fatal and len(server.requests) == 1  # not retried


def test_ollama_busy_503_is_retried_then_succeeds():
    with FakeOllama() as server:
        server.push(Status(503, "server busy, please try again.  maximum pending requests exceeded"),
                    Reply('{"a": 5}'))
        result = ollama(server).chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=1)
    assert result.text == '{"a": 5}' and len(server.chat_requests()) == 2


def test_ollama_error_body_becomes_a_typed_error_with_the_server_message():
    with FakeOllama() as server:
        server.push(Status(500, "llama runner process has terminated: CUDA error: out of memory"))
        with pytest.raises(BackendError, match="out of memory") as info:
            ollama(server).chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=1)
    assert not info.value.fatal and not info.value.retryable


def test_ollama_error_line_mid_stream_is_a_typed_error():
    with FakeOllama() as server:
        server.push(MidStreamError("an error was encountered while running the model"))
        with pytest.raises(BackendError, match="mid-answer: an error was encountered"):
            ollama(server).chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=1)


def test_ollama_connection_dropped_mid_stream_is_retried():
    with FakeOllama() as server:
        server.push(Drop(), Reply('{"a": 6}'))
        result = ollama(server).chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=1)
    assert result.text == '{"a": 6}' and len(server.chat_requests()) == 2


def test_ollama_stall_past_the_read_timeout_raises_instead_of_hanging():
    with FakeOllama() as server:
        server.push(Stall(30.0, partial='{"a"'))
        backend = ollama(server, http=HttpOptions(read_timeout_s=0.3, retries=0))
        with pytest.raises(BackendTimeoutError, match="read timeout"):
            backend.chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=1)


def test_ollama_unreachable_server_is_fatal_after_retries():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket closes
    backend = OllamaBackend("qwen3:8b", base_url=f"http://127.0.0.1:{port}", http=FAST)
    with pytest.raises(BackendUnreachableError, match=f"127.0.0.1:{port}.*3 tries") as info:
        backend.chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=1)
    assert info.value.fatal


def test_ollama_model_management_ps_show_unload():
    with FakeOllama(models=("qwen3:8b", "qwen3:30b-a3b")) as server:
        backend = ollama(server)
        loaded = backend.loaded_models()
        info = backend.show()
        backend.unload("qwen3:30b-a3b")
        after = release_ollama_gpu(server.url, http=FAST)
    assert {m.name for m in loaded} == {"qwen3:8b", "qwen3:30b-a3b"} and loaded[0].vram_bytes == 5_000_000_000
    assert (info.parameter_count, info.context_length, info.quantization) == (8_190_735_360, 40960, "Q4_K_M")
    assert server.unloaded == ["qwen3:30b-a3b", "qwen3:8b"] and after == ["qwen3:8b"]


def test_release_gpu_without_a_running_ollama_is_a_no_op():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert release_ollama_gpu(f"http://127.0.0.1:{port}", http=FAST) == []


# OpenAI-compatible -------------------------------------------------------------------------------------
def test_openai_sse_stream_with_usage_done_marker_and_api_key_from_env(monkeypatch):
    monkeypatch.setenv("FF_TEST_KEY", "sk-secret-123")
    with FakeOpenAI() as server:
        server.push(Reply('{"a": 7}', thinking="reasoning", prompt_tokens=9, completion_tokens=4))
        backend = OpenAICompatBackend("qwen3:8b", base_url=server.url, api_key_env="FF_TEST_KEY", http=FAST)
        result = backend.chat(MESSAGES, schema=SCHEMA, max_tokens=64, temperature=0.2, seed=5)
    assert (result.text, result.thinking, result.finish_reason) == ('{"a": 7}', "reasoning", "stop")
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (9, 4)
    _, _, body, headers = server.requests[0]
    assert body["response_format"]["type"] == "json_schema" and body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert body["temperature"] == 0.2 and body["max_tokens"] == 64 and body["seed"] == 5 and body["stream"] is True
    assert {k.lower(): v for k, v in headers.items()}["authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in repr(backend)


def test_openai_length_is_truncation_and_non_streaming_works():
    with FakeOpenAI() as server:
        server.push(Reply('{"a": ', finish="length"), Reply('{"a": 8}'))
        streamed = OpenAICompatBackend("qwen3:8b", base_url=server.url, http=FAST)
        plain = OpenAICompatBackend("qwen3:8b", base_url=server.url, stream=False, http=FAST)
        first = streamed.chat(MESSAGES, schema=SCHEMA, max_tokens=3, temperature=0, seed=None)
        second = plain.chat(MESSAGES, schema=SCHEMA, max_tokens=30, temperature=0, seed=None)
    assert first.truncated and first.finish_reason == "length"
    assert second.text == '{"a": 8}' and second.usage.completion_tokens == 34


def test_openai_error_objects_busy_retry_and_mid_stream_error():
    with FakeOpenAI() as server:
        server.push(Status(503, "overloaded"), Reply('{"a": 9}'), MidStreamError("upstream crashed"),
                    Status(401, "Incorrect API key provided"))
        backend = OpenAICompatBackend("qwen3:8b", base_url=server.url, http=FAST)
        assert backend.chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=None).text == '{"a": 9}'
        with pytest.raises(BackendError, match="upstream crashed"):
            backend.chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=None)
        with pytest.raises(BackendConfigError, match="check the API key"):
            backend.chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=None)
        missing = OpenAICompatBackend("nope", base_url=server.url, http=FAST)
        with pytest.raises(ModelNotFoundError, match="nope"):
            missing.chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=None)


def test_openai_answers_of_another_shape_are_said_in_one_line_and_odd_usage_is_read_as_zero():
    """A server that ignores `stream: true` (one JSON body), a proxy's HTML page, `choices` that is not a list and
    `usage` that is not numbers: a traceback, or "closed the stream" after 77 s of retries (an attack, 2026-12-07)."""
    whole = {"object": "chat.completion", "model": "qwen3:8b", "usage": {"prompt_tokens": "lots"},
             "choices": [{"index": 0, "message": {"role": "assistant", "content": '{"a": 3}'}, "finish_reason": "stop"}]}
    with FakeOpenAI() as server:
        server.push(Raw("application/json", json.dumps(whole)),
                    Raw("text/html; charset=utf-8", "<html><body>Bad gateway</body></html>"),
                    Raw("text/event-stream", 'data: {"choices": "oops"}\n\ndata: [DONE]\n\n'))
        backend = OpenAICompatBackend("qwen3:8b", base_url=server.url, http=FAST)
        result = backend.chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=None)
        assert (result.text, result.usage.prompt_tokens, result.finish_reason) == ('{"a": 3}', 0, "stop")
        with pytest.raises(BackendError, match=r"sent an HTML page instead of an answer .*Bad gateway.*check --base-url"):
            backend.chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=None)
        with pytest.raises(BackendError, match=r"sent an answer of another shape than its API's \(AttributeError"):
            backend.chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=None)
    assert len(server.chat_requests()) == 3  # neither was retried as an outage


def test_openai_a_whole_answer_is_taken_when_the_stream_stays_open_without_done():
    """Finish reason, then usage, then silence without `data: [DONE]`: the whole answer was thrown away after the
    read timeout and asked again (an attack, 2026-12-07)."""
    with FakeOpenAI() as server:
        server.push(Reply('{"a": 5}', silent_before_done_s=30.0))
        backend = OpenAICompatBackend("qwen3:8b", base_url=server.url, http=FAST)  # read timeout 0.5 s
        result = backend.chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=None)
    assert (result.text, result.finish_reason, result.usage.completion_tokens) == ('{"a": 5}', "stop", 34)
    assert len(server.chat_requests()) == 1


def test_openai_dropped_stream_is_retried():
    with FakeOpenAI() as server:
        server.push(Drop(), Reply('{"a": 10}'))
        result = OpenAICompatBackend("qwen3:8b", base_url=server.url, http=FAST).chat(
            MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=None)
    assert result.text == '{"a": 10}'


def test_openai_missing_key_env_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("FF_MISSING_KEY", raising=False)
    backend = OpenAICompatBackend("m", base_url="http://127.0.0.1:9", api_key_env="FF_MISSING_KEY")
    with pytest.raises(BackendConfigError, match="FF_MISSING_KEY is empty"):
        backend.chat(MESSAGES, schema=None, max_tokens=8, temperature=0, seed=None)


# shared HTTP plumbing ----------------------------------------------------------------------------------
def test_json_object_accepts_an_object_and_names_the_server_in_every_refusal():
    from faithforge.backends.http import json_object

    assert json_object('{"a": 1}', "server S") == {"a": 1}
    with pytest.raises(BackendError, match=r"^server S sent a line that is not JSON: '\{oops'$"):
        json_object("{oops", "server S", what="a line")
    with pytest.raises(BackendError, match=r"^server S sent list instead of an object$"):
        json_object("[1]", "server S")
    with pytest.raises(BackendError, match=r"^server S failed mid-answer: boom$"):
        json_object('{"error": "boom"}', "server S", failed="failed mid-answer")
    with pytest.raises(BackendError, match=r"^server S failed: bad key$"):
        json_object('{"error": {"message": "bad key"}}', "server S")


# registry and template ---------------------------------------------------------------------------------
def test_make_backend_by_name_and_template_is_deterministic_valid_json():
    from faithforge.generation.schemas import GroundedSummary

    template = make_backend("template", "")
    schema = GroundedSummary.model_json_schema()
    messages = [{"role": "user", "content": "x. Rule: the document must not mention the day."}]
    a = template.chat(messages, schema=schema, max_tokens=100, temperature=0.8, seed=3)
    b = template.chat(messages, schema=schema, max_tokens=100, temperature=0.8, seed=3)
    assert a == b
    example = GroundedSummary.model_validate(json.loads(a.text))
    assert not any(day in example.source_document for day in ("Monday", "Tuesday", "Wednesday", "Thursday",
                                                               "Friday", "Saturday", "Sunday"))
    with pytest.raises(BackendConfigError, match="grounded-summaries"):
        template.chat(messages, schema={"type": "object", "properties": {"lines": {}}}, max_tokens=10,
                      temperature=0, seed=1)
    with pytest.raises(Exception, match="choose one of"):
        make_backend("vllm", "m")


# a backend's own settings ------------------------------------------------------------------------------
def test_a_backends_own_settings_reach_its_requests_through_make_backend(monkeypatch):
    """`keep_alive` was fixed at 30m with no way to set it, and the key variable was a field of every backend's
    options: each is now a setting of the one backend that reads it (`Options` in its module)."""
    monkeypatch.setenv("FF_TEST_KEY", "sk-settings-456")
    with FakeOllama() as server:
        server.push(Reply('{"a": 1}'), Reply('{"a": 2}'))
        make_backend("ollama", "qwen3:8b", base_url=server.url, http=FAST,
                     settings={"keep_alive": "1h"}).chat(MESSAGES, schema=SCHEMA, max_tokens=8, temperature=0, seed=1)
        make_backend("ollama", "qwen3:8b", base_url=server.url, http=FAST).chat(MESSAGES, schema=SCHEMA, max_tokens=8,
                                                                               temperature=0, seed=1)
        assert [body["keep_alive"] for body in server.chat_requests()] == ["1h", "30m"]  # set, then the default
    with FakeOpenAI() as server:
        server.push(Reply('{"a": 3}'))
        make_backend("openai", "qwen3:8b", base_url=server.url, http=FAST,
                     settings={"api_key_env": "FF_TEST_KEY"}).chat(MESSAGES, schema=SCHEMA, max_tokens=8,
                                                                   temperature=0, seed=1)
        _, _, _, headers = server.requests[0]
    assert {k.lower(): v for k, v in headers.items()}["authorization"] == "Bearer sk-settings-456"
    delayed = make_backend("template", "", settings={"delay_s": 0.25})
    assert delayed.delay_s == 0.25


@pytest.mark.parametrize("name, settings, says", [
    ("ollama", {"keep_alive": "soon"}, "backend_options.ollama: keep_alive"),
    ("ollama", {"keepalive": "1h"}, "backend_options.ollama: unknown setting keepalive; the ollama backend takes "
                                    "keep_alive"),
    ("openai", {"api_key_env": "FF_TEST_EMPTY_KEY"}, "backend_options.openai: api_key_env FF_TEST_EMPTY_KEY: that "
                                                     "environment variable is empty"),
    ("openai", {"api_key_env": "not a name"}, "backend_options.openai: api_key_env"),
    ("template", {"delay_s": -1}, "backend_options.template: delay_s: Input should be greater than or equal to 0"),
    ("template", {"delay_s": "nan"}, "backend_options.template: delay_s: Input should be a finite number"),
    ("transformers", {"device": "cpu"}, "backend_options.transformers: the transformers backend has no settings of "
                                        "its own"),
])
def test_a_bad_backend_setting_is_one_line_naming_the_field(name, settings, says, monkeypatch):
    from faithforge.backends import check_backend_options
    from faithforge.core.errors import UserError

    monkeypatch.delenv("FF_TEST_EMPTY_KEY", raising=False)
    with pytest.raises(UserError) as err:
        check_backend_options({name: settings}, name)  # what a run checks before any work
    assert says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("given, sent", [("1h30m", "1h30m"), ("3600", 3600), ("-1", -1), (0, 0), ("90s", "90s"),
                                         ("1\u00b5s", "1\u00b5s"), ("1\u03bcs", "1\u03bcs"), (".5h", ".5h")])
def test_ollama_keep_alive_is_sent_as_ollama_reads_it(given, sent):
    """Ollama parses a string with Go's `time.ParseDuration` (a bare number is refused with HTTP 400) and a number
    as seconds: every value from the command line is a string, so whole seconds are sent as a number."""
    from faithforge.backends import backend_settings

    assert backend_settings("ollama", {"keep_alive": given}).keep_alive == sent


@pytest.mark.parametrize("given", ["1.5", "soon", "1h 30m", True, "", None, 1.5, [1], "9" * 30 + "x"])
def test_ollama_keep_alive_that_ollama_would_refuse_is_refused_before_the_run(given):
    from faithforge.backends import backend_settings
    from faithforge.core.errors import UserError

    with pytest.raises(UserError, match=r"^backend_options\.ollama: keep_alive"):
        backend_settings("ollama", {"keep_alive": given})


def test_a_key_variable_set_only_on_another_machine_is_checked_only_where_the_backend_is_used(monkeypatch):
    """Preflight checks every entry's fields, but an empty key variable only for a backend the run uses: a config
    that keeps an openai key for another day must not fail a run on Ollama."""
    from faithforge.backends import check_backend_options
    from faithforge.core.errors import UserError

    monkeypatch.delenv("FF_TEST_EMPTY_KEY", raising=False)
    kept = {"openai": {"api_key_env": "FF_TEST_EMPTY_KEY"}, "ollama": None}
    check_backend_options(kept, "ollama")
    with pytest.raises(UserError, match="FF_TEST_EMPTY_KEY: that environment variable is empty"):
        check_backend_options(kept, "openai")
    with pytest.raises(UserError, match="unknown setting api_key"):  # a typo in an unused entry: refused all the same
        check_backend_options({"openai": {"api_key": "FF_X"}}, "ollama", where="generate.backend_options")
