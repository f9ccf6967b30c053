"""Spec validation (every problem at once) and answer parsing (fences, think blocks, schema, truncation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from faithforge.core.errors import ConfigError, UserError
from faithforge.generation.parsing import content_hash, parse_answer, repair_messages
from faithforge.generation.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}


@pytest.mark.parametrize("name", ["grounded-summaries", "dialogue"])
def test_shipped_specs_load_and_render(name):
    spec = load_spec(ROOT / "configs" / "specs" / f"{name}.yaml")
    for category in spec.categories:
        params = next(category.combinations())
        messages = spec.messages_for(category, params)
        assert messages[-1]["role"] == "user" and "JSON Schema" in messages[-1]["content"]
        assert spec.schema_for(category)["type"] == "object"
    assert sum(spec.targets(17).values()) == 17


def test_dialogue_spec_has_the_field_note_categories():
    spec = load_spec(ROOT / "configs" / "specs" / "dialogue.yaml")
    assert [c.name for c in spec.categories] == ["emotional", "dramatic", "tension", "memory", "personality",
                                                 "relationship"]


def test_a_bad_spec_reports_every_problem_at_once():
    bad = {"name": "x", "schema": {"type": "object"}, "categories": [
        {"name": "one", "target": -1, "axes": {"tone": ["dry"]}, "prompt": "Write {tone} about {topic}"},
        {"name": "one", "target": 1, "axes": {"tone": []}, "prompt": "fine"},
        {"name": "two", "target": 1, "prompt": "x", "schema": {"type": "strnig"}, "surprise": 1},
    ]}
    with pytest.raises(ConfigError) as info:
        parse_spec(bad, "bad.yaml")
    text = "\n".join(info.value.problems)
    for expected in ("categories[one].axes", "axis 'tone' has no values", "prompt uses topic",
                     "categories[one].target", "not valid JSON Schema", "unknown option", "surprise"):
        assert expected in text, (expected, text)
    assert len(info.value.problems) >= 5


def test_spec_level_problems_and_missing_schema():
    twice = {"name": "x", "schema": {"type": "object"}, "categories": [{"name": "a", "target": 1, "prompt": "p"}] * 2}
    with pytest.raises(ConfigError, match="'a' is used twice"):
        parse_spec(twice, "s")
    with pytest.raises(ConfigError, match="has no output schema"):
        parse_spec({"name": "x", "categories": [{"name": "a", "target": 1, "prompt": "p"}]}, "s")
    with pytest.raises(ConfigError, match="cannot be imported"):
        parse_spec({"name": "x", "schema_model": "nowhere:Thing",
                    "categories": [{"name": "a", "target": 1, "prompt": "p"}]}, "s")
    with pytest.raises(UserError, match="not found"):
        load_spec(ROOT / "configs" / "specs" / "missing.yaml")


@pytest.mark.parametrize("template, error", [
    ("Write {}", "prompt has {}"), ("Write {tone.upper}", "prompt has {tone.upper}"), ("Write {tone[k]}", "has {tone[k]}"),
    ("Write {tone!z}", "Unknown conversion"), ("Write {tone:>>>}", "ValueError"), ("Write {tone:{tone}}", "ValueError"),
    ("Write {n:d}", "with n='two'"),
])
def test_a_prompt_that_cannot_be_filled_is_refused_when_the_spec_is_read(template, error):
    """The name check passed these; `str.format` then raised at the first request, a traceback (an attack,
    2026-12-07). Every axis value is tried: `{n:d}` takes 1 but not 'two'."""
    spec = {"name": "x", "schema": SCHEMA, "categories": [
        {"name": "a", "target": 1, "axes": {"tone": ["dry"], "n": [1, "two"]}, "prompt": template}]}
    with pytest.raises(ConfigError) as info:
        parse_spec(spec, "s.yaml")
    (problem,) = info.value.problems
    assert "categories[a].prompt" in problem and error in problem, problem
    assert "{{ }} for a literal brace" in problem
    parse_spec({**spec, "categories": [{**spec["categories"][0], "prompt": "Write {tone} {n} {{as JSON}}"}]}, "s")
    # an axis name str.format looks up by keyword is fine, whatever its characters (a review, 2026-12-07)
    parse_spec({**spec, "categories": [{**spec["categories"][0], "axes": {"tone-of-voice": ["dry"], "reading level": [3]},
                                        "prompt": "Write {tone-of-voice} at {reading level}"}]}, "s")


def test_quality_names_a_field_the_schema_lacks_is_refused():
    """`summary: sumary` turned the grounding gate off without a word and stored ungrounded summaries (an attack,
    2026-12-07); the shipped spec's names all exist."""
    import yaml

    shipped = yaml.safe_load((ROOT / "configs" / "specs" / "grounded-summaries.yaml").read_text())
    typo = {**shipped, "quality": {**shipped["quality"], "summary": "sumary", "min_words": {"zzz": 5}}}
    with pytest.raises(ConfigError) as info:
        parse_spec(typo, "typo.yaml")
    assert info.value.problems == [
        "(top level): quality.summary: 'sumary' is not a field of any category's output schema (fields: "
        "hallucinated_summary, key_facts, source_document, summary)",
        "(top level): quality.min_words.zzz: 'zzz' is not a field of any category's output schema (fields: "
        "hallucinated_summary, key_facts, source_document, summary)"]
    parse_spec(shipped, "grounded-summaries.yaml")
    # a field of some categories only is fine: the gate runs where it exists (a review, 2026-12-07)
    only_b = {"name": "x", "schema": SCHEMA, "quality": {"summary": "b"}, "categories": [
        {"name": "one", "target": 1, "prompt": "p"},
        {"name": "two", "target": 1, "prompt": "p", "schema": {**SCHEMA, "properties": {"b": {"type": "string"}},
                                                                "required": ["b"]}}]}
    parse_spec(only_b, "s")


def test_parse_plain_fenced_thinking_and_chatty_answers():
    for text in ('{"a": 1}', '```json\n{"a": 1}\n```', '<think>{"a": 2} no</think>Sure! {"a": 1} hope it helps',
                 'Here: {"a": 1}\n\nLet me know.', '</think>{"a": 1}'):
        obj, failure = parse_answer(text, SCHEMA)
        assert obj == {"a": 1} and failure is None, text


@pytest.mark.parametrize("text,truncated,reason", [
    ("", False, "empty"),
    ("<think>only thoughts", False, "empty"),
    ("no braces here", False, "no_json"),
    ('{"a": 1,}', False, "invalid_json"),
    ('{"a": "one"}', False, "schema"),
    ('{"a": 1, "b": 2}', False, "schema"),
    ('{"a": ', True, "truncated"),
])
def test_parse_failures_have_reasons(text, truncated, reason):
    obj, failure = parse_answer(text, SCHEMA, truncated=truncated)
    assert obj is None and failure.reason == reason


def test_content_hash_is_canonical_and_repair_quotes_the_problem():
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    _, failure = parse_answer('{"a": "x"}', SCHEMA)
    messages = repair_messages([{"role": "user", "content": "q"}], '{"a": "x"}', failure)
    assert messages[1] == {"role": "assistant", "content": '{"a": "x"}'}
    assert "is not of type 'integer'" in messages[2]["content"]
