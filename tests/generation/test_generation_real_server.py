"""Generation and served-model evaluation against a REAL OpenAI-compatible server: llama-cpp-python's
`llama_cpp.server` with SmolLM2-135M-Instruct (fixture `llama_server`, tests/fixtures/llama_server.py).

Every answer is kept short (SmolLM2 writes ~35 tokens/s on 2 cores), so the whole file costs well under a
minute of generation once the server is up. Nothing here asserts on what the model says beyond what the
protocol guarantees: text arrives, tokens are counted, a length cut is reported, a schema request comes
back as JSON, and the negotiation lands on the mode this server accepts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faithforge.backends import make_backend
from faithforge.backends.openai_compat import OpenAICompatBackend
from faithforge.generation.coverage_db import CoverageDB
from faithforge.generation.files import verify
from faithforge.generation.runner import GenerationOptions, run_generation
from faithforge.generation.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
ASK = [{"role": "system", "content": "You are a helpful assistant."},
       {"role": "user", "content": "Name three colours of the rainbow."}]
# One integer field: the grammar llama.cpp builds from it leaves the model ~8 tokens to write (grammar-constrained
# sampling is several times slower per token than free sampling on this server).
SCHEMA = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "one-body"])
def test_plain_chat_over_the_real_server(llama_server, stream):
    backend = OpenAICompatBackend(llama_server.model, base_url=llama_server.base_url, stream=stream)
    result = backend.chat(ASK, schema=None, max_tokens=24, temperature=0.0, seed=0)
    assert result.text.strip() and result.finish_reason in ("stop", "length")
    assert result.response_format == ""
    if not stream:  # llama-cpp-python 0.3.36 sends no usage chunk in a stream (stream_options is ignored)
        assert result.usage.prompt_tokens > 0 and 0 < result.usage.completion_tokens <= 24


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "one-body"])
def test_a_length_cut_is_reported_as_truncation(llama_server, stream):
    backend = OpenAICompatBackend(llama_server.model, base_url=llama_server.base_url, stream=stream)
    result = backend.chat([{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
                          schema=None, max_tokens=4, temperature=0.0, seed=0)
    assert result.truncated and result.finish_reason == "length"
    if not stream:
        assert result.usage.completion_tokens == 4


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "one-body"])
def test_negotiation_falls_back_from_json_schema_to_json_object(llama_server, stream):
    """This server answers HTTP 500 to `json_schema` (research notes): the backend must move to `json_object`
    with the schema (which llama.cpp turns into a grammar), and the answer must be JSON that fits it."""
    from faithforge.backends.negotiation import forget_all

    forget_all()  # start from json_schema, whatever an earlier test taught this process
    backend = OpenAICompatBackend(llama_server.model, base_url=llama_server.base_url, stream=stream)
    result = backend.chat([{"role": "user", "content": "How many colours has a rainbow? Answer as JSON."}],
                          schema=SCHEMA, max_tokens=16, temperature=0.0, seed=0)
    assert result.response_format == "json_object"
    assert backend.negotiator.rejections and backend.negotiator.rejections[0].startswith("json_schema:")
    assert isinstance(json.loads(result.text)["count"], int)


def test_a_generation_run_against_the_real_server_accounts_for_every_answer(llama_server, tmp_path):
    """One grounded-summaries slot, one attempt of at most 64 tokens (no repair request: each grammar-constrained
    token costs several times a free one on this server): whatever SmolLM2 writes is either stored or
    quarantined with a named reason, and the summary says which structured-output mode was used."""
    spec = load_spec(ROOT / "configs" / "specs" / "grounded-summaries.yaml")
    backend = make_backend("openai", llama_server.model, base_url=llama_server.base_url)
    db = CoverageDB(f"sqlite:///{tmp_path / 'c.db'}")
    summary = run_generation(spec, backend, db, tmp_path / "out",
                             GenerationOptions(target=1, max_tokens=64, max_failures=1, repair=False, poll_s=0.01))
    assert summary.first_answers == 1 and set(summary.response_formats) == {"json_object"}
    assert summary.generated + sum(summary.failures.values()) == 1
    failures = db.failures(spec.name)
    assert all(f.reason and f.raw_text for f in failures)
    assert verify(db, spec.name, tmp_path / "out").ok


def test_served_model_evaluation_against_the_real_server(llama_server):
    """`evaluate.served_model` with `served_backend: openai`: the stage's own summarizer and judge, on a
    real server."""
    from faithforge.evaluation import EvalItem, evaluate_single, get_judge
    from faithforge.stages.evaluate import summarize_with_backend

    sources = ["On Monday, Ada Lund sold 4 lamps in Riga.", "Omar Diaz repaired 7 chairs in Lyon."]
    items = [EvalItem(id=str(i), source=s, key_facts=[]) for i, s in enumerate(sources)]
    backend = make_backend("openai", llama_server.model, base_url=llama_server.base_url)
    summaries = summarize_with_backend(backend, sources, max_new_tokens=24, seed=0)
    report = evaluate_single(items, summaries, get_judge("grounding"), label=f"served: {llama_server.model}")
    assert len(summaries) == 2 and all(s for s in summaries)
    assert report.n_items == 2 and report.n_judged == 2 and 0.0 <= report.rate <= 1.0
