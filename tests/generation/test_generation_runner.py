"""The generation loop: exact targets, even coverage, resume, repair, quarantine, dedup, stop conditions."""

from __future__ import annotations

import json
from collections import defaultdict, deque
from pathlib import Path

import pytest

from faithforge.backends import BackendError, ChatResult, HttpOptions, ModelNotFoundError
from faithforge.backends.ollama import OllamaBackend
from faithforge.backends.template import TemplateBackend
from faithforge.generation.coverage_db import CoverageDB
from faithforge.generation.files import verify
from faithforge.generation.runner import GenerationOptions, run_generation
from faithforge.generation.spec import load_spec, parse_spec
from tests.fixtures.fake_llm_servers import FakeOllama, Reply

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "name": "tiny",
    "schema": {"type": "object", "required": ["n", "mood"], "additionalProperties": False,
               "properties": {"n": {"type": "integer"}, "mood": {"type": "string"}}},
    "categories": [
        {"name": "calm", "target": 5, "axes": {"mood": ["quiet", "still"], "size": [1, 2]},
         "prompt": "Write a {mood} thing of size {size}."},
        {"name": "loud", "target": 3, "axes": {"mood": ["brash"]}, "prompt": "Write a {mood} thing."},
    ],
}


class Scripted:
    """A backend that answers from a script, then with unique valid JSON (the seed makes it unique)."""

    name = "scripted"
    model = "scripted-1"

    def __init__(self, *script):
        self.script = deque(script)
        self.calls: list[list[dict]] = []

    def chat(self, messages, *, schema=None, max_tokens=1024, temperature=0.0, seed=None):
        self.calls.append(messages)
        if self.script:
            item = self.script.popleft()
            if isinstance(item, Exception):
                raise item
            return item if isinstance(item, ChatResult) else ChatResult(text=item)
        mood = messages[-1]["content"].split("Write a ")[-1].split(" ")[0] if "Write a " in messages[-1]["content"] else "x"
        return ChatResult(text=json.dumps({"n": seed, "mood": mood}))


@pytest.fixture()
def tiny(tmp_path):
    return parse_spec(TINY, "tiny"), CoverageDB(f"sqlite:///{tmp_path / 'c.db'}"), tmp_path / "out"


def run(spec, db, out, backend, **options):
    return run_generation(spec, backend, db, out, GenerationOptions(poll_s=0.01, **options))


def test_fills_every_target_exactly_with_even_coverage(tiny):
    spec, db, out = tiny
    summary = run(spec, db, out, Scripted())
    assert summary.done_by_category == {"calm": 5, "loud": 3} and summary.generated == 8
    successes = defaultdict(list)
    for combo in db.combinations(spec.name):
        successes[combo.category].append(combo.successes)
    assert sorted(successes["calm"]) == [1, 1, 1, 2]  # 5 over 4 combinations: least covered first
    report = verify(db, spec.name, out)
    assert report.ok and report.files == 8, report.problems
    document = json.loads((out / "calm" / "000000.json").read_text())
    assert set(document) >= {"params", "content_hash", "data", "model"}


def test_a_stopped_run_resumes_where_it_left_off(tiny):
    spec, db, out = tiny
    first = run(spec, db, out, Scripted(), limit=3)
    assert first.stopped == "limit" and first.done_total == 3
    second = run(spec, db, out, Scripted())
    assert second.done_before == 3 and second.generated == 5 and second.done_total == 8
    assert verify(db, spec.name, out).ok


def test_target_override_splits_in_proportion_and_grows(tiny):
    spec, db, out = tiny
    assert run(spec, db, out, Scripted(), target=4).done_by_category == {"calm": 3, "loud": 1}
    assert run(spec, db, out, Scripted(), target=16).done_by_category == {"calm": 10, "loud": 6}
    assert verify(db, spec.name, out).ok


def test_malformed_answer_is_repaired_once(tiny):
    spec, db, out = tiny
    backend = Scripted('Sure! {"n": 1, "mood": }')
    summary = run(spec, db, out, backend, limit=1)
    assert summary.generated == 1 and summary.repaired == 1 and not summary.failures
    repair_request = backend.calls[1]
    assert repair_request[-2] == {"role": "assistant", "content": 'Sure! {"n": 1, "mood": }'}
    assert "does not parse" in repair_request[-1]["content"]


def test_answer_that_fails_after_repair_is_quarantined_with_its_raw_text(tiny):
    spec, db, out = tiny
    summary = run(spec, db, out, Scripted("not json at all", '{"n": "seven", "mood": "x"}'))
    assert summary.failures == {"no_json": 1} and summary.done_total == 8  # the slot was retried
    (failure,) = db.failures(spec.name)
    assert failure.raw_text == "not json at all" and failure.repair_text.startswith('{"n": "seven"')
    assert "after repair" in failure.detail and "is not of type 'integer'" in failure.detail
    quarantined = list((out / "_quarantine").glob("*.json"))
    assert len(quarantined) == 1 and json.loads(quarantined[0].read_text())["reason"] == "no_json"
    assert verify(db, spec.name, out).ok


def test_truncated_answers_are_counted_and_repaired(tiny):
    spec, db, out = tiny
    cut = ChatResult(text='{"n": 4, "mo', finish_reason="length", truncated=True)
    summary = run(spec, db, out, Scripted(cut), limit=1)
    assert summary.truncations == 1 and summary.repaired == 1


def test_duplicates_are_never_stored_and_a_stuck_run_stops(tiny):
    spec, db, out = tiny

    class Constant(Scripted):
        def chat(self, messages, **kw):
            return ChatResult(text='{"n": 1, "mood": "same"}')

    summary = run(spec, db, out, Constant(), max_failures=6, max_attempts_per_slot=2)
    assert summary.done_total == 1 and summary.failures == {"duplicate": 6}
    assert summary.stopped == "max_failures"
    assert len({s.id for s in db.slots(spec.name) if s.status == "abandoned"}) == 3  # 6 failures / 2 attempts
    assert sum(1 for s in db.slots(spec.name) if s.status != "abandoned") == 8  # replaced: targets intact
    assert verify(db, spec.name, out).ok


def test_fatal_backend_error_stops_and_gives_the_slots_back(tiny):
    spec, db, out = tiny
    with pytest.raises(ModelNotFoundError):
        run(spec, db, out, Scripted(ModelNotFoundError("model 'x' not found; run `ollama pull x`")), batch_size=2)
    assert all(s.status == "pending" for s in db.slots(spec.name))


def test_consecutive_backend_errors_stop_the_run_without_crashing(tiny):
    spec, db, out = tiny
    errors = [BackendError("runner crashed")] * 3
    summary = run(spec, db, out, Scripted(*errors), max_consecutive_backend_errors=3)
    assert summary.stopped == "backend_errors" and summary.failures == {"backend_error": 3}
    assert "runner crashed" in summary.message and verify(db, spec.name, out).ok


def test_batched_mode_fills_targets(tiny):
    spec, db, out = tiny
    summary = run(spec, db, out, Scripted(), batch_size=3)
    assert summary.done_total == 8 and verify(db, spec.name, out).ok


def test_end_to_end_over_the_ollama_wire_with_think_fences_and_repair(tmp_path):
    spec = load_spec(ROOT / "configs" / "specs" / "grounded-summaries.yaml")
    teacher = TemplateBackend()

    def answer(body):  # a well-behaved model: the template teacher's JSON for this request
        return Reply(teacher.chat(body["messages"], schema=body["format"], seed=body["options"]["seed"]).text)

    with FakeOllama(default=answer) as server:
        def valid(seed):
            return answer({"messages": [{"role": "user", "content": "x"}], "format": spec.schema_for(spec.categories[0]),
                           "options": {"seed": seed}}).content

        server.push(Reply("<think>plan</think>```json\n" + valid(1) + "\n```"),  # accepted as is
                    Reply("{broken"), Reply(valid(2)),  # repaired
                    Reply('{"summary": "x"}'), Reply("{still broken"),  # quarantined (schema)
                    Reply(valid(3)[:40], finish="length"), Reply(valid(4)))  # truncated, then repaired
        backend = OllamaBackend("qwen3:8b", base_url=server.url, http=HttpOptions(retries=1, backoff_s=0.01))
        db = CoverageDB(f"sqlite:///{tmp_path / 'c.db'}")
        summary = run(spec, db, tmp_path / "out", backend, target=6, max_tokens=512)
    assert summary.done_total == 6 and summary.repaired == 2  # "{broken" fixed; truncated answer fixed
    assert summary.failures == {"schema": 1} and summary.truncations == 1
    assert all(b["think"] is False and b["options"]["num_predict"] == 512 for b in server.chat_requests())
    assert verify(db, spec.name, tmp_path / "out").ok
