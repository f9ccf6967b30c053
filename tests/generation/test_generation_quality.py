"""Quality gates after the schema, and reasoning kept out of stored data (closed schemas, reasoning keys)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faithforge.backends import ChatResult
from faithforge.generation.coverage_db import CoverageDB
from faithforge.generation.parsing import parse_reply
from faithforge.generation.quality import QualityGate
from faithforge.generation.runner import GenerationOptions, run_generation
from faithforge.generation.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
GROUNDED = load_spec(ROOT / "configs" / "specs" / "grounded-summaries.yaml")
GOOD = {"source_document": "On Saturday, Nia Berg ordered 8 rugs in Split. Nobody seemed surprised. The shop was "
                           "crowded all afternoon.",
        "summary": "Nia Berg ordered 8 rugs in Split on Saturday.",
        "key_facts": ["Nia Berg", "8 rugs", "Split", "Saturday"],
        "hallucinated_summary": "Nia Berg ordered 8 rugs in Split on Wednesday."}


def reason_of(payload: dict) -> str | None:
    problem = QualityGate(GROUNDED.quality).first_failure(payload)
    return problem.reason if problem else None


def test_a_good_example_passes_every_gate():
    assert reason_of(GOOD) is None


@pytest.mark.parametrize("change, reason", [
    ({"source_document": "https://example.com/news/shop-sale-2024"}, "bare_url"),
    ({"summary": "{{title}}"}, "placeholder"),
    ({"key_facts": [""]}, "empty_field"),
    ({"hallucinated_summary": GOOD["summary"]}, "hallucination_identical"),
    ({"summary": "Nia Berg ordered 8 rugs in Zagreb on Saturday."}, "summary_not_grounded"),
    ({"hallucinated_summary": "Nia Berg bought 8 rugs in Split."}, "hallucination_not_flagged"),
    ({"key_facts": ["Nia Berg", "12 lamps"]}, "key_fact_not_in_source"),
    ({"source_document": "Nia sold rugs. " * 6}, "boilerplate"),
    ({"summary": "Nia ordered."}, "too_short"),
])
def test_junk_that_passes_the_schema_is_rejected_with_a_named_reason(change, reason):
    """The junk SmolLM2 wrote through llama.cpp's server (a URL as the document, "{{title}}", key facts [""],
    a summary identical to its hallucinated variant) matched the schema and was stored; each must be refused."""
    payload = {**GOOD, **change}
    parsed = parse_reply(json.dumps(payload), GROUNDED.schema_for(GROUNDED.categories[0]))
    assert parsed.failure is None  # the schema alone accepts it
    assert reason_of(payload) == reason


def test_a_repeated_generated_source_is_boilerplate():
    gate = QualityGate(GROUNDED.quality)
    assert gate.first_failure(GOOD) is None
    gate.accept(GOOD, "day-stated/000000.json")
    again = {**GOOD, "summary": "Nia Berg ordered 8 rugs in Split."}
    assert gate.first_failure(again).reason == "boilerplate"


class Replies:
    """A backend that answers from a list, in order."""

    name, model = "replies", "replies-1"

    def __init__(self, *texts: str):
        self.texts = list(texts)

    def chat(self, messages, *, schema=None, max_tokens=1024, temperature=0.0, seed=None):
        return ChatResult(text=self.texts.pop(0))


def test_quality_failures_are_quarantined_with_the_reason_and_counted_in_the_summary(tmp_path):
    junk = {**GOOD, "summary": "{{title}}"}
    backend = Replies(json.dumps(junk), json.dumps(junk), json.dumps(GOOD))
    db = CoverageDB(f"sqlite:///{tmp_path / 'c.db'}")
    summary = run_generation(GROUNDED, backend, db, tmp_path / "out", GenerationOptions(target=1, poll_s=0.01))
    assert summary.done_total == 1 and summary.failures == {"placeholder": 1}
    assert summary.quality_rejections == 1 and summary.repair_requests == 1
    assert any("rejected by quality gates: placeholder 1" in line for line in summary.lines())
    (failure,) = db.failures(GROUNDED.name)
    assert failure.reason == "placeholder" and "{{title}}" in failure.raw_text
    (quarantined,) = (tmp_path / "out" / "_quarantine").glob("*.json")
    assert json.loads(quarantined.read_text())["reason"] == "placeholder"


# issue 11 item 14 -------------------------------------------------------------------------------------
def test_reasoning_wrapped_around_the_answer_never_reaches_stored_data(tmp_path):
    wrapped = {"thought": "The user wants a shop sale; I will pick Split.", **GOOD}
    backend = Replies(json.dumps(wrapped))
    db = CoverageDB(f"sqlite:///{tmp_path / 'c.db'}")
    summary = run_generation(GROUNDED, backend, db, tmp_path / "out", GenerationOptions(target=1, poll_s=0.01))
    assert summary.done_total == 1
    (row,) = db.examples(GROUNDED.name)
    assert "thought" not in row.payload and row.payload == GOOD
    stored = json.loads((tmp_path / "out" / row.relpath).read_text())
    assert "thought" not in json.dumps(stored)
    kept = (tmp_path / "out" / "_reasoning" / row.relpath).with_suffix(".txt").read_text()
    assert "I will pick Split" in kept


def test_spec_schemas_are_closed_unless_a_spec_opens_them():
    spec = {"name": "open-by-default", "schema": {"type": "object", "required": ["text"],
                                                  "properties": {"text": {"type": "string"},
                                                                 "meta": {"type": "object", "properties": {"a": {}}}}},
            "categories": [{"name": "c", "target": 1, "prompt": "p"}]}
    closed = parse_spec(spec, "s")
    schema = closed.schema_for(closed.categories[0])
    assert schema["additionalProperties"] is False and schema["properties"]["meta"]["additionalProperties"] is False
    extra = parse_reply('{"text": "hello there friend", "notes": "my private musings"}', schema)
    assert extra.failure is not None and extra.failure.reason == "schema"
    opened = parse_spec({**spec, "open_schema": True}, "s")
    assert parse_reply('{"text": "x", "notes": "y"}', opened.schema_for(opened.categories[0])).failure is None
