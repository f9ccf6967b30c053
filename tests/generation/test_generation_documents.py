"""A teacher over the user's own documents (issue 15 item 5): the spec takes its sources from a file, every
document is asked for once, and the stored example holds the real document, never a model's rewrite."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from faithforge.core.errors import ConfigError, UserError
from faithforge.generation.coverage_db import CoverageDB
from faithforge.generation.files import verify
from faithforge.generation.runner import GenerationOptions, run_generation
from faithforge.generation.spec import load_spec, parse_spec
from tests.fixtures.fake_llm_servers import FakeOpenAI, Reply

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "configs" / "specs" / "own-documents.yaml"
DOCS = [{"id": "a", "document": "On Friday, Lena Park sold 14 bicycles in Ghent. The shop had opened in May."},
        {"id": "b", "document": "Farmer Ole Berg harvested 300 pumpkins near Aarhus. He sells them at the market."},
        {"id": "c", "document": "The Rivertown museum showed 25 paintings by Hana Ito. The show ran for two weeks."}]


def honest_teacher(body: dict) -> Reply:
    """Summarizes the document in the prompt by its first sentence; changes its first number for the
    hallucinated variant; keys facts are the capitalized words and numbers of that sentence."""
    prompt = body["messages"][-1]["content"]
    document = prompt.split("Document:\n", 1)[1].split("\n\nWrite", 1)[0]
    first = document.split(". ")[0].rstrip(".") + "."
    number = re.search(r"\d+", first).group(0)
    facts = [w.strip(",.") for w in first.split() if w[0].isupper() or w[0].isdigit()]
    answer = {"summary": first, "hallucinated_summary": first.replace(number, str(int(number) + 7), 1),
              "key_facts": facts}
    return Reply(json.dumps(answer))


@pytest.fixture()
def docs_file(tmp_path) -> Path:
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return path


def test_every_real_document_gets_one_example_that_keeps_the_document_verbatim(tmp_path, docs_file):
    spec = load_spec(SPEC, documents=str(docs_file))
    assert spec.targets() == {"summaries": 3}
    db = CoverageDB(f"sqlite:///{tmp_path / 'c.db'}")
    with FakeOpenAI(default=honest_teacher) as server:
        from faithforge.backends.openai_compat import OpenAICompatBackend

        summary = run_generation(spec, OpenAICompatBackend("qwen3:8b", base_url=server.url), db, tmp_path / "out",
                                 GenerationOptions(poll_s=0.01))
        requests = server.chat_requests()
    assert summary.done_total == 3 and not summary.failures, summary.lines()
    stored = {row.params["document_id"]: row.payload for row in db.examples(spec.name)}
    assert {k: v["source_document"] for k, v in stored.items()} == {d["id"]: d["document"] for d in DOCS}
    asked = requests[0]["response_format"]["json_schema"]["schema"]
    assert "source_document" not in asked["properties"]  # the teacher is never asked to write the source
    assert all(any(d["document"] in r["messages"][-1]["content"] for d in DOCS) for r in requests)
    assert verify(db, spec.name, tmp_path / "out").ok


def test_the_shipped_documents_spec_reads_its_sample_file():
    spec = load_spec(SPEC)
    assert sum(spec.targets().values()) == 6 and len(list(spec.combinations(spec.categories[0]))) == 6


def test_documents_problems_are_reported_before_any_request(tmp_path, docs_file):
    with pytest.raises(UserError, match="does not exist"):
        load_spec(SPEC, documents=str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="does not take its sources from documents"):
        load_spec(ROOT / "configs" / "specs" / "grounded-summaries.yaml", documents=str(docs_file))
    no_ids = tmp_path / "no-ids.jsonl"  # the fix names the spec's option: `generate` has no data.* options
    no_ids.write_text("".join(json.dumps({"document": d["document"]}) + "\n" for d in DOCS))
    with pytest.raises(UserError, match=r"set spec \S+'s documents.id_column to the column"):
        load_spec(SPEC, documents=str(no_ids))
    no_docs = {"name": "x", "schema": {"type": "object"},
               "categories": [{"name": "c", "target": 1, "prompt": "Summarize {document}"}]}
    with pytest.raises(ConfigError, match="prompt uses {document} but the spec has no documents"):
        parse_spec(no_docs, "x.yaml")
