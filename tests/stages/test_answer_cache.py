"""The evaluate stage keeps each model's answers by what wrote them: a rerun judges them again instead of writing
them again, a damaged file is written again, and anything that changes the answers changes their key."""

from __future__ import annotations

import copy

from faithforge.core.config import load_config
from faithforge.stages.answer_cache import Answers, adapter_fingerprint, answers_key, read_answers, write_answers
from tests.fixtures.small_config import SMALL_PIPELINE


def test_stored_answers_read_back_and_anything_else_reads_as_none(tmp_path):
    path = tmp_path / "answers" / "a.json"
    assert read_answers(path, 2) is None  # absent
    write_answers(path, Answers(["One.", "Two"], [False, True]))
    assert read_answers(path, 2) == Answers(["One.", "Two"], [False, True])
    assert read_answers(path, 3) is None  # written for other sources
    changed = path.read_text().replace('"Two"', '"Three"')  # still valid JSON of the right shape
    for damaged in (changed, '{"texts": ["One."', '{"texts": ["a", 2], "truncated": [false, false]}', "[]", ""):
        path.write_text(damaged)
        assert read_answers(path, 2) is None, damaged


def test_every_input_of_the_answers_is_in_their_key():
    inputs = dict(sampler="llama.cpp", gguf="abc.f16.gguf", model="m1", adapter="a1", sources=["s1", "s2"],
                  system_prompt="Answer from the document.", max_new_tokens=32, batch_size=64, precision="fp32")
    other = dict(sampler="engine", gguf=None, model="m2", adapter=None, sources=["s1", "s3"], system_prompt="Answer.",
                 max_new_tokens=40, batch_size=8, precision="bf16")
    key = answers_key(**inputs)
    assert answers_key(**inputs) == key
    for name, value in other.items():
        assert answers_key(**{**inputs, name: value}) != key, name


def test_an_adapters_fingerprint_is_its_weights_and_settings_only(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    first = adapter_fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("a model card written again")
    assert adapter_fingerprint(tmp_path) == first
    (tmp_path / "adapter_config.json").write_text('{"r": 16}')
    assert adapter_fingerprint(tmp_path) != first and adapter_fingerprint(None) is None


def test_a_rerun_judges_the_stored_answers_and_a_damaged_file_is_written_again(tmp_path, monkeypatch):
    import faithforge.stages.evaluate as evaluate
    from tests.fixtures.inprocess_pipeline import run_stages

    written = []
    summarize = evaluate.summarize_sources

    def counted(*args, **kwargs):
        written.append(kwargs.get("adapter"))
        return summarize(*args, **kwargs)

    monkeypatch.setattr(evaluate, "summarize_sources", counted)
    overrides = copy.deepcopy(SMALL_PIPELINE)
    overrides["workspace"] = str(tmp_path / "ws")
    cfg = load_config(None, overrides=overrides, environ={})
    first = run_stages(cfg)["evaluate"]
    assert len(written) == 3 and "reused" not in first.sampler  # before, after DPO, the control

    written.clear()
    again = run_stages(cfg)["evaluate"]
    assert written == [] and "of before, after, control reused from an earlier run" in again.sampler
    assert again.models == first.models and again.table == first.table

    stored = sorted((tmp_path / "ws" / "cache" / "answers").glob("answers-*.json"))
    assert len(stored) == 3
    stored[0].write_text('{"texts": ["cut short')  # a damaged file is never trusted
    resumed = run_stages(cfg)["evaluate"]
    assert len(written) == 1 and resumed.models == first.models

    written.clear()
    longer = load_config(None, overrides={**overrides, "evaluate": {**overrides["evaluate"], "max_new_tokens": 40}},
                         environ={})
    run_stages(longer)
    assert len(written) == 3  # another token limit: other answers
